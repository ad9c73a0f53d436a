"""One distill optimisation step: the probes' shared chat-template tokens run once per memory
(``shared_prompt_forward``) against every row run in full (``lm.forward``), side by side.

Builds the probes of one bAbI qa1 story with the default model, then times forward + backward of
the distillation loss both ways, alternating, and checks that both give the same loss.

    .venv/bin/python benchmarks/distill_step.py [--repeats 5] [--probes 6] [--probe-tokens 24]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import Timer, log, median, spread  # noqa: E402
from gradmem_cli.lm.memlm import pad  # noqa: E402
from gradmem_cli.objectives.distill import build_probes, distill_stats, shared_prompt_forward  # noqa: E402
from gradmem_cli.lm.loading import load_model  # noqa: E402
from gradmem_cli.tasks import babi  # noqa: E402
from gradmem_cli.writers.config import WriteConfig  # noqa: E402
from gradmem_cli.writers.optimizer import initial_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--probes", type=int, default=6)
    parser.add_argument("--probe-tokens", type=int, default=24)
    args = parser.parse_args()
    lm = load_model(device="cpu", quiet=True)
    story = str(babi.dataset("qa1", 1, seed=0)[0]["context"])
    probes = build_probes(lm, story, args.probes, args.probe_tokens)
    rows = [(probes, k) for k in range(len(probes.answers))]
    seqs = [probes.prompts[k] + probes.answers[k] for _, k in rows]
    starts = [len(probes.prompts[k]) for _, k in rows]
    ids = lm.tokenize(story)
    memory = initial_memory(lm, ids, WriteConfig().resolve(lm), torch.Generator().manual_seed(0)).requires_grad_()

    def full() -> torch.Tensor:
        ids_, mask = pad(seqs, lm.device)
        logits = lm.forward(memory[None].expand(len(rows), -1, -1), ids_, mask)
        return distill_stats(logits, rows, starts)[0].mean()

    def shared() -> torch.Tensor:
        logits, index = shared_prompt_forward(lm, memory[None], [0] * len(rows), seqs, starts)
        return distill_stats(logits, rows, index)[0].mean()

    times: dict[str, list[float]] = {"full rows": [], "shared prompt": []}
    losses = {}
    for _ in range(args.repeats):
        for name, step in (("full rows", full), ("shared prompt", shared)):
            with Timer() as t:
                loss = step()
                loss.backward()
            memory.grad = None
            times[name].append(t.seconds)
            losses[name] = loss.item()
    tokens = sum(len(s) for s in seqs)
    log(f"{len(rows)} probes, {tokens} prompt+answer tokens; losses {losses}")
    print("| forward + backward of one distill step | seconds, median (range) |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {spread(values)} |")
    print(f"shared / full speed-up: {median(times['full rows']) / median(times['shared prompt']):.2f}x "
          f"(loss {losses['full rows']:.5f} vs {losses['shared prompt']:.5f})")


if __name__ == "__main__":
    main()
