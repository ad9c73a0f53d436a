"""The README's objectives table: reconstruct-only against distill memories, side by side.

For each task, one ``gradmem eval`` with the reconstruction objective (conditions memory, via-text,
no-context, full-context) and one with ``--objective distill`` on the same examples (same seed),
run back to back under the same thread settings. Prints generated-answer F1, the share of the
no-context -> full-context gap each memory closes, and the write wall time per example with the
distill / reconstruct ratio (the issue's budget: at most 3x), and how far the distill writes got:
greedy agreement of the kept memories with the teacher's probe answers; and how closely each memory's
answers match the model's full-context answers, right or wrong (token F1; what distillation aims at,
and less noisy than F1 to the gold answer when the reader is often wrong). Results are kept under OUT, so an
interrupted run resumes where it stopped.

    .venv/bin/python benchmarks/objectives.py [--tasks babi-qa1,squad] [--limit N] [--out DIR]
        [--distill "--steps 40 --probes 6 --probe-tokens 24"] [-- extra gradmem eval options]
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import eval_once  # noqa: E402
from gradmem_cli.evaluation.harness import f1_to_full_context  # noqa: E402
from gradmem_cli.tasks.metrics import mean  # noqa: E402

TASKS = {**{f"babi-qa{i}": ["babi", "--task", f"qa{i}"] for i in range(1, 6)}, "squad": ["squad"]}


def gap(res: dict, condition: str) -> str:
    value = res["gap_closed"] if condition == "memory" else res.get("gap_closed_via_text")
    return "n/a" if value is None else f"{value:.2f}"


def like_full_context(result_path: Path, key: str = "memory") -> str:
    """Mean F1 of the answers against the full-context answers, from the run's logged samples
    (so that runs cached before the harness reported it count too)."""
    lines = result_path.with_suffix(".samples.jsonl").read_text().splitlines()
    return f"{mean([f1_to_full_context(json.loads(line), key) for line in lines]):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="babi-qa1", help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--distill", default="--steps 40 --probes 6 --probe-tokens 24",
                        help="write options of the distill run")
    parser.add_argument("--out", type=Path, default=Path("out/objectives"))
    parser.add_argument("extra", nargs="*", help="options passed to every gradmem eval")
    args = parser.parse_args()
    unknown = set(args.tasks.split(",")) - set(TASKS)
    if unknown:
        parser.error(f"unknown task {', '.join(sorted(unknown))}; choose from {', '.join(TASKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"distill write options: {args.distill}")
    print("| task | n | no-context | full-context | memory, reconstruct | via text | memory, distill | "
          "gap closed: reconstruct / via text / distill | write s per example: reconstruct / distill (ratio) | "
          "distill: greedy agreement with the teacher | answers like full context (F1 to its answer): "
          "no context / reconstruct / distill |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        common = [*TASKS[task], "--limit", str(args.limit), *args.extra]
        recon_path = args.out / f"{task}-reconstruct.json"
        recon = eval_once(recon_path,
                          [*common, "--conditions", "memory,via-text,no-context,full-context"])
        settings = re.sub(r"[^A-Za-z0-9]+", "-", args.distill).strip("-")
        distill_path = args.out / f"{task}-distill-{settings}.json"
        distill = eval_once(distill_path,
                            [*common, "--conditions", "memory,no-context,full-context", "--objective", "distill",
                             *shlex.split(args.distill)])
        r, d = recon["metrics"], distill["metrics"]
        # A memory store's reused memories carry no write time of this run: pass no --memories here.
        seconds = r["memory"].get("write_wall_seconds_per_example"), d["memory"].get("write_wall_seconds_per_example")
        timing = (f"{seconds[0]:.0f} / {seconds[1]:.0f} ({seconds[1] / seconds[0]:.1f}x)" if None not in seconds
                  else "n/a (memories reused from a store)")
        agreement = f"{d['memory']['write_accuracy']:.2f}" if "write_accuracy" in d["memory"] else "n/a"
        print(f"| {task} | {recon['n']} | {r['no_context']['f1']:.3f} | {r['full_context']['f1']:.3f} | "
              f"{r['memory']['f1']:.3f} | {r['via_text']['f1']:.3f} | {d['memory']['f1']:.3f} | "
              f"{gap(recon, 'memory')} / {gap(recon, 'via-text')} / {gap(distill, 'memory')} | "
              f"{timing} | {agreement} | "
              f"{like_full_context(recon_path, 'no_context')} / {like_full_context(recon_path)} / "
              f"{like_full_context(distill_path)} |")


if __name__ == "__main__":
    main()
