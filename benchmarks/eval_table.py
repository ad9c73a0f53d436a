"""The README's evaluation table: memory against no-context and full-context on the paper's tasks.

Each row is one ``gradmem eval`` run (default model and write settings unless you add options);
results are kept under OUT (default out/eval_table), so an interrupted run resumes where it
stopped. Prints a markdown table.

    .venv/bin/python benchmarks/eval_table.py [--limit N] [--out DIR] [-- extra gradmem eval options]

Every figure has its 95 % bootstrap interval. ``-- --memories DIR`` reuses a memory store (the
stories the reader benchmarks wrote), so only the reading is paid again.
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
    ("squad-mini", ["squad", "--conditions", "memory,via-text,no-context,full-context"]),
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
    print("| task | n | metric | no-context | memory | full-context | gap closed | memory: contains | write steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, res in results:
        m, main, ci = res["metrics"], res["main_metric"], res["intervals"]

        def cell(condition: str, metric: str = main) -> str:
            if metric not in m[condition]:
                return "n/a"
            low, high = ci[condition][metric]
            return f"{m[condition][metric]:.3f} [{low:.2f}, {high:.2f}]"

        gap, span = res["gap_closed"], ci.get("gap_closed")
        gap_cell = "n/a" if gap is None else f"{gap:.2f}" + (f" [{span[0]:.2f}, {span[1]:.2f}]" if span else "")
        print(f"| {name} | {res['n']} | {main} | {cell('no_context')} | {cell('memory')} | {cell('full_context')} | "
              f"{gap_cell} | {cell('memory', 'contains')} | {m['memory']['write_steps']:.0f} |")

if __name__ == "__main__":
    main()
