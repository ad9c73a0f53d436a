"""mix: reconstruction and distillation together."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gradmem_cli.objectives.base import Objective, Segment, Settings, Stats
from gradmem_cli.objectives.distill import Distill
from gradmem_cli.objectives.reconstruct import Reconstruct

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel


class Mix(Objective):
    name = "mix"
    help = "both, weighted 1 : --distill-weight (stops when both pass)"

    def __init__(self) -> None:
        self.parts = (Reconstruct(), Distill())

    def prepare(self, lm: LoadedModel, segment: Segment, cfg: Settings) -> None:
        self.parts[1].prepare(lm, segment, cfg)

    def cost(self, lm: LoadedModel, segment: Segment, cfg: Settings) -> int:
        return sum(part.cost(lm, segment, cfg) for part in self.parts)

    def stats(self, lm: LoadedModel, memories: torch.Tensor, segments: list[Segment], cfg: Settings) -> Stats:
        text, teacher = (part.stats(lm, memories, segments, cfg) for part in self.parts)
        return Stats(text.loss + cfg.distill_weight * teacher.loss, torch.minimum(text.accuracy, teacher.accuracy),
                     text.margin)
