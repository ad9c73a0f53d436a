"""Writing many documents to many ``.gmem`` files: what ``gradmem write`` and the API's
``Gradmem.write_files`` share. Every output is claimed before the model loads (the output policy), then
documents are written here (segments of all documents batched together) or on worker processes, each
file saved as soon as it is done. Under torchrun each rank writes its share and rank 0 gets every report.
Whoever shows the progress passes a :class:`WriteWatcher`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gradmem_cli.engine import memorize
from gradmem_cli.engine.processes import Distributed, WriteItem, WriteJob, default_workers, write_in_workers
from gradmem_cli.engine.store import written_as
from gradmem_cli.errors import GradmemError, UsageError
from gradmem_cli.lm.loading import LoadedModel, load_model
from gradmem_cli.memory import memfile
from gradmem_cli.memory.documents import Document, read_inputs
from gradmem_cli.memory.outputs import Claim, claim_outputs, output_folder, output_paths
from gradmem_cli.writers.base import StepStats
from gradmem_cli.writers.config import ResolvedWrite, WriteConfig


class WriteWatcher(Protocol):
    """Hears a write's progress (the CLI draws bars from it; the API passes none)."""

    def begin(self, names: list[str], workers: int) -> None:
        """The documents to write (after --skip-existing), on how many worker processes (1: here)."""

    def step(self, index: int, segment: int, stats: StepStats) -> None:
        """A write step of segment ``segment`` (counted within the document) of document ``index``."""

    def finished(self, index: int, report: dict[str, Any], unsolved: bool) -> None:
        """Document ``index`` is saved; ``unsolved``: a segment missed --target-acc in the steps allowed."""


@dataclass
class FilesWritten:
    """The reports of the files written, and the outputs left alone because they already held their
    text's memory (--skip-existing)."""

    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def write_files(inputs: list[str], output: Path | None, cfg: WriteConfig, *, model: str | None = None,
                lm: LoadedModel | None = None, device: str = "auto", dtype: str = "auto", force: bool = False,
                skip_existing: bool = False, workers: int = 0, quiet: bool = True,
                watcher: WriteWatcher | None = None) -> FilesWritten | None:
    """Write text files, folders (their ``*.txt``) or ``-`` (stdin) into ``.gmem`` files: ``output`` is a
    file for one input, else a folder (None: next to each input). The model: ``lm`` if loaded already,
    else ``model`` loaded on ``device`` after every output is claimed. ``workers`` 0 picks one process per
    CPU core on the CPU. Returns None on a torchrun rank other than 0."""
    if workers < 0:
        raise UsageError("--workers must be 0 (automatic) or more")
    docs = read_inputs(inputs)
    paths, folder = output_paths(inputs, docs, output)
    with output_folder(folder) if folder is not None else contextlib.nullcontext():
        # Every output is checked before the model loads; with skip_existing an existing .gmem may
        # turn out to be current, which needs the model to tell.
        claims = claim_outputs(docs, paths, force, keep_existing=skip_existing, inputs=inputs)
        dist = Distributed()
        try:
            docs, claims = docs[dist.rank::dist.world], claims[dist.rank::dist.world]
            if lm is None:
                where = dist.device(device)
                lm = load_model(model, device=str(where), dtype=dtype, quiet=quiet)
            else:
                model, where, dtype, device = lm.spec, lm.device, lm.dtype_name, str(lm.device)
            resolved = cfg.resolve(lm)
            keep = [skip_existing and written_as(c.path, d.text, lm, resolved) is not None
                    for d, c in zip(docs, claims)]
            todo = [(d, c) for d, c, skip in zip(docs, claims, keep) if not skip]
            skipped = [str(c.path) for c, skip in zip(claims, keep) if skip]
            stale = [str(c.path) for _, c in todo if c.existed and not force]
            if stale:  # an existing .gmem that is not current is replaced only with force
                raise GradmemError(f"{stale[0]} already exists (use --force to overwrite it)")
            count = workers or default_workers(device if dist.world == 1 else str(where), len(todo))
            count = count if count > 1 and all(d.path is not None for d, _ in todo) else 1
            watch = watcher or _Silent()
            watch.begin([d.name for d, _ in todo], count)
            if not todo:
                reports = []
            elif count > 1:
                # The options as given (not as a header records them): each worker resolves them as this process did.
                threads = max(1, (os.cpu_count() or 1) // count)
                job = WriteJob(model, device, dtype, threads, dataclasses.asdict(cfg))
                reports = _on_workers(todo, job, resolved, count, watch)
            else:
                reports = _here(lm, todo, resolved, watch)
            gathered = dist.gather_json({"files": reports, "skipped": skipped}, where)
        finally:
            dist.close()
    if gathered is None:
        return None
    return FilesWritten([r for part in gathered for r in part["files"]], [s for part in gathered for s in part["skipped"]])


def _unsolved(report: dict[str, Any], cfg: ResolvedWrite) -> bool:
    return cfg.init != "learned" and min(report["accuracy"]) < cfg.target_acc


def _here(lm: LoadedModel, todo: list[tuple[Document, Claim]], cfg: ResolvedWrite, watch: WriteWatcher) -> list[dict]:
    """Write in this process: segments of all documents batched together, each file saved when done."""
    index = {id(d): i for i, (d, _) in enumerate(todo)}
    reports = []
    for doc, mem, report in memorize(lm, [d for d, _ in todo], cfg,
                                     lambda doc, segment, stats: watch.step(index[id(doc)], segment, stats)):
        claimed = todo[index[id(doc)]][1]
        memfile.save(claimed.path, mem.memory, mem.header, expected=claimed.state)
        report.output = str(claimed.path)
        reports.append(report.to_dict())
        watch.finished(index[id(doc)], reports[-1], _unsolved(reports[-1], cfg))
    return reports


def _on_workers(todo: list[tuple[Document, Claim]], job: WriteJob, cfg: ResolvedWrite, count: int,
                watch: WriteWatcher) -> list[dict]:
    """Write on ``count`` worker processes, each resolving the write options for its model as this
    process did into ``cfg``."""
    items = [WriteItem(i, str(d.path), str(c.path), c.state) for i, (d, c) in enumerate(todo)]
    reports: list[dict] = []

    def on_event(event: tuple) -> None:
        if event[0] == "step":
            watch.step(event[1], event[2], StepStats(*event[3]))
        else:
            reports.append(event[2])
            watch.finished(event[1], event[2], _unsolved(event[2], cfg))

    write_in_workers(items, job, count, on_event)
    return reports


class _Silent:
    def begin(self, names: list[str], workers: int) -> None:
        pass

    def step(self, index: int, segment: int, stats: StepStats) -> None:
        pass

    def finished(self, index: int, report: dict[str, Any], unsolved: bool) -> None:
        pass
