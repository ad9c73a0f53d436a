"""The default write against ``--space embed``, side by side in one run, as a user runs them.

For each case (three ~100-token paragraphs written as one folder, and one ~500-token passage), each arm
runs ``gradmem write`` as a whole command (model load included), then ``gradmem inspect --reconstruct
--against`` on every file it wrote: the frozen model regenerates the text from the stored file alone.
Per arm: wall seconds of the write command, steps summed per document (forward+backward passes of each
segment), file bytes, and whether every document is rebuilt exactly. Arms alternate within a case so
that a change in machine load falls on both.

    .venv/bin/python benchmarks/default_vs_embed.py --out benchmarks/results/default_vs_embed.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PARAGRAPHS, ROOT, gradmem, log  # noqa: E402

CASES = {
    "three ~100-token paragraphs, one folder write": [PARAGRAPHS / f"{n}.txt" for n in ("bakery", "ferry", "garden")],
    "one ~500-token passage": [ROOT / "datasets/prose/kv-test/factbook-south-america-pe-economy-0318fd-0.txt"],
}
ARMS = {"default": [], "embed": ["--space", "embed"]}


def run_arm(files: list[Path], extra: list[str], work: Path, threads: int) -> dict:
    source = work / "in"
    source.mkdir()
    for f in files:
        shutil.copy(f, source / f.name)
    out = work / "out"
    command = gradmem() + ["write", str(source if len(files) > 1 else source / files[0].name), "-o",
                           str(out if len(files) > 1 else out.with_suffix(".gmem")), "--json", "--quiet", *extra]
    log("$", " ".join(command))
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    reports = json.loads(done.stdout)["files"]
    rows = []
    for report in reports:
        gmem = Path(report["output"])
        text = Path(report["input"])
        check = subprocess.run(gradmem() + ["inspect", str(gmem), "--reconstruct", "--against", str(text), "--json"],
                               check=True, capture_output=True, text=True, env=env)
        rebuilt = json.loads(check.stdout)["reconstruction"]
        rows.append({"name": text.name, "tokens": rebuilt["source_tokens"], "steps": sum(report["steps"]),
                     "bytes": gmem.stat().st_size, "exact": rebuilt["exact_match"]})
    return {"seconds": round(seconds, 1), "documents": rows, "all_exact": all(r["exact"] for r in rows),
            "steps": [r["steps"] for r in rows], "bytes": sum(r["bytes"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each command (OMP_NUM_THREADS)")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for case, files in CASES.items():
        for arm, extra in ARMS.items():
            if arm in results.get(case, {}):
                continue  # resumable: a finished arm is kept
            with tempfile.TemporaryDirectory() as tmp:
                results.setdefault(case, {})[arm] = run_arm(files, extra, Path(tmp), args.threads)
            log(case, arm, results[case][arm]["seconds"], "s", results[case][arm]["steps"])
            args.out.write_text(json.dumps(results, indent=1) + "\n")
        row = results[case]
        row["embed_over_default_wall"] = round(row["embed"]["seconds"] / row["default"]["seconds"], 2)
    args.out.write_text(json.dumps({**results, "command": " ".join(sys.argv)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
