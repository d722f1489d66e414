"""Accuracy with a bootstrap confidence interval, and the students' ensemble pick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def bootstrap_ci(
    correct: Sequence[bool] | Sequence[float], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of 0/1 outcomes.

    Resamples the questions with replacement (seeded, so a report is
    reproducible). An empty list has no interval: (nan, nan).
    """
    import numpy as np

    x = np.asarray(correct, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def accuracy_summary(
    correct: Sequence[bool], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """{n, correct, accuracy, ci_low, ci_high, confidence} for one student on one task."""
    n = len(correct)
    k = int(sum(bool(c) for c in correct))
    lo, hi = bootstrap_ci([bool(c) for c in correct], n_resamples, confidence, seed)
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n if n else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "confidence": confidence,
    }


def ensemble_pick(predictions: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per question, take the answer of the student most confident in its own output.

    `predictions` maps student -> prediction rows (qid, pred, correct,
    logprob{mean}). Confidence is the mean token log-probability of the
    student's generated text under that same student, so longer answers are
    not penalised. Only questions every student answered are picked; ties go
    to the first student in the mapping's order.
    """
    students = list(predictions)
    if len(students) < 2:
        raise ValueError("an ensemble pick needs at least two students")
    by_student = {s: {str(r["qid"]): r for r in rows} for s, rows in predictions.items()}
    common = [q for q in by_student[students[0]] if all(q in by_student[s] for s in students[1:])]
    picks = []
    for qid in common:
        best = max(students, key=lambda s: (_mean_logprob(by_student[s][qid]), -students.index(s)))
        row = by_student[best][qid]
        picks.append({"qid": qid, "student": best, "pred": row.get("pred"), "correct": bool(row.get("correct"))})
    return picks


def _mean_logprob(row: Mapping[str, Any]) -> float:
    lp = row.get("logprob") or {}
    value = lp.get("mean") if isinstance(lp, Mapping) else lp
    return float("-inf") if value is None else float(value)
