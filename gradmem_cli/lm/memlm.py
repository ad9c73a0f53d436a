"""The one step every path takes: ``[prefix; P(M); tokens] -> logits, loss``.

A :class:`MemoryLM` is a causal LM that reads memory vectors as input embeddings. WRITE (the
test-time optimiser and the learned writers), READ (answers, rebuilds, teacher-forced checks),
distillation and training all build their inputs with :meth:`MemoryLM.frame` and their logits
with :meth:`MemoryLM.forward`; nothing else assembles ``inputs_embeds``.

- ``prefix`` is the special tokens the tokenizer puts before a text (a BOS, if it adds one), the
  start that every condition shares, with or without memory.
- ``P`` is a trained writer's memory projection, identity otherwise.
- Position j of the logits predicts token j from everything before it: the last memory slot
  predicts the first token (GradMem's alignment).

Also here: right-padding, the masked per-row token loss with its accuracy and margin, and the
learning-rate schedule that writing and training share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

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


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Losses are computed in at least float32 (bfloat16 logits are upcast; float64 stays)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


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
    """A causal LM (any Hugging Face ``*ForCausalLM``) that reads memory vectors as a prefix.

    ``project`` is a trained writer's memory projection, applied wherever memory enters the model.
    """

    def __init__(self, model: Any, prefix_ids: list[int], project: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.model = model
        self.prefix_ids = list(prefix_ids)
        self.project = project

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    def frame(self, memory: torch.Tensor | None, ids: torch.Tensor | None = None, at: int = 0,
              after: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings ``[prefix; ids[:, :at]; P(memory); ids[:, at:]; after]`` of shape [B, T, d].

        ``memory`` is [B, m, d] (several segments' vectors concatenated along m), or None.
        ``at`` places the memory after the first ``at`` tokens (default: right after the prefix);
        ``after`` appends vectors as they are (the trailing write slots of an RMT pass).
        """
        rows = (memory if memory is not None else ids if ids is not None else after).shape[0]
        parts = []
        if self.prefix_ids:
            prefix = self.embed(torch.tensor(self.prefix_ids, dtype=torch.long))
            parts.append(prefix.unsqueeze(0).expand(rows, -1, -1))
        if ids is not None and at:
            parts.append(self.embed(ids[:, :at]))
        if memory is not None:
            memory = memory.to(self.device)
            parts.append((self.project(memory) if self.project is not None else memory).to(self.dtype))
        if ids is not None and ids.shape[1] > at:
            parts.append(self.embed(ids[:, at:]))
        if after is not None:
            parts.append(after.to(self.dtype))
        return torch.cat(parts, dim=1)

    def forward(self, memory: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor | None = None,
                head: torch.nn.Module | None = None) -> torch.Tensor:
        """Logits [B, L, V] (at least float32); position j predicts ``ids[:, j]`` from ``[prefix;
        P(memory); ids[:, :j]]``. ``mask`` marks real tokens of right-padded rows (None: all real).

        ``head`` replaces the LM head (a learned writer's write head) on the last hidden states.
        With neither prefix nor memory, token 0 has nothing to be predicted from: its row is zeros.
        """
        embeds = self.frame(memory, ids)
        length = ids.shape[1]
        before = embeds.shape[1] - length
        attention = None
        if mask is not None and not bool(mask.all()):
            ones = torch.ones((mask.shape[0], before), dtype=torch.long, device=mask.device)
            attention = torch.cat([ones, mask.long()], dim=1)
        keep = length + 1 if before else length
        if head is None:
            logits = self.model(inputs_embeds=embeds, attention_mask=attention, use_cache=False,
                                logits_to_keep=keep).logits[:, :-1]
        else:
            hidden = self.model.base_model(inputs_embeds=embeds, attention_mask=attention,
                                           use_cache=False).last_hidden_state
            logits = head(hidden[:, -keep:-1])
        if not before:
            logits = torch.cat([logits.new_zeros(logits.shape[0], 1, logits.shape[2]), logits], dim=1)
        return upcast(logits)

    def hidden(self, embeds: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states (after the final norm) of framed embeddings without padding."""
        return self.model.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
