"""One exception type for every expected failure, so the CLI can print one line and exit 1; how a
string from an untrusted file is shown; the finite-number check every setting passes."""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from typing import Any


class GradmemError(Exception):
    """A user-facing error: bad input, a bad file, a model that cannot be loaded.

    The CLI prints ``error: <message>`` on stderr and exits with code 1; the traceback is
    shown only when ``GRADMEM_DEBUG=1``.
    """


class UsageError(GradmemError):
    """An invalid combination of arguments or option values (exit code 2, like click)."""


SHOWN_CHARS = 200  # a string from a file is cut to this many characters when shown
_HIDDEN = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}  # control, format (bidi overrides), surrogates, private, line breaks


def _visible(ch: str) -> str:
    if unicodedata.category(ch) not in _HIDDEN:
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` as text that is safe to print: control characters (C0, C1 with 0x9B, line breaks),
    bidi overrides and other invisible characters as escapes like ``\\x1b``, cut to ``limit``
    characters with an ellipsis and the full length. Rich markup is not escaped here: rich output
    goes through :func:`gradmem_cli.cli.progress.plain` on top of this."""
    text = str(value)
    cut = text[:limit]
    safe = "".join(_visible(ch) for ch in cut)
    return safe if len(text) <= limit else f"{safe}… ({len(text)} characters)"


def finite_problem(obj: Any) -> str | None:
    """The name of the first field of dataclass ``obj`` that holds a NaN or infinite number (also inside a
    list or tuple), or None. Comparisons with NaN are all false, so a range check alone lets NaN through."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return f.name
    return None


def validated(obj: Any, checks: list[tuple[bool, str]], prefix: str = "", options: bool = True) -> Any:
    """``obj`` (a settings dataclass) if every number in it is finite and every check holds, else a
    :class:`UsageError` naming the first problem; fields are named as options (``--lr``) or, with
    ``options=False``, as config keys, after ``prefix``."""
    bad = finite_problem(obj)
    if bad is not None:
        raise UsageError(f"{prefix}{'--' + bad.replace('_', '-') if options else bad} must be a finite number")
    for ok, message in checks:
        if not ok:
            raise UsageError(f"{prefix}{message}")
    return obj
