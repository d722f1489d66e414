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
        lines.append(f"| {where} | {tables.method_label(r.method, r.variant)} | {', '.join(stages) or 'none'} "
                     f"| {', '.join(seeds) or '–'} | {100 * r.data_fraction:.0f}% |")
    return "\n".join(lines) + "\n"


#: Bundled students, as `train.students[].model` names them, with their parameter counts.
SMALL_STUDENTS = {"gemma3-270m": "270 M", "smollm2-135m": "135 M"}


def limits_section(runs: list[tables.RunLogs]) -> str:
    """What these runs cannot show, from their configs: a simulated teacher, a judge that checks exactly the
    simulator's planted defects, students far smaller than the paper's 7B. Empty when none applies."""
    teachers, judges, small = set(), set(), set()
    for r in runs:
        for m in r.meta.values():
            cfg = m.get("config") or {}
            teachers.add(((cfg.get("generate") or {}).get("teacher") or {}).get("kind"))
            judges.add(((cfg.get("filter") or {}).get("judge") or {}).get("kind"))
        for s in (r.config.get("train") or {}).get("students") or []:
            if s.get("model") in SMALL_STUDENTS:
                small.add(f"{s['model']} ({SMALL_STUDENTS[s['model']]} parameters)")
    lines = []
    if "simulated" in teachers:
        lines.append("The teacher is simulated: it writes every style from the true solution of a procedural "
                     "question and plants known defects, so these numbers show how the pipeline and the students "
                     "behave, not how a real teacher's paths distill.")
        if "steps" in judges:
            lines.append("The `steps` judge checks exactly the kind of defect the simulator plants, so the "
                         "quality-filter ablation is circular here (it is not with a real teacher and the `llm` "
                         "judge).")
    if small:
        lines.append(f"The students ({', '.join(sorted(small))}) are far smaller than the paper's 7B students.")
    if not lines:
        return ""
    lines.append("Answer-free shortcut baselines stand beside the accuracy so that a number near them reads as "
                 "what it is.")
    return "## What these runs cannot show\n\n" + " ".join(lines) + "\n"


def _settings(runs: list[tables.RunLogs]) -> dict[str, Any]:
    """Bootstrap settings for the intervals the report computes: the evaluation's own, so they match its table."""
    for r in runs:
        st = (r.eval_summary or {}).get("settings") or {}
        if st:
            return {"n_resamples": int(st.get("bootstrap_resamples", 1000)),
                    "confidence": float(st.get("confidence", 0.95)), "seed": int(st.get("seed") or 0)}
    return {"n_resamples": 1000, "confidence": 0.95, "seed": 0}


def _figure(figures: dict[str, dict[str, Any]], name: str, fig: Any) -> str:
    import matplotlib.pyplot as plt

    figures[name] = plots.figure_labels(fig)
    plt.close(fig)
    return f"![{name}]({name})\n"


def results_section(runs: list[tables.RunLogs], out: Path, conf: int
                    ) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Accuracy in the paper's Table 1 layout, strict beside flexible, then the answer-form shares."""
    md = ["## Accuracy (zero-shot CoT, greedy; %)", "",
          f"Each cell: flexible accuracy [{conf}% bootstrap interval] / strict accuracy (the answer line only). "
          "A row over several seeds: mean ± std over the seeds (min–max) / strict mean; `seeds` counts them. "
          "Zero-shot rows are shown once: greedy decoding answers the same in every seed.", ""]
    rows, task_cols = tables.results_rows(runs)
    if rows:
        atomic_write_text(out / "results.md", tables.results_markdown(rows, task_cols))
        atomic_write_text(out / "results.csv", tables.results_csv(rows, task_cols))
        md += [tables.results_markdown(rows, task_cols), "CSV: [results.csv](results.csv)", ""]
        form = tables.answer_form_markdown(rows, task_cols)
        if form:
            md += ["### Answers never stated as final", "",
                   "Per cell: % of answers cut by the token budget / % without a strict answer line. Flexible "
                   "credit for these rests on a value taken from an unfinished or unmarked answer. Multiple-choice "
                   "cells add / % of answer lines whose letter and option text name different options (the "
                   "option text wins in the accuracy table) / accuracy by the letter alone.", "", form]
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
    return md, rows, task_cols


def comparisons_section(rows: list[dict[str, Any]], task_cols: list[str], settings: dict[str, Any], out: Path,
                        conf: int) -> tuple[list[str], bool]:
    """Paired tests beside the table: two systems' separate intervals overlap where their difference on the
    same questions is clear, since what both get right cancels only when the questions are paired."""
    md = ["", "## Paired comparisons", "",
          f"A − B in accuracy points on the questions both answered, with the {conf}% paired bootstrap interval and "
          "the exact McNemar p (flexible; strict = the answer line only): each trained student against the "
          "zero-shot base of its model, and methods that trained the same student against QR-Distill (every "
          "pair when no QR-Distill run is given). Over several seeds the (question, seed) pairs are pooled, the "
          "interval resamples whole questions and p is given per seed (seed k of A against seed k of B).", ""]
    comps = tables.paired_comparisons(rows, task_cols, **settings)
    if comps:
        atomic_write_text(out / "comparisons.csv", tables.comparisons_csv(comps))
        md += [tables.comparisons_markdown(comps), "CSV: [comparisons.csv](comparisons.csv)", ""]
    elif tables.comparison_pairs(rows):
        md.append("_No per-question predictions (eval/<student>/<task>.jsonl) for the compared students: "
                  "run `qrdistill evaluate` first._\n")
    else:
        md.append("_Needs an evaluated trained student: run `qrdistill train` and `qrdistill evaluate` first._\n")
    return md, bool(comps)


def routing_section(runs: list[tables.RunLogs], out: Path, settings: dict[str, Any], conf: int,
                    figures: dict[str, dict[str, Any]]) -> tuple[list[str], bool]:
    """Fig. 4 and 5 from mean P(route), the spread across styles and the usage, per run (seeds pooled)."""
    md = ["", "## Routing: mean P(route) per style", "",
          "mean P(route) = the router's probability of sending a path to the student, averaged over a group's "
          f"paths; error bars and intervals: {conf}% percentile bootstrap over the paths."]
    unrouted = [r.name for r in runs if r.train_summary is not None and not r.routed]
    if unrouted:
        md.append(f"_Trained without a router (every path to every student): {', '.join(unrouted)}._\n")
    fmt2 = {k: (lambda x: f"{x:.2f}") for k in ("mean", "ci_low", "ci_high", "rate")}
    fmt3 = {k: (lambda x: f"{x:.3f}") for k in ("spread", "ci_low", "ci_high", "null_p95", "p_value")}
    fmt3.update({k: (lambda x: "–" if x is None else str(x)) for k in ("top_style", "bottom_style")})
    shown = False
    for group in tables.seed_groups(runs):
        routed = [r for r in group if r.routed and (r.routing or r.routing_final)]
        if not routed:
            continue
        shown = True
        name, slug = tables.group_name(group), _slug(tables.group_name(group))
        several = len(routed) > 1
        inputs, sources = [], []
        for r in routed:
            rows, source = tables.route_inputs(r)
            inputs += [{**x, "seed": r.seed} for x in rows]
            sources.append(source)
        ylabel = tables.ROUTE_SOURCES[sources[0]][0]
        where = "; ".join(dict.fromkeys(tables.ROUTE_SOURCES[s][1] for s in sources))
        pooled = f" Pooled over seeds {', '.join(str(r.seed) for r in routed)}." if several else ""
        by_task = tables.route_probability_rows(inputs, ("task", "style"), **settings)
        atomic_write_text(out / f"routing_by_task_{slug}.csv", tables.rows_csv(by_task))
        fig_name = f"fig4_routing_by_task_{slug}.png"
        fig = plots.plot_routing_by_task(by_task, out / fig_name, f"{ylabel} per style ({name}, cf. Fig. 4)", ylabel)
        md += ["", f"### {name}: per task and style (Fig. 4)", "", f"From {where}.{pooled}", "",
               _figure(figures, fig_name, fig), tables.rows_markdown(by_task, fmt2)]
        with_level = [x for x in inputs if x.get("difficulty") is not None]
        if with_level:
            by_level = tables.route_probability_rows(with_level, ("difficulty", "style"), **settings)
            atomic_write_text(out / f"routing_by_difficulty_{slug}.csv", tables.rows_csv(by_level))
            fig_name = f"fig5_routing_by_difficulty_{slug}.png"
            fig = plots.plot_routing_by_difficulty(
                by_level, out / fig_name, f"{ylabel} per difficulty ({name}, cf. Fig. 5)", ylabel)
            md += [f"### {name}: per difficulty level and style (Fig. 5)", "", _figure(figures, fig_name, fig),
                   tables.rows_markdown(by_level, fmt2)]
        else:
            md.append(f"_{name}: no difficulty levels in the routing logs (the task records carry none)._\n")
        # Per seed, not pooled: seeds whose routers favour opposite styles would cancel in a pooled spread.
        spread = tables.route_spread(inputs, ("task", "seed") if several else ("task",), **settings)
        atomic_write_text(out / f"routing_spread_{slug}.csv", tables.rows_csv(spread))
        md += [f"### {name}: spread across styles", "",
               f"Spread = max − min over styles of a student's mean P(route) on a task, with a {conf}% bootstrap "
               "interval (paths resampled within each style): how strongly the router tells styles apart for "
               "that student; a random router gives exactly 0 [0, 0]. Max − min grows with noise too, so "
               "null_p95 and p_value compare it with the same P(route) values under shuffled style labels.",
               "", tables.rows_markdown(spread, fmt3)]
        usage = [{"seed": r.seed, **u} if several else u
                 for r in routed for u in tables.selection_rates(r.routing or [], (), epoch="all")]
        if usage:
            atomic_write_text(out / f"routing_usage_{slug}.csv", tables.rows_csv(usage))
            md += [f"### {name}: usage", "",
                   "Share of routing decisions that sent a path to each student, over the whole run (hard "
                   "samples, train/routing.jsonl).",
                   "", tables.rows_markdown(usage, fmt2)]
    lacking = [r for r in runs if not r.routing and r.train_summary is None and r.method != "zero_shot"]
    if lacking:
        md.append(_missing("routing log (train/routing.jsonl)", "train", lacking))
    return md, shown


def cost_section(runs: list[tables.RunLogs], out: Path) -> tuple[list[str], bool | None]:
    """Teacher and judge usage per stage x task x style from each run's completion store, in USD where the
    run's config prices the model (tokens only otherwise). None when no run has a store."""
    from qrdistill.cost import no_price, usd

    md = ["", "## Teacher and judge cost per stage, task and style", "",
          "From every call the run's completion store logged (`store.sqlite`; a call that failed reported no "
          "usage), priced with the `prices` of the run's config (USD per million tokens). Task and style `?`: "
          "calls for paths no longer in paths.jsonl/filtered.jsonl.", ""]
    # Seeds of a run share their parent's store: its table is shown once, naming every run it holds for.
    by_store: dict[Path, list[tables.RunLogs]] = {}
    for r in runs:
        if r.store_path is not None:
            by_store.setdefault(r.store_path, []).append(r)
    if not by_store:
        return [], None
    shown = False
    for holders in by_store.values():
        rows, unpriced = tables.cost_table(holders[0])
        md += [f"### {', '.join(r.name for r in holders)}", ""]
        if not rows:
            md.append("_The completion store holds no calls._\n")
            continue
        shown = True
        name = f"cost_{_slug(holders[0].name)}.csv"
        atomic_write_text(out / name, tables.rows_csv(rows))
        priced = "cost_usd" in rows[0]
        total = {k: sum(r[k] for r in rows) for k in ("calls", "errors", "prompt_tokens", "cached_tokens",
                                                       "completion_tokens")}
        shown_rows = rows + [{"stage": "total", "task": "", "style": "", "model": "", **total,
                              **({"cost_usd": sum(r["cost_usd"] or 0.0 for r in rows)} if priced else {})}]
        fmt = {"cost_usd": lambda x: "–" if x is None else usd(x)}
        md += [tables.rows_markdown(shown_rows, fmt), f"CSV: [{name}]({name})", ""]
        if unpriced:
            md.append(f"Tokens only for {', '.join(no_price(m) for m in unpriced)}.\n")
    return md, shown


def build_report(run_dirs: list[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """The report over every given run directory; one holding seed-k run directories stands for its seeds."""
    given = [Path(d) for d in run_dirs]
    if not given:
        raise MissingArtifactError("no run directory given: pass --run-dir D (repeatable)")
    for p in given:
        if not p.is_dir():
            raise MissingArtifactError(f"run directory {p} does not exist: run `qrdistill run` (or generate) first")
    paths = tables.expand_seed_dirs(given)
    runs = [tables.load_run(p) for p in paths]
    out = Path(out) if out is not None else given[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(runs)
    conf = int(round(100 * settings["confidence"]))
    shown: dict[str, bool] = {}
    figures: dict[str, dict[str, Any]] = {}
    md = ["# QR-Distill report", "", "## Runs", "", runs_section(runs)]
    seeded = [tables.group_name(g) for g in tables.seed_groups(runs) if len(g) > 1]
    if seeded:
        md.append(f"Seeds of one configuration, averaged in the tables below: {'; '.join(seeded)}.\n")

    limits = limits_section(runs)
    if limits:
        md.append(limits)
    section, rows, task_cols = results_section(runs, out, conf)
    md += section
    shown["results"] = bool(rows)
    section, shown["comparisons"] = comparisons_section(rows, task_cols, settings, out, conf)
    md += section
    section, shown["routing"] = routing_section(runs, out, settings, conf, figures)
    md += section

    # Sample efficiency (Fig. 6).
    md += ["", "## Sample efficiency (Fig. 6)", ""]
    eff = tables.sample_efficiency_rows(runs)
    if tables.has_sweep(eff):
        atomic_write_text(out / "sample_efficiency.csv", tables.rows_csv(eff))
        name = "fig6_sample_efficiency.png"
        md += [_figure(figures, name, plots.plot_sample_efficiency(eff, out / name)), "CSV: "
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
    # Seeds of a run carry copies of one filtered.jsonl: a table shown once names every run it holds for.
    same: dict[str, list[tables.RunLogs]] = {}
    for r in runs:
        frows = tables.filter_rows(r)
        if frows:
            same.setdefault(tables.rows_markdown(frows), []).append(r)
    for table, holders in same.items():
        atomic_write_text(out / f"filter_{_slug(holders[0].name)}.csv", tables.rows_csv(tables.filter_rows(holders[0])))
        md += [f"### {', '.join(r.name for r in holders)}", "", table]
    any_filter = bool(same)
    lacking = [r for r in runs if not tables.filter_rows(r)]
    if lacking:
        md.append(_missing("filter output (filtered.jsonl / filter_report.json)", "filter", lacking))
    shown["filter"] = any_filter

    section, cost_shown = cost_section(runs, out)
    md += section
    if cost_shown is not None:
        shown["cost"] = cost_shown

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
