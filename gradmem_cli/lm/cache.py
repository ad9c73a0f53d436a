"""Reading into the model's KV cache: what the model has read so far, and reading more on top of it.

Every read path (answers, rebuilds, teacher-forced checks, a kv memory's write) keeps a
:class:`Context`: the cache, the position the next token takes, and the logits predicting it. Token
positions are always explicit, so a memory's slots, however they got into the cache, are followed
by the prompt at the positions the memory's space says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Losses are computed in at least float32 (bfloat16 logits are upcast; float64 stays)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


class Host(Protocol):
    """What reading needs of a loaded model (a :class:`~gradmem_cli.lm.memlm.MemoryLM`)."""

    model: Any
    tokenizer: Any
    prefix_ids: list[int]
    project: Any

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Context:
    """What the model has read: its KV cache, the position the next token takes, and the logits [B, V]
    that predict that token (None when nothing has been read yet)."""

    cache: Any
    position: int
    logits: torch.Tensor | None

    @property
    def length(self) -> int:
        """Entries in the cache (the positions read so far)."""
        return self.cache.get_seq_length()

    def rewind(self, length: int, position: int, logits: torch.Tensor | None) -> None:
        """Back to an earlier state (after answering a question, for the next one)."""
        extra = self.length - length
        if extra:
            self.cache.crop(-extra)  # (transformers >= 5.24 counts the entries to remove)
        self.position, self.logits = position, logits


def empty(lm: Host) -> Context:
    from transformers import DynamicCache

    return Context(DynamicCache(config=lm.model.config), 0, None)


def extend(lm: Host, ctx: Context, ids: torch.Tensor, mask: torch.Tensor | None = None, keep: int = 0
           ) -> torch.Tensor:
    """Read ``ids`` [B, L] (right-padded where ``mask`` is False) on top of ``ctx``; returns the logits
    [B, L, V] (the last ``keep`` positions only, if set) and moves ``ctx`` past them."""
    rows, length = ids.shape
    positions = torch.arange(ctx.position, ctx.position + length, device=lm.device)[None].expand(rows, -1)
    attention = None
    if mask is not None and not bool(mask.all()):
        seen = torch.ones((rows, ctx.length), dtype=torch.long, device=lm.device)
        attention = torch.cat([seen, mask.to(lm.device).long()], dim=1)
    out = lm.model(input_ids=ids.to(lm.device), position_ids=positions, attention_mask=attention, cache=ctx.cache,
                   use_cache=True, logits_to_keep=keep)
    logits = upcast(out.logits)
    ctx.position += length
    ctx.logits = logits[:, -1]
    return logits


def start(lm: Host, rows: int = 1, before: list[int] | None = None) -> Context:
    """The model after reading the prefix (and ``before``), ``rows`` times over."""
    ctx = empty(lm)
    ids = list(lm.prefix_ids) + list(before or [])
    if ids:
        extend(lm, ctx, torch.tensor([ids] * rows, dtype=torch.long, device=lm.device), keep=1)
    return ctx


def prefill(lm: Host, embeds: torch.Tensor) -> Context:
    """The model after reading input embeddings [B, T, d] (an embedding memory, framed)."""
    ctx = empty(lm)
    out = lm.model(inputs_embeds=embeds, cache=ctx.cache, use_cache=True, logits_to_keep=1)
    ctx.position, ctx.logits = embeds.shape[1], upcast(out.logits[:, -1])
    return ctx
