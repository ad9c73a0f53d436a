"""embed: slots are vectors in the input-embedding space (the paper's memory), read like token embeddings.

The last slot's output predicts the first token, so nothing sits between the memory and the text.
A trained writer's memory projection ``P`` (``lm.project``) applies wherever the slots enter; the
file stores the memory before it. :func:`frame` is the one place that assembles such inputs.
"""

from __future__ import annotations

import torch

from gradmem_cli.lm import cache
from gradmem_cli.lm.cache import Context, Host, upcast
from gradmem_cli.lm.spaces.base import MemorySpace


def frame(lm: Host, memory: torch.Tensor | None, ids: torch.Tensor | None = None, at: int = 0,
          after: torch.Tensor | None = None) -> torch.Tensor:
    """Input embeddings ``[prefix; ids[:, :at]; P(memory); ids[:, at:]; after]`` of shape [B, T, d].

    ``memory`` is [B, m, d] (several segments' vectors concatenated along m), or None.
    ``at`` places the memory after the first ``at`` tokens (default: right after the prefix);
    ``after`` appends vectors as they are (the trailing write slots of an RMT pass).
    """
    rows = (memory if memory is not None else ids if ids is not None else after).shape[0]
    parts = []
    if lm.prefix_ids:
        prefix = lm.embed(torch.tensor(lm.prefix_ids, dtype=torch.long))
        parts.append(prefix.unsqueeze(0).expand(rows, -1, -1))
    if ids is not None and at:
        parts.append(lm.embed(ids[:, :at]))
    if memory is not None:
        memory = memory.to(lm.device)
        parts.append((lm.project(memory) if lm.project is not None else memory).to(lm.dtype))
    if ids is not None and ids.shape[1] > at:
        parts.append(lm.embed(ids[:, at:]))
    if after is not None:
        parts.append(after.to(lm.dtype))
    return torch.cat(parts, dim=1)


class EmbedSpace(MemorySpace):
    name = "embed"
    help = "vectors in the input-embedding space, read like tokens (the paper's memory)"
    defaults = {"mem_tokens": 8, "segment_tokens": 64, "lr": 0.05, "schedule": "cosine", "store_dtype": "float32"}

    def width(self, shape: dict[str, int]) -> int:
        return shape["hidden"]

    def tokens_start(self, lm: Host, ids: list[int], m: int) -> torch.Tensor:
        weight = lm.model.get_input_embeddings().weight.detach()
        cycled = [ids[i % len(ids)] for i in range(m)]
        return weight[torch.tensor(cycled, device=weight.device)].float().clone()

    def random_start(self, lm: Host, ids: list[int], m: int, generator: torch.Generator) -> torch.Tensor:
        """Noise with the std of the embedding matrix (Cramming's start)."""
        weight = lm.model.get_input_embeddings().weight.detach()
        return (torch.randn(m, weight.shape[1], generator=generator) * weight.float().std().item()).to(weight.device)

    def logits(self, lm: Host, memory: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor | None,
               head: torch.nn.Module | None = None) -> torch.Tensor:
        """One forward of ``[prefix; P(memory); ids]``; ``head`` replaces the LM head (a learned
        writer's write head). With neither prefix nor memory, token 0 has nothing to be predicted
        from: its row is zeros."""
        embeds = frame(lm, memory, ids)
        length = ids.shape[1]
        before = embeds.shape[1] - length
        attention = None
        if mask is not None and not bool(mask.all()):
            ones = torch.ones((mask.shape[0], before), dtype=torch.long, device=mask.device)
            attention = torch.cat([ones, mask.long()], dim=1)
        keep = length + 1 if before else length
        if head is None:
            logits = lm.model(inputs_embeds=embeds, attention_mask=attention, use_cache=False,
                              logits_to_keep=keep).logits[:, :-1]
        else:
            hidden = lm.model.base_model(inputs_embeds=embeds, attention_mask=attention,
                                         use_cache=False).last_hidden_state
            logits = head(hidden[:, -keep:-1])
        if not before:
            logits = torch.cat([logits.new_zeros(logits.shape[0], 1, logits.shape[2]), logits], dim=1)
        return upcast(logits)

    def context(self, lm: Host, memory: torch.Tensor | None, before: list[int] | None = None) -> Context:
        if memory is None:
            return cache.start(lm, 1, before)
        ids = torch.tensor([before] * memory.shape[0], dtype=torch.long) if before else None
        return cache.prefill(lm, frame(lm, memory, ids, at=len(before or [])))
