"""Running on several processes: ``torchrun`` (one process per device: gradients averaged by
all-reduce in training, a shard of the files each in ``write``), worker processes for folder writes
on one machine, and stop signals (SIGTERM/SIGINT end a training after the current step)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class Distributed:
    """torchrun support: one process per device, gradients averaged by all-reduce."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")

    def device(self, name: str) -> torch.device:
        from gradmem_cli.lm.loading import resolve_device

        device = resolve_device(name)
        if self.world > 1 and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        _wait_released(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def broadcast(self, values: list[float], device: torch.device) -> list[float]:
        """Rank 0's values everywhere (decisions taken after an evaluation)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.broadcast(t, 0)
        _wait_released(t)
        return t.tolist()

    def gather_json(self, obj: Any, device: torch.device) -> list[Any] | None:
        """Every rank's JSON-able ``obj`` on rank 0, in rank order (None on the other ranks)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=device)
        sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.long, device=device))
        longest = max(int(s) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8, device=device)
        padded[: data.numel()] = data
        chunks = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(self.world)]
        dist.all_gather(chunks, padded)
        for t in (*sizes, *chunks):
            _wait_released(t)
        if self.rank:
            return None
        return [json.loads(bytes(c[: int(n)].tolist()).decode()) for c, n in zip(chunks, sizes)]

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _wait_released(tensor: torch.Tensor, timeout: float = 10.0) -> None:
    """Wait until gloo's worker thread has dropped its reference to a finished collective's tensor.

    The collective call returns when the work completes, but the worker thread releases its copy
    a moment later, and that release needs the GIL. If the main thread reaches interpreter exit
    first (rank 1 right after the last broadcast), the worker dies taking the GIL and the process
    aborts with "terminate called without an active exception". Measured: about 4 % of
    collectives return before the release, which then takes one 0.1 ms sleep.
    """
    deadline = time.monotonic() + timeout
    while tensor._use_count() > 1 and time.monotonic() < deadline:
        time.sleep(1e-4)


class StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and stop after the current step; ``reason`` says which
    (``terminated`` or ``interrupted``, what the CLI turns into exit code 143 or 130)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def reason(self) -> str:
        return "terminated" if self.signal == signal.SIGTERM else "interrupted"

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# --- folder writes on worker processes -----------------------------------------------------------


@dataclass(frozen=True)
class WriteJob:
    """What every worker needs to write as the parent would: the model, where, and the write options."""

    model: str | None
    device: str
    dtype: str
    threads: int
    options: dict[str, Any]  # WriteConfig fields as given; each worker resolves them for its model


@dataclass(frozen=True)
class WriteItem:
    """One document for a worker: its place in the run, the text file, its output, and what was at the
    output before."""

    index: int
    source: str
    output: str
    state: tuple[int, int, int, int] | None


_WORKER: dict[str, Any] = {}
REPORT_TIMEOUT_S = 60.0  # a finished worker's reports are already in the pipe; this only guards a hang
ORPHAN_GRACE_S = 3.0  # after its parent is gone, a worker unwinds (no partial file) or is ended this much later
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _silence() -> None:
    """Nobody is left to read this worker's stderr (its parent is gone): nothing more is printed."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _stop_worker(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM (from the parent, from Ctrl-C, or for the parent's death): unwind quietly. The
    atomic save removes a half-written file on the way out; a SystemExit prints no traceback."""
    if os.getppid() != _WORKER.get("parent"):
        _silence()
    if "events" in _WORKER:  # exit without waiting to flush progress nobody reads any more
        _WORKER["events"].cancel_join_thread()
    raise SystemExit(128 + signum)


def _watch_parent(parent_end: Any) -> None:
    """Block on the pipe the parent holds open; it closes when the parent ends, however it ends."""
    try:
        parent_end.recv()  # nothing is ever sent
    except (EOFError, OSError):
        pass
    _silence()
    os.kill(os.getpid(), signal.SIGTERM)  # unwind as a stop does
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _die_with_parent(parent: int, parent_end: Any) -> None:
    """Make this worker end with its parent whatever ends the parent (SIGKILL too): on Linux the kernel
    sends SIGTERM when the parent dies (checked against os.getppid(): the parent may have died before
    this line); everywhere, a thread watches a pipe that only the parent holds open."""
    _WORKER["parent"] = parent
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_end,), daemon=True).start()


def _start_worker(job: WriteJob, events: Any, parent: int, parent_end: Any) -> None:
    """A worker's start: stop signals handled quietly, tied to its parent, the model loaded. A failure is
    kept for the first document (the parent reports it in one line); a stop meanwhile just exits."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_worker)
    _die_with_parent(parent, parent_end)
    try:
        from gradmem_cli.lm.loading import load_model
        from gradmem_cli.writers.config import WriteConfig

        events.put(("pid", os.getpid()))
        torch.set_num_threads(job.threads)
        lm = load_model(job.model, device=job.device, dtype=job.dtype, quiet=True)
        _WORKER.update(lm=lm, cfg=WriteConfig(**job.options).resolve(lm), events=events)
    except SystemExit as exc:  # stopped while starting: the pool would log a traceback for it
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    except Exception as exc:  # handed to the parent with the first document, which it fails in one line
        _WORKER["error"] = exc


def _write_items(items: list[WriteItem]) -> None:
    """A worker writes its documents (batched together) and saves each one as soon as it is done."""
    from gradmem_cli import engine
    from gradmem_cli.memory import memfile
    from gradmem_cli.memory.documents import read_document

    if "error" in _WORKER:
        raise _WORKER["error"]
    lm, cfg, events = _WORKER["lm"], _WORKER["cfg"], _WORKER["events"]
    docs = [read_document(Path(item.source)) for item in items]
    by_doc = {id(doc): item for doc, item in zip(docs, items)}

    def on_step(doc: Any, segment: int, stats: Any) -> None:
        events.put(("step", by_doc[id(doc)].index, segment, dataclasses.astuple(stats)))

    for doc, mem, report in engine.memorize(lm, docs, cfg, on_step):
        item = by_doc[id(doc)]
        memfile.save(Path(item.output), mem.memory, mem.header, expected=item.state)
        report.output = item.output
        events.put(("done", item.index, report.to_dict()))


def _start_quiet_tracker() -> None:
    """Start multiprocessing's resource tracker (the helper process its queues need) with stderr on
    /dev/null: when this process is killed, it would warn about the semaphores left behind."""
    from multiprocessing import resource_tracker

    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        resource_tracker.ensure_running()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def write_in_workers(items: list[WriteItem], job: WriteJob, workers: int,
                     on_event: Callable[[tuple], None]) -> None:
    """Write ``items`` on ``workers`` processes (each loads the model once and takes every
    ``workers``-th document), passing their progress and finished reports to ``on_event`` here.

    An interrupt stops the workers; what they saved stays, what they were writing leaves nothing.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # a fresh interpreter: no torch threads or locks inherited
    _start_quiet_tracker()
    events = ctx.Queue()
    watched, held = ctx.Pipe(duplex=False)  # the workers watch one end; only this process holds the other
    pids: list[int] = []
    reported = 0

    def handle(event: tuple) -> None:
        nonlocal reported
        if event[0] == "pid":
            pids.append(event[1])
            return
        reported += event[0] == "done"
        on_event(event)

    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(job, events, os.getpid(), watched))
    finished = False
    try:
        pending = {pool.submit(_write_items, items[i::workers]) for i in range(workers) if items[i::workers]}
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            _drain(events, handle)
            for future in done:
                future.result()  # a worker's error ends the write here, with its own message
        # A queue's items travel through a feeder thread, so a worker's last reports can arrive after
        # its future says it is done: wait for every document's report, not just for an empty queue.
        while reported < len(items):
            handle(events.get(timeout=REPORT_TIMEOUT_S))
        _drain(events, handle)
        finished = True
    finally:
        if not finished:  # an error or an interrupt: stop the workers as Ctrl-C would (no half-written file)
            held.close()  # every worker watches this pipe, also one still starting up that no pid names yet
            _drain(events, lambda event: pids.append(event[1]) if event[0] == "pid" else None)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        pool.shutdown(wait=True, cancel_futures=True)
        held.close()
        watched.close()


def _drain(events: Any, handle: Callable[[tuple], None]) -> None:
    while True:
        try:
            handle(events.get_nowait())
        except queue.Empty:
            return


def default_workers(device: str, documents: int) -> int:
    """One process per CPU core for a folder on the CPU (a core is already busy with one segment, so
    more processes, not more threads, add throughput); one process on a GPU, which batches instead."""
    if documents < 2 or device.startswith(("cuda", "mps")) or (device == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, min(os.cpu_count() or 1, documents))
