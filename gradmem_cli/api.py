"""The Python API: what the ``gradmem`` command does, for scripts and notebooks.

    import gradmem_cli as gm

    mem = gm.load().write("Mira keeps the lighthouse on Gull Point.")   # the default model
    mem.save("note.gmem")
    model = gm.load(mem.header.model_id)
    print(model.reconstruct(gm.load_memory("note.gmem")))
    for piece in model.stream(mem, "Who keeps the lighthouse?"):
        print(piece, end="")
    model.write_files(["docs/"], "memories/", workers=2)   # a folder, as `gradmem write docs/ -o memories/`

Every expected failure raises :class:`GradmemError` (:class:`UsageError` for bad options), the same
exceptions the CLI turns into one-line messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gradmem_cli import engine
from gradmem_cli.engine.folders import FilesWritten, write_files
from gradmem_cli.errors import GradmemError, UsageError, shown
from gradmem_cli.lm import adapter
from gradmem_cli.lm.generate import Answer
from gradmem_cli.lm.loading import LoadedModel, load_model
from gradmem_cli.memory import memfile
from gradmem_cli.memory.documents import Document
from gradmem_cli.memory.memfile import MemoryFile
from gradmem_cli.memory.outputs import GMEM, claim
from gradmem_cli.writers.config import WriteConfig
from gradmem_cli.writers.fitting import FitConfig

__all__ = ["Gradmem", "GradmemError", "Memory", "UsageError", "load", "load_memory"]


class Memory:
    """A written memory: vectors ``[segments, m, d]`` and their header (never the text)."""

    def __init__(self, file: MemoryFile):
        self.file = file

    @property
    def vectors(self):
        return self.file.memory

    @property
    def header(self) -> memfile.MemoryHeader:
        return self.file.header

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Save as a ``.gmem``; an existing ``.gmem`` is replaced only with ``force``, any other file never."""
        claimed = claim(path, GMEM, force=force)
        memfile.save(claimed.path, self.file.memory, self.file.header, expected=claimed.state)
        self.file.path = Path(path)
        return Path(path)

    def __repr__(self) -> str:
        h = self.header
        return (f"Memory({h.source['tokens']} tokens of {shown(h.source['name'])!r} in {h.segments}x{h.mem_tokens} "
                f"vectors, model {shown(h.model_id)!r})")


def load_memory(path: str | Path) -> Memory:
    """Open a ``.gmem`` (validated; it never runs code or names what gets loaded)."""
    return Memory(memfile.load(path))


def _write_config(options: dict[str, Any]) -> WriteConfig:
    try:
        return WriteConfig(**options)
    except TypeError:
        known = ", ".join(f.name for f in WriteConfig.__dataclass_fields__.values())
        raise UsageError(f"unknown write option in {sorted(options)} (known: {known})") from None


class Gradmem:
    """One loaded model that writes memories and reads them."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self._askers: dict[tuple[int, str], tuple[MemoryFile, engine.Asker]] = {}

    def write(self, text: str, name: str = "<text>", **options: Any) -> Memory:
        """Write one text into memory; ``options`` are ``gradmem write``'s (``steps=100``, ``lr=0.1``...)."""
        (memory,) = self.write_many([text], names=[name], **options)
        return memory

    def write_many(self, texts: Iterable[str], names: Iterable[str] | None = None, **options: Any) -> list[Memory]:
        """Write several texts, their segments optimised together in batches; one memory per text."""
        texts = list(texts)
        names = list(names) if names is not None else [f"<text {i}>" for i in range(len(texts))]
        docs = [Document.from_text(n, t) for n, t in zip(names, texts)]
        if any(not d.text.strip() for d in docs):
            raise GradmemError("cannot write an empty text")
        cfg = _write_config(options).resolve(self.lm)
        written = {id(doc): Memory(mem) for doc, mem, _ in engine.memorize(self.lm, docs, cfg)}
        return [written[id(d)] for d in docs]

    def _asker(self, memory: Memory, via: str) -> engine.Asker:
        """The asker of this memory and path, opened once (a rebuild for ``via="text"``, the model checks) and
        kept for the next question."""
        if via not in engine.VIAS:
            raise UsageError(f"via must be one of {', '.join(engine.VIAS)}")
        key = (id(memory.file), via)
        if key not in self._askers or self._askers[key][0] is not memory.file:
            self._askers[key] = (memory.file, engine.open_asker(self.lm, memory.file, via))
        return self._askers[key][1]

    def answer(self, memory: Memory, question: str, via: str = "memory", **generation: Any) -> Answer:
        """The answer with its timings (``max_new_tokens``, ``temperature``, ``seed`` as for ``ask``)."""
        if not question.strip():
            raise GradmemError("no question given")
        return self._asker(memory, via).answer(question.strip(), **generation)

    def ask(self, memory: Memory, question: str, via: str = "memory", **generation: Any) -> str:
        """Answer a question from the memory alone."""
        return self.answer(memory, question, via, **generation).text

    def stream(self, memory: Memory, question: str, via: str = "memory", **generation: Any) -> Iterator[str]:
        """The answer as it is generated, piece by piece (``max_new_tokens``, ``temperature``, ``seed``)."""
        if not question.strip():
            raise GradmemError("no question given")
        return self._asker(memory, via).stream(question.strip(), **generation)

    def write_files(self, inputs: Iterable[str | Path], output: str | Path | None = None, force: bool = False,
                    skip_existing: bool = False, workers: int = 1, **options: Any) -> FilesWritten:
        """``gradmem write`` on files, folders (their ``*.txt``) or ``-``: one ``.gmem`` each, in ``output``
        (a file for one input, else a folder; None: next to each input), under the same output policy.
        ``workers`` above 1 writes on that many processes (each loads the model); ``options`` as for
        :meth:`write`."""
        written = write_files([str(i) for i in inputs], Path(output) if output is not None else None,
                              _write_config(options), lm=self.lm, force=force, skip_existing=skip_existing,
                              workers=workers)
        assert written is not None  # one process: it is rank 0
        return written

    def fit_start(self, texts: Iterable[str], output: str | Path, mem_tokens: int = 8, segment_tokens: int = 64,
                  force: bool = False, **fit: Any) -> dict[str, Any]:
        """Fit a starting point for this model's writes on ``texts`` (``gradmem fit-start``; ``fit`` takes
        :class:`FitConfig` fields) and save it to ``output`` (an existing start file only with ``force``,
        any other file never); write from it with ``write(text, init="fitted", start=output)``. Returns
        what the file records of the fit."""
        docs = [Document.from_text(f"text{i}", t) for i, t in enumerate(texts)]
        write = WriteConfig(mem_tokens=mem_tokens, segment_tokens=segment_tokens, init="tokens").validate()
        return engine.fit_start_file(self.lm, docs, Path(output), write, FitConfig(**fit).validate(), force=force)

    def self_study(self, texts: Iterable[str], **study: Any) -> list[dict[str, Any]]:
        """Questions and answers this model writes about ``texts`` (``gradmem self-study``; ``study``
        takes :class:`SelfStudyConfig` fields): ``{id, context, question, answers, source}`` records,
        the JSONL a reader trains on with ``train-reader``'s ``task: qa``."""
        from gradmem_cli.training.selfstudy import SelfStudyConfig, candidates, study as run_study

        cfg = SelfStudyConfig(**study).validate()
        docs = [Document.from_text(f"text{i}", t) for i, t in enumerate(texts)]
        return list(run_study(self.lm, candidates(docs, cfg), cfg))

    def reconstruct(self, memory: Memory) -> str:
        """The text as the frozen model regenerates it from the memory alone."""
        return engine.rebuild_text(self.lm, memory.file)

    def evaluate(self, task: str, data: str | Path | None = None, limit: int | None = None, seed: int = 0,
                 conditions: Iterable[str] = ("memory", "no-context", "full-context"),
                 max_new_tokens: int | None = None, pairs: int = 8, variant: str = "qa1", split: str = "test",
                 **options: Any
                 ) -> dict[str, Any]:
        """``gradmem eval`` on a task of the registry; returns the same result dictionary."""
        from gradmem_cli.evaluation.harness import CONDITIONS, EvalOptions, evaluate
        from gradmem_cli.tasks import get_task
        from gradmem_cli.tasks.base import Options

        chosen = tuple(conditions)
        if not chosen or any(c not in CONDITIONS for c in chosen):
            raise UsageError(f"conditions must be among {', '.join(CONDITIONS)}")
        spec = get_task(task)
        dataset = spec.load(Path(data) if data is not None else None, limit, seed, Options(pairs=pairs, variant=variant, split=split))
        cfg = _write_config({"seed": seed, **options}).resolve(self.lm)
        return evaluate(self.lm, spec, dataset, cfg, EvalOptions(chosen, max_new_tokens))


def load(model: str | None = None, device: str = "auto", dtype: str = "float32", offline: bool = False,
         quiet: bool = True, reader: str | Path | None = None) -> Gradmem:
    """Load a model: an alias, a Hugging Face id, a folder or a ``.gguf`` (default: ``$GRADMEM_MODEL``
    or smollm2-135m-instruct); ``reader`` attaches a trained reader (``gradmem train-reader``), on
    only while answering."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    lm = load_model(model, device=device, dtype=dtype, quiet=quiet)
    if reader is not None:
        adapter.load(lm, reader)
    return Gradmem(lm)

