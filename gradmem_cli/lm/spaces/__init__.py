"""Memory spaces, by name: where a memory's slots enter the model (``gradmem write --space``).

Adding one: a module with a :class:`~gradmem_cli.lm.spaces.base.MemorySpace` subclass, and its line here.
"""

from __future__ import annotations

from gradmem_cli.lm.spaces.base import MemorySpace
from gradmem_cli.lm.spaces.embed import EmbedSpace
from gradmem_cli.lm.spaces.kv import KVSpace

SPACES: dict[str, MemorySpace] = {s.name: s for s in (EmbedSpace(), KVSpace())}
