"""Routing figures from probabilities: mean P(route) with bootstrap intervals, the spread across styles,
and where the probabilities come from when the final router's are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from qrdistill.analysis import plots, tables

STUDENTS = ["stu-a", "stu-b"]


def path_rows(probs_by_style: dict[str, list[list[float]]], task: str = "t") -> list[dict]:
    return [{"path_key": f"{task}/{style}/{i}", "task": task, "style": style, "difficulty": 1 + i % 2, "probs": p,
             "students": STUDENTS}
            for style, ps in probs_by_style.items() for i, p in enumerate(ps)]


def test_mean_p_route_and_interval_on_a_hand_computed_case():
    rows = path_rows({"cot": [[0.2, 0.6], [0.4, 0.6]], "tot": [[0.7, 0.1]] * 3})
    got = {(r["style"], r["student"]): r for r in tables.route_probability_rows(rows, ("task", "style"))}
    assert set(got) == {("cot", "stu-a"), ("cot", "stu-b"), ("tot", "stu-a"), ("tot", "stu-b")}
    # Two paths at 0.2 and 0.4: resampled means are 0.2, 0.3 or 0.4 with chances 1/4, 1/2, 1/4, so the
    # 95% percentile interval is the whole [0.2, 0.4].
    assert got[("cot", "stu-a")]["mean"] == pytest.approx(0.3)
    assert (got[("cot", "stu-a")]["ci_low"], got[("cot", "stu-a")]["ci_high"]) == pytest.approx((0.2, 0.4))
    assert got[("cot", "stu-a")]["paths"] == 2
    # Paths that agree leave nothing to resample.
    assert (got[("tot", "stu-a")]["mean"], got[("tot", "stu-a")]["ci_low"], got[("tot", "stu-a")]["ci_high"]) \
        == pytest.approx((0.7, 0.7, 0.7))
    assert got[("tot", "stu-b")]["mean"] == pytest.approx(0.1)
    by_level = {(r["difficulty"], r["style"], r["student"]): r["mean"]
                for r in tables.route_probability_rows(rows, ("difficulty", "style"))}
    assert by_level[(1, "cot", "stu-a")] == pytest.approx(0.2) and by_level[(2, "cot", "stu-a")] == pytest.approx(0.4)


def test_spread_is_exactly_zero_for_a_random_router():
    rows = path_rows({s: [[0.5, 0.5]] * 7 for s in ("cot", "tot", "program")})
    spread = tables.route_spread(rows)
    assert [r["student"] for r in spread] == STUDENTS
    for r in spread:
        assert (r["spread"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)
        assert r["styles"] == 3 and r["top_style"] is None and r["bottom_style"] is None


def test_spread_measures_a_known_gap_between_styles():
    rows = path_rows({"cot": [[0.8, 0.5], [1.0, 0.5]], "tot": [[0.5, 0.5]] * 2, "program": [[0.1, 0.5], [0.3, 0.5]]})
    a, b = tables.route_spread(rows)
    # Style means 0.9, 0.5, 0.2: spread 0.7. Resampled, cot's mean lies in [0.8, 1.0] and program's in
    # [0.1, 0.3], so the interval lies in [0.5, 0.9].
    assert a["student"] == "stu-a" and a["spread"] == pytest.approx(0.7)
    assert 0.5 - 1e-9 <= a["ci_low"] < 0.7 < a["ci_high"] <= 0.9 + 1e-9
    assert (a["top_style"], a["bottom_style"]) == ("cot", "program")
    assert b["spread"] == 0.0
    # Per task: a second task with the gap reversed is its own row.
    rows += path_rows({"cot": [[0.1, 0.5]], "program": [[0.9, 0.5]]}, task="u")
    u = [r for r in tables.route_spread(rows) if r["task"] == "u" and r["student"] == "stu-a"]
    assert len(u) == 1 and u[0]["spread"] == pytest.approx(0.8) and u[0]["top_style"] == "program"


def test_route_inputs_prefer_the_final_router_then_logged_probs_then_hard_samples():
    final = path_rows({"cot": [[0.9, 0.1]]})
    log = [{"epoch": e, "step": e, "path_key": "t/cot/0", "task": "t", "style": "cot", "alpha": [1, 0],
            "probs": [0.6 + e / 10, 0.4], "students": STUDENTS} for e in (0, 1)]
    run = tables.RunLogs(Path("r"), routing=log, routing_final=final)
    assert tables.route_inputs(run) == (final, "final")
    run.routing_final = None
    rows, source = tables.route_inputs(run)
    assert source == "last_epoch" and [r["probs"] for r in rows] == [[0.7, 0.4]]
    run.routing = [{**r, "probs": None} for r in log]
    rows, source = tables.route_inputs(run)
    assert source == "hard" and [r["probs"] for r in rows] == [[1.0, 0.0]]
    # The hard-sample fallback's mean is the selection rate, and is labelled as such.
    mean = {r["student"]: r["mean"] for r in tables.route_probability_rows(rows, ("style",))}
    rate = {r["student"]: r["rate"] for r in tables.selection_rates(run.routing, ("style",))}
    assert mean == rate == {"stu-a": 1.0, "stu-b": 0.0}
    assert tables.ROUTE_SOURCES["hard"][0] == "selection rate (hard samples)"
    assert tables.ROUTE_SOURCES["final"][0] == tables.ROUTE_SOURCES["last_epoch"][0] == "mean P(route)"


def test_routing_figures_draw_error_bars_labelled_p_route():
    import matplotlib.pyplot as plt

    rows = tables.route_probability_rows(path_rows({"cot": [[0.2, 0.6], [0.4, 0.6]], "tot": [[0.7, 0.1]] * 3}))
    fig = plots.plot_routing_by_task(rows)
    labels = plots.figure_labels(fig)
    assert "P(route)" in labels["title"]
    ax = fig.axes[0]
    assert ax.get_ylabel() == "mean P(route)" and len(ax.patches) == 4
    # One error bar per bar: cot / stu-a spans [0.2, 0.4] around its 0.3.
    segments = [seg for c in ax.collections for seg in c.get_segments()]
    assert len(segments) == 4
    assert any(seg[0][1] == pytest.approx(0.2) and seg[1][1] == pytest.approx(0.4) for seg in segments)
    plt.close(fig)
    by_level = tables.route_probability_rows(path_rows({"cot": [[0.2, 0.6], [0.4, 0.6]]}), ("difficulty", "style"))
    fig = plots.plot_routing_by_difficulty(by_level, ylabel="selection rate (hard samples)")
    assert {ax.get_ylabel() for ax in fig.axes if ax.get_title()} == {"selection rate (hard samples)"}
    plt.close(fig)
