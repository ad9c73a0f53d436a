"""A folder of memories keyed by their text: write each text once, reuse it across runs.

A memory of text T is stored as ``<sha256(T)>-<setup>.gmem``, where ``setup`` hashes the model's
architecture and tokenizer and the write settings, so runs with other settings (another objective,
seed or rate) keep their own files beside each other instead of replacing each other's. A stored
file is used only if it records the same text hash, the same model and the same write settings
(a damaged file, or one of a model with other weights, is written again). A file's header is not
trusted to say which text it holds: before a stored memory is reused, the write objective's accuracy of
its vectors on the text itself is measured, and a memory whose accuracy differs from the one it records
(another text's memory under this text's name) is written again, with a warning. Each file is saved the
moment its write ends, so a stopped run keeps what it finished and the next run picks up from there. Evaluation (``gradmem eval --memories``) and reader
training share stores, so a story is written once for both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from gradmem_cli.errors import GradmemError
from gradmem_cli.lm.fingerprint import Fingerprint
from gradmem_cli.memory import memfile
from gradmem_cli.memory.documents import Document
from gradmem_cli.fileio import FileState, file_state
from gradmem_cli.memory.memfile import MemoryFile
from gradmem_cli.memory.outputs import FolderKind, claim_folder

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel
    from gradmem_cli.writers.config import ResolvedWrite


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def settings(cfg: ResolvedWrite) -> dict:
    """Write settings as a header records them (JSON: tuples become lists)."""
    return json.loads(json.dumps(cfg.to_dict()))


def measured_accuracy(lm: LoadedModel, mem: MemoryFile, text: str, cfg: ResolvedWrite, chunk: int = 32
                      ) -> list[float] | None:
    """The write objective's accuracy of a stored memory on ``text``, segment by segment, as the write
    measured it; None when the text does not split into the segments the memory records."""
    import torch

    from gradmem_cli.lm.memlm import pad, token_stats
    from gradmem_cli.memory.documents import split_segments
    from gradmem_cli.objectives import OBJECTIVES
    from gradmem_cli.objectives.base import Segment

    segments = split_segments(lm.tokenize(text), cfg.segment_tokens)
    if [len(s) for s in segments] != mem.header.tokens_per_segment:
        return None
    objective = OBJECTIVES[cfg.objective]
    accuracy: list[float] = []
    with torch.no_grad():
        for start in range(0, len(segments), chunk):
            memories = mem.memory[start:start + chunk].to(lm.device).float()
            part = [Segment(start + i, ids) for i, ids in enumerate(segments[start:start + chunk])]
            if cfg.init == "learned":  # a trained writer's accuracy is its write head's (writers/trained.py)
                ids, mask = pad([s.ids for s in part], lm.device)
                acc = token_stats(lm.forward(memories, ids, mask, head=lm.writer.write_head), ids, mask)[1]
            else:
                for segment in part:
                    objective.prepare(lm, segment, cfg)
                acc = objective.stats(lm, memories, part, cfg).accuracy
            accuracy.extend(acc.tolist())
    return accuracy


def holds_text(lm: LoadedModel, mem: MemoryFile, text: str, cfg: ResolvedWrite) -> str | None:
    """Why the memory in ``mem`` is not one written of ``text`` (its accuracy on the text is not the one
    it records), or None. Two tokens per segment of slack allow for the arithmetic of another batch."""
    measured = measured_accuracy(lm, mem, text, cfg)
    if measured is None:
        return "its segments are not the text's"
    recorded = mem.header.accuracy
    for n, (got, said) in enumerate(zip(measured, recorded)):
        if abs(got - said) > 2 / mem.header.tokens_per_segment[n] + 1e-6:
            return (f"its accuracy on the text is {got:.3f} where it records {said:.3f} "
                    f"(segment {n + 1}): the vectors are not this text's memory")
    return None


def written_as(path: Path, text: str, lm: LoadedModel, cfg: ResolvedWrite,
               on_mismatch: Callable[[str], None] | None = None) -> MemoryFile | None:
    """The memory at ``path`` if it is a valid ``.gmem`` of ``text``, written by this model with these
    settings, and its vectors hold that text (:func:`holds_text`); else None (also for a missing or
    damaged file). ``on_mismatch`` hears of a file whose header says so but whose vectors do not."""
    if not path.is_file():
        return None
    try:
        mem = memfile.load(path)
    except GradmemError:
        return None
    header = mem.header
    write = {k: v for k, v in header.write.items() if k != "writer"}
    same = (header.source.get("sha256") == text_key(text) and write == settings(cfg)
            and Fingerprint.from_dict(header.model_fingerprint).mismatch(lm.fingerprint) is None)
    if not same:
        return None
    problem = holds_text(lm, mem, text, cfg)
    if problem is not None:
        if on_mismatch is not None:
            on_mismatch(f"{path}: {problem}")
        return None
    return mem


def is_store(folder: Path) -> bool:
    """Whether a folder holds only what a memory store does: .gmem files (and temporary ones)."""
    return all(p.is_file() and (p.suffix == ".gmem" or (p.name.startswith(".") and p.suffix == ".tmp"))
               for p in folder.iterdir())


STORE = FolderKind("a gradmem memory store (.gmem files only)", is_store)


class MemoryStore:
    """Memories of ``lm`` written with ``cfg``, in ``folder`` (created if missing)."""

    def __init__(self, folder: Path | str, lm: LoadedModel, cfg: ResolvedWrite,
                 on_rewrite: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        claim_folder(self.folder, STORE, resume=True)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GradmemError(f"cannot create folder {self.folder}: {exc.strerror}") from None
        self.lm, self.cfg = lm, cfg
        self.on_rewrite = on_rewrite
        self._checked: dict[Path, tuple[FileState | None, MemoryFile | None]] = {}
        self.settings = settings(cfg)
        fp = lm.fingerprint
        self.setup = hashlib.sha256(json.dumps([fp.config, fp.tokenizer, self.settings], sort_keys=True)
                                    .encode()).hexdigest()[:12]

    def path(self, text: str) -> Path:
        return self.folder / f"{text_key(text)}-{self.setup}.gmem"

    def get(self, text: str) -> MemoryFile | None:
        """The stored memory of ``text`` if there is one written the way this store writes (checked once
        per version of the file)."""
        path = self.path(text)
        state = file_state(path)
        if path not in self._checked or self._checked[path][0] != state:
            warn = None if self.on_rewrite is None else lambda m: self.on_rewrite(f"{m}; writing it again")
            self._checked[path] = (state, written_as(path, text, self.lm, self.cfg, warn))
        return self._checked[path][1]

    def missing(self, texts: Iterable[str]) -> list[str]:
        return [t for t in dict.fromkeys(texts) if self.get(t) is None]

    def fill(self, texts: Iterable[str], chunk: int = 8,
             on_saved: Callable[[Document, MemoryFile], None] | None = None) -> int:
        """Write every text that has no usable memory yet, ``chunk`` texts batched at a time; returns
        how many were written."""
        from gradmem_cli import engine

        todo = self.missing(texts)
        for start in range(0, len(todo), chunk):
            batch = todo[start:start + chunk]
            docs = [Document.from_text(text_key(t), t) for t in batch]
            paths = {id(doc): self.path(t) for doc, t in zip(docs, batch)}
            for doc, mem, _ in engine.memorize(self.lm, docs, self.cfg):
                path = paths[id(doc)]
                memfile.save(path, mem.memory, mem.header)
                mem.path = path
                self._checked[path] = (file_state(path), mem)  # just written: no need to check it again
                if on_saved:
                    on_saved(doc, mem)
        return len(todo)
