"""Steps and seconds to write a paragraph losslessly: gradmem's defaults against the Cramming recipe.

Each paragraph (samples/paragraphs by default, which the defaults were not tuned on) goes into
one segment of ``--mem-tokens`` vectors. A write counts as lossless when greedy decoding from the
memory alone rebuilds every token. Both recipes run in the same process, one after the other on
each paragraph, and the script prints per-paragraph rows, medians with their range, and the ratios.

    .venv/bin/python benchmarks/write_speed.py [--limit 5] [--baseline-steps 600] [--set lr=0.1 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PARAGRAPHS, Timer, log, median, spread, texts  # noqa: E402
from gradmem_cli.lm.loading import load_model  # noqa: E402
from gradmem_cli.lm.generate import reconstruct  # noqa: E402
from gradmem_cli.engine import write_segments  # noqa: E402
from gradmem_cli.writers.config import WriteConfig  # noqa: E402


def cramming(steps: int, mem_tokens: int) -> WriteConfig:
    """Kuratov et al. 2025: random start, Adam lr 1e-2 constant, betas 0.9/0.9, stop at 100 % accuracy."""
    return WriteConfig(mem_tokens=mem_tokens, init="random", lr=0.01, schedule="constant", optimizer="adam",
                       betas=(0.9, 0.9), target_acc=1.0, margin=0.0, steps=steps, segment_tokens=10_000)


def run(lm, ids: list[int], cfg: WriteConfig) -> dict:
    with Timer() as t:
        (res,) = write_segments(lm, [ids], cfg)
    exact = reconstruct(lm, res.memory[None], [len(ids)])[0] == ids
    return {"steps": res.steps, "seconds": round(t.seconds, 2), "accuracy": round(res.accuracy, 4),
            "solved": res.solved, "exact": exact}


def parse_overrides(pairs: list[str]) -> dict:
    fields = {f.name: f for f in dataclasses.fields(WriteConfig)}
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown WriteConfig field: {key}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=PARAGRAPHS)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--mem-tokens", type=int, default=8)
    parser.add_argument("--baseline-steps", type=int, default=600)
    parser.add_argument("--no-baseline", action="store_true", help="only gradmem's defaults (for tuning)")
    parser.add_argument("--set", nargs="*", default=[], help="override gradmem's defaults: field=value")
    args = parser.parse_args()
    lm = load_model(args.model, device="cpu", dtype=args.dtype, quiet=True)
    ours = dataclasses.replace(WriteConfig(mem_tokens=args.mem_tokens, segment_tokens=10_000),
                               **parse_overrides(args.set))
    log(f"gradmem: {ours}")
    rows = []
    for name, text in texts(args.folder, args.limit):
        ids = lm.tokenize(text)
        row = {"text": name, "tokens": len(ids), "gradmem": run(lm, ids, ours)}
        if not args.no_baseline:
            row["cramming"] = run(lm, ids, cramming(args.baseline_steps, args.mem_tokens))
        log(json.dumps(row))
        rows.append(row)
    recipes = ["gradmem"] + ([] if args.no_baseline else ["cramming"])
    print(f"model {lm.spec} ({args.dtype}), {args.mem_tokens} vectors, one segment per paragraph, "
          f"{len(rows)} paragraphs from {args.folder.name}")
    print("| recipe | steps, median (range) | seconds, median (range) | greedy exact | s/step |")
    print("|---|---|---|---|---|")
    for r in recipes:
        steps = [row[r]["steps"] for row in rows]
        secs = [row[r]["seconds"] for row in rows]
        exact = sum(row[r]["exact"] for row in rows)
        per_step = median([row[r]["seconds"] / max(1, row[r]["steps"] + 1) for row in rows])
        print(f"| {r} | {spread(steps)} | {spread(secs)} | {exact}/{len(rows)} | {per_step:.3f} |")
    if not args.no_baseline:
        both = [row for row in rows if row["gradmem"]["exact"] and row["cramming"]["exact"]]
        for key in ("steps", "seconds"):
            ratios = [row["cramming"][key] / max(row["gradmem"][key], 1e-9) for row in both]
            print(f"cramming / gradmem {key} (paragraphs both rebuilt exactly: {len(both)}): {spread(ratios)}")


if __name__ == "__main__":
    main()
