"""Human output: a rich console on stderr, so stdout stays clean for answers and JSON."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gradmem_cli.errors import SHOWN_CHARS, shown

console = Console(stderr=True, soft_wrap=True)


def plain(value: object, limit: int = SHOWN_CHARS) -> str:
    """A string from a file or a folder listing (a name, a model id), for rich output: escaped by
    :func:`~gradmem_cli.errors.shown` (cut to ``limit`` characters) and with its brackets escaped, so it
    is never read as markup."""
    return escape(shown(value, limit))


class _Progress(Progress):
    """Bars that vanish when the command fails or is stopped: its one ``error:`` line is what stays."""

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.live.transient = True
        super().__exit__(exc_type, *rest)


def make_progress(quiet: bool = False) -> Progress:
    """A progress display on stderr; disabled with ``--quiet``."""
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )


class _WriteProgress:
    """One bar per document; a log line per finished segment where no bar can show (not a terminal)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = make_progress(quiet)
        self.bars: dict[int, int] = {}

    def __enter__(self) -> _WriteProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def _bar(self, doc) -> int:
        if id(doc) not in self.bars:
            self.bars[id(doc)] = self.progress.add_task(plain(doc.name), total=None, status="")
        return self.bars[id(doc)]

    def on_step(self, doc, segment: int, stats) -> None:
        status = f"seg {segment + 1} step {stats.step} loss {stats.loss:.3f} acc {stats.accuracy:.3f}"
        self.progress.update(self._bar(doc), status=status, advance=1 if stats.done else 0)
        if stats.done and not self.quiet and not console.is_terminal:
            console.print(f"{plain(doc.name)}: segment {segment + 1} done, {status}", highlight=False)

    def finished(self, doc, segments: int) -> None:
        self.progress.update(self._bar(doc), total=segments, completed=segments)


def write_progress(quiet: bool = False) -> _WriteProgress:
    """Progress of ``gradmem write``: ``on_step`` for :func:`engine.memorize`, ``finished`` per document."""
    return _WriteProgress(quiet)
