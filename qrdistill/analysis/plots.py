"""The paper's figures from table rows: mean P(route) per style (Fig. 4, 5) and sample efficiency (Fig. 6).

Every function returns the matplotlib Figure (so tests can inspect titles and
axis labels) and, given `path`, saves it as PNG. The Agg backend is used: no
display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path | None) -> Any:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def _grouped_bars(ax: Any, categories: list[Any], series: dict[str, list[float]],
                  intervals: dict[str, list[tuple[float, float]]] | None = None) -> None:
    """One bar group per category, one bar per series; `intervals` (low, high) per bar become error bars."""
    import numpy as np

    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        yerr = None
        if intervals is not None:
            lo_hi = intervals[label]
            yerr = [[max(0.0, v - lo) for v, (lo, _) in zip(values, lo_hi, strict=True)],
                    [max(0.0, hi - v) for v, (_, hi) in zip(values, lo_hi, strict=True)]]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=str(label), yerr=yerr, capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels([str(c) for c in categories], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)


def _route_panels(rows, panel: str, x: str, series: str, xlabel: str, ylabel: str, panel_width: float,
                  sort_x: bool):
    """Grouped bars of `route_probability_rows` rows: one panel per `panel` value, x = `x`, one bar per
    `series` value, height = mean, error bar = [ci_low, ci_high]."""
    plt = _plt()
    panels = list(dict.fromkeys(r[panel] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, value in zip(axes[0], panels, strict=True):
        sub = [r for r in rows if r[panel] == value]
        xs = list(dict.fromkeys(r[x] for r in sub))
        if sort_x:
            xs.sort(key=lambda v: (v is None, v))
        names = list(dict.fromkeys(r[series] for r in sub))
        cell = {(r[x], r[series]): r for r in sub}
        # A style a student never saw in this panel is drawn as an empty bar, not left out, so bars line up.
        empty = {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
        pick = {n: [cell.get((v, n), empty) for v in xs] for n in names}
        _grouped_bars(ax, xs, {n: [c["mean"] for c in cs] for n, cs in pick.items()},
                      {n: [(c["ci_low"], c["ci_high"]) for c in cs] for n, cs in pick.items()})
        ax.set_title(str(value))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[0][-1].legend(title=series, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_routing_by_task(rows: list[dict[str, Any]], path: str | Path | None = None, title: str | None = None,
                         ylabel: str = "mean P(route)"):
    """Fig. 4: one panel per task; x = reasoning style, one bar per student; y = mean P(route) with its interval."""
    fig = _route_panels(rows, "task", "style", "student", "reasoning style", ylabel, 4.5, sort_x=False)
    fig.suptitle(title or "Mean P(route) per style, task and student (cf. paper Fig. 4)")
    fig.tight_layout()
    return _save(fig, path)


def plot_routing_by_difficulty(rows: list[dict[str, Any]], path: str | Path | None = None, title: str | None = None,
                               ylabel: str = "mean P(route)"):
    """Fig. 5: one panel per student; x = difficulty level, one bar per style; y = mean P(route) with its interval."""
    fig = _route_panels(rows, "student", "difficulty", "style", "difficulty level", ylabel, 5.0, sort_x=True)
    fig.suptitle(title or "Mean P(route) per difficulty, style and student (cf. paper Fig. 5)")
    fig.tight_layout()
    return _save(fig, path)


def plot_sample_efficiency(rows: list[dict[str, Any]], path: str | Path | None = None, title: str | None = None):
    """Fig. 6: one panel per task; x = fraction of training questions; a line per method x student."""
    plt = _plt()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks, strict=True):
        sub = [r for r in rows if r["task"] == task and r["accuracy"] is not None]
        for method, student in dict.fromkeys((r["method"], r["student"]) for r in sub):
            pts = sorted((r["data_fraction"], r["accuracy"]) for r in sub
                         if r["method"] == method and r["student"] == student)
            ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=f"{method} / {student}")
        ax.set_title(str(task))
        ax.set_xlabel("training questions used (%)")
        ax.set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title or "Sample efficiency (cf. paper Fig. 6)")
    fig.tight_layout()
    return _save(fig, path)


def figure_labels(fig: Any) -> dict[str, Any]:
    """Title and axis labels of a figure (saved beside the PNGs so a report can be checked without images)."""
    return {
        "title": fig._suptitle.get_text() if fig._suptitle else "",
        "axes": [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                  "n_artists": len(ax.patches) + len(ax.lines)} for ax in fig.axes],
    }
