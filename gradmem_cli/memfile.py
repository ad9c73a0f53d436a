"""The ``.gmem`` memory file: safetensors holding the memory vectors and string metadata.

Layout (format 1.x, documented in docs/format.md):

- tensor ``memory``: float32, float16 or bfloat16, shape ``[segments, mem_tokens, hidden_size]``;
- ``__metadata__``: one string per :class:`MemoryHeader` field. Strings are stored as they are;
  numbers, lists and objects as JSON.

The source text is never stored. Files are written to a temporary name and renamed, so an
interrupted write leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import torch

from gradmem_cli.errors import GradmemError
from gradmem_cli.fileio import atomic_write_bytes

FORMAT_NAME = "gradmem.memory"
FORMAT_VERSION = "1.0"
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class MemoryHeader:
    """Everything a ``.gmem`` says about its memory, besides the vectors themselves."""

    gradmem_version: str
    created_at: str  # ISO 8601, UTC
    model_id: str  # the --model value that wrote it: an alias, a Hugging Face id or an absolute path
    model_fingerprint: dict[str, Any]  # models.Fingerprint as a dict: config, tokenizer, embedding
    tokenizer_fingerprint: str  # also inside model_fingerprint; kept apart for readers and tools
    model_shape: dict[str, int]  # layers, kv_heads, head_dim, hidden: the KV-cache size of a token
    hidden_size: int
    dtype: str  # the model dtype used for writing (the memory's own dtype is the tensor's)
    mem_tokens: int  # m: vectors per segment
    segment_tokens: int  # the maximum tokens per segment the writer was asked for
    tokens_per_segment: list[int]
    prefix_ids: list[int]  # special tokens placed before the memory (the model's BOS, if any)
    write: dict[str, Any]  # the WriteConfig used: objective, optimizer, lr, schedule, init, seed...
    steps: list[int]  # optimisation steps run per segment
    kept_step: list[int]  # per segment, the step whose memory is stored (the best one seen)
    final_loss: list[float]  # write loss per segment, at the stored memory
    accuracy: list[float]  # teacher-forced token accuracy per segment, at the stored memory
    source: dict[str, Any]  # name, sha256, bytes, tokens of the source (never its text)
    torch_version: str
    transformers_version: str
    format: str = FORMAT_NAME
    format_version: str = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # room for later minor versions

    @property
    def segments(self) -> int:
        return len(self.tokens_per_segment)

    def to_metadata(self) -> dict[str, str]:
        out = {}
        for key, value in dataclasses.asdict(self).items():
            out[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return out

    @classmethod
    def from_metadata(cls, meta: dict[str, str], name: str) -> MemoryHeader:
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in meta:
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                    continue
                raise GradmemError(f"{name}: corrupt .gmem metadata (missing '{f.name}')")
            raw = meta[f.name]
            if hints[f.name] is str:
                values[f.name] = raw
            else:
                try:
                    values[f.name] = json.loads(raw)
                except json.JSONDecodeError:
                    raise GradmemError(f"{name}: corrupt .gmem metadata (field '{f.name}')") from None
        return cls(**values)


@dataclass
class MemoryFile:
    """A loaded ``.gmem``: the memory tensor ``[segments, m, d]`` and its header."""

    memory: torch.Tensor
    header: MemoryHeader
    path: Path | None = None


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return -1


def save(path: Path, memory: torch.Tensor, header: MemoryHeader) -> int:
    """Save a memory file atomically; returns its size in bytes."""
    from safetensors.torch import save

    if memory.dim() != 3 or memory.shape[0] != header.segments:
        raise ValueError(f"memory shape {tuple(memory.shape)} does not match {header.segments} segments")
    if memory.dtype not in STORE_DTYPES.values():
        raise ValueError(f"memory dtype {memory.dtype} cannot be stored")
    data = save({"memory": memory.detach().to("cpu").contiguous()}, metadata=header.to_metadata())
    try:
        atomic_write_bytes(Path(path), data)
    except OSError as exc:
        raise GradmemError(f"cannot write {path}: {exc.strerror or exc}") from None
    return len(data)


def load(path: Path | str) -> MemoryFile:
    """Load and validate a ``.gmem``; every defect is a one-line :class:`GradmemError`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise GradmemError(f"no such file: {path}")
    if not path.is_file():
        raise GradmemError(f"not a regular file: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = list(fh.keys())
            if meta.get("format") != FORMAT_NAME:
                raise GradmemError(f"{path} is a safetensors file but not a gradmem memory (.gmem) file")
            version = meta.get("format_version", "")
            if _major(version) != _major(FORMAT_VERSION):
                newer = _major(version) > _major(FORMAT_VERSION)
                hint = "upgrade gradmem to read it" if newer else "it cannot be read by this gradmem"
                raise GradmemError(
                    f"{path} uses .gmem format {version}; this gradmem reads {_major(FORMAT_VERSION)}.x ({hint})"
                )
            if keys != ["memory"]:
                raise GradmemError(f"{path}: corrupt .gmem (expected one tensor 'memory', found {keys})")
            memory = fh.get_tensor("memory")
    except GradmemError:
        raise
    except Exception as exc:  # safetensors raises several types for truncated or garbled files
        raise GradmemError(f"{path} is not a valid .gmem file (corrupt or truncated)") from exc
    header = MemoryHeader.from_metadata(meta, str(path))
    expected = (header.segments, header.mem_tokens, header.hidden_size)
    if tuple(memory.shape) != expected or memory.dtype not in STORE_DTYPES.values():
        raise GradmemError(f"{path}: corrupt .gmem (memory is {tuple(memory.shape)} {memory.dtype}, "
                           f"header says {expected})")
    if not torch.isfinite(memory).all():
        raise GradmemError(f"{path}: corrupt .gmem (memory holds NaN or infinite values)")
    return MemoryFile(memory=memory, header=header, path=path)
