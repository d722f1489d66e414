"""`correctness`: 1.0 when the task's own `is_correct` accepts the completion, else 0.0.

The same check the filter keeps paths by and evaluate scores students by (an answer the check cannot
decide, `Verdict.UNVERIFIABLE`, is not correct), so RL optimises exactly what evaluation measures.
"""

from __future__ import annotations

from qrdistill.rl.rewards.base import RewardContext, RewardValue, TaskRecord, reward, task_for


@reward("correctness")
def correctness(
    prompt: str, completion: str, record: TaskRecord, reference: str | None, ctx: RewardContext | None = None
) -> RewardValue:
    ok = task_for(record.task).is_correct(completion, record.record)
    return RewardValue(1.0 if ok else 0.0)
