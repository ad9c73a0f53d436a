"""recon: rebuild a text from its memory, against a frozen model asked to repeat the text."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradmem_cli.errors import GradmemError
from gradmem_cli.evaluation.metrics import token_accuracy
from gradmem_cli.lm.generate import Reader, prompt_ids, reconstruct, target_hits, with_context
from gradmem_cli.memory.documents import decode_text, text_files
from gradmem_cli.tasks.base import Dataset, Example, Options, Task, file_source, read_jsonl

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel
    from gradmem_cli.memory.memfile import MemoryFile

RECON_PROMPT = "Repeat the text word for word."


def load_recon(path: Path) -> list[Example]:
    """A folder of ``.txt`` files, or ``{"text"}`` JSONL."""
    if path.is_dir():
        files = text_files(path)
        texts = [(f.stem, decode_text(f.read_bytes(), str(f))) for f in files]
    else:
        texts = []
        for i, (where, record) in enumerate(read_jsonl(path)):
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                raise GradmemError(f"{where}: 'text' must be a non-empty string")
            texts.append((str(record.get("id", i)), text))
    return [Example(id=name, context=text, question="", answers=[text]) for name, text in texts]


def builtin_recon_dir() -> Path:
    """The sample paragraphs of a source checkout (``samples/paragraphs``)."""
    folder = Path(__file__).resolve().parents[2] / "samples" / "paragraphs"
    if not folder.is_dir():
        raise GradmemError("the built-in recon texts (samples/paragraphs) are not here; pass --data")
    return folder




class Recon(Task):
    name = "recon"
    help = "rebuild each text from its memory (samples/paragraphs by default)"
    main_metric = "exact"
    max_new_tokens = 1  # unused: each answer is sized by its text
    data_help = "a folder of .txt, or JSONL {text}"

    def examples(self, data: Path | None, limit: int | None, seed: int, options: Options) -> Dataset:
        if data is not None:
            return Dataset(load_recon(data), file_source(data))
        folder = builtin_recon_dir()
        return Dataset(load_recon(folder), {"builtin": "samples/paragraphs", **file_source(folder)})

    def respond(self, lm: LoadedModel, reader: Reader, ex: Example, context: str | None,
                memfile: MemoryFile | None, max_new_tokens: int) -> tuple[dict[str, Any], dict[str, float]]:
        source = lm.tokenize(ex.context)
        if memfile is not None:
            header = memfile.header
            rebuilt = [t for seg in reconstruct(lm, memfile.memory, header.tokens_per_segment) for t in seg]
            vectors = memfile.memory.shape[0] * memfile.memory.shape[1]
            tf = sum(a * n for a, n in zip(header.accuracy, header.tokens_per_segment)) / max(1, len(source))
            return {"answer": lm.decode(rebuilt)}, {
                "exact": float(lm.decode(rebuilt) == ex.context), "token_accuracy": token_accuracy(rebuilt, source),
                "tf_token_accuracy": tf, "tokens_per_vector": len(source) / vectors}
        text = RECON_PROMPT if context is None else with_context(RECON_PROMPT, context)
        answer = reader.answer(text, max_new_tokens=len(source) + 8)
        hits = target_hits(lm, None, prompt_ids(lm, text), source)
        return {"answer": answer.text}, {"exact": float(answer.text.strip() == ex.context.strip()),
                                         "token_accuracy": token_accuracy(lm.tokenize(answer.text), source),
                                         "tf_token_accuracy": sum(hits) / len(hits)}
