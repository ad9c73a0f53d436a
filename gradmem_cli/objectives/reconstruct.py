"""reconstruct: the memory makes the frozen model reproduce the segment (GradMem's WRITE loss)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gradmem_cli.lm.memlm import pad, token_stats
from gradmem_cli.lm.spaces import SPACES
from gradmem_cli.objectives.base import Objective, Segment, Settings, Stats

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel


class Reconstruct(Objective):
    name = "reconstruct"
    help = "next-token loss of the text (stops at --target-acc/--margin)"

    def cost(self, lm: LoadedModel, segment: Segment, cfg: Settings) -> int:
        return len(lm.prefix_ids) + cfg.mem_tokens + len(SPACES[cfg.space].lead_ids(lm)) + len(segment.ids)

    def stats(self, lm: LoadedModel, memories: torch.Tensor, segments: list[Segment], cfg: Settings) -> Stats:
        ids, mask = pad([s.ids for s in segments], lm.device)
        return Stats(*token_stats(lm.forward(memories, ids, mask, space=cfg.space), ids, mask))
