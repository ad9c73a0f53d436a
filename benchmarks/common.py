"""Shared helpers of the benchmark scripts: texts, timing and summaries."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARAGRAPHS = ROOT / "samples" / "paragraphs"  # never used for tuning defaults
TUNING = ROOT / "benchmarks" / "tuning"  # the texts defaults were tuned on


def texts(folder: Path = PARAGRAPHS, limit: int | None = None) -> list[tuple[str, str]]:
    files = sorted(folder.glob("*.txt"))[:limit]
    return [(f.stem, f.read_text()) for f in files]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    """Median with the range, e.g. ``98 (71-140)``."""
    if not values:
        return "n/a"
    return f"{median(values):.4g} ({min(values):.4g}-{max(values):.4g})"


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_) -> None:
        self.seconds = time.perf_counter() - self.start


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def gradmem() -> list[str]:
    """The gradmem command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("gradmem")
    return [str(exe)] if exe.exists() else [shutil.which("gradmem") or "gradmem"]


def eval_once(path: Path, args: list[str]) -> dict:
    """``gradmem eval ARGS`` saved at ``path`` (and its samples beside it); reused if already there,
    so an interrupted benchmark resumes where it stopped."""
    if not path.exists():
        command = gradmem() + ["eval", *args, "--quiet", "--output", str(path),
                               "--log-samples", str(path.with_suffix(".samples.jsonl"))]
        log("$", " ".join(command))
        with Timer() as timer:
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        log(f"  {timer.seconds:.0f} s")
    return json.loads(path.read_text())


def exact_rebuilds(lm, written: list, chunk: int = 512) -> list[bool]:
    """For each ``(doc, memory file, report)`` of :func:`engine.memorize`, whether greedy decoding
    from its memory alone gives back the document's text; segments of all documents decode together,
    ``chunk`` at a time (one document at a time would dominate a GPU run)."""
    import torch

    from gradmem_cli.lm.generate import reconstruct

    memories = torch.cat([mem.memory for _, mem, _ in written])
    lengths = [n for _, mem, _ in written for n in mem.header.tokens_per_segment]
    space = written[0][1].header.space  # (one write configuration: one space)
    decoded = [seg for i in range(0, len(lengths), chunk)
               for seg in reconstruct(lm, memories[i:i + chunk].to(lm.device), lengths[i:i + chunk], space)]
    exact, start = [], 0
    for doc, mem, _ in written:
        count = mem.header.segments
        exact.append(lm.decode([t for seg in decoded[start:start + count] for t in seg]) == doc.text)
        start += count
    return exact
