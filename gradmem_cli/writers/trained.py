"""The write rule a ``gradmem train`` checkpoint learned, as a writer for ``gradmem write``.

From the checkpoint's M0, exactly K plain SGD steps of rate alpha on its write head's loss (or K
forward rewrites for an RMT writer), no stopping test: the memory kept is M_K, what the
checkpoint was trained to read. Its loss and accuracy are those of the write objective at M_K.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gradmem_cli.lm.dtypes import DTYPES
from gradmem_cli.lm.loading import LoadedModel
from gradmem_cli.lm.memlm import pad, token_stats
from gradmem_cli.writers.base import OnStep, SegmentResult, StepStats
from gradmem_cli.writers.config import ResolvedWrite
from gradmem_cli.lm.learned import write_memory


def _batches(segments: list[list[int]], budget: int, equal_lengths: bool) -> Iterator[list[int]]:
    """Indices of segments to write together: up to ``budget`` tokens, of one length if asked."""
    order = sorted(range(len(segments)), key=lambda i: len(segments[i]))
    batch: list[int] = []
    for i in order:
        full = batch and sum(len(segments[j]) for j in batch) + len(segments[i]) > budget
        if batch and (full or (equal_lengths and len(segments[batch[0]]) != len(segments[i]))):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class TrainedWriter:
    def __init__(self, cfg: ResolvedWrite):
        self.cfg = cfg

    def write(self, lm: LoadedModel, segments: list[list[int]], on_step: OnStep | None = None,
              seeds: list[int] | None = None) -> Iterator[SegmentResult]:
        """(``seeds`` are not used: the trained rule starts from its learned M0.)"""
        cfg, writer = self.cfg, lm.writer
        for rows in _batches(segments, cfg.batch_tokens, equal_lengths=writer.cfg.kind == "rmt"):
            seqs = [segments[i] for i in rows]
            ids, mask = pad(seqs, lm.device)
            memory = write_memory(lm, writer, ids, mask, steps=cfg.steps, inner_lr=cfg.lr).memory
            with torch.no_grad():
                loss, acc, margin = token_stats(lm.forward(memory, ids, mask, head=writer.write_head), ids, mask)
            for r, index in enumerate(rows):
                lo, a, m = loss[r].item(), acc[r].item(), margin[r].item()
                if on_step:
                    on_step(StepStats(index, cfg.steps, lo, a, True))
                stored = memory[r].detach().to("cpu", DTYPES[cfg.store_dtype])
                yield SegmentResult(index, len(seqs[r]), stored, cfg.steps, cfg.steps, lo, a, m, a >= 1.0)
