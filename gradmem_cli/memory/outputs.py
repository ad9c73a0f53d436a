"""Where ``write`` puts its files, and what it may replace: checked before any work is done.

A ``.gmem`` never holds its text, so an output that is one of the inputs, or any existing file
that is not a ``.gmem``, would be lost for good: both are refused. An existing ``.gmem`` is
replaced only when asked (``--force``, gzip's rule). The state of each output when the write
began is kept, so the save can refuse a file another process created or changed meanwhile.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.memory.documents import Document
from gradmem_cli.memory.fileio import FileState, file_state
from gradmem_cli.memory.memfile import is_memory_file


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


def output_paths(inputs: list[str], docs: list[Document], output: Path | None) -> list[Path]:
    """Where each document's .gmem goes: the ``-o`` file, the ``-o`` folder, or next to each input.

    ``-o`` names a file only for a single input file or stdin; for several inputs or a folder it is
    always a folder, so the same command means the same thing whatever the folder holds.
    """
    into_folder = len(inputs) > 1 or any(Path(i).is_dir() for i in inputs if i != "-")
    if output is None:
        if any(d.path is None for d in docs):
            raise UsageError("-o/--output is required when reading from stdin")
        paths = [d.path.with_suffix(".gmem") for d in docs]
    elif not into_folder and not output.is_dir():
        paths = [output]
    else:
        if output.exists() and not output.is_dir():
            raise UsageError(f"with several inputs or a folder -o must be a folder, and {output} is a file")
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GradmemError(f"cannot create folder {output}: {exc.strerror}") from None
        paths = [output / f"{d.stem}.gmem" for d in docs]
    for folder in {p.parent for p in paths}:
        check_writable(folder)
    return paths


def claim_outputs(docs: list[Document], paths: list[Path], force: bool) -> list[FileState | None]:
    """Refuse outputs that would destroy data; return what is at each path now (see the module)."""
    inputs = [d.path for d in docs if d.path is not None]
    states = []
    for path in paths:
        if path.exists() or path.is_symlink():
            if path.exists() and any(os.path.samefile(path, p) for p in inputs):
                raise GradmemError(f"refusing to write {path}: it is an input of this write and would be lost")
            if not path.is_file():
                raise GradmemError(f"cannot write to {path}: not a regular file")
            if not is_memory_file(path):
                raise GradmemError(f"refusing to overwrite {path}: it is not a .gmem memory file")
            if not force:
                raise GradmemError(f"{path} already exists (use --force to overwrite it)")
        states.append(file_state(path))
    return states
