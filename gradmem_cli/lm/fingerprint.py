"""What identifies a model, and its shape.

Every loaded model carries a :class:`Fingerprint` (architecture config, tokenizer, a checksum of
the input-embedding matrix). Each ``.gmem`` records it and every reader checks it, so a memory is
never silently read by a model it was not written for.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

# Architecture fields that identify a model; volatile keys (paths, versions, dtype) are left out.
_CONFIG_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta",
    "rope_parameters", "tie_word_embeddings", "hidden_act", "rms_norm_eps", "layer_norm_eps",
    "n_embd", "n_layer", "n_head",
)


def _sha16(payload: str | bytes) -> str:
    data = payload.encode() if isinstance(payload, str) else payload
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class Fingerprint:
    """What identifies a model for reading a memory.

    ``config`` and ``tokenizer`` are hashes that must match exactly. ``embedding`` is a numeric
    signature of the input-embedding matrix (mean, std and four fixed random projections); it is
    compared with a tolerance so that the same weights loaded in float32, bfloat16 or float16
    still match, while different weights do not.
    """

    config: str
    tokenizer: str
    embedding: list[float]

    @property
    def short(self) -> str:
        return f"{self.config[:8]}/{self.tokenizer[:8]}"

    def mismatch(self, other: Fingerprint) -> str | None:
        """Why ``other`` is a different model, or None when it is the same one."""
        if self.config != other.config:
            return "architecture config differs"
        if self.tokenizer != other.tokenizer:
            return "tokenizer differs"
        a, b = self.embedding, other.embedding
        if len(a) != len(b):
            return "embedding checksum differs"
        std = max(abs(a[1]), 1e-12)
        if abs(a[0] - b[0]) > 0.01 * std or abs(a[1] - b[1]) > 0.01 * std:
            return "embedding weights differ"
        scale = a[2]
        for x, y in zip(a[3:], b[3:]):
            if abs(x - y) > 0.01 * scale:
                return "embedding weights differ"
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(config=str(data["config"]), tokenizer=str(data["tokenizer"]),
                   embedding=[float(x) for x in data["embedding"]])


def embedding_signature(weight: torch.Tensor) -> list[float]:
    """``[mean, std, scale, p1..p4]`` of the embedding matrix; see :class:`Fingerprint`."""
    w = weight.detach().to("cpu", torch.float64)
    vocab, dim = w.shape
    gen = torch.Generator().manual_seed(1234)
    proj_dirs = torch.randn(dim, 4, generator=gen, dtype=torch.float64)
    row_signs = torch.randn(vocab, 4, generator=gen, dtype=torch.float64)
    projections = (row_signs * (w @ proj_dirs)).sum(0)
    std = w.std().item()
    scale = std * math.sqrt(vocab * dim)  # the size of a projection of random weights
    values = [w.mean().item(), std, scale, *projections.tolist()]
    return [float(f"{v:.8g}") for v in values]


def config_hash(config: Any) -> str:
    """16 hex digits over the architecture fields of a model config (see :class:`Fingerprint`)."""
    cfg = config.to_dict()
    arch = {k: cfg[k] for k in _CONFIG_KEYS if k in cfg and cfg[k] is not None}
    return _sha16(json.dumps(arch, sort_keys=True, default=str))


def compute_fingerprint(model: torch.nn.Module, tokenizer: Any) -> Fingerprint:
    vocab = sorted(tokenizer.get_vocab().items())
    tok_id = {
        "vocab": vocab,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return Fingerprint(
        config=config_hash(model.config),
        tokenizer=_sha16(json.dumps(tok_id, sort_keys=True, default=str)),
        embedding=embedding_signature(model.get_input_embeddings().weight),
    )


def model_shape(config: Any) -> dict[str, int]:
    """Layer count, KV heads and head size: what the KV-cache size of a text depends on."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return {"layers": int(layers), "kv_heads": int(kv_heads), "head_dim": int(head_dim), "hidden": int(hidden)}


def kv_bytes_per_token(shape: dict[str, int], element_bytes: int) -> int:
    return 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * element_bytes
