"""Accuracy with a bootstrap confidence interval, paired comparisons of two systems
on the same questions, and the students' ensemble pick."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
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


def _paired(a: Sequence[bool], b: Sequence[bool]) -> tuple[list[bool], list[bool]]:
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)} (same questions in order)")
    return [bool(x) for x in a], [bool(x) for x in b]


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of two systems' correctness on the same questions.

    Only discordant questions carry evidence: under "equally good" each is
    a-only or b-only with probability 1/2, so the two-sided p is
    min(1, 2 * P(X <= min(a_only, b_only))) for X ~ Binomial(a_only + b_only, 1/2).
    The tail is summed exactly with `math.comb` (scipy is not a dependency).
    Rows must be independent questions; several seeds of one question are not.
    """
    a, b = _paired(a, b)
    a_only = sum(x and not y for x, y in zip(a, b, strict=True))
    b_only = sum(y and not x for x, y in zip(a, b, strict=True))
    m = a_only + b_only
    tail = sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1))
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": min(1.0, 2 * tail / 2**m)}


def paired_bootstrap_diff(
    a: Sequence[bool],
    b: Sequence[bool],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Sequence[Hashable] | None = None,
) -> dict[str, Any]:
    """Accuracy difference mean(a) - mean(b) with a percentile bootstrap interval.

    A question's two outcomes are resampled together, so what the systems get
    right in common cancels out of the interval, unlike two separate
    intervals. `clusters` gives each row a question id when rows hold several
    seeds of a question: whole questions are drawn, since seeds of one question
    are not independent evidence, and the interval is then as wide as the
    number of questions warrants. Seeded, so a report is reproducible; no rows
    give (nan, nan).
    """
    import numpy as np

    a, b = _paired(a, b)
    if clusters is not None and len(clusters) != len(a):
        raise ValueError(f"clusters has {len(clusters)} ids for {len(a)} paired outcomes")
    if not a:
        nan = float("nan")
        return {"diff": nan, "ci_low": nan, "ci_high": nan, "confidence": confidence}
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    # Clusters in order of first appearance; without ids each row is its own cluster.
    ids: dict[Hashable, int] = {}
    cid = np.array([ids.setdefault(c, len(ids)) for c in (range(len(a)) if clusters is None else clusters)])
    sums = np.bincount(cid, weights=d)
    sizes = np.bincount(cid).astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ids), size=(n_resamples, len(ids)))
    diffs = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(diffs, [alpha, 1.0 - alpha])
    return {"diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "confidence": confidence}


def compare_paired(
    a: Sequence[bool],
    b: Sequence[bool],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Sequence[Hashable] | None = None,
) -> dict[str, Any]:
    """System a against system b on the same questions, for a report:
    {n, accuracy_a, accuracy_b, diff, ci_low, ci_high, confidence, a_only, b_only, p_value}.

    With `clusters` the McNemar counts are over rows, but `p_value` is None:
    the exact test needs one independent pair per question, and several seeds
    of a question would make it overconfident; the cluster bootstrap interval
    is the comparison then.
    """
    test = mcnemar_exact(a, b)
    n = test["n"]
    return {
        "n": n,
        "accuracy_a": sum(bool(x) for x in a) / n if n else float("nan"),
        "accuracy_b": sum(bool(x) for x in b) / n if n else float("nan"),
        **paired_bootstrap_diff(a, b, n_resamples, confidence, seed, clusters),
        "a_only": test["a_only"],
        "b_only": test["b_only"],
        "p_value": test["p_value"] if clusters is None else None,
    }


def ensemble_pick(predictions: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per question, take the answer of the student most confident in its own output.

    `predictions` maps student -> prediction rows (qid, pred, correct, output,
    logprob{sum, mean}). Confidence is the log-probability of the student's
    generated text under that same student per character of the text: per
    character, so longer answers are not penalised, and not per token, since
    students with different tokenizers split one text into different numbers
    of tokens (Gemma's 262k-token vocabulary against SmolLM2's 49k) and a
    per-token mean would favour the finer tokenizer. Rows without the text
    fall back to the per-token mean. Only questions every student answered
    are picked; ties go to the first student in the mapping's order.
    """
    students = list(predictions)
    if len(students) < 2:
        raise ValueError("an ensemble pick needs at least two students")
    by_student = {s: {str(r["qid"]): r for r in rows} for s, rows in predictions.items()}
    common = [q for q in by_student[students[0]] if all(q in by_student[s] for s in students[1:])]
    picks = []
    for qid in common:
        best = max(students, key=lambda s: (_confidence(by_student[s][qid]), -students.index(s)))
        row = by_student[best][qid]
        picks.append({"qid": qid, "student": best, "pred": row.get("pred"), "correct": bool(row.get("correct"))})
    return picks


def _confidence(row: Mapping[str, Any]) -> float:
    """Log-probability per character of the generated text (per token when the row lacks the text)."""
    lp = row.get("logprob") or {}
    text = row.get("output")
    if isinstance(lp, Mapping) and lp.get("sum") is not None and text:
        return float(lp["sum"]) / len(text)
    value = lp.get("mean") if isinstance(lp, Mapping) else lp
    return float("-inf") if value is None else float(value)
