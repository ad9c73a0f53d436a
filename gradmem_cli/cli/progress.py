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


class WriteBars:
    """``gradmem write``'s progress (an engine ``WriteWatcher``): a bar per document written here, one bar for
    all on worker processes; a log line per finished segment where no bar can show (not a terminal)."""

    def __init__(self, quiet: bool, target_acc: float):
        self.quiet, self.target_acc = quiet, target_acc
        self.progress = make_progress(quiet)
        self.names: list[str] = []
        self.bars: dict[int, int] = {}
        self.shared: int | None = None  # the one bar of a write on workers

    def __enter__(self) -> WriteBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def begin(self, names: list[str], workers: int) -> None:
        self.names = names
        if workers > 1:
            self.shared = self.progress.add_task(f"{len(names)} files on {workers} processes", total=len(names),
                                                 status="")

    def _bar(self, index: int) -> int:
        if index not in self.bars:
            self.bars[index] = self.progress.add_task(plain(self.names[index]), total=None, status="")
        return self.bars[index]

    def step(self, index: int, segment: int, stats) -> None:
        status = f"seg {segment + 1} step {stats.step} loss {stats.loss:.3f} acc {stats.accuracy:.3f}"
        if self.shared is not None:
            self.progress.update(self.shared, status=f"{plain(self.names[index])} {status}")
            return
        self.progress.update(self._bar(index), status=status, advance=1 if stats.done else 0)
        if stats.done and not self.quiet and not console.is_terminal:
            console.print(f"{plain(self.names[index])}: segment {segment + 1} done, {status}", highlight=False)

    def finished(self, index: int, report: dict, unsolved: bool) -> None:
        if self.shared is not None:
            self.progress.update(self.shared, advance=1)
        else:
            self.progress.update(self._bar(index), total=report["segments"], completed=report["segments"])
        if unsolved and not self.quiet:
            console.print(f"[yellow]warning:[/yellow] {plain(report['input'])}: not every segment reached --target-acc "
                          f"{self.target_acc} in the steps allowed (accuracy {report['accuracy']})", highlight=False)
