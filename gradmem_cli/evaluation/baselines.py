"""Forward-only baselines at the memory's size: keep as many positions of the text's own KV cache as the
memory has slots, instead of writing them by gradient descent (the paper's central comparison).

The text is read once (``[prefix; text]``); then, per layer and KV head, ``keep`` of the text's positions stay
in the cache with their keys and values as the model computed them (rotated at their own positions), and the
rest are dropped. What follows sits after the whole text's positions, as after a kv memory: the separator, then
the prompt (or, for a rebuild, the text's tokens). Two ways to choose what stays:

- ``kv-last``: the last ``keep`` positions (a sliding window's view);
- ``kv-snap``: the positions that receive the most attention from the text's own last tokens (an
  observation window of 32, scores summed over the query heads of each KV head and pooled over neighbours,
  as SnapKV does), chosen per layer and KV head. The scoring never sees the question: it is
  query-agnostic, like a memory written before any question is known.

kvpress implements these for a prompt with its question; it pins transformers < 5.3, so they are scored here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from gradmem_cli.lm import cache
from gradmem_cli.lm.cache import Context
from gradmem_cli.lm.spaces import SPACES

if TYPE_CHECKING:
    from gradmem_cli.lm.loading import LoadedModel

WINDOW = 32  # SnapKV's observation window
POOL = 7  # SnapKV's pooling kernel


def _attention_scores(lm: LoadedModel, ids: list[int]) -> tuple[Context, torch.Tensor]:
    """The context after ``[prefix; ids]`` and, per layer and KV head, the attention each text position gets
    from the last ``WINDOW`` text tokens [layers, kv_heads, len(ids)], pooled over ``POOL`` neighbours."""
    attentions = [m for m in lm.model.modules() if type(m).__name__.endswith("Attention")]
    prefix = len(lm.prefix_ids)
    window = min(WINDOW, len(ids))
    scores: list[torch.Tensor] = []

    def keep_scores(module: torch.nn.Module, args: tuple, output: tuple) -> None:
        weights = output[1][0, :, -window:, prefix:]  # [heads, window, len(ids)]
        heads = weights.shape[0]
        kv_heads = module.config.num_key_value_heads
        grouped = weights.sum(1).reshape(kv_heads, heads // kv_heads, -1).sum(1)
        scores.append(torch.nn.functional.max_pool1d(grouped[None], POOL, 1, POOL // 2)[0])

    ctx = cache.start(lm)  # (the prefix first: only the text's own forward pass is scored)
    previous = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")  # the only one that returns attention weights
    hooks = [m.register_forward_hook(keep_scores) for m in attentions]
    try:
        with torch.no_grad():
            cache.extend(lm, ctx, torch.tensor([ids], device=lm.device), keep=1)
    finally:
        for hook in hooks:
            hook.remove()
        lm.model.set_attn_implementation(previous)
    return ctx, torch.stack(scores)


def _read(lm: LoadedModel, ids: list[int]) -> Context:
    ctx = cache.start(lm)
    with torch.no_grad():
        cache.extend(lm, ctx, torch.tensor([ids], device=lm.device), keep=1)
    return ctx


def last(lm: LoadedModel, ids: list[int], keep: int) -> tuple[Context, torch.Tensor]:
    """The context after the text, and the last ``keep`` text positions for every layer and KV head."""
    ctx = _read(lm, ids)
    layers, heads = len(ctx.cache.layers), ctx.cache.layers[0].keys.shape[1]
    return ctx, torch.arange(len(ids) - keep, len(ids)).expand(layers, heads, keep)


def snap(lm: LoadedModel, ids: list[int], keep: int) -> tuple[Context, torch.Tensor]:
    """The context after the text, and per layer and KV head the ``keep`` most attended text positions."""
    ctx, scores = _attention_scores(lm, ids)
    return ctx, scores.topk(keep, dim=-1).indices.sort(dim=-1).values


KEEPERS: dict[str, Callable[[LoadedModel, list[int], int], tuple[Context, torch.Tensor]]] = {
    "kv-last": last, "kv-snap": snap}


def kept_context(lm: LoadedModel, ids: list[int], keep: int, method: str) -> Context:
    """The model after reading the prefix and ``keep`` of the text's positions chosen by ``method``
    (``kv-last`` or ``kv-snap``), then the kv space's separator at the position after the whole text."""
    prefix = len(lm.prefix_ids)
    full, chosen = KEEPERS[method](lm, ids, max(1, min(keep, len(ids))))
    ctx = cache.empty(lm)
    for layer, (entry, index) in enumerate(zip(full.cache.layers, chosen)):
        gather = (prefix + index.to(lm.device))[None, :, :, None].expand(1, -1, -1, entry.keys.shape[-1])
        keys = torch.cat([entry.keys[:, :, :prefix], entry.keys.gather(2, gather)], dim=2)
        values = torch.cat([entry.values[:, :, :prefix], entry.values.gather(2, gather)], dim=2)
        ctx.cache.update(keys, values, layer)
    ctx.position = prefix + len(ids)
    lead = SPACES["kv"].lead_ids(lm)
    with torch.no_grad():
        cache.extend(lm, ctx, torch.tensor([lead], device=lm.device), keep=1)
    return ctx
