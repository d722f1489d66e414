"""Reward registry for the RL stage: `correctness`, `format`, `structure` (see each module).

Adding a reward: a module here with a detail function `(prompt, completion, record, reference, ctx) ->
RewardValue` decorated `@reward("<name>")`, imported below, and a weight field of that name in
`qrdistill.config.rl.RewardWeights`.
"""

from __future__ import annotations

from qrdistill.rl.rewards import answer_format, correctness, structure  # noqa: F401  (registration)
from qrdistill.rl.rewards.base import REWARDS, Reward, RewardContext, RewardValue, TaskRecord

__all__ = ["REWARDS", "Reward", "RewardContext", "RewardValue", "TaskRecord"]
