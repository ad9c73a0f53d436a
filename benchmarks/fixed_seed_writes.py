"""Fixed-seed writes through the CLI: steps, losses and exact rebuilds per segment, as JSON lines.

Run it before and after a change that must not alter behaviour, and diff the outputs: the same
texts must take the same steps and rebuild exactly (losses may move in the last digits where a
floating-point summation order changed). Also prints ``eval kv`` EM of the shipped GradMem checkpoint.

    PYTHONPATH=$(git worktree add -f /tmp/before HEAD~1 && echo /tmp/before) \
        .venv/bin/python benchmarks/fixed_seed_writes.py > before.jsonl
    .venv/bin/python benchmarks/fixed_seed_writes.py > after.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "samples" / "lighthouse.txt", ROOT / "samples" / "paragraphs" / "bakery.txt",
         ROOT / "samples" / "paragraphs" / "ferry.txt"]


def gradmem(*args: str) -> dict:
    """``gradmem ARGS --json`` of the code on ``PYTHONPATH`` (a checkout to compare), else the installed one."""
    out = subprocess.run([sys.executable, "-m", "gradmem_cli", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, default=FILES)
    parser.add_argument("--kv-samples", type=int, default=200, help="fresh kv samples for the checkpoint's EM")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.files:
            out = Path(tmp) / f"{path.stem}.gmem"
            gradmem("write", str(path), "-o", str(out), "--json", "-q")
            info = gradmem("inspect", str(out), "--against", str(path), "--json", "-q")
            header = info["header"]
            print(json.dumps({"file": path.name, "steps": header["steps"], "kept_step": header["kept_step"],
                              "final_loss": header["final_loss"], "accuracy": header["accuracy"],
                              "exact": info["reconstruction"]["exact_match"]}), flush=True)
    model = str(ROOT / "samples" / "models" / "kv8-gradmem")
    result = gradmem("eval", "kv", "-m", model, "--limit", str(args.kv_samples), "--conditions", "memory",
                     "--seed", "2026", "--json", "-q")
    print(json.dumps({"eval_kv": model.split("/")[-1], "n": result["n"],
                      "em_tf": result["metrics"]["memory"]["em_tf"], "em": result["metrics"]["memory"]["em"]}))


if __name__ == "__main__":
    main()
