"""The RL reward: the weighted sum of the reward terms, with each term's value for logging.

    R = sum_k w_k * r_k(prompt, completion, record, reference),   r_k in [0, 1]

over the terms of `qrdistill.config.rl.RewardWeights` (correctness, format, structure); a term of
weight 0 is not computed (its reward-model calls are not paid).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qrdistill.rl.rewards.base import RewardContext, RewardValue, TaskRecord


@dataclass(frozen=True)
class TotalReward:
    total: float
    terms: dict[str, float]
    #: terms whose value came with a reason (a failed extraction, an unparseable verdict, no reference)
    reasons: dict[str, str]
    failed: tuple[str, ...] = ()


def _weights(weights: Any) -> dict[str, float]:
    if isinstance(weights, Mapping):
        return {str(k): float(v) for k, v in weights.items()}
    inner = getattr(weights, "weights", weights)  # a RewardConfig or its RewardWeights
    return {k: float(v) for k, v in inner.model_dump().items()}


def total_reward(
    prompt: str, completion: str, record: TaskRecord, reference: str | None, weights: Any,
    ctx: RewardContext | None = None,
) -> TotalReward:
    """`weights`: a `RewardConfig`, its `RewardWeights`, or a mapping of reward name -> weight."""
    from qrdistill.rl.rewards import REWARDS

    terms: dict[str, float] = {}
    reasons: dict[str, str] = {}
    failed: list[str] = []
    total = 0.0
    for name, w in _weights(weights).items():
        rw = REWARDS.get(name, f"rl.rewards.weights.{name}")
        if w == 0:
            continue
        v: RewardValue = rw.detail(prompt, completion, record, reference, ctx)
        terms[name] = v.value
        if v.reason:
            reasons[name] = v.reason
        if v.failed:
            failed.append(name)
        total += w * v.value
    return TotalReward(total, terms, reasons, tuple(failed))


__all__ = ["TotalReward", "total_reward"]
