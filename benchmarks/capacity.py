"""Capacity: how many tokens m vectors hold at >= 99 % teacher-forced token accuracy within 500 steps.

For each m, texts of growing length (prefixes of the sample paragraphs joined together) are written
with gradmem's defaults (one segment, --steps 500); the largest length that reaches the accuracy
bar, divided by m, is the tokens-per-vector capacity. Cramming's anchor: about 80 tokens per vector
for Pythia-160M after 5 000 steps.

    .venv/bin/python benchmarks/capacity.py [--m 1 4 8] [--steps 500] [--lengths 128 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Timer, log, texts  # noqa: E402
from gradmem_cli.lm.loading import load_model  # noqa: E402
from gradmem_cli.engine import write_segments  # noqa: E402
from gradmem_cli.writers.config import WriteConfig  # noqa: E402

LADDER = {1: [8, 16, 24, 32, 48, 64], 4: [32, 64, 96, 128, 192, 256], 8: [64, 128, 192, 256, 384, 512]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--bar", type=float, default=0.99)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lengths", type=int, nargs="*", help="text lengths to try instead of the ladder "
                        "(to run one rung; the table's best is then among these)")
    args = parser.parse_args()
    lm = load_model(args.model, device="cpu", dtype=args.dtype, quiet=True)
    corpus = lm.tokenize(" ".join(text for _, text in texts()))
    print(f"model {lm.spec} ({args.dtype}), {args.steps} steps at most, bar {args.bar:.0%} teacher-forced accuracy")
    print("| m | longest text at the bar (tokens) | tokens per vector | accuracy at the next length | steps used |")
    print("|---|---|---|---|---|")
    for m in args.m:
        best, steps_used, next_acc = 0, None, None
        for length in args.lengths or LADDER.get(m, [16 * m * k for k in (1, 2, 3, 4)]):
            cfg = dataclasses.replace(WriteConfig(), mem_tokens=m, segment_tokens=length, steps=args.steps,
                                      target_acc=args.bar, margin=0.0)
            with Timer() as t:
                (res,) = write_segments(lm, [corpus[:length]], cfg)
            log(json.dumps({"m": m, "tokens": length, "accuracy": round(res.accuracy, 4), "steps": res.steps,
                            "seconds": round(t.seconds, 1)}))
            if res.accuracy >= args.bar:
                best, steps_used = length, res.steps
            else:
                next_acc = res.accuracy
                break
        print(f"| {m} | {best} | {best / m:.1f} | {'n/a' if next_acc is None else f'{next_acc:.3f}'} | "
              f"{steps_used if steps_used is not None else 'n/a'} |")


if __name__ == "__main__":
    main()
