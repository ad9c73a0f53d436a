"""recon: rebuild a text from its memory, against a frozen model asked to repeat the text."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradmem_cli.errors import GradmemError
from gradmem_cli.tasks.metrics import token_accuracy
from gradmem_cli.lm.generate import Reader, reconstruct, target_hits, with_context
from gradmem_cli.memory.documents import read_document, text_files
from gradmem_cli.tasks.base import Dataset, Example, Options, Task, file_source, read_jsonl

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel
    from gradmem_cli.memory.memfile import MemoryFile

RECON_PROMPT = "Repeat the text word for word."


def load_recon(path: Path) -> list[Example]:
    """A folder of ``.txt`` files, or ``{"text"}`` JSONL."""
    if path.is_dir():
        files = text_files(path)
        texts = [(f.stem, read_document(f).text) for f in files]
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
    whole_memory = False  # the memory condition rebuilds each segment from its own vectors

    def user_text(self, ex: Example, context: str | None) -> str:
        return RECON_PROMPT if context is None else with_context(RECON_PROMPT, context)

    def examples(self, data: Path | None, limit: int | None, seed: int, options: Options) -> Dataset:
        if data is not None:
            return Dataset(load_recon(data), file_source(data))
        folder = builtin_recon_dir()
        return Dataset(load_recon(folder), {"builtin": "samples/paragraphs", **file_source(folder)})

    def respond(self, lm: LoadedModel, reader: Reader, ex: Example, context: str | None,
                memfile: MemoryFile | None, max_new_tokens: int) -> tuple[dict[str, Any], dict[str, float]]:
        """Every condition on one footing: at most the text's length in tokens is generated and scored
        the same way (exact text, token accuracy), and the teacher-forced accuracy is the text's tokens
        checked after what the condition reads: the memory alone, segment by segment (its rebuild),
        or the prompt asking to repeat the text."""
        source = lm.tokenize(ex.context)
        extra: dict[str, float] = {}
        if memfile is not None:
            lengths, space = memfile.header.tokens_per_segment, memfile.header.space
            text = lm.decode([t for seg in reconstruct(lm, memfile.memory, lengths, space) for t in seg])
            starts = [sum(lengths[:i]) for i in range(len(lengths))]
            hits = [h for s, (start, n) in enumerate(zip(starts, lengths))
                    for h in target_hits(lm, memfile.memory[s], [], source[start:start + n], space=space)]
            extra["tokens_per_slot"] = len(source) / (memfile.memory.shape[0] * memfile.memory.shape[1])
        else:
            prompt = self.user_text(ex, context)
            text = reader.answer(prompt, max_new_tokens=len(source)).text
            hits = reader.hits(prompt, source)
        return {"answer": text}, {
            "exact": float(text.strip() == ex.context.strip()),
            "token_accuracy": token_accuracy(lm.tokenize(text.strip()), lm.tokenize(ex.context.strip())),
            "tf_token_accuracy": sum(hits) / len(hits), **extra}
