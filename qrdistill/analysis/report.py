"""Assemble report.md (and report.html) with tables, CSVs and PNG plots from saved run logs.

A section whose artifact is missing in a run says which stage writes it;
`build_report` raises only when no section has anything to show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qrdistill.analysis import plots, tables
from qrdistill.errors import MissingArtifactError
from qrdistill.io import atomic_write_json, atomic_write_text


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _missing(what: str, stage: str, runs: list[tables.RunLogs]) -> str:
    names = ", ".join(str(r.path) for r in runs)
    return f"_No {what} in {names}: run `qrdistill {stage}` first._\n"


def runs_section(runs: list[tables.RunLogs]) -> str:
    lines = ["| run dir | method | stages run (git SHA) | seed | train questions used |", "|---|---|---|---|---|"]
    for r in runs:
        stages = []
        for stage in ("generate", "filter", "train", "evaluate"):
            m = r.meta.get(stage)
            if m:
                sha = (m.get("git_sha") or "unknown")[:10]
                stages.append(f"{stage} ({sha})")
        seeds = sorted({str(m.get("seed")) for m in r.meta.values() if m.get("seed") is not None})
        cfg_src = next((m.get("config_path") for m in r.meta.values() if m.get("config_path")), None)
        where = f"{r.path}" + (f" (config {cfg_src})" if cfg_src else "")
        lines.append(f"| {where} | {tables.METHOD_NAMES.get(r.method, r.method)} | {', '.join(stages) or 'none'} "
                     f"| {', '.join(seeds) or '–'} | {100 * r.data_fraction:.0f}% |")
    return "\n".join(lines) + "\n"


def build_report(run_dirs: list[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    paths = [Path(d) for d in run_dirs]
    if not paths:
        raise MissingArtifactError("no run directory given: pass --run-dir D (repeatable)")
    for p in paths:
        if not p.is_dir():
            raise MissingArtifactError(f"run directory {p} does not exist: run `qrdistill run` (or generate) first")
    runs = [tables.load_run(p) for p in paths]
    out = Path(out) if out is not None else paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    shown: dict[str, bool] = {}
    figures: dict[str, dict[str, Any]] = {}
    md = ["# QR-Distill report", "", "## Runs", "", runs_section(runs)]

    def figure(name: str, fig: Any) -> str:
        import matplotlib.pyplot as plt

        figures[name] = plots.figure_labels(fig)
        plt.close(fig)
        return f"![{name}]({name})\n"

    # Results in the paper's Table 1 layout.
    md += ["## Accuracy (zero-shot CoT, greedy; % with bootstrap interval)", ""]
    rows, task_cols = tables.results_rows(runs)
    if rows:
        atomic_write_text(out / "results.md", tables.results_markdown(rows, task_cols))
        atomic_write_text(out / "results.csv", tables.results_csv(rows, task_cols))
        md += [tables.results_markdown(rows, task_cols), "CSV: [results.csv](results.csv)", ""]
        shortcuts: dict[tuple[str, str], list[str]] = {}
        for r in runs:
            for task, values in ((r.eval_summary or {}).get("shortcut_baselines") or {}).items():
                text = ", ".join(f"{k} {100 * v:.1f}%" for k, v in values.items())
                shortcuts.setdefault((task, text), []).append(r.name)
        for (task, text), names in shortcuts.items():
            md.append(f"Answer-free shortcut baselines on {task} ({', '.join(names)}): {text}\n")
    lacking = [r for r in runs if r.eval_summary is None]
    if lacking:
        md.append(_missing("evaluation (eval/summary.json)", "evaluate", lacking))
    shown["results"] = bool(rows)

    # Routing (Fig. 4 and 5), last epoch of each run that routed.
    md += ["", "## Routing selection rates (last epoch)", "",
           "Selection rate = share of a style's paths the router assigned to the student."]
    routed = [r for r in runs if r.routing and r.routed]
    unrouted = [r.name for r in runs if r.train_summary is not None and not r.routed]
    if unrouted:
        md.append(f"_Trained without a router (every path to every student): {', '.join(unrouted)}._\n")
    for r in routed:
        by_task = tables.selection_rates(r.routing, ("task", "style"))
        slug = _slug(r.name)
        atomic_write_text(out / f"routing_by_task_{slug}.csv", tables.rows_csv(by_task))
        name = f"fig4_routing_by_task_{slug}.png"
        fig = plots.plot_routing_by_task(by_task, out / name, f"Routing selection rate per style ({r.name}, cf. Fig. 4)")
        md += ["", f"### {r.name}: per task and style (Fig. 4)", "", figure(name, fig),
               tables.rows_markdown(by_task, {"rate": lambda x: f"{x:.2f}"})]
        with_level = [x for x in r.routing if x.get("difficulty") is not None]
        if with_level:
            by_level = tables.selection_rates(with_level, ("difficulty", "style"))
            atomic_write_text(out / f"routing_by_difficulty_{slug}.csv", tables.rows_csv(by_level))
            name = f"fig5_routing_by_difficulty_{slug}.png"
            fig = plots.plot_routing_by_difficulty(
                by_level, out / name, f"Routing selection rate per difficulty ({r.name}, cf. Fig. 5)")
            md += [f"### {r.name}: per difficulty level and style (Fig. 5)", "", figure(name, fig),
                   tables.rows_markdown(by_level, {"rate": lambda x: f"{x:.2f}"})]
        else:
            md.append(f"_{r.name}: no difficulty levels in routing.jsonl (the task records carry none)._\n")
    lacking = [r for r in runs if not r.routing and r.train_summary is None and r.method != "zero_shot"]
    if lacking:
        md.append(_missing("routing log (train/routing.jsonl)", "train", lacking))
    shown["routing"] = bool(routed)

    # Sample efficiency (Fig. 6).
    md += ["", "## Sample efficiency (Fig. 6)", ""]
    eff = tables.sample_efficiency_rows(runs)
    if tables.has_sweep(eff):
        atomic_write_text(out / "sample_efficiency.csv", tables.rows_csv(eff))
        name = "fig6_sample_efficiency.png"
        md += [figure(name, plots.plot_sample_efficiency(eff, out / name)), "CSV: "
               "[sample_efficiency.csv](sample_efficiency.csv)", ""]
        shown["sample_efficiency"] = True
    else:
        md.append("_Needs evaluated runs of one method at two or more `train.data_fraction` values "
                  "(configs/sample_efficiency_*.yaml): run `qrdistill run` on them first._\n")
        shown["sample_efficiency"] = False

    # Training time (Table 3).
    md += ["", "## Training time per epoch (Table 3)", ""]
    trows = tables.time_rows(runs)
    if trows:
        atomic_write_text(out / "time_per_epoch.csv", tables.rows_csv(trows))
        md.append(tables.rows_markdown(trows, {"seconds_per_epoch": lambda x: f"{x:.1f}"}))
        ratio = tables.joint_vs_separate(runs)
        if ratio:
            md += ["Joint training vs. the students trained separately (single-student runs):", "",
                   tables.rows_markdown(ratio, {k: (lambda x: f"{x:.2f}") for k in
                                                ("joint_seconds_per_epoch", "separate_seconds_per_epoch", "ratio")})]
        else:
            md.append("_No single-student runs of the same students: the joint/separate ratio needs them "
                      "(train.single_student: true)._\n")
    else:
        md.append(_missing("training summary (train/summary.json)", "train", [r for r in runs if not r.train_summary]
                           or runs))
    shown["time"] = bool(trows)

    # Filter statistics per style.
    md += ["", "## Quality filter per task and style", ""]
    any_filter = False
    for r in runs:
        frows = tables.filter_rows(r)
        if frows:
            any_filter = True
            atomic_write_text(out / f"filter_{_slug(r.name)}.csv", tables.rows_csv(frows))
            md += [f"### {r.name}", "", tables.rows_markdown(frows)]
    lacking = [r for r in runs if not tables.filter_rows(r)]
    if lacking:
        md.append(_missing("filter output (filtered.jsonl / filter_report.json)", "filter", lacking))
    shown["filter"] = any_filter

    if not any(shown.values()):
        stage = "evaluate" if any(r.train_summary for r in runs) else "train"
        if not any(r.filtered is not None or r.filter_report for r in runs):
            stage = "filter" if any((r.path / "paths.jsonl").exists() for r in runs) else "generate"
        raise MissingArtifactError(
            f"nothing to report in {', '.join(str(p) for p in paths)}: run `qrdistill {stage}` first "
            "(or `qrdistill run`)"
        )
    text = "\n".join(md) + "\n"
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "figures.json", figures)
    html = _html(text)
    if html is not None:
        atomic_write_text(out / "report.html", html)
    return {"out": str(out), "report": str(out / "report.md"), "html": str(out / "report.html") if html else None,
            "figures": figures, "sections": shown, "runs": [str(p) for p in paths]}


def _html(markdown_text: str) -> str | None:
    try:
        import markdown
    except ImportError:
        return None
    body = markdown.markdown(markdown_text, extensions=["tables"])
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{body}</body></html>"
