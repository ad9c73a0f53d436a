"""The writer interface: segments of token ids in, one memory per segment out.

Two implementations, picked once per model by :func:`gradmem_cli.engine.writer_for`:
:class:`~gradmem_cli.writers.optimizer.OptimizerWriter` (test-time optimisation of the memory
under an objective, for any LM) and :class:`~gradmem_cli.writers.trained.TrainedWriter` (the
write rule a ``gradmem train`` checkpoint learned).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel


@dataclass
class SegmentResult:
    """A written segment: its memory [m, d] (in the storage dtype) and how the write went."""

    index: int
    tokens: int
    memory: torch.Tensor
    steps: int  # optimisation steps run
    kept_step: int  # the step whose memory is kept: the solving step, else the best one seen
    loss: float
    accuracy: float
    margin: float
    solved: bool


@dataclass
class StepStats:
    """Progress of one segment after a forward pass (passed to the progress callback)."""

    index: int
    step: int
    loss: float
    accuracy: float
    done: bool


OnStep = Callable[[StepStats], None]


class Writer(Protocol):
    def write(self, lm: LoadedModel, segments: list[list[int]], on_step: OnStep | None = None,
              seeds: list[int] | None = None) -> Iterator[SegmentResult]:
        """Write each segment into its own memory; yields results as segments finish (any order).
        ``seeds`` seed each segment's random start (default: from the write seed and its index)."""
        ...

