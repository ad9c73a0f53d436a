"""Safe file writes: a temporary file in the same folder, fsync, then an atomic publish.

A reader never sees a half-written file, an error or Ctrl-C leaves nothing behind, and a file
that appeared or changed while the data was being computed (another process writing the same
output) is never silently replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from gradmem_cli.errors import GradmemError, shown

FileState = tuple[int, int, int, int]  # (device, inode, size, mtime in ns): which file, which version


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _state(st: os.stat_result | None) -> FileState | None:
    return None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_state(path: Path) -> FileState | None:
    """The identity and version of the file at ``path``, or None if there is none."""
    return _state(_stat(path))


def check_regular_file(path: Path) -> None:
    """A readable regular file, or a one-line error that says why not (a symlink loop included)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise GradmemError(f"{path}: too many levels of symbolic links (a link loop)") from None
        if exc.errno == errno.ENOENT:
            raise GradmemError(f"no such file: {path}") from None
        raise GradmemError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise GradmemError(f"not a regular file: {path}")


MAX_TEXT_BYTES = 64 << 20  # a document, a data file, stdin: more is refused before it is all read
MAX_CONFIG_BYTES = 1 << 20  # a YAML or JSON settings file
MAX_QUESTION_BYTES = 1 << 20  # questions on stdin (each is also measured against the model's window)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} bytes"


def read_capped(source: Path | BinaryIO, cap: int, name: str | None = None) -> bytes:
    """The bytes of a regular file or a stream (stdin), reading at most ``cap`` + 1 of them: an input
    past the cap (an endless ``yes |``, a huge file) is a one-line error, not a hang."""
    name = name or str(source)
    try:
        if isinstance(source, Path):
            check_regular_file(source)
            with open(source, "rb") as fh:
                data = fh.read(cap + 1)
        else:
            data = source.read(cap + 1)
    except OSError as exc:
        raise GradmemError(f"cannot read {shown(name)}: {exc.strerror or exc}") from None
    if len(data) > cap:
        raise GradmemError(f"{shown(name)} is larger than {_size(cap)}, the most gradmem reads from one input")
    return data


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number gradmem accepts")


def loads_json(text: str | bytes) -> Any:
    """JSON from an untrusted source: NaN, Infinity and numbers that overflow to infinity are refused
    at parse time, as are numbers too long to convert and nesting too deep to parse. Every failure is a
    ``ValueError`` (``json.JSONDecodeError`` is one)."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None


@contextlib.contextmanager
def open_safetensors(path: Path, what: str) -> Iterator[Any]:
    """An untrusted safetensors file opened for reading (no code runs, only its header and tensors are
    read). A :class:`GradmemError` raised inside passes through; any other failure (a truncated or
    garbled file) becomes one line: ``PATH is not a valid WHAT (corrupt or truncated)``."""
    from safetensors import safe_open

    check_regular_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            yield fh
    except GradmemError:
        raise
    except Exception as exc:  # safetensors raises several types for truncated or garbled files
        raise GradmemError(f"{path} is not a valid {what} (corrupt or truncated)") from exc


def read_config_json(path: Path, cls: type, format_name: str, version: str, what: str) -> Any:
    """A dataclass ``cls`` from a versioned JSON file (its ``format`` and major ``format_version`` must
    match; unknown keys are ignored, for later minor versions); every defect is a one-line error."""
    import dataclasses

    data = read_capped(Path(path), MAX_CONFIG_BYTES)
    try:
        data = loads_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GradmemError(f"{path}: not a readable {what} ({shown(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise GradmemError(f"{path} is not a gradmem {what}")
    if str(data.get("format_version", "")).split(".")[0] != version.split(".")[0]:
        raise GradmemError(f"{path}: {what} format {shown(data.get('format_version'))} is not supported by this gradmem")
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in known}).validate()
    except TypeError as exc:
        raise GradmemError(f"{path}: {shown(exc)}") from None


def _default_mode() -> int:
    """The mode a new file gets from the user's umask (``mkstemp`` alone would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes, expected: FileState | None | bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    ``expected`` is what the caller saw at ``path`` when it decided to write: None (no file) makes
    the publish fail if any file has appeared since (an atomic no-clobber link); a
    :func:`file_state` makes it fail if that file has changed since. True replaces whatever is there.
    A replaced file keeps its permissions; a new one gets the umask's.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        st = _stat(path)
        os.chmod(tmp, st.st_mode & 0o7777 if st else _default_mode())
        if expected is None:
            _publish_new(tmp, path)
        else:
            if expected is not True and _state(st) != expected:
                raise GradmemError(f"{path} changed while this write ran (another process writing it?); "
                                   "left it as it is")
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _publish_new(tmp: str, path: Path) -> None:
    """Give the finished temporary file its name only if that name is still free."""
    try:
        os.link(tmp, path)  # fails with EEXIST instead of replacing: no window between check and rename
    except FileExistsError:
        raise GradmemError(f"{path} appeared while this write ran (another process writing it?); "
                           "left it as it is") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(path):  # a file system without hard links: check, then rename
            raise GradmemError(f"{path} appeared while this write ran (another process writing it?); "
                               "left it as it is") from None
        os.replace(tmp, path)
