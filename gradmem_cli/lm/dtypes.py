"""The floating-point types gradmem runs models in and stores memories in, by name."""

from __future__ import annotations

import torch

from gradmem_cli.errors import GradmemError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise GradmemError(f"unknown dtype '{name}' (use {', '.join(DTYPES)})") from None


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)
