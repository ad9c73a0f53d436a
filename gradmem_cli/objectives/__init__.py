"""WRITE objectives, by name: what the test-time optimiser makes a memory good for.

Adding one: a module with an :class:`~gradmem_cli.objectives.base.Objective` subclass, and its
line here.
"""

from __future__ import annotations

from gradmem_cli.objectives.base import Objective
from gradmem_cli.objectives.distill import Distill
from gradmem_cli.objectives.mix import Mix
from gradmem_cli.objectives.reconstruct import Reconstruct

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (Reconstruct(), Distill(), Mix())}
