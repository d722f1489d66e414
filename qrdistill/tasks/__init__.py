"""Task registry. Importing this package registers the built-in tasks."""

from __future__ import annotations

from qrdistill.tasks import anli, arc, bigbench, gsm8k, math, procedural  # noqa: F401  (registration)
from qrdistill.tasks.base import TASKS, Record, Task


def get_task(name: str, field: str | None = None) -> Task:
    return TASKS.get(name, field)()


__all__ = ["TASKS", "Record", "Task", "get_task"]
