"""The README's evaluation table: memory against no-context and full-context on the paper's tasks.

Each row is one ``gradmem eval`` run (default model and write settings unless you add options);
results are kept under OUT (default out/eval_table), so an interrupted run resumes where it
stopped. Prints a markdown table.

    .venv/bin/python benchmarks/eval_table.py [--limit N] [--out DIR] [-- extra gradmem eval options]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROWS = [
    ("kv, 4 pairs", ["kv", "--pairs", "4"]),
    ("kv, 8 pairs", ["kv", "--pairs", "8"]),
    *[(f"babi {t}", ["babi", "--task", t]) for t in ("qa1", "qa2", "qa3", "qa4", "qa5")],
    ("recon (samples/paragraphs)", ["recon"]),
]


def gradmem() -> list[str]:
    exe = Path(sys.executable).with_name("gradmem")
    return [str(exe)] if exe.exists() else [shutil.which("gradmem") or "gradmem"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=8, help="examples per row (recon uses all 8 paragraphs)")
    parser.add_argument("--out", type=Path, default=Path("out/eval_table"))
    parser.add_argument("extra", nargs="*", help="options passed to every gradmem eval")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, row in ROWS:
        path = args.out / (name.split(" (")[0].replace(", ", "-").replace(" ", "-") + ".json")
        if not path.exists():
            limit = [] if row[0] == "recon" else ["--limit", str(args.limit)]
            command = gradmem() + ["eval", *row, *limit, "--quiet", "--output", str(path),
                                   "--log-samples", str(path.with_suffix(".samples.jsonl")), *args.extra]
            print("$", " ".join(command), file=sys.stderr, flush=True)
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        results.append((name, json.loads(path.read_text())))
    print("| task | n | metric | no-context | memory | full-context | gap closed | write steps | s per example |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, res in results:
        m, main = res["metrics"], res["main_metric"]
        gap = res["gap_closed"]
        print(f"| {name} | {res['n']} | {main} | {m['no_context'][main]:.3f} | {m['memory'][main]:.3f} | "
              f"{m['full_context'][main]:.3f} | {'n/a' if gap is None else f'{gap:.2f}'} | "
              f"{m['memory']['write_steps']:.0f} | {m['memory']['wall_seconds_per_example']:.1f} |")


if __name__ == "__main__":
    main()
