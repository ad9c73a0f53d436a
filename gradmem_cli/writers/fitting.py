"""Fitting a start (``gradmem fit-start``): Reptile over the write rule of ``gradmem write``.

First order, so it costs only writes: write a batch of segments for a few steps from the current
start with the write rule itself (:class:`~gradmem_cli.writers.optimizer.OptimizerWriter`), then
move the start's parameters towards where those writes went.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from gradmem_cli.errors import GradmemError, UsageError, validated
from gradmem_cli.writers.config import ResolvedWrite
from gradmem_cli.writers.optimizer import OptimizerWriter
from gradmem_cli.writers.start import Start

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel


@dataclass(frozen=True)
class FitConfig:
    """How ``gradmem fit-start`` fits a start (Reptile over the write rule of ``gradmem write``)."""

    outer_steps: int = field(default=100, metadata={"help": "Reptile updates of the start."})
    batch: int = field(default=16, metadata={"help": "Segments written per update."})
    inner_steps: int = field(default=30, metadata={
        "help": "Write steps per segment and update (the write's schedule runs over these steps)."})
    outer_lr: float = field(default=0.01, metadata={"help": "Adam rate of the start's parameters."})
    seed: int = field(default=0, metadata={"help": "Shuffles the segments."})

    def validate(self) -> FitConfig:
        checks = [(self.outer_steps >= 1, "--outer-steps must be at least 1"),
                  (self.batch >= 1, "--batch must be at least 1"),
                  (self.inner_steps >= 1, "--inner-steps must be at least 1"),
                  (self.outer_lr > 0, "--outer-lr must be positive")]
        return validated(self, checks)


@dataclass
class FitStep:
    """One Reptile update: how the batch's writes went from the start before the update."""

    step: int
    accuracy: float  # mean teacher-forced token accuracy after inner_steps
    solved: float  # share of segments that met the stopping test within inner_steps
    steps: float  # mean write steps run (a solved segment stops early)
    moved: float  # mean distance the writes moved from M0, per vector


def fit_start(lm: LoadedModel, segments: list[list[int]], write: ResolvedWrite, cfg: FitConfig,
              on_step: Callable[[FitStep], None] | None = None) -> Start:
    """Fit a start for ``lm`` on token ``segments`` (Reptile): each update writes ``cfg.batch``
    segments for ``cfg.inner_steps`` steps with the write rule ``write`` from the current start,
    then takes an Adam step on ``0.5 * |M0 - M_written|^2`` (the pull towards the written memories)."""
    cfg.validate()
    if not segments:
        raise GradmemError("no text to fit a start on")
    device = lm.model.get_input_embeddings().weight.device
    start = Start(write.mem_tokens, lm.hidden_size, write.segment_tokens).to(device)
    inner = dataclasses.replace(write, init="fitted", steps=cfg.inner_steps)
    writer = OptimizerWriter(inner, start)
    optimizer = torch.optim.Adam(start.parameters(), lr=cfg.outer_lr)
    order: list[int] = []
    rng = random.Random(cfg.seed)
    for step in range(cfg.outer_steps):
        batch = []
        while len(batch) < min(cfg.batch, len(segments)):
            if not order:
                order = list(range(len(segments)))
                rng.shuffle(order)
            batch.append(segments[order.pop()])
        results = sorted(writer.write(lm, batch), key=lambda r: r.index)
        written = torch.stack([r.memory for r in results]).to(device, torch.float32)
        m0 = start(lm, batch)
        loss = 0.5 * (m0 - written).pow(2).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step:
            on_step(FitStep(step, sum(r.accuracy for r in results) / len(results),
                            sum(r.solved for r in results) / len(results),
                            sum(r.steps for r in results) / len(results),
                            (m0 - written).norm(dim=-1).mean().item()))
    return start
