"""The README's evaluation table: memory against no-context and full-context on the paper's tasks.

Each row is one ``gradmem eval`` run (default model and write settings unless you add options);
results are kept under OUT (default out/eval_table), so an interrupted run resumes where it
stopped. Prints a markdown table.

    .venv/bin/python benchmarks/eval_table.py [--limit N] [--out DIR] [-- extra gradmem eval options]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import eval_once  # noqa: E402

ROWS = [
    ("kv, 4 pairs", ["kv", "--pairs", "4"]),
    ("kv, 8 pairs", ["kv", "--pairs", "8"]),
    *[(f"babi {t}", ["babi", "--task", t]) for t in ("qa1", "qa2", "qa3", "qa4", "qa5")],
    ("recon (samples/paragraphs)", ["recon"]),
]


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
        limit = [] if row[0] == "recon" else ["--limit", str(args.limit)]
        results.append((name, eval_once(path, [*row, *limit, *args.extra])))
    print("| task | n | metric | no-context | memory | full-context | gap closed | write steps | s per example |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, res in results:
        m, main = res["metrics"], res["main_metric"]
        gap = res["gap_closed"]
        print(f"| {name} | {res['n']} | {main} | {m['no_context'][main]:.3f} | {m['memory'][main]:.3f} | "
              f"{m['full_context'][main]:.3f} | {'n/a' if gap is None else f'{gap:.2f}'} | "
              f"{m['memory']['write_steps']:.0f} | {m['memory']['write_wall_seconds_per_example']:.1f} |")


if __name__ == "__main__":
    main()
