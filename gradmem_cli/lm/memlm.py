"""The one step every path takes: ``[prefix; memory; lead; tokens] -> logits, loss``.

A :class:`MemoryLM` is a causal LM that reads a memory before its tokens. WRITE (the test-time
optimiser and the learned writers), reader training and checks take their logits from
:meth:`MemoryLM.forward`, which hands the memory to its space (:mod:`~gradmem_cli.lm.spaces`: input
embeddings or keys and values); READ builds on the same spaces through :mod:`~gradmem_cli.lm.cache`.

- ``prefix`` is the special tokens the tokenizer puts before a text (a BOS, if it adds one), the
  start that every condition shares, with or without memory.
- ``lead`` is what the space puts between the memory and the tokens (nothing for embedding memory).
- Position j of the logits predicts token j from everything before it: the memory predicts the
  first token (GradMem's alignment).

Also here: right-padding, the masked per-row token loss with its accuracy and margin, and the
learning-rate schedule that writing and training share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from gradmem_cli.lm.cache import upcast
from gradmem_cli.lm.spaces import SPACES

PAD_ID = 0  # right padding is masked out of attention and losses, so its id never matters


def pad(seqs: list[list[int]], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, L] right-padded to the longest row, and the mask of real tokens."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), PAD_ID, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), longest), dtype=torch.bool, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean cross-entropy over the real tokens (GradMem's per-sample write loss)."""
    ce = F.cross_entropy(upcast(logits).transpose(1, 2), targets, reduction="none")
    real = mask.float()
    return (ce * real).sum(1) / real.sum(1).clamp(min=1)


def token_stats(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """Per row: mean cross-entropy (differentiable), token accuracy and the smallest logit margin
    (gold logit minus the best other one) over the real tokens."""
    logits = upcast(logits)
    loss = token_loss(logits, targets, mask)
    with torch.no_grad():
        gold = logits.gather(2, targets.unsqueeze(-1)).squeeze(-1)
        others = logits.scatter(2, targets.unsqueeze(-1), float("-inf")).amax(2)
        margin = torch.where(mask, gold - others, torch.full_like(gold, float("inf"))).amin(1)
        acc = ((gold > others) & mask).float().sum(1) / mask.float().sum(1).clamp(min=1)
    return loss, acc, margin


def lr_at(step: int, peak: float, total: int, warmup: int = 0, schedule: str = "constant", cycle: int = 0) -> float:
    """The learning rate at ``step``: linear warm-up over ``warmup`` steps, then ``constant`` or
    ``cosine`` decay to 0 at ``total``; ``cycle`` > 0 starts warm-up and decay again every ``cycle``
    steps (warm restarts), ``total`` being then the cycle's length."""
    if cycle:
        step, total = step % cycle, cycle
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class MemoryLM:
    """A causal LM (any Hugging Face ``*ForCausalLM``) that reads a memory before its tokens.

    ``project`` is a trained writer's memory projection, applied wherever embedding memory enters.
    """

    def __init__(self, model: Any, prefix_ids: list[int], project: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 tokenizer: Any = None):
        self.model = model
        self.prefix_ids = list(prefix_ids)
        self.project = project
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    def forward(self, memory: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor | None = None,
                head: torch.nn.Module | None = None, space: str = "embed") -> torch.Tensor:
        """Logits [B, L, V] (at least float32); position j predicts ``ids[:, j]`` from ``[prefix; memory;
        lead; ids[:, :j]]``. ``memory`` [B, n, width] holds slots of ``space``; ``mask`` marks real tokens
        of right-padded rows (None: all real); ``head`` replaces the LM head (a learned writer's write
        head, embedding memory only)."""
        return SPACES[space].logits(self, memory, ids, mask, head)

    def hidden(self, embeds: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states (after the final norm) of framed embeddings without padding."""
        return self.model.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
