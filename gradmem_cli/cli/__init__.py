"""The ``gradmem`` command line (``main`` is the console script): thin commands over the engine."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import typer

from gradmem_cli.cli.commands import app
from gradmem_cli.errors import GradmemError, UsageError, shown

__all__ = ["app", "main"]

INTERRUPTED, TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143: the shell's codes
MESSAGE_CHARS = 1000  # an error line is cut here (the strings it quotes from files are cut shorter)


_TERMINATED: list[bool] = []  # set by the SIGTERM handler (typer turns every interrupt into exit code 130)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM unwinds as Ctrl-C does (nothing half-written is left, workers are stopped), exit 143."""
    _TERMINATED.append(True)
    raise KeyboardInterrupt


def _quiet_stop(hook: Any) -> Any:
    """A stop that lands inside a finalizer cannot unwind from there: Python hands it to the unraisable
    hook, which would print a half-line of traceback. Drop it there and send the stop again, from a
    thread, so that it lands in the main flow."""

    def unraisable(info: Any) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            sig = signal.SIGTERM if _TERMINATED else signal.SIGINT
            threading.Timer(0.05, os.kill, (os.getpid(), sig)).start()
            return
        hook(info)

    return unraisable


def _fail(message: str, code: int) -> None:
    print(f"error: {shown(message, MESSAGE_CHARS)}", file=sys.stderr)
    sys.exit(code)


def _interrupted() -> None:
    if _TERMINATED:
        _fail("terminated", TERMINATED)
    _fail("interrupted", INTERRUPTED)


def main() -> None:
    """Entry point: one-line errors, exit 1 (2 for usage errors, 130 interrupted, 143 terminated);
    GRADMEM_DEBUG=1 shows tracebacks."""
    debug = os.environ.get("GRADMEM_DEBUG", "") not in ("", "0")
    _TERMINATED.clear()
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet_stop(hook)
    try:
        # Without standalone mode typer returns the exit code of typer.Exit, which is also how
        # it reports Ctrl-C (130).
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            if code == TERMINATED or (code == INTERRUPTED and _TERMINATED):
                _fail("terminated", TERMINATED)
            if code == INTERRUPTED:
                _fail("interrupted", code)
            sys.exit(code)
    except (typer.Abort, KeyboardInterrupt):
        _interrupted()
    except typer.TyperException as exc:  # click's usage errors: bad option values, missing arguments
        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        _fail(exc.format_message() + hint, getattr(exc, "exit_code", 2))
    except GradmemError as exc:
        if debug:
            raise
        _fail(str(exc), 2 if isinstance(exc, UsageError) else 1)
    except Exception as exc:  # an unexpected failure: still one line unless debugging
        if debug:
            raise
        _fail(f"{type(exc).__name__}: {exc} (set GRADMEM_DEBUG=1 for the traceback)", 1)
    finally:
        sys.unraisablehook = hook
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
