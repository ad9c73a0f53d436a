"""What a WRITE objective is: the interface the test-time optimiser calls for every segment.

An objective prepares what a segment needs once (the distillation teacher's answers), says how
many tokens a segment adds to a batch, and gives, for a batch of memories, each one's loss (what
is minimised), accuracy and margin (what the stopping test reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel


class Settings(Protocol):
    """The write settings objectives read (a resolved ``WriteConfig`` has them all)."""

    space: str
    mem_tokens: int
    target_acc: float
    margin: float
    probes: int
    probe_tokens: int
    distill_weight: float


@dataclass
class Segment:
    """A segment being written: its token ids and what its objective prepared for it."""

    index: int
    ids: list[int]
    prepared: Any = None


@dataclass
class Stats:
    """Per memory of a batch: loss [B] (differentiable), accuracy [B] and margin [B]."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    margin: torch.Tensor


class Objective:
    """Base class; subclasses set ``name``, ``help`` and ``default_steps`` and implement :meth:`stats`."""

    name: str
    help: str
    default_steps: int = 400  # most steps per segment when --steps is not given

    def prepare(self, lm: LoadedModel, segment: Segment, cfg: Settings) -> None:
        """Compute once what the segment needs before its first step (nothing by default)."""

    def cost(self, lm: LoadedModel, segment: Segment, cfg: Settings) -> int:
        """Tokens the segment adds to a batch (after :meth:`prepare`)."""
        raise NotImplementedError

    def stats(self, lm: LoadedModel, memories: torch.Tensor, segments: list[Segment], cfg: Settings) -> Stats:
        """Loss, accuracy and margin of each memory [B, m, d] for its segment."""
        raise NotImplementedError

    def solved(self, accuracy: float, margin: float, cfg: Settings) -> bool:
        """The stopping test: accuracy at ``--target-acc`` and, at 1, every margin at ``--margin``."""
        return accuracy >= cfg.target_acc - 1e-9 and (cfg.target_acc < 1 or margin >= cfg.margin)
