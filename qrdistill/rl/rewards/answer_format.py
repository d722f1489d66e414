"""`format`: 1.0 when the completion states a final answer line the task's strict extraction reads.

Strict means the answer the response commits to ("The answer is ...", "####", \\boxed), as
`AnswerScore.strict_pred` (evaluate's `strict_pred`); an answer found only by the flexible pass (the
last number anywhere) does not count. Whether that answer is right is `correctness`'s business.
"""

from __future__ import annotations

from qrdistill.rl.rewards.base import RewardContext, RewardValue, TaskRecord, reward, task_for


@reward("format")
def answer_format(
    prompt: str, completion: str, record: TaskRecord, reference: str | None, ctx: RewardContext | None = None
) -> RewardValue:
    score = task_for(record.task).score(completion, record.record)
    return RewardValue(1.0 if score.strict_pred is not None else 0.0)
