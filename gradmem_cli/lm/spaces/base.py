"""What a memory space is: where a memory's slots enter the model, and the geometry every path shares.

A memory is ``m`` slots per segment, each a vector of :meth:`MemorySpace.width` numbers; a file
stores them as ``[segments, m, width]``. The space decides what a slot means to the model:

- ``embed``: a vector in the input-embedding space, read as if it were a token's embedding;
- ``kv``: for every layer, one key and one value per KV head, put straight into the attention cache.

Geometry, the same in both spaces (a segment's write, its rebuild and reader training see exactly
what ``ask`` gives them): ``[prefix; slots; lead; tokens]``, where ``prefix`` is the special tokens the
tokenizer puts before a text (a BOS, if any), the slots take the positions after it (several segments'
slots in text order), and ``lead`` is what the space puts between the memory and the text so that
the first token is predicted by the model from the memory (nothing for ``embed``: the last slot
predicts it; a separator token for ``kv``, whose slots have no output of their own).

Adding a space: a module with a :class:`MemorySpace` subclass and its line in ``spaces/__init__.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from gradmem_cli.lm.cache import Context, Host


class MemorySpace:
    """Base class; subclasses set ``name`` and ``help`` and implement the methods below."""

    name: str
    help: str
    # Write defaults for a plain LM when the user leaves a setting unset (see WriteConfig.resolve).
    defaults: dict[str, Any]

    def width(self, shape: dict[str, int]) -> int:
        """Numbers per slot for a model of this shape (``fingerprint.model_shape``)."""
        raise NotImplementedError

    def refusal(self, lm: Host) -> str | None:
        """Why this model cannot hold a memory in this space, or None (checked once per model)."""
        return None

    def lead_ids(self, lm: Host) -> list[int]:
        """Tokens the model reads between the memory and what follows it."""
        return []

    def tokens_start(self, lm: Host, ids: list[int], m: int) -> torch.Tensor:
        """The token start [m, width] of a segment: its first m tokens (cycled if shorter) as slots."""
        raise NotImplementedError

    def random_start(self, lm: Host, ids: list[int], m: int, generator: torch.Generator) -> torch.Tensor:
        """A random start [m, width]: Gaussian noise with the spread the space's slots have."""
        raise NotImplementedError

    def logits(self, lm: Host, memory: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor | None,
               head: torch.nn.Module | None = None) -> torch.Tensor:
        """Logits [B, L, V]: position j predicts ``ids[:, j]`` from ``[prefix; memory; lead; ids[:, :j]]``.
        ``memory`` is [B, n, width] (several segments' slots concatenated along n) or None."""
        raise NotImplementedError

    def context(self, lm: Host, memory: torch.Tensor | None, before: list[int] | None = None) -> Context:
        """The model after reading ``[prefix; before; memory; lead]`` (each row of ``memory`` [B, n, width]
        its own sequence), for generation and teacher-forced checks. ``before`` places prompt tokens
        ahead of the memory (the embedding space only)."""
        raise NotImplementedError
