"""The ``.gmem`` memory file: safetensors holding the memory vectors and string metadata.

Layout (format 2.x, documented in docs/format.md; 1.x files are embedding memories and still read):

- tensor ``memory``: float32, float16 or bfloat16, shape ``[segments, mem_tokens, width]``, a slot's
  width set by the memory ``space`` (``hidden_size`` for embed; keys and values of every layer for kv);
- ``__metadata__``: one string per :class:`MemoryHeader` field. Strings are stored as they are;
  numbers, lists and objects as JSON.

The source text is never stored. Files are written to a temporary name and renamed, so an
interrupted write leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import torch

from gradmem_cli.errors import GradmemError, shown
from gradmem_cli.lm.dtypes import DTYPES
from gradmem_cli.lm.spaces import SPACES
from gradmem_cli.fileio import FileState, atomic_write_bytes, check_regular_file, loads_json, open_safetensors

FORMAT_NAME = "gradmem.memory"
FORMAT_VERSION = "2.0"
READS = (1, 2)  # major versions this gradmem reads: 1.x files hold embedding memories


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
    mem_tokens: int  # m: slots per segment
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
    space: str = "embed"  # where the slots enter the model (lm/spaces); 1.x files have none: embed
    format: str = FORMAT_NAME
    format_version: str = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # room for later minor versions

    @property
    def segments(self) -> int:
        return len(self.tokens_per_segment)

    @property
    def width(self) -> int:
        """Numbers per slot."""
        return SPACES[self.space].width(self.model_shape)

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
                raise GradmemError(f"{name}: corrupt .gmem (missing '{f.name}')")
            raw = meta[f.name]
            if hints[f.name] is str:
                values[f.name] = raw
            else:
                try:
                    values[f.name] = loads_json(raw)
                except ValueError:  # not JSON, NaN or Infinity, too deep, a number too long
                    raise GradmemError(f"{name}: corrupt .gmem ('{f.name}' is not valid JSON)") from None
        return cls(**values)


# Bounds on what a header may claim. A .gmem is untrusted input: a size read from it drives
# allocations and generation lengths, so every one is checked before it is used.
MAX_TOKENS = 1 << 20  # per segment; a model's own window bounds it further when it is read
MAX_SIZE = 1 << 16  # memory vectors per segment, hidden size, layers, heads
MAX_SEGMENTS = 1 << 20
_DTYPE_NAMES = tuple(DTYPES)


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ints(values: Any, count: int, lo: int, hi: int) -> bool:
    return isinstance(values, list) and len(values) == count and all(_is_int(v, lo, hi) for v in values)


def header_problem(h: MemoryHeader) -> str | None:
    """What is wrong with a header's values (types, ranges, agreement between fields), or None.

    The checks follow docs/format.md; the loader turns a problem into one "corrupt .gmem" error.
    """
    strings = ("gradmem_version", "created_at", "model_id", "tokenizer_fingerprint", "torch_version",
               "transformers_version")
    for name in strings:
        if not isinstance(getattr(h, name), str):
            return f"'{name}' must be a string"
    if h.space not in SPACES:
        return f"'space' must be one of {', '.join(SPACES)}"
    n = len(h.tokens_per_segment) if isinstance(h.tokens_per_segment, list) else -1
    fp, shape, source = h.model_fingerprint, h.model_shape, h.source
    checks = [
        (h.dtype in _DTYPE_NAMES, f"'dtype' must be one of {', '.join(_DTYPE_NAMES)}"),
        (isinstance(fp, dict) and isinstance(fp.get("config"), str) and isinstance(fp.get("tokenizer"), str)
         and isinstance(fp.get("embedding"), list) and 0 < len(fp["embedding"]) <= 64
         and all(_is_number(x) for x in fp["embedding"]),
         "'model_fingerprint' must hold config and tokenizer strings and an embedding list of numbers"),
        (isinstance(shape, dict) and all(_is_int(shape.get(k), 1, MAX_SIZE)
                                         for k in ("layers", "kv_heads", "head_dim", "hidden")),
         f"'model_shape' must hold layers, kv_heads, head_dim and hidden in 1..{MAX_SIZE}"),
        (_is_int(h.hidden_size, 1, MAX_SIZE), f"'hidden_size' must be an integer in 1..{MAX_SIZE}"),
        (_is_int(h.mem_tokens, 1, MAX_SIZE), f"'mem_tokens' must be an integer in 1..{MAX_SIZE}"),
        (_is_int(h.segment_tokens, 1, MAX_TOKENS), f"'segment_tokens' must be an integer in 1..{MAX_TOKENS}"),
        (1 <= n <= MAX_SEGMENTS, "'tokens_per_segment' must be a non-empty list (a memory has one segment or more)"),
        (_ints(h.tokens_per_segment, n, 1, h.segment_tokens if _is_int(h.segment_tokens, 1, MAX_TOKENS) else 0),
         "'tokens_per_segment' must be integers from 1 to 'segment_tokens'"),
        (isinstance(h.prefix_ids, list) and len(h.prefix_ids) <= 16
         and all(_is_int(i, 0, 1 << 31) for i in h.prefix_ids), "'prefix_ids' must be at most 16 token ids"),
        (isinstance(h.write, dict) and isinstance(h.extra, dict), "'write' and 'extra' must be objects"),
        (_ints(h.steps, n, 0, 1 << 31) and _ints(h.kept_step, n, 0, 1 << 31),
         "'steps' and 'kept_step' must be one non-negative integer per segment"),
        (isinstance(h.final_loss, list) and len(h.final_loss) == n and all(_is_number(x) for x in h.final_loss),
         "'final_loss' must be one number per segment"),
        (isinstance(h.accuracy, list) and len(h.accuracy) == n
         and all(_is_number(x) and 0 <= x <= 1 for x in h.accuracy), "'accuracy' must be one number in [0, 1] per segment"),
        (isinstance(source, dict) and isinstance(source.get("name"), str) and isinstance(source.get("sha256"), str)
         and _is_int(source.get("bytes"), 0, 1 << 62) and _is_int(source.get("tokens"), 1, MAX_TOKENS * MAX_SEGMENTS),
         "'source' must hold name, sha256, bytes and tokens"),
    ]
    for ok, reason in checks:
        if not ok:
            return reason
    if shape["hidden"] != h.hidden_size:
        return "'model_shape.hidden' differs from 'hidden_size'"
    if source["tokens"] != sum(h.tokens_per_segment):
        return "'source.tokens' differs from the sum of 'tokens_per_segment'"
    return None


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


def save(path: Path, memory: torch.Tensor, header: MemoryHeader, expected: FileState | None | bool = True) -> int:
    """Save a memory file atomically; returns its size in bytes.

    ``expected`` is what the caller found at ``path`` before writing (see
    :func:`fileio.atomic_write_bytes`): the save fails rather than replace a file that appeared or
    changed since.
    """
    from safetensors.torch import save

    if memory.dim() != 3 or memory.shape[0] != header.segments:
        raise ValueError(f"memory shape {tuple(memory.shape)} does not match {header.segments} segments")
    if memory.dtype not in DTYPES.values():
        raise ValueError(f"memory dtype {memory.dtype} cannot be stored")
    data = save({"memory": memory.detach().to("cpu").contiguous()}, metadata=header.to_metadata())
    try:
        atomic_write_bytes(Path(path), data, expected)
    except OSError as exc:
        raise GradmemError(f"cannot write {path}: {exc.strerror or exc}") from None
    return len(data)


def is_memory_file(path: Path) -> bool:
    """Whether ``path`` is a regular file whose safetensors header says it is a ``.gmem``."""
    from safetensors import safe_open

    try:
        check_regular_file(path)
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("format") == FORMAT_NAME
    except Exception:  # not a file, unreadable, or not safetensors: not a memory file
        return False


def load(path: Path | str) -> MemoryFile:
    """Load and validate a ``.gmem``; every defect is a one-line :class:`GradmemError`."""
    path = Path(path)
    with open_safetensors(path, ".gmem file") as fh:
        meta = fh.metadata() or {}
        keys = list(fh.keys())
        if meta.get("format") != FORMAT_NAME:
            raise GradmemError(f"{path} is a safetensors file but not a gradmem memory (.gmem) file")
        version = meta.get("format_version")
        if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+", version):
            raise GradmemError(f"{path}: corrupt .gmem (no valid 'format_version')")
        if _major(version) not in READS:
            newer = _major(version) > max(READS)
            hint = "upgrade gradmem to read it" if newer else "it cannot be read by this gradmem"
            reads = " and ".join(f"{v}.x" for v in READS)
            raise GradmemError(f"{path} uses .gmem format {shown(version, 20)}; this gradmem reads {reads} ({hint})")
        if _major(version) == 1 and meta.get("space", "embed") != "embed":
            raise GradmemError(f"{path}: corrupt .gmem (a format 1.x file holds embedding memory only)")
        if keys != ["memory"]:
            raise GradmemError(f"{path}: corrupt .gmem (expected one tensor 'memory', found {shown(keys)})")
        header = MemoryHeader.from_metadata(meta, str(path))
        problem = header_problem(header)
        if problem:
            raise GradmemError(f"{path}: corrupt .gmem ({problem})")
        sliced = fh.get_slice("memory")
        dtype, shape = sliced.get_dtype(), tuple(sliced.get_shape())
        expected = (header.segments, header.mem_tokens, header.width)
        if dtype not in ("F32", "F16", "BF16"):
            raise GradmemError(f"{path}: corrupt .gmem (memory dtype {dtype}; expected F32, F16 or BF16)")
        if shape != expected:
            raise GradmemError(f"{path}: corrupt .gmem (memory shape {shape}, header says {expected})")
        memory = fh.get_tensor("memory")
    if not torch.isfinite(memory).all():
        raise GradmemError(f"{path}: corrupt .gmem (memory holds NaN or infinite values)")
    return MemoryFile(memory=memory, header=header, path=path)
