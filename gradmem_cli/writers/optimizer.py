"""Test-time optimisation: memory vectors fitted by gradient descent so a frozen LM meets an objective.

For reconstruction, each segment t_1..t_N is read as ``[prefix; M; t_1..t_N]`` and the loss is the
next-token cross-entropy of the text, the last memory slot predicting t_1, averaged over the
segment's tokens (GradMem's WRITE). Only ``M`` is optimised (Adam or SGD); the model's weights
are frozen. Segments of one or many documents are optimised together in batches; a segment
leaves its batch as soon as it meets its objective's stopping test, and a waiting one takes its
place.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import torch

from gradmem_cli.lm.dtypes import DTYPES
from gradmem_cli.lm.loading import LoadedModel
from gradmem_cli.lm.spaces import SPACES
from gradmem_cli.objectives import OBJECTIVES
from gradmem_cli.objectives.base import Segment
from gradmem_cli.writers.base import OnStep, SegmentResult, StepStats
from gradmem_cli.writers.config import ResolvedWrite
from gradmem_cli.writers.start import Start


class _State:
    """Optimisation state of one segment: its memory parameter and the best memory seen."""

    def __init__(self, segment: Segment, memory: torch.Tensor, store: torch.dtype):
        self.segment = segment
        self.store = store
        self.param = torch.nn.Parameter(memory)
        self.step = 0
        self.best: tuple[float, float] | None = None
        self.best_result: SegmentResult | None = None

    def stored(self) -> torch.Tensor:
        """The memory as the file will hold it; gradients pass straight through the rounding."""
        if self.store == torch.float32:
            return self.param
        return self.param + (self.param.detach().to(self.store).float() - self.param.detach())

    def record(self, loss: float, acc: float, margin: float, solved: bool) -> None:
        key = (acc, -loss)
        if self.best is None or key > self.best or solved:
            self.best = key
            memory = self.param.detach().to("cpu", self.store)
            self.best_result = SegmentResult(self.segment.index, len(self.segment.ids), memory, self.step, self.step,
                                             loss, acc, margin, solved)


def initial_memory(lm: LoadedModel, ids: list[int], cfg: ResolvedWrite, generator: torch.Generator,
                   start: Start | None = None) -> torch.Tensor:
    """The documented starting point M0 of a segment's memory (see ``WriteConfig.init``); a fitted
    start is ``start`` if given, else the one ``cfg`` was resolved with."""
    if cfg.init == "fitted":
        with torch.no_grad():
            return (start if start is not None else cfg.start_weights)(lm, [ids])[0]
    space = SPACES[cfg.space]
    if cfg.init == "random":
        return space.random_start(lm, ids, cfg.mem_tokens, generator)
    return space.tokens_start(lm, ids, cfg.mem_tokens)


class OptimizerWriter:
    """Adam or SGD on the memory alone, under the configured objective, until its stopping test
    passes or ``cfg.steps`` steps have run; keeps the solving memory, else the best one seen."""

    def __init__(self, cfg: ResolvedWrite, start: Start | None = None):
        self.cfg = cfg
        self.objective = OBJECTIVES[cfg.objective]
        self.start = start  # a start being fitted, in place of the one cfg was resolved with

    def _cost(self, lm: LoadedModel, state: _State) -> int:
        """Tokens a segment adds to a batch; its objective prepares it (once) when first costed."""
        if state.segment.prepared is None:
            self.objective.prepare(lm, state.segment, self.cfg)
        return self.objective.cost(lm, state.segment, self.cfg)

    def _fill(self, lm: LoadedModel, pending: deque[_State], active: list[_State]) -> None:
        """Move waiting segments into the active batch while the token budget allows (at least one)."""
        used = sum(self._cost(lm, s) for s in active)
        while pending and (not active or used + self._cost(lm, pending[0]) <= self.cfg.batch_tokens):
            state = pending.popleft()
            active.append(state)
            used += self._cost(lm, state)

    def write(self, lm: LoadedModel, segments: list[list[int]], on_step: OnStep | None = None,
              seeds: list[int] | None = None) -> Iterator[SegmentResult]:
        cfg = self.cfg
        if any(len(s) == 0 for s in segments):
            raise ValueError("empty segment")
        states = []
        for index, ids in enumerate(segments):
            seed = seeds[index] if seeds is not None else cfg.seed * 1_000_003 + index
            generator = torch.Generator().manual_seed(seed)
            memory = initial_memory(lm, ids, cfg, generator, self.start)
            states.append(_State(Segment(index, ids), memory, DTYPES[cfg.store_dtype]))
        if cfg.optimizer == "adam":
            optimizer = torch.optim.Adam([{"params": [s.param]} for s in states], lr=cfg.lr, betas=cfg.betas)
        else:
            optimizer = torch.optim.SGD([{"params": [s.param]} for s in states], lr=cfg.lr)
        groups = {id(s.param): g for s, g in zip(states, optimizer.param_groups)}
        pending: deque[_State] = deque(states)
        active: list[_State] = []
        while pending or active:
            self._fill(lm, pending, active)
            with torch.enable_grad():
                memories = torch.stack([s.stored() for s in active])
                stats = self.objective.stats(lm, memories, [s.segment for s in active], cfg)
            keep, finished = [], []
            for row, state in enumerate(active):
                lo, a, m = stats.loss[row].item(), stats.accuracy[row].item(), stats.margin[row].item()
                solved = self.objective.solved(a, m, cfg)
                state.record(lo, a, m, solved)
                done = solved or state.step >= cfg.steps
                if on_step:
                    on_step(StepStats(state.segment.index, state.step, lo, a, done))
                (finished if done else keep).append((row, state))
            if keep:
                optimizer.zero_grad(set_to_none=True)
                rows = torch.tensor([row for row, _ in keep], device=stats.loss.device)
                if stats.loss.requires_grad:  # (not when no distill teacher answered: nothing to learn)
                    stats.loss.index_select(0, rows).sum().backward()
                for _, state in finished:
                    state.param.grad = None
                for _, state in keep:
                    groups[id(state.param)]["lr"] = cfg.lr_at(state.step)
                    state.step += 1
                optimizer.step()
            del stats, memories
            active = [state for _, state in keep]
            for _, state in finished:
                state.best_result.steps = state.step
                state.segment.prepared = None
                yield state.best_result
                optimizer.state.pop(state.param, None)  # free the optimiser state of a finished segment
