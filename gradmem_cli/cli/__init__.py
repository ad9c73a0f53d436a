"""The ``gradmem`` command line (``main`` is the console script): thin commands over the engine."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from gradmem_cli.errors import GradmemError, UsageError, shown
from gradmem_cli.cli.summary import COMMANDS, SUMMARY
from gradmem_cli.version import __version__

__all__ = ["COMMANDS", "app", "main"]

def __getattr__(name: str) -> Any:
    if name == "app":  # the typer app, loaded on first use (it imports torch)
        from gradmem_cli.cli.commands import app

        return app
    raise AttributeError(f"module 'gradmem_cli.cli' has no attribute {name!r}")


def _answered_at_once(argv: list[str]) -> bool:
    """Print the version or the command list without loading the commands; False for anything else."""
    if argv == ["--version"]:
        print(f"gradmem {__version__}")
        return True
    if argv not in ([], ["--help"], ["-h"]):
        return False
    width = max(map(len, COMMANDS)) + 2
    lines = ["Usage: gradmem [OPTIONS] COMMAND [ARGS]...", "", f"  {SUMMARY}", "", "Options:",
             "  --version  Show the version.", "  --help     Show this message and exit.", "", "Commands:",
             *(f"  {name:<{width}}{text}" for name, text in COMMANDS.items()), "",
             "Run 'gradmem COMMAND --help' for a command's options."]
    print("\n".join(lines))
    return True

INTERRUPTED, TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143: the shell's codes
MESSAGE_CHARS = 1000  # an error line is cut here (the strings it quotes from files are cut shorter)


_TERMINATED: list[bool] = []  # set by the SIGTERM handler (typer turns every interrupt into exit code 130)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM unwinds as Ctrl-C does (nothing half-written is left, workers are stopped), exit 143."""
    _TERMINATED.append(True)
    raise KeyboardInterrupt


def _fail(message: str, code: int) -> None:
    print(f"error: {shown(message, MESSAGE_CHARS)}", file=sys.stderr)
    sys.exit(code)


def _interrupted() -> None:
    if _TERMINATED:
        _fail("terminated", TERMINATED)
    _fail("interrupted", INTERRUPTED)


def main() -> None:
    """Entry point: one-line errors, exit 1 (2 for usage errors, 130 interrupted, 143 terminated);
    GRADMEM_DEBUG=1 shows tracebacks. A reader that stops reading (``gradmem ... | head``) ends the
    command quietly, as the Python docs advise for a closed pipe: exit 1, nothing on stderr."""
    try:
        _main()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        sys.exit(1)


def _main() -> None:
    if _answered_at_once(sys.argv[1:]):
        return
    import typer

    from gradmem_cli.cli.commands import app

    debug = os.environ.get("GRADMEM_DEBUG", "") not in ("", "0")
    _TERMINATED.clear()
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
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
    except BrokenPipeError:
        raise
    except GradmemError as exc:
        if debug:
            raise
        _fail(str(exc), 2 if isinstance(exc, UsageError) else 1)
    except Exception as exc:  # an unexpected failure: still one line unless debugging
        if debug:
            raise
        _fail(f"{type(exc).__name__}: {exc} (set GRADMEM_DEBUG=1 for the traceback)", 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
