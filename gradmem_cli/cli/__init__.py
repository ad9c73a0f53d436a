"""The ``gradmem`` command line (``main`` is the console script): thin commands over the engine."""

from __future__ import annotations

import os
import sys

import typer

from gradmem_cli.cli.commands import app
from gradmem_cli.errors import GradmemError, UsageError

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: one-line errors, exit 1 (2 for usage errors); GRADMEM_DEBUG=1 shows tracebacks."""
    debug = os.environ.get("GRADMEM_DEBUG", "") not in ("", "0")
    try:
        # Without standalone mode typer returns the exit code of typer.Exit, which is also how
        # it reports Ctrl-C (130).
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            if code == 130:
                print("error: interrupted", file=sys.stderr)
            sys.exit(code)
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors: bad option values, missing arguments
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    except GradmemError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except Exception as exc:  # an unexpected failure: still one line unless debugging
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (set GRADMEM_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
