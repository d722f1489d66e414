"""What every reward shares: the question it is scored against, its value and the registry.

A reward is a pure function `(prompt, completion, record, reference) -> float`:
- `prompt`: the text the student was given;
- `completion`: what the student generated (its reasoning path and answer line);
- `record`: a `TaskRecord`, the question (a `Record`) and the name of its task, so the reward uses the
  task's own checks (the ones the filter and evaluate use);
- `reference`: a kept teacher path for this question (only the structure reward reads it), or None.

Each reward is written as a *detail* function returning a `RewardValue` (the value and, when the value
is not a plain verdict, the reason), and registered as a `Reward`: calling a `Reward` returns the
float, `Reward.detail` the value with its reason (what `total_reward` logs). Dependencies that are not
data (the structure reward's step extractor) come in a `RewardContext`, keyword-only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qrdistill.registry import Registry
from qrdistill.tasks.base import Record

if TYPE_CHECKING:
    from qrdistill.rl.rewards.structure import StepExtractor
    from qrdistill.tasks.base import Task


@dataclass(frozen=True)
class TaskRecord:
    """A question and the name of the task it belongs to (the dataset's `task` and `record` columns)."""

    task: str
    record: Record

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TaskRecord:
        """From a row with `task` (a registered task name) and `record` (a `Record` or its dict)."""
        rec = row["record"]
        return cls(task=str(row["task"]), record=rec if isinstance(rec, Record) else Record.from_dict(rec))


@dataclass(frozen=True)
class RewardValue:
    """A reward's value and why, when the value is not just the verdict it names (a failed extraction, a
    missing reference, an unparseable verdict): never a silent 0."""

    value: float
    reason: str | None = None
    #: True when the value could not be computed as intended (an extractor or matcher failure).
    failed: bool = False


@dataclass
class RewardContext:
    """What rewards need besides data. `extractor`: the structure reward's step extractor (default: the
    offline `claims` extractor)."""

    extractor: StepExtractor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Detail = Callable[..., RewardValue]


@dataclass(frozen=True)
class Reward:
    """A registered reward: call it for the float, `detail` for the value with its reason."""

    name: str
    detail: Detail

    def __call__(
        self, prompt: str, completion: str, record: TaskRecord, reference: str | None,
        ctx: RewardContext | None = None,
    ) -> float:
        return self.detail(prompt, completion, record, reference, ctx).value


REWARDS: Registry[Reward] = Registry("reward")


def reward(name: str) -> Callable[[Detail], Detail]:
    """Register `fn(prompt, completion, record, reference, ctx) -> RewardValue` as reward `name`."""

    def deco(fn: Detail) -> Detail:
        REWARDS.add(name, Reward(name, fn))
        return fn

    return deco


@functools.cache
def task_for(name: str) -> Task:
    """The task instance (tasks are stateless; one per name is enough)."""
    from qrdistill.tasks import get_task

    return get_task(name, "task")
