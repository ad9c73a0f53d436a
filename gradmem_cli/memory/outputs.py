"""Where commands put their files and folders, and what they may replace: one policy, checked before
any work is done (before a model loads).

Every command that writes (``write``, ``eval --output/--log-samples``, ``self-study``, ``fit-start``,
``train``, ``train-reader``, and the API's save methods) claims its outputs here:

- never one of the command's inputs (the same file under any name, a symbolic or hard link), and
  never a ``.txt`` inside an input folder (the next run would read it as an input). An output folder
  inside an input folder is fine: input folders are not read recursively, and a ``.gmem`` is never read
  as a text;
- an existing file only with ``force``, and only one of the :class:`Kind` the command writes (a ``.gmem``
  for ``write``, a gradmem eval result for ``eval --output``...), never an unrelated file, even with
  ``force``;
- an output that is a symbolic link is followed: the file it points to is checked and replaced, the
  link stays; a link to nothing is refused;
- files are written atomically (temporary file, fsync, rename), and the publish fails if the file
  changed since the claim (another process writing the same output);
- a run or cache folder (:class:`FolderKind`) is used when new or empty; one of the command's own
  continues only with ``resume``, any other is refused; nothing in it is ever wiped. An output folder
  a failed command created and left empty is removed (:func:`output_folder`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.memory.documents import Document
from gradmem_cli.fileio import FileState, atomic_write_bytes, file_state, loads_json
from gradmem_cli.memory.memfile import is_memory_file


@dataclass(frozen=True)
class Kind:
    """What a command writes: how to name it, and how to recognise an existing one it may replace.
    ``marker`` is the ``format`` field a JSON output carries in every record (see :func:`write_records`)."""

    noun: str
    recognise: Callable[[Path], bool]
    marker: str | None = None


def _has_marker(marker: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        try:
            with open(path, "rb") as fh:
                first = fh.readline(1 << 20)
            record = loads_json(first.decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return isinstance(record, dict) and record.get("format") == marker

    return recognise


def json_kind(noun: str, marker: str) -> Kind:
    """A JSON or JSONL output whose records carry ``"format": marker``."""
    return Kind(noun, _has_marker(marker), marker)


GMEM = Kind("a .gmem memory file", is_memory_file)
EVAL_RESULT = json_kind("a gradmem eval result", "gradmem.eval-result")
EVAL_SAMPLES = json_kind("a gradmem eval log (--log-samples)", "gradmem.eval-samples")
SELF_STUDY = json_kind("a gradmem self-study file", "gradmem.self-study")


@dataclass(frozen=True)
class Claim:
    """An output a command may write: the file to write (a link's target), and what was there."""

    path: Path
    state: FileState | None

    @property
    def existed(self) -> bool:
        return self.state is not None

    def write(self, data: bytes) -> None:
        """Publish ``data`` atomically; fails if the file appeared or changed since the claim."""
        try:
            atomic_write_bytes(self.path, data, self.state)
        except OSError as exc:
            raise GradmemError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def check_writable(folder: Path) -> None:
    """Fail before the (slow) work if a folder cannot take a file."""
    if not folder.is_dir():
        raise GradmemError(f"cannot write to {folder}: no such folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".gradmem-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise GradmemError(f"cannot write to {folder}: {exc.strerror}") from None


def _follow(path: Path) -> Path:
    """The file a link points to (the link itself stays); a link loop or a link to nothing is refused."""
    if not path.is_symlink():
        return path
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise GradmemError(f"{path}: too many levels of symbolic links (a link loop)") from None
        raise GradmemError(f"refusing to write {path}: it is a symbolic link to nothing") from None
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _check_not_input(path: Path, target: Path, inputs: Iterable[Path | str]) -> None:
    for item in inputs:
        item = Path(item)
        if _same(target, item):
            raise GradmemError(f"refusing to write {path}: it is an input of this command and would be lost")
        if (item.is_dir() and target.suffix.lower() == ".txt"
                and _same(target.parent if str(target.parent) else Path("."), item)):
            raise GradmemError(f"refusing to write {path}: it is in the input folder {item}, whose .txt files "
                               "are inputs")


def claim(path: Path | str, kind: Kind, inputs: Iterable[Path | str] = (), force: bool = False,
          keep_existing: bool = False) -> Claim:
    """Claim ``path`` for a command writing ``kind`` (see the module's rules). ``keep_existing``: an
    existing file of the kind is claimed without ``force`` too (``write --skip-existing`` decides once
    the model is loaded whether to replace it)."""
    path = Path(path)
    target = _follow(path)
    _check_not_input(path, target, inputs)
    if target.exists():
        if not target.is_file():
            raise GradmemError(f"cannot write to {path}: not a regular file")
        if not kind.recognise(target):
            raise GradmemError(f"refusing to overwrite {path}: it is not {kind.noun} (not even with --force)")
        if not (force or keep_existing):
            raise GradmemError(f"{path} already exists (use --force to overwrite it)")
    check_writable(target.parent if str(target.parent) else Path("."))
    return Claim(target, file_state(target))


def claim_all(outputs: Sequence[tuple[Path | str, Kind]], inputs: Iterable[Path | str] = (), force: bool = False,
              keep_existing: bool = False) -> list[Claim]:
    """:func:`claim` each output; two outputs that are one file are refused."""
    inputs = list(inputs)
    claims = [claim(p, kind, inputs, force, keep_existing) for p, kind in outputs]
    seen: dict[str, Path | str] = {}
    for (given, _), c in zip(outputs, claims):
        key = os.path.realpath(c.path)
        if key in seen:
            raise UsageError(f"{seen[key]} and {given} are the same file: each output needs its own")
        seen[key] = given
    return claims


def write_records(c: Claim, kind: Kind, records: list[dict]) -> None:
    """JSON lines (one record each, a single JSON document for one record) carrying the kind's marker."""
    data = "".join(json.dumps({"format": kind.marker, **r}, ensure_ascii=False) + "\n" for r in records)
    c.write(data.encode())


# --- folders ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderKind:
    """A folder a command keeps state in (a run folder, a memory store), and how to recognise one."""

    noun: str
    recognise: Callable[[Path], bool]


def claim_folder(path: Path | str, kind: FolderKind, inputs: Iterable[Path | str] = (), resume: bool = False,
                 resume_hint: str = "--resume") -> bool:
    """Claim a folder for a command's state: a new or empty one, or (with ``resume``) one of ``kind``;
    returns whether it holds one already. Anything else is refused; nothing in it is ever removed."""
    path = Path(path)
    for item in inputs:
        if _same(path, Path(item)):
            raise GradmemError(f"refusing to use {path}: it is an input of this command")
    if not path.exists():
        if path.is_symlink():
            raise GradmemError(f"refusing to use {path}: it is a symbolic link to nothing")
        return False
    if not path.is_dir():
        raise GradmemError(f"refusing to use {path}: it is a file, not a folder")
    if not any(path.iterdir()):
        return False
    if not kind.recognise(path):
        raise GradmemError(f"refusing to use {path}: it holds files that are not {kind.noun} "
                           "(choose a new or empty folder)")
    if not resume:
        raise GradmemError(f"{path} holds {kind.noun}: pass {resume_hint} to continue it, or choose another folder")
    return True


@contextlib.contextmanager
def output_folder(path: Path) -> Iterator[Path]:
    """Create ``path`` (and its missing parents) for a command's outputs; if the command fails or is
    stopped, the folders it created and left empty are removed."""
    missing = [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GradmemError(f"cannot create folder {path}: {exc.strerror}") from None
    try:
        yield path
    except BaseException:
        for folder in missing:  # deepest first; rmdir removes only an empty folder
            try:
                folder.rmdir()
            except OSError:
                break
        raise


# --- write: where each document's .gmem goes ---------------------------------------------------


def output_paths(inputs: list[str], docs: list[Document], output: Path | None) -> tuple[list[Path], Path | None]:
    """Where each document's .gmem goes, and the output folder to create (None for none): the ``-o``
    file, the ``-o`` folder, or next to each input.

    ``-o`` names a file only for a single input file or stdin; for several inputs or a folder it is
    always a folder, so the same command means the same thing whatever the folder holds.
    """
    into_folder = len(inputs) > 1 or any(Path(i).is_dir() for i in inputs if i != "-")
    if output is None:
        if any(d.path is None for d in docs):
            raise UsageError("-o/--output is required when reading from stdin")
        return [d.path.with_suffix(".gmem") for d in docs], None
    if not into_folder and not output.is_dir():
        return [output], None
    if output.exists() and not output.is_dir():
        raise UsageError(f"with several inputs or a folder -o must be a folder, and {output} is a file")
    return [output / f"{d.stem}.gmem" for d in docs], output


def claim_outputs(docs: list[Document], paths: list[Path], force: bool, keep_existing: bool = False,
                  inputs: Iterable[str] = ()) -> list[Claim]:
    """The .gmem outputs of ``write`` (see :func:`claim`); ``inputs`` as given (folders included)."""
    given = [d.path for d in docs if d.path is not None] + [Path(i) for i in inputs if i != "-"]
    return claim_all([(p, GMEM) for p in paths], given, force, keep_existing)
