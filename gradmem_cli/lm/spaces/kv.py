"""kv: each slot is, for every layer, one key and one value per KV head, put straight into the cache.

This is prefix tuning's space (and Cartridges'): the slots skip the model's layers and are attended to
directly, so a handful of them steer the model far more strongly than input embeddings do. A slot of
width ``layers * 2 * kv_heads * head_dim`` is laid out ``[layer][key, value][head][dim]``.

Keys are stored *before* rotary position embedding (RoPE) and rotated to the positions they take when
read: a segment's slots sit right after the prefix while it is written and rebuilt, and several
segments' slots take consecutive positions in text order when they are read together, each rotated to
its place. Nothing in a slot depends on where it was written, so segments are written independently
(batched, on workers, appended later) and still read as one memory.

Slots have no output of their own, so a separator (the tokenizer's end-of-text token) follows the
memory; its next-token prediction is the text's first token, scored like every other during the write.

Only models whose every layer is full attention with standard RoPE qualify (a sliding window would
evict the slots; latent attention or state-space layers have no per-head keys to hold): checked once
per model by rotating a token's keys from one position to another and comparing with the model's own.
"""

from __future__ import annotations

import sys
import weakref

import torch

from gradmem_cli.lm import cache
from gradmem_cli.lm.cache import Context, Host
from gradmem_cli.lm.spaces.base import MemorySpace


def _shape(lm: Host) -> tuple[int, int, int]:
    from gradmem_cli.lm.fingerprint import model_shape

    shape = model_shape(lm.model.config)
    return shape["layers"], shape["kv_heads"], shape["head_dim"]


class _Rope:
    """The model's own rotary embedding and its rotation function, to place stored keys."""

    def __init__(self, lm: Host):
        self.rotary = next((m for name, m in lm.model.named_modules() if name.endswith("rotary_emb")), None)
        attention = next((m for m in lm.model.modules() if type(m).__name__.endswith("Attention")), None)
        module = sys.modules.get(type(attention).__module__) if attention is not None else None
        self.apply = getattr(module, "apply_rotary_pos_emb", None)

    def __call__(self, keys: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """``keys`` [B, H, n, d] rotated to ``positions`` [n] (or back from them with ``inverse``)."""
        cos, sin = self.rotary(keys, positions.to(keys.device)[None])
        _, rotated = self.apply(keys, keys, cos, -sin if inverse else sin)
        return rotated


class KVSpace(MemorySpace):
    name = "kv"
    help = "keys and values for every layer, put straight into the attention cache (few slots, few steps)"
    defaults = {"mem_tokens": 2, "segment_tokens": 256, "lr": 0.1, "schedule": "constant", "store_dtype": "bfloat16"}

    def __init__(self) -> None:
        # Per model, found once: why it cannot hold kv slots (None: it can), and its rotary embedding.
        self._checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._ropes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def width(self, shape: dict[str, int]) -> int:
        return shape["layers"] * 2 * shape["kv_heads"] * shape["head_dim"]

    def lead_ids(self, lm: Host) -> list[int]:
        tok = lm.tokenizer
        sep = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        return [] if sep is None else [int(sep)]

    def _rope(self, lm: Host) -> _Rope:
        if lm.model not in self._ropes:
            self._ropes[lm.model] = _Rope(lm)
        return self._ropes[lm.model]

    def refusal(self, lm: Host) -> str | None:
        if lm.model not in self._checked:
            self._checked[lm.model] = self._check(lm)
        return self._checked[lm.model]

    def _check(self, lm: Host) -> str | None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        config = lm.model.config
        kinds = {type(layer).__name__ for layer in DynamicCache(config=config).layers}
        if kinds - {DynamicLayer.__name__}:
            return f"its cache has {', '.join(sorted(kinds))} layers (sliding-window or other attention would evict the slots)"
        if not self.lead_ids(lm):
            return "its tokenizer has no end-of-text token to separate the memory from the text"
        rope = self._rope(lm)
        if rope.rotary is None or rope.apply is None:
            return "it has no standard rotary position embedding to place the slots with"
        layers, heads, dim = _shape(lm)
        token = torch.tensor([[self.lead_ids(lm)[0]]], device=lm.device)
        caches = []
        for position in (3, 9):
            cache = DynamicCache(config=config)
            with torch.no_grad():
                lm.model(input_ids=token, position_ids=torch.tensor([[position]], device=lm.device), cache=cache,
                         use_cache=True)
            caches.append(cache)
        tolerance = 1e-3 if lm.dtype == torch.float32 else 3e-2
        for layer in range(layers):
            (k3, v3), (k9, v9) = [(c.layers[layer].keys, c.layers[layer].values) for c in caches]
            if tuple(k3.shape) != (1, heads, 1, dim) or tuple(v3.shape) != (1, heads, 1, dim):
                return f"its layer {layer} caches keys of shape {tuple(k3.shape)}, not per-head keys (1, {heads}, 1, {dim})"
            with torch.no_grad():
                moved = rope(rope(k3.float(), torch.tensor([3]), inverse=True), torch.tensor([9]))
            scale = k9.float().abs().max().clamp(min=1e-6)
            if (moved - k9.float()).abs().max() > tolerance * scale or (v3 - v9).abs().max() > tolerance * scale:
                return "its keys do not follow standard rotary position embedding"
        return None

    def _split(self, lm: Host, memory: torch.Tensor) -> torch.Tensor:
        """[B, n, width] -> [layers, 2, B, heads, n, dim] in the model's dtype."""
        layers, heads, dim = _shape(lm)
        rows, n, _ = memory.shape
        return memory.to(lm.device, lm.dtype).reshape(rows, n, layers, 2, heads, dim).permute(2, 3, 0, 4, 1, 5)

    def tokens_start(self, lm: Host, ids: list[int], m: int) -> torch.Tensor:
        """The keys (unrotated) and values of the segment's first m tokens (cycled if shorter), as the
        model computes them right after the prefix."""
        cycled = [ids[i % len(ids)] for i in range(m)]
        ctx = cache.start(lm)
        first = ctx.position
        with torch.no_grad():
            cache.extend(lm, ctx, torch.tensor([cycled], device=lm.device), keep=1)
        positions = torch.arange(first, first + m)
        rope = self._rope(lm)
        parts = []
        for layer in ctx.cache.layers:
            keys = rope(layer.keys[:, :, first:].float(), positions, inverse=True)
            parts.append(torch.stack([keys, layer.values[:, :, first:].float()]))  # [2, 1, H, m, d]
        # [layers, 2, 1, H, m, d] -> [m, layers, 2, H, d] -> [m, width]
        return torch.stack(parts)[:, :, 0].permute(3, 0, 1, 2, 4).reshape(m, -1).clone()

    def random_start(self, lm: Host, ids: list[int], m: int, generator: torch.Generator) -> torch.Tensor:
        """Noise with, per layer, the std of the keys (and of the values) of the token start."""
        start = self.tokens_start(lm, ids, m).reshape(m, _shape(lm)[0], 2, -1)
        spread = start.std(dim=(0, 3), keepdim=True).cpu()
        return (torch.randn(start.shape, generator=generator) * spread).reshape(m, -1).to(start.device)

    def _with_slots(self, lm: Host, memory: torch.Tensor) -> Context:
        """The prefix's cache with every row's slots appended at the positions after it."""
        ctx = cache.start(lm, memory.shape[0])
        positions = torch.arange(ctx.position, ctx.position + memory.shape[1])
        rope = self._rope(lm)
        for layer, (keys, values) in enumerate(self._split(lm, memory)):
            ctx.cache.update(rope(keys, positions), values, layer)
        ctx.position += memory.shape[1]
        return ctx

    def logits(self, lm: Host, memory: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor | None,
               head: torch.nn.Module | None = None) -> torch.Tensor:
        """One forward of ``[separator; ids[:, :-1]]`` on top of the slots' cache."""
        if head is not None:
            raise ValueError("a write head reads embedding memories only")
        if memory is None:
            raise ValueError("the kv space reads a memory (use the embedding space's framing without one)")
        ctx = self._with_slots(lm, memory)
        lead = torch.tensor([self.lead_ids(lm)] * ids.shape[0], dtype=torch.long, device=lm.device)
        inputs = torch.cat([lead, ids[:, :-1].to(lm.device)], dim=1)
        if mask is not None:
            mask = torch.cat([torch.ones_like(lead, dtype=torch.bool), mask[:, :-1].to(lm.device)], dim=1)
        logits = cache.extend(lm, ctx, inputs, mask)
        return logits[:, lead.shape[1] - 1:]

    def context(self, lm: Host, memory: torch.Tensor | None, before: list[int] | None = None) -> Context:
        if before:
            raise ValueError("a kv memory is read before the prompt, not inside it")
        if memory is None:
            return cache.start(lm)
        ctx = self._with_slots(lm, memory)
        cache.extend(lm, ctx, torch.tensor([self.lead_ids(lm)] * memory.shape[0], device=lm.device), keep=1)
        return ctx
