"""Write speed on one device: the step time at several batch sizes, and a folder of short documents
written batched against one by one, side by side in one run.

- step time: ``--steps`` optimisation steps of 64-token segments (8 vectors, default settings, a
  stopping test that cannot pass), for each batch size in ``--batches``; seconds per step and
  segment-steps per second.
- folder: ``--docs`` generated bAbI stories (about 60-80 tokens each, one segment) written with the
  default settings in one batched run (``--batch-tokens`` per step), and the first ``--one-by-one``
  of them written one at a time with the model loaded once. Every memory is checked to rebuild its
  story exactly; throughput is documents per minute, so the two counts need not be equal.

    python benchmarks/gpu_writes.py --device cuda [--docs 256] [--one-by-one 32] [--batch-tokens 32768]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Timer, exact_rebuilds, log  # noqa: E402
from gradmem_cli.engine import memorize, write_segments  # noqa: E402
from gradmem_cli.lm.loading import load_model  # noqa: E402
from gradmem_cli.memory.documents import Document  # noqa: E402
from gradmem_cli.tasks.babi import stories  # noqa: E402
from gradmem_cli.writers.config import WriteConfig  # noqa: E402


def sync(lm) -> None:
    if lm.model.device.type == "cuda":
        torch.cuda.synchronize()


def step_time(lm, segment: list[int], batch: int, steps: int) -> float:
    """Seconds per optimisation step for ``batch`` copies of a segment (none can stop early)."""
    cfg = WriteConfig(init="random", steps=steps, margin=1e9, batch_tokens=batch * len(segment))
    list(write_segments(lm, [segment], dataclasses.replace(cfg, steps=1)))  # warm-up
    sync(lm)
    with Timer() as t:
        list(write_segments(lm, [segment] * batch, cfg))
        sync(lm)
    return t.seconds / (steps + 1)  # steps + 1 forward passes: the last one only checks


def folder(lm, docs: list[Document], batch_tokens: int) -> tuple[float, int]:
    cfg = WriteConfig(batch_tokens=batch_tokens).resolve(lm)
    with Timer() as t:
        written = list(memorize(lm, docs, cfg))
        sync(lm)
    return t.seconds, sum(exact_rebuilds(lm, written))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--one-by-one", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=32768)
    args = parser.parse_args()
    lm = load_model(args.model, device=args.device, dtype=args.dtype, quiet=True)
    name = torch.cuda.get_device_name() if lm.model.device.type == "cuda" else "cpu"
    texts = [text for text, _ in stories("qa1", args.docs, seed=2026)]
    segment = lm.tokenize(" ".join(texts))[:64]
    print(f"model {lm.spec} ({args.dtype}) on {name}, default write settings")
    print("| segments per step | seconds per step | segment-steps per second |")
    print("|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        seconds = step_time(lm, segment, batch, args.steps)
        print(f"| {batch} | {seconds:.4f} | {batch / seconds:.1f} |", flush=True)
    docs = [Document.from_text(f"story{i:03d}", text) for i, text in enumerate(texts)]
    tokens = sum(len(lm.tokenize(t)) for t in texts)
    batched, exact_b = folder(lm, docs, args.batch_tokens)
    log(f"batched: {batched:.1f} s, {exact_b}/{len(docs)} exact")
    single, exact_s = 0.0, 0
    for doc in docs[:args.one_by_one]:
        seconds, exact = folder(lm, [doc], args.batch_tokens)
        single, exact_s = single + seconds, exact_s + exact
    log(f"one by one: {single:.1f} s, {exact_s}/{args.one_by_one} exact")
    print(f"\n{len(docs)} bAbI qa1 stories, {tokens / len(docs):.0f} tokens each on average")
    print("| mode | documents | seconds | documents per minute | rebuilt exactly |")
    print("|---|---|---|---|---|")
    rate_b, rate_s = 60 * len(docs) / batched, 60 * args.one_by_one / single
    print(f"| batched (--batch-tokens {args.batch_tokens}) | {len(docs)} | {batched:.1f} | {rate_b:.1f} | "
          f"{exact_b}/{len(docs)} |")
    print(f"| one by one (model loaded once) | {args.one_by_one} | {single:.1f} | {rate_s:.1f} | "
          f"{exact_s}/{args.one_by_one} |")
    print(f"batched / one-by-one throughput: {rate_b / rate_s:.1f}x")


if __name__ == "__main__":
    main()
