"""Tasks, by name: what ``gradmem eval`` measures and ``gradmem train`` learns from.

Adding one: a module with a :class:`~gradmem_cli.tasks.base.Task` subclass, and its line here;
``gradmem eval`` takes its name, help and default answer length from the class.
"""

from __future__ import annotations

from gradmem_cli.errors import GradmemError
from gradmem_cli.tasks.babi import Babi
from gradmem_cli.tasks.base import Task
from gradmem_cli.tasks.kv import KV
from gradmem_cli.tasks.qa import QA, Squad
from gradmem_cli.tasks.recon import Recon

TASKS: dict[str, Task] = {t.name: t for t in (KV(), Babi(), Squad(), QA(), Recon())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise GradmemError(f"unknown task '{name}' (use {', '.join(TASKS)})") from None
