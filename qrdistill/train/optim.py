"""Optimizer param groups and their learning-rate schedules, spelled out per group.

One AdamW with a group per student (its own LoRA learning rate), one for the
router and one for the mutual head. Each group carries a `kind` that picks its
schedule: the students and the mutual head warm up and decay with
`train.scheduler`; the router is constant by default (`train.router.schedule`),
because a short run's warmup and decay leave a router almost no steps at full
rate, and routing must move within the demo's few dozen steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def build_param_groups(students, specs, router, mutual, tc) -> list[dict[str, Any]]:
    """One dict per group: params, lr, weight_decay, `group` (a name for logs) and `kind` (schedule)."""
    groups: list[dict[str, Any]] = []
    for student, spec in zip(students, specs, strict=True):
        if not student.trainable:
            continue
        groups.append({"params": list(student.trainable_parameters()), "lr": spec.lr,
                       "weight_decay": tc.weight_decay, "group": f"student/{student.name}", "kind": "student"})
    if router is not None:
        groups.append({"params": [p for p in router.parameters() if p.requires_grad], "lr": tc.router.lr,
                       "weight_decay": 0.0, "group": "router",
                       "kind": "student" if tc.router.schedule == "students" else "constant"})
    if mutual is not None:
        groups.append({"params": [p for p in mutual.parameters() if p.requires_grad], "lr": tc.mutual.lr,
                       "weight_decay": tc.weight_decay, "group": "mutual", "kind": "student"})
    return groups


def schedule_factor(kind: str, scheduler: str, step: int, warmup: int, total: int) -> float:
    """Multiplier of a group's base learning rate at `step` (LambdaLR convention: step 0 is the first)."""
    if kind == "constant":
        return 1.0
    if warmup > 0 and step < warmup:
        return step / warmup
    if scheduler == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if scheduler == "linear":
        return 1.0 - progress
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown scheduler {scheduler!r}")


def lr_lambdas(groups: list[dict[str, Any]], scheduler: str, warmup: int, total: int) -> list[Callable[[int], float]]:
    return [
        (lambda step, kind=g["kind"]: schedule_factor(kind, scheduler, step, warmup, total)) for g in groups
    ]


def build_optimizer(groups: list[dict[str, Any]], scheduler: str, warmup: int, total: int):
    """AdamW over `groups` and a LambdaLR giving each group its own schedule."""
    import torch

    optimizer = torch.optim.AdamW(groups)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(groups, scheduler, warmup, total))
