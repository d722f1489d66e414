"""The report of `qrdistill table`: one results table from the rows' saved evaluations (no models loaded).

Writes D/table/: table.md, table.csv (one line per task x row x student), table.json (everything,
with each comparison's per-seed p-values), wall_time.json, the reference row's routing figures and
CSVs (Fig. 4 / 5, from `report.routing_section`), and analysis/, the standard `qrdistill analyze`
report over the same row x seeds (each rebuilt from scratch).

Statistics, for each task and trained student (a zero-shot row: the base model of that student, one
line for the students that share a base; such a line has no comparison with the reference row, whose
students each compare with it in their own line):

- accuracy: the mean over seeds of each seed's accuracy, ± the sample standard deviation over seeds
  (n - 1), and the min-max range;
- A - B against the reference row (same student name) and against the zero-shot row (the base model
  the student was trained from): pairs are (question, seed), seed k of A against seed k of B (the
  zero-shot row's first seed where it lacks seed k: greedy base models answer alike in every seed);
  the difference is the mean over those pairs, with the paired bootstrap interval of
  `evaluation.metrics.compare_paired` resampling whole questions (all their seeds together);
- p: the exact McNemar test (`evaluation.metrics.mcnemar_exact`) with one pair per question, so that
  seeds of one question do not count as independent evidence: a question counts for the system
  right in more of the seeds (ties count for neither). With one seed this is the plain McNemar test.
  The per-seed McNemar p-values are in table.csv / table.json.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from qrdistill.io import atomic_write_json, atomic_write_text, read_json

TABLE_DIR = "table"
SPREAD = "sample standard deviation over seeds (n - 1); min-max in parentheses"
POOLING = ("(question, seed) pairs, seed k against seed k; interval: paired bootstrap resampling whole questions; "
           "p: exact McNemar over questions, each counting for the system right in more of its seeds (ties for "
           "neither)")
METRICS = (("flexible", "correct"), ("strict", "strict_correct"))


def finished_dirs(table: Any, root: Path, row: str) -> dict[int, Path]:
    """The seed run directories of `row` that finished with the row's present config, by seed."""
    from qrdistill.stages.pipeline import SEED_DIR
    from qrdistill.stages.table import is_finished, seed_fingerprint

    cfg = table.rows[row]
    dirs = {s: root / row / SEED_DIR.format(s) for s in table.seeds}
    return {s: d for s, d in dirs.items() if is_finished(d, seed_fingerprint(cfg, s))}


def _names(e: dict[str, Any]) -> str:
    return " / ".join(e.get("students") or [e["student"]])


def systems(table: Any, root: Path) -> list[dict[str, Any]]:
    """Each row's evaluated students: {row, label, student, students, model, key (eval summary key),
    zero_shot, dirs}; a zero-shot row's students on one base model are one system (`students` names them).

    `dirs` maps each seed to its run directory where that seed finished with the row's present config: a
    part-run seed, or one left from an earlier version of the table config, is not reported.
    """
    out = []
    for name, cfg in table.rows.items():
        zero = "train" not in cfg.stages
        dirs = finished_dirs(table, root, name)
        for st in cfg.train.students:
            key = "base:" + st.model if zero else st.name
            # Students on one base (a same-base pair) share its zero-shot answers: one line, not one per student.
            shared = next((o for o in out if o["row"] == name and o["key"] == key), None)
            if shared is not None:
                shared["students"].append(st.name)
                continue
            out.append({"row": name, "label": table.labels.get(name, name), "student": st.name,
                        "students": [st.name], "model": st.model, "key": key, "zero_shot": zero, "dirs": dirs})
    return out


def _summaries(system: dict[str, Any], cache: dict[Path, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out = {}
    for s, d in system["dirs"].items():
        if d not in cache:
            cache[d] = read_json(d / "eval" / "summary.json")
        entry = (cache[d].get("students") or {}).get(system["key"])
        if entry is not None:
            out[s] = entry
    return out


def accuracy_cell(system: dict[str, Any], task: str, cache: dict[Path, dict[str, Any]]) -> dict[str, Any] | None:
    """The task's accuracy over the seeds that evaluated it (`tables.seed_cell`), with the seeds named."""
    from qrdistill.analysis.tables import seed_cell

    per_seed = {s: e["tasks"][task] for s, e in _summaries(system, cache).items() if task in (e.get("tasks") or {})}
    if not per_seed:
        return None
    return {**seed_cell(list(per_seed.values())), "seed_list": sorted(per_seed),
            "per_seed": {str(s): c.get("accuracy") for s, c in sorted(per_seed.items())}}


def _partner_dir(b: dict[str, Any], seed: int) -> Path | None:
    if seed in b["dirs"]:
        return b["dirs"][seed]
    if b["zero_shot"] and b["dirs"]:
        return b["dirs"][min(b["dirs"])]
    return None


def compare(a: dict[str, Any], b: dict[str, Any], task: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """A - B on one task over the seeds both evaluated (see the module docstring), flexible and strict."""
    from qrdistill.analysis.tables import load_predictions
    from qrdistill.evaluation.metrics import compare_paired, mcnemar_exact

    per_seed: list[tuple[int, list[tuple[str, dict[str, Any], dict[str, Any]]]]] = []
    for seed, da in sorted(a["dirs"].items()):
        db = _partner_dir(b, seed)
        if db is None:
            continue
        pa, pb = load_predictions(da, a["key"], task), load_predictions(db, b["key"], task)
        qids = sorted(q for q in (pa or {}) if q in (pb or {}))
        if qids:
            per_seed.append((seed, [(q, pa[q], pb[q]) for q in qids]))
    if not per_seed:
        return None
    pooled = [x for _, rows in per_seed for x in rows]
    out: dict[str, Any] = {"a_row": a["row"], "a_student": a["student"], "a_key": a["key"],
                           "b_row": b["row"], "b_student": b["student"], "b_key": b["key"], "task": task,
                           "seeds": [s for s, _ in per_seed], "questions": len({q for q, _, _ in pooled}),
                           "pairs": len(pooled)}
    for metric, fld in METRICS:
        if not all(fld in ra and fld in rb for _, ra, rb in pooled):
            out[metric] = None
            continue
        clusters = [q for q, _, _ in pooled] if len(per_seed) > 1 else None
        c = compare_paired([bool(ra[fld]) for _, ra, _ in pooled], [bool(rb[fld]) for _, _, rb in pooled],
                           settings["n_resamples"], settings["confidence"], settings["seed"], clusters)
        margin: dict[str, float] = {}
        for q, ra, rb in pooled:
            margin[q] = margin.get(q, 0.0) + float(bool(ra[fld])) - float(bool(rb[fld]))
        qids = sorted(margin)
        test = mcnemar_exact([margin[q] > 0 for q in qids], [margin[q] < 0 for q in qids])
        out[metric] = {
            "accuracy_a": c["accuracy_a"], "accuracy_b": c["accuracy_b"], "diff": c["diff"],
            "ci_low": c["ci_low"], "ci_high": c["ci_high"], "confidence": c["confidence"],
            "p": test["p_value"], "questions_a_better": test["a_only"], "questions_b_better": test["b_only"],
            "p_per_seed": {str(s): mcnemar_exact([bool(ra[fld]) for _, ra, _ in rows],
                                                 [bool(rb[fld]) for _, _, rb in rows])["p_value"]
                           for s, rows in per_seed},
        }
    return out


def _partner(a: dict[str, Any], pool: list[dict[str, Any]], by_model: bool) -> dict[str, Any] | None:
    """The system of `pool` A is compared with: the same student name (and, against zero-shot, the same model)."""
    same = [b for b in pool if b["student"] == a["student"] and (not by_model or b["model"] == a["model"])]
    if same:
        return same[0]
    if by_model:
        return next((b for b in pool if b["model"] == a["model"]), None)
    return None


def task_labels(systems_: list[dict[str, Any]], cache: dict[Path, dict[str, Any]]) -> list[str]:
    tasks: list[str] = []
    for system in systems_:
        for d in system["dirs"].values():
            if d not in cache:
                cache[d] = read_json(d / "eval" / "summary.json")
            tasks += [t for t in cache[d].get("tasks", {}) if t not in tasks]
    return tasks


def table_rows(table: Any, root: Path, settings: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """One entry per task x row x student: accuracy over seeds, and the comparisons with the reference and
    zero-shot rows (None for the row itself or where the partner has no predictions)."""
    cache: dict[Path, dict[str, Any]] = {}
    all_systems = systems(table, root)
    tasks = task_labels(all_systems, cache)
    against = {"reference": table.reference, "zero_shot": table.zero_shot}
    out = []
    for task in tasks:
        for a in all_systems:
            cell = accuracy_cell(a, task, cache)
            if cell is None:
                continue
            entry = {"task": task, "row": a["row"], "label": a["label"], "student": a["student"],
                     "students": a["students"], "model": a["model"], "key": a["key"], "accuracy": cell}
            for what, row in against.items():
                pool = [b for b in all_systems if b["row"] == row and row != a["row"]]
                # A base line shared by several students has no one partner in the reference row.
                shared = what == "reference" and len(a["students"]) > 1
                b = None if shared else _partner(a, pool, by_model=what == "zero_shot")
                entry[f"vs_{what}"] = compare(a, b, task, settings) if b is not None else None
            out.append(entry)
    return out, tasks


# ---------------------------------------------------------------- wall time


def wall_times(table: Any, root: Path) -> dict[str, Any]:
    """Seconds per row (train + evaluate, summed over seeds and over each seed's attempts) and per shared
    data directory (generate + filter), from the markers the table stage writes."""
    from qrdistill.stages.pipeline import SEED_DIR
    from qrdistill.stages.table import DATA_MARKER, ROW_MARKER, SEED_MARKER, read_marker, seed_fingerprint

    rows: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for name, cfg in table.rows.items():
        per_seed = {}
        for s in table.seeds:
            m = read_marker(root / name / SEED_DIR.format(s) / SEED_MARKER) or {}
            attempts = [a for a in m.get("attempts", []) if isinstance(a, dict)]
            status = m.get("status", "not run")
            if m and m.get("fingerprint") != seed_fingerprint(cfg, s):
                status = "stale (run with another config; not reported)"
            per_seed[str(s)] = {"wall_s": m.get("wall_s"), "status": status, "attempts": len(attempts)}
        done = [v["wall_s"] for v in per_seed.values() if v["wall_s"] is not None and not v["status"].startswith("stale")]
        link = (read_marker(root / name / ROW_MARKER) or {}).get("data_dir")
        rows[name] = {"total_s": sum(done) if done else None, "seeds": per_seed, "data_dir": link}
        if link:
            d = data.setdefault(link, {"rows": [], "wall_s": None})
            d["rows"].append(name)
            d["wall_s"] = (read_marker(root / link / DATA_MARKER) or {}).get("wall_s")
    return {"rows": rows, "data": data,
            "note": "train + evaluate seconds per row x seed, summed over its attempts (a killed attempt counts up "
                    "to its last written file); generate + filter once per data directory, shared by its rows"}


# ---------------------------------------------------------------- rendering


def _pct(x: Any) -> str:
    return "–" if x is None or x != x else f"{100 * float(x):.1f}"


def _pts(x: Any) -> str:
    return "–" if x is None or x != x else f"{100 * float(x):+.1f}"


def _p(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.2g}" if x >= 1e-4 else "<1e-4"


def _acc_text(a: dict[str, Any]) -> str:
    return f"{_pct(a['accuracy'])} ± {_pct(a['std'])} ({_pct(a['min'])}–{_pct(a['max'])})"


def _cmp_text(c: dict[str, Any] | None) -> tuple[str, str]:
    f = (c or {}).get("flexible")
    if not f:
        return "–", "–"
    return f"{_pts(f['diff'])} [{_pts(f['ci_low'])}, {_pts(f['ci_high'])}]", _p(f["p"])


def shortcut_baselines(table: Any, root: Path) -> dict[str, dict[str, float]]:
    """Per task, the answer-free shortcuts evaluate computed on its questions (from the first evaluation
    summary that has them: the questions are the same in every row and seed)."""
    out: dict[str, dict[str, float]] = {}
    for system in systems(table, root):
        for d in system["dirs"].values():
            for task, values in (read_json(d / "eval" / "summary.json").get("shortcut_baselines") or {}).items():
                out.setdefault(task, values)
    return out


def table_markdown(entries: list[dict[str, Any]], tasks: list[str], table: Any, conf: int,
                   shortcuts: dict[str, dict[str, float]] | None = None) -> list[str]:
    ref = table.labels.get(table.reference, table.reference) if table.reference else None
    zs = table.labels.get(table.zero_shot, table.zero_shot) if table.zero_shot else None
    md = []
    for task in tasks:
        mine = [e for e in entries if e["task"] == task]
        n = next((e["accuracy"].get("n") for e in mine if e["accuracy"].get("n")), None)
        md += [f"### {task}" + (f" ({n} questions)" if n else ""), "",
               f"| row | student | accuracy % (mean ± std, min–max) | seeds | strict % | "
               f"Δ vs {ref or 'reference'} [{conf}% CI] | p | Δ vs {zs or 'zero-shot'} [{conf}% CI] | p |",
               "|---|---|---|---|---|---|---|---|---|"]
        for e in mine:
            a = e["accuracy"]
            student = f"{_names(e)} (base)" if e["key"].startswith("base:") else _names(e)
            d_ref, p_ref = _cmp_text(e["vs_reference"])
            d_zs, p_zs = _cmp_text(e["vs_zero_shot"])
            md.append(f"| {e['label']} | {student} | {_acc_text(a)} | {len(a['seed_list'])} | "
                      f"{_pct((a.get('strict') or {}).get('accuracy'))} | {d_ref} | {p_ref} | {d_zs} | {p_zs} |")
        cuts = (shortcuts or {}).get(task)
        if cuts:
            md += ["", "Answer-free shortcuts on these questions (accuracy %): "
                   + ", ".join(f"{k} {_pct(v)}" for k, v in cuts.items()) + "."]
        md.append("")
    return md


def _csv_line(e: dict[str, Any]) -> dict[str, Any]:
    a = e["accuracy"]
    line: dict[str, Any] = {
        "task": e["task"], "row": e["row"], "label": e["label"], "student": _names(e), "model": e["model"],
        "eval_key": e["key"], "seeds": " ".join(map(str, a["seed_list"])), "n": a.get("n"),
        "accuracy_mean": a["accuracy"], "accuracy_std": a["std"], "accuracy_min": a["min"], "accuracy_max": a["max"],
        "strict_mean": (a.get("strict") or {}).get("accuracy"), "strict_std": (a.get("strict") or {}).get("std"),
    }
    for what in ("reference", "zero_shot"):
        c = e[f"vs_{what}"] or {}
        line[f"vs_{what}_row"] = c.get("b_row", "")
        line[f"vs_{what}_pairs"] = c.get("pairs", "")
        for metric, _ in METRICS:
            m = c.get(metric) or {}
            prefix = f"vs_{what}_" + ("" if metric == "flexible" else "strict_")
            for k in ("diff", "ci_low", "ci_high", "p"):
                line[prefix + k] = m.get(k)
            line[prefix + "p_per_seed"] = ";".join(f"{s}:{p:.6g}" for s, p in (m.get("p_per_seed") or {}).items())
    return {k: "" if v is None else v for k, v in line.items()}


def wall_markdown(wall: dict[str, Any], table: Any) -> list[str]:
    md = ["| row | total (s) | per seed (s) | attempts |", "|---|---|---|---|"]
    for name, r in wall["rows"].items():
        per = ", ".join(f"{s}: " + ("–" if v["wall_s"] is None else f"{v['wall_s']:.0f}")
                        + (" (stale)" if v["status"].startswith("stale") else "") for s, v in r["seeds"].items())
        attempts = ", ".join(str(v["attempts"]) for v in r["seeds"].values())
        total = "–" if r["total_s"] is None else f"{r['total_s']:.0f}"
        md.append(f"| {table.labels.get(name, name)} | {total} | {per} | {attempts} |")
    if wall["data"]:
        md += ["", "| data directory (generate + filter) | rows | seconds |", "|---|---|---|"]
        for d, v in wall["data"].items():
            secs = "–" if v["wall_s"] is None else f"{v['wall_s']:.0f}"
            md.append(f"| {Path(d).name} | {', '.join(v['rows'])} | {secs} |")
    return md + ["", wall["note"] + ".", ""]


#: The routing section's files in D/table/ (`report.routing_section`), rewritten by every report.
ROUTING_PREFIXES = ("fig4_", "fig5_", "routing_")


def build_table_report(table: Any, root: Path) -> dict[str, Any]:
    """Write D/table/ (see the module docstring) from the rows' saved artifacts."""
    from qrdistill.analysis import report, tables
    from qrdistill.errors import MissingArtifactError

    root = Path(root)
    out = root / TABLE_DIR
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(table.rows.values()))
    settings = {"n_resamples": first.evaluate.bootstrap_resamples, "confidence": first.evaluate.confidence,
                "seed": first.seed}
    conf = int(round(100 * settings["confidence"]))
    entries, tasks = table_rows(table, root, settings)
    wall = wall_times(table, root)
    finished = [s for s in table.seeds if all(r["seeds"][str(s)]["status"] == "finished" for r in wall["rows"].values())]

    ref = table.labels.get(table.reference, table.reference) if table.reference else None
    zs = table.labels.get(table.zero_shot, table.zero_shot) if table.zero_shot else None
    md = [f"# Results table: {table.source}", "",
          f"Rows: {', '.join(table.labels.get(n, n) for n in table.rows)}; seeds {', '.join(map(str, table.seeds))} "
          f"(finished in every row: {', '.join(map(str, finished)) or 'none'}). "
          f"Reference: {ref or '(none)'}; zero-shot: {zs or '(none)'}.", "",
          f"Accuracy (flexible; strict = the answer line only): mean over seeds ± {SPREAD}. Δ = A − B in "
          f"points against the reference and the zero-shot rows (the same student; against zero-shot, the base "
          f"model it was trained from), pooling {POOLING}. Per-seed McNemar p-values: table.csv.", ""]
    shortcuts = shortcut_baselines(table, root)
    md += table_markdown(entries, tasks, table, conf, shortcuts)
    if not entries:
        md.append("_No evaluated row yet._\n")
    md += ["## Wall time", ""] + wall_markdown(wall, table)

    routing_files: list[str] = []
    if table.reference is not None:
        dirs = list(finished_dirs(table, root, table.reference).values())
        runs = [tables.load_run(d) for d in dirs]
        # Figures of an earlier report name its seeds ("..._seeds_0_1"): they would lie beside the new ones.
        for p in out.iterdir():
            if p.is_file() and p.name.startswith(ROUTING_PREFIXES):
                p.unlink()
        section, shown = report.routing_section(runs, out, settings, conf, {})
        routing_files = sorted(p.name for p in out.iterdir() if p.name.startswith(ROUTING_PREFIXES))
        # The section's own heading (its first two lines) gives way to one naming the row.
        md += [f"## Routing of the reference row ({ref})", ""] + (
            section[2:] if shown else ["_The reference row logged no routing._", ""])
    # The seed folders the table reports, not every seed-k a row holds (a stale or part-run one is left out).
    row_dirs = [d for n in table.rows for d in finished_dirs(table, root, n).values()]
    analysis = None
    if row_dirs:
        # Figures and CSVs name their seeds: those of an earlier report's seeds would stay beside the new ones.
        shutil.rmtree(out / "analysis", ignore_errors=True)
        try:
            analysis = report.build_report(row_dirs, out / "analysis")["report"]
            md += ["", "The standard `qrdistill analyze` report over the same rows and seeds (filter statistics, training time "
                       "per epoch, routing of every routed row): [analysis/report.md](analysis/report.md).", ""]
        except MissingArtifactError:
            analysis = None

    result = {"table": table.source, "run_dir": str(root), "seeds": table.seeds, "finished_seeds": finished, "rows": list(table.rows),
              "labels": dict(table.labels), "reference": table.reference, "zero_shot": table.zero_shot,
              "tasks": tasks, "shortcut_baselines": shortcuts, "spread": SPREAD, "pooling": POOLING, "settings": settings, "entries": entries,
              "wall_time": wall, "routing_files": routing_files, "analysis_report": analysis}
    atomic_write_text(out / "table.md", "\n".join(md) + "\n")
    atomic_write_text(out / "table.csv", tables.rows_csv([_csv_line(e) for e in entries]))
    atomic_write_json(out / "table.json", result)
    atomic_write_json(out / "wall_time.json", wall)
    return {**result, "report": str(out / "table.md")}


__all__ = ["build_table_report", "compare", "systems", "table_rows", "wall_times"]
