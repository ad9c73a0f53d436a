"""Input documents: reading files, folders and stdin with clear errors, and splitting into segments."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from typing import BinaryIO

from gradmem_cli.errors import GradmemError, shown
from gradmem_cli.fileio import MAX_QUESTION_BYTES, MAX_TEXT_BYTES, read_capped


@dataclass
class Document:
    """A text to write, and where it came from (the text itself never reaches the .gmem)."""

    name: str  # a file path as given, or "<stdin>"
    text: str
    sha256: str
    nbytes: int
    path: Path | None = None

    @classmethod
    def from_text(cls, name: str, text: str) -> Document:
        data = text.encode("utf-8")
        return cls(name=name, text=text, sha256=hashlib.sha256(data).hexdigest(), nbytes=len(data))

    @property
    def stem(self) -> str:
        return self.path.stem if self.path else "stdin"


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 text or a one-line error; binary data (NUL bytes) and empty inputs are refused."""
    if not data.strip():
        raise GradmemError(f"{name} is empty")
    if b"\x00" in data:
        raise GradmemError(f"{name} looks like a binary file (it contains NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GradmemError(f"{name} is not UTF-8 text (invalid byte at offset {exc.start})") from None


def _document(data: bytes, name: str, path: Path | None) -> Document:
    doc = Document.from_text(name, decode_text(data, name))
    doc.path = path
    return doc


def read_document(path: Path) -> Document:
    return _document(read_capped(path, MAX_TEXT_BYTES), str(path), path)


def read_questions(stream: BinaryIO) -> list[str]:
    """One question per non-blank line of ``stream`` (stdin), read with a cap."""
    data = read_capped(stream, MAX_QUESTION_BYTES, "<stdin>")
    if not data.strip():
        return []
    return [q.strip() for q in decode_text(data, "<stdin>").splitlines() if q.strip()]


def text_files(folder: Path) -> list[Path]:
    """A folder's text files, ``*.txt`` in any letter case, sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not files:
        raise GradmemError(f"folder {folder} has no .txt files")
    return files


def read_inputs(inputs: list[str]) -> list[Document]:
    """Expand ``-`` (stdin), files and folders (their ``*.txt``) into documents, in order."""
    if not inputs:
        raise GradmemError("no input given")
    docs: list[Document] = []
    for item in inputs:
        if item == "-":
            docs.append(_document(read_capped(sys.stdin.buffer, MAX_TEXT_BYTES, "<stdin>"), "<stdin>", None))
            continue
        path = Path(item)
        if path.is_dir():
            docs.extend(read_document(p) for p in text_files(path))
        else:
            docs.append(read_document(path))
    names = [d.stem for d in docs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if len(docs) > 1 and duplicates:
        raise GradmemError(f"several inputs would write the same output name: {shown(', '.join(duplicates))}.gmem")
    return docs


def segment_count(tokens: int, max_tokens: int) -> int:
    """How many segments :func:`split_segments` makes of ``tokens`` tokens."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    return max(1, -(-tokens // max_tokens))


def split_segments(ids: list[int], max_tokens: int) -> list[list[int]]:
    """Split token ids into the fewest segments of at most ``max_tokens``, of near-equal length.

    Equal lengths keep every segment well inside the memory's capacity (130 tokens at 64 become
    44+43+43, not 64+64+2) and make batched writing waste no padding.
    """
    count = segment_count(len(ids), max_tokens)
    base, extra = divmod(len(ids), count)
    segments, start = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        segments.append(ids[start:start + size])
        start += size
    return segments
