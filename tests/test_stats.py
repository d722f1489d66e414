"""Paired comparisons of two systems on the same questions (qrdistill.evaluation.metrics)."""

from __future__ import annotations

import math
import random

import pytest

from qrdistill.evaluation.metrics import bootstrap_ci, compare_paired, mcnemar_exact, paired_bootstrap_diff


def discordant(a_only: int, b_only: int, both: int = 0, neither: int = 0) -> tuple[list[bool], list[bool]]:
    """Outcomes with the given counts of each (a, b) pair, interleaved so order cannot matter."""
    pairs = (
        [(True, False)] * a_only
        + [(False, True)] * b_only
        + [(True, True)] * both
        + [(False, False)] * neither
    )
    random.Random(len(pairs)).shuffle(pairs)
    return [x for x, _ in pairs], [y for _, y in pairs]


# ---------------------------------------------------------------- McNemar


def test_mcnemar_hand_computed():
    a, b = discordant(7, 1, both=1, neither=1)
    # 2 * (C(8,0) + C(8,1)) / 2^8; the two concordant questions carry no evidence.
    assert mcnemar_exact(a, b) == {"n": 10, "a_only": 7, "b_only": 1, "p_value": 0.0703125}
    assert mcnemar_exact(b, a) == {"n": 10, "a_only": 1, "b_only": 7, "p_value": 0.0703125}
    assert mcnemar_exact(*discordant(0, 5))["p_value"] == 2 / 32
    assert mcnemar_exact(*discordant(6, 2))["p_value"] == 2 * (1 + 8 + 28) / 256
    assert mcnemar_exact(*discordant(1, 9, both=40))["p_value"] == 2 * (1 + 10) / 1024


def test_mcnemar_without_discordant_pairs_is_one():
    a, b = discordant(0, 0, both=6, neither=4)
    assert mcnemar_exact(a, b) == {"n": 10, "a_only": 0, "b_only": 0, "p_value": 1.0}
    assert mcnemar_exact([], [])["p_value"] == 1.0


def test_mcnemar_symmetric_is_one():
    # 2 * P(X <= 3) for X ~ Bin(6, 1/2) is 2 * 42/64 > 1.
    assert mcnemar_exact(*discordant(3, 3, both=2))["p_value"] == 1.0
    # 2 * P(X <= 4) for X ~ Bin(9, 1/2) is exactly 1: one question apart is no evidence.
    assert mcnemar_exact(*discordant(5, 4))["p_value"] == 1.0


def test_mcnemar_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for a_only, b_only in [(12, 3), (0, 1), (30, 41), (200, 160)]:
        want = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
        assert mcnemar_exact(*discordant(a_only, b_only))["p_value"] == pytest.approx(want, rel=1e-9)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        mcnemar_exact([True, False, True], [True, False])
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_diff([True], [True, False])
    with pytest.raises(ValueError, match="differ in length"):
        compare_paired([True], [])
    with pytest.raises(ValueError, match="clusters has 1 ids for 2"):
        paired_bootstrap_diff([True, False], [False, False], clusters=["q1"])


# ---------------------------------------------------------------- paired bootstrap


def test_identical_systems_differ_by_exactly_zero():
    a = [True, False, True, True, False] * 4
    got = paired_bootstrap_diff(a, list(a))
    assert got == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "confidence": 0.95}


def test_always_right_against_always_wrong_is_one():
    got = paired_bootstrap_diff([True] * 15, [False] * 15, confidence=0.9)
    assert got == {"diff": 1.0, "ci_low": 1.0, "ci_high": 1.0, "confidence": 0.9}


def test_interval_contains_the_diff_and_is_seeded():
    a, b = discordant(12, 4, both=20, neither=14)
    got = paired_bootstrap_diff(a, b, seed=3)
    assert got["diff"] == pytest.approx((12 - 4) / 50)
    assert got["ci_low"] < got["diff"] < got["ci_high"]
    assert paired_bootstrap_diff(a, b, seed=3) == got
    assert paired_bootstrap_diff(a, b, seed=4) != got


def test_questions_move_together():
    # b equals a except on four questions: the difference is known far better than either
    # accuracy, which only a resampling that keeps a question's two outcomes together sees.
    a, b = discordant(3, 1, both=48, neither=48)
    paired = paired_bootstrap_diff(a, b)
    lo, hi = bootstrap_ci(a)
    # Resampled apart, the difference of two accuracies would vary about 1.4 times as much as one.
    assert paired["ci_high"] - paired["ci_low"] < (hi - lo) / 2


def test_seeds_of_a_question_are_drawn_together():
    a, b = discordant(9, 3, both=10, neither=8)
    qids = [f"q{i}" for i in range(len(a))]
    one_seed = paired_bootstrap_diff(a, b)
    # Two seeds with the same outcomes, laid out seed by seed as evaluation writes them.
    two = paired_bootstrap_diff(a + a, b + b, clusters=qids + qids)
    assert two == one_seed
    # Taken as independent rows, the copies would pass for twice the evidence.
    rows = paired_bootstrap_diff(a + a, b + b)
    assert rows["diff"] == one_seed["diff"]
    assert rows["ci_high"] - rows["ci_low"] < two["ci_high"] - two["ci_low"]


def test_one_cluster_is_drawn_whole():
    # Every resample draws the only question with all its rows: the sample itself.
    a, b = discordant(5, 2, both=3)
    got = paired_bootstrap_diff(a, b, clusters=["q"] * len(a))
    assert got["ci_low"] == got["ci_high"] == pytest.approx(got["diff"]) == pytest.approx(0.3)


def test_no_rows_have_no_interval():
    got = paired_bootstrap_diff([], [])
    assert all(math.isnan(got[k]) for k in ("diff", "ci_low", "ci_high"))


# ---------------------------------------------------------------- combined


def test_compare_paired_combines_both():
    a, b = discordant(7, 1, both=1, neither=1)
    got = compare_paired(a, b, seed=5)
    assert got == {
        "n": 10,
        "accuracy_a": 0.8,
        "accuracy_b": 0.2,
        **paired_bootstrap_diff(a, b, seed=5),
        "a_only": 7,
        "b_only": 1,
        "p_value": 0.0703125,
    }
    assert got["diff"] == pytest.approx(0.6)


def test_compare_paired_gives_no_exact_p_for_seeds():
    a, b = discordant(7, 1, both=1, neither=1)
    qids = list(range(10))
    got = compare_paired(a + a, b + b, clusters=qids + qids)
    assert got["p_value"] is None
    assert (got["a_only"], got["b_only"], got["n"]) == (14, 2, 20)
    assert got["ci_low"] == paired_bootstrap_diff(a, b)["ci_low"]
