"""A folder of memories keyed by their text: write each text once, reuse it across runs.

A memory of text T is stored as ``<sha256(T)>-<setup>.gmem``, where ``setup`` hashes the model's
architecture and tokenizer and the write settings, so runs with other settings (another objective,
seed or rate) keep their own files beside each other instead of replacing each other's. A stored
file is used only if it records the same text hash, the same model and the same write settings
(a damaged file, or one of a model with other weights, is written again). Each file is saved the moment its write ends, so a stopped run keeps what it
finished and the next run picks up from there. Evaluation (``gradmem eval --memories``) and reader
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
from gradmem_cli.memory.memfile import MemoryFile

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel
    from gradmem_cli.writers.config import ResolvedWrite


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def settings(cfg: ResolvedWrite) -> dict:
    """Write settings as a header records them (JSON: tuples become lists)."""
    return json.loads(json.dumps(cfg.to_dict()))


def written_as(path: Path, sha256: str, lm: LoadedModel, cfg: ResolvedWrite) -> MemoryFile | None:
    """The memory at ``path`` if it is a valid ``.gmem`` of the text with this hash, written by this
    model with these settings; else None (also for a missing or damaged file)."""
    if not path.is_file():
        return None
    try:
        mem = memfile.load(path)
    except GradmemError:
        return None
    header = mem.header
    write = {k: v for k, v in header.write.items() if k != "writer"}
    same = (header.source.get("sha256") == sha256 and write == settings(cfg)
            and Fingerprint.from_dict(header.model_fingerprint).mismatch(lm.fingerprint) is None)
    return mem if same else None


class MemoryStore:
    """Memories of ``lm`` written with ``cfg``, in ``folder`` (created if missing)."""

    def __init__(self, folder: Path | str, lm: LoadedModel, cfg: ResolvedWrite):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GradmemError(f"cannot create folder {self.folder}: {exc.strerror}") from None
        self.lm, self.cfg = lm, cfg
        self.settings = settings(cfg)
        fp = lm.fingerprint
        self.setup = hashlib.sha256(json.dumps([fp.config, fp.tokenizer, self.settings], sort_keys=True)
                                    .encode()).hexdigest()[:12]

    def path(self, text: str) -> Path:
        return self.folder / f"{text_key(text)}-{self.setup}.gmem"

    def get(self, text: str) -> MemoryFile | None:
        """The stored memory of ``text`` if there is one written the way this store writes."""
        return written_as(self.path(text), text_key(text), self.lm, self.cfg)

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
                memfile.save(paths[id(doc)], mem.memory, mem.header)
                if on_saved:
                    on_saved(doc, mem)
        return len(todo)
