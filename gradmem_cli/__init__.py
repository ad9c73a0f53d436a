"""gradmem: write a document into a few memory vectors by test-time gradient descent.

The Python API (``load``, ``load_memory``, ``Gradmem``, ``Memory``; see :mod:`gradmem_cli.api`)
is imported on first use, so that ``gradmem --help`` does not pay for torch.
"""

from typing import Any

from gradmem_cli.version import __version__

_API = ("Gradmem", "GradmemError", "Memory", "UsageError", "load", "load_memory")
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from gradmem_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'gradmem_cli' has no attribute {name!r}")
