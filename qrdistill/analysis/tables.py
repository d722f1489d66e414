"""Tables computed from a run directory's saved logs (no models are loaded).

Each function takes loaded `RunLogs` and returns plain rows (lists of dicts),
which report.py renders as markdown/CSV and plots.py draws.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdistill.io import read_json, read_jsonl

METHOD_NAMES = {
    "zero_shot": "Zero-shot",
    "skd": "SKD",
    "step_by_step": "Distill Step-by-Step",
    "sft": "Answer Aug (SFT)",
    "qrdistill": "QR-Distill",
}
METHOD_ORDER = list(METHOD_NAMES)


@dataclass
class RunLogs:
    """Everything analyze reads from one run directory; absent artifacts are None."""

    path: Path
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_summary: dict[str, Any] | None = None
    train_summary: dict[str, Any] | None = None
    routing: list[dict[str, Any]] | None = None
    filtered: list[dict[str, Any]] | None = None
    filter_report: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        if self.train_summary is not None:
            return str(self.train_summary.get("method", "unknown"))
        if self.eval_summary is not None:
            return str(self.eval_summary.get("method", "zero_shot"))
        return "unknown"

    @property
    def config(self) -> dict[str, Any]:
        """The resolved run config of the latest stage that saved one."""
        if self.train_summary and isinstance(self.train_summary.get("config"), dict):
            cfg = self.train_summary["config"]
            return cfg if "train" in cfg else {"train": cfg}
        for stage in ("evaluate", "train", "filter", "generate"):
            if stage in self.meta:
                return self.meta[stage].get("config") or {}
        return {}

    @property
    def data_fraction(self) -> float:
        return float(((self.config.get("train") or {}).get("data_fraction")) or 1.0)

    @property
    def routed(self) -> bool:
        """Whether a router made the routing decisions (without one every path goes to every student)."""
        if self.train_summary is not None and "router" in self.train_summary:
            return bool(self.train_summary["router"])
        return bool(((self.config.get("train") or {}).get("router") or {}).get("enabled"))

    @property
    def variant(self) -> str:
        """The paper's ablation names for the switches this run turned (Table 2), e.g. "w/o Route"."""
        if self.train_summary is None:
            return ""
        train = self.config.get("train") or {}
        filt = (self.meta.get("filter") or {}).get("config", {}).get("filter") or self.config.get("filter") or {}
        parts = []
        if filt.get("enabled") is False:
            parts.append("w/o QF")
        if self.method == "qrdistill" and not train.get("single_student"):
            if (train.get("router") or {}).get("enabled") is False:
                parts.append("w/o Route")
            if train.get("lambda_mutual") == 0:
                parts.append("w/o Collab")
        if train.get("frozen_peer"):
            parts.append(f"frozen {train['frozen_peer']}")
        if train.get("single_student"):
            parts.append("single student")
        if self.data_fraction < 1.0:
            parts.append(f"{100 * self.data_fraction:g}% data")
        return ", ".join(parts)


def model_label(model: str) -> str:
    """A short name for a model: local paths by their folder name."""
    return Path(model).name if ("/" in model or "\\" in model) else model


def load_run(path: str | Path) -> RunLogs:
    path = Path(path)
    logs = RunLogs(path)
    meta_dir = path / "meta"
    if meta_dir.is_dir():
        for p in sorted(meta_dir.glob("*.json")):
            logs.meta[p.stem] = read_json(p)
    if (path / "eval" / "summary.json").exists():
        logs.eval_summary = read_json(path / "eval" / "summary.json")
    if (path / "train" / "summary.json").exists():
        logs.train_summary = read_json(path / "train" / "summary.json")
    if (path / "train" / "routing.jsonl").exists():
        logs.routing = read_jsonl(path / "train" / "routing.jsonl", required=("epoch", "style", "alpha"))
    if (path / "filtered.jsonl").exists():
        logs.filtered = read_jsonl(path / "filtered.jsonl")
    if (path / "filter_report.json").exists():
        logs.filter_report = read_json(path / "filter_report.json")
    return logs


# ---------------------------------------------------------------- results (Table 1 / Table 2 layout)


def results_rows(runs: list[RunLogs]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per evaluated model and run: {model, method, run, student, cells{task: acc dict}, average}.

    The zero-shot rows (base models) are shown once per base model, from the
    first run that evaluated it; a trained student or ensemble row per run.
    Rows are grouped by base model like the paper's Table 1.
    """
    rows: list[dict[str, Any]] = []
    tasks: list[str] = []
    seen_base: set[str] = set()
    for run in runs:
        s = run.eval_summary
        if s is None:
            continue
        for t in s.get("tasks", {}):
            if t not in tasks:
                tasks.append(t)
        for key, st in s.get("students", {}).items():
            if st.get("kind") == "base":
                if key in seen_base:
                    continue
                seen_base.add(key)
                method = "zero_shot"
            else:
                method = run.method
            rows.append({"model": model_label(st.get("model", "")), "method": method,
                         "variant": "" if method == "zero_shot" else run.variant, "run": run.name,
                         "student": _student_label(key), "cells": st.get("tasks", {}), "average": st.get("average")})
        for key, ens in s.get("ensembles", {}).items():
            members = list(ens.get("members", []))
            base = all(s["students"].get(m, {}).get("kind") == "base" for m in members)
            if base:
                ident = "ensemble:" + "+".join(members)
                if ident in seen_base:
                    continue
                seen_base.add(ident)
            models = sorted({model_label(s["students"].get(m, {}).get("model", "")) for m in members})
            rows.append({"model": " + ".join(models), "method": "zero_shot" if base else run.method,
                         "variant": "" if base else run.variant, "run": run.name,
                         "student": f"{key} ({' + '.join(_student_label(m) for m in members)})",
                         "cells": ens.get("tasks", {}), "average": ens.get("average")})
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (r["model"], order.get(r["method"], len(order)), r["run"], r["student"]))
    return rows, tasks


def _student_label(key: str) -> str:
    return "base:" + model_label(key[5:]) if key.startswith("base:") else key


def _pct(x: Any) -> str:
    return "–" if x is None or x != x else f"{100 * float(x):.1f}"


def results_markdown(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    head = ["model", "method", "run", "student", *tasks, "average"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for t in tasks:
            a = r["cells"].get(t)
            cells.append("–" if a is None else f"{_pct(a['accuracy'])} [{_pct(a['ci_low'])}, {_pct(a['ci_high'])}]")
        label = METHOD_NAMES.get(r["method"], r["method"]) + (f" ({r['variant']})" if r["variant"] else "")
        out.append("| " + " | ".join([r["model"], label, r["run"], r["student"], *cells, _pct(r["average"])]) + " |")
    return "\n".join(out) + "\n"


def results_csv(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["model", "method", "variant", "run", "student"]
    for t in tasks:
        head += [f"{t}_accuracy", f"{t}_ci_low", f"{t}_ci_high", f"{t}_n"]
    w.writerow(head + ["average"])
    for r in rows:
        line = [r["model"], r["method"], r["variant"], r["run"], r["student"]]
        for t in tasks:
            a = r["cells"].get(t) or {}
            line += [a.get("accuracy", ""), a.get("ci_low", ""), a.get("ci_high", ""), a.get("n", "")]
        w.writerow(line + [r["average"] if r["average"] is not None else ""])
    return buf.getvalue()


def rows_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def rows_markdown(rows: list[dict[str, Any]], fmt: dict[str, Any] | None = None) -> str:
    if not rows:
        return ""
    fmt = fmt or {}
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt[c](r[c]) if c in fmt else str(r[c]) for c in cols) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- routing (Fig. 4, Fig. 5)


def routing_epoch_rows(routing: list[dict[str, Any]], epoch: int | None = None) -> list[dict[str, Any]]:
    """The rows of one epoch (default: the last), one per path (its last decision in that epoch)."""
    if not routing:
        return []
    epoch = max(int(r["epoch"]) for r in routing) if epoch is None else epoch
    last: dict[Any, dict[str, Any]] = {}
    for i, r in enumerate(routing):
        if int(r["epoch"]) == epoch:
            last[r.get("path_key", i)] = r
    return list(last.values())


def selection_rates(
    routing: list[dict[str, Any]], by: tuple[str, ...] = ("task", "style"), epoch: int | None = None
) -> list[dict[str, Any]]:
    """Selection rate = share of a group's paths routed to a student (alpha = 1), per student.

    `by` picks the grouping fields of routing.jsonl rows, e.g. (task, style)
    for the paper's Fig. 4 or (difficulty, style) for Fig. 5. Returns rows
    {**group, student, paths, selected, rate}, sorted by group then student.
    """
    rows = routing_epoch_rows(routing, epoch)
    counts: dict[tuple[Any, ...], list[int]] = {}
    totals: dict[tuple[Any, ...], int] = defaultdict(int)
    names: dict[tuple[Any, ...], list[str]] = {}
    for r in rows:
        key = tuple(r.get(f) for f in by)
        alpha = [int(round(float(a))) for a in r["alpha"]]
        students = list(r.get("students") or [f"student{i}" for i in range(len(alpha))])
        names.setdefault(key, students)
        acc = counts.setdefault(key, [0] * len(alpha))
        for i, a in enumerate(alpha):
            acc[i] += a
        totals[key] += 1
    out = []
    for key in sorted(counts, key=lambda k: tuple(_sort_key(x) for x in k)):
        for i, student in enumerate(names[key]):
            out.append({**dict(zip(by, key, strict=True)), "student": student, "paths": totals[key],
                        "selected": counts[key][i], "rate": counts[key][i] / totals[key]})
    return out


def _sort_key(x: Any) -> tuple[int, Any]:
    if x is None:
        return (2, "")
    return (0, x) if isinstance(x, (int, float)) else (1, str(x))


# ---------------------------------------------------------------- sample efficiency (Fig. 6)


def sample_efficiency_rows(runs: list[RunLogs]) -> list[dict[str, Any]]:
    """{method, student, data_fraction, task, accuracy, ci_low, ci_high, run} for trained students.

    Students are keyed by name (the same student across fractions); the
    `average` task is the mean over the run's tasks.
    """
    out = []
    for run in runs:
        s = run.eval_summary
        if s is None or run.train_summary is None:
            continue
        groups = [(k, v) for k, v in s.get("students", {}).items() if v.get("kind") == "trained"]
        groups += [(k, v) for k, v in s.get("ensembles", {}).items() if k == "ensemble"]
        for key, st in groups:
            for task, a in st.get("tasks", {}).items():
                out.append({"method": run.method, "student": key, "data_fraction": run.data_fraction, "task": task,
                            "accuracy": a.get("accuracy"), "ci_low": a.get("ci_low"), "ci_high": a.get("ci_high"),
                            "run": run.name})
            out.append({"method": run.method, "student": key, "data_fraction": run.data_fraction,
                        "task": "average", "accuracy": st.get("average"), "ci_low": None, "ci_high": None,
                        "run": run.name})
    out.sort(key=lambda r: (r["method"], r["student"], r["task"] == "average", r["task"], r["data_fraction"]))
    return out


def has_sweep(rows: list[dict[str, Any]]) -> bool:
    """True when some method was run at two or more data fractions."""
    fracs: dict[str, set[float]] = defaultdict(set)
    for r in rows:
        fracs[r["method"]].add(r["data_fraction"])
    return any(len(v) >= 2 for v in fracs.values())


# ---------------------------------------------------------------- training time (Table 3)


def time_rows(runs: list[RunLogs]) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        ts = run.train_summary
        if not ts or not ts.get("time_per_epoch"):
            continue
        tpe = [float(x) for x in ts["time_per_epoch"]]
        students = [s.get("name", "?") if isinstance(s, dict) else str(s) for s in ts.get("students", [])]
        out.append({"run": run.name, "method": run.method, "students": " + ".join(students),
                    "epochs": len(tpe), "seconds_per_epoch": sum(tpe) / len(tpe)})
    return out


def joint_vs_separate(runs: list[RunLogs]) -> list[dict[str, Any]]:
    """Table 3's comparison: a joint run's time per epoch over the sum of single-student runs of its students."""
    single: dict[str, float] = {}
    for run in runs:
        ts = run.train_summary or {}
        if ts.get("time_per_epoch") and len(ts.get("students", [])) == 1:
            st = ts["students"][0]
            name = st.get("name") if isinstance(st, dict) else str(st)
            tpe = [float(x) for x in ts["time_per_epoch"]]
            single.setdefault(name, sum(tpe) / len(tpe))
    out = []
    for r in time_rows(runs):
        names = r["students"].split(" + ")
        if len(names) < 2 or not all(n in single for n in names):
            continue
        separate = sum(single[n] for n in names)
        out.append({"run": r["run"], "method": r["method"], "joint_seconds_per_epoch": r["seconds_per_epoch"],
                    "separate_seconds_per_epoch": separate, "ratio": r["seconds_per_epoch"] / separate})
    return out


# ---------------------------------------------------------------- filter statistics


def filter_rows(run: RunLogs) -> list[dict[str, Any]]:
    """Per task x style: paths, kept, wrong answer, judged invalid, unparseable verdicts.

    From the filter stage's own filter_report.json when present, else counted
    from filtered.jsonl (an unparseable verdict then counts as invalid).
    """
    rep = (run.filter_report or {}).get("by_task_style")
    if rep:
        return [{"task": t, "style": st, "paths": c.get("total"), "kept": c.get("kept"),
                 "wrong_answer": c.get("wrong_answer"), "judged_invalid": c.get("judged_invalid"),
                 "unparseable": c.get("unparseable", 0)}
                for t, styles in rep.items() for st, c in styles.items()]
    if run.filtered is None:
        return []
    acc: dict[tuple[str, str], dict[str, int]] = {}
    for r in run.filtered:
        key = (str(r.get("task", "")), str(r.get("style", "")))
        c = acc.setdefault(key, {"paths": 0, "kept": 0, "wrong_answer": 0, "judged_invalid": 0, "unparseable": 0})
        c["paths"] += 1
        c["kept"] += bool(r.get("kept"))
        judge = r.get("judge") or {}
        if not r.get("correct"):
            c["wrong_answer"] += 1
        elif judge.get("parsed") is False:
            c["unparseable"] += 1
        elif not judge.get("valid"):
            c["judged_invalid"] += 1
    return [{"task": t, "style": st, **c} for (t, st), c in sorted(acc.items())]
