"""Tables computed from a run directory's saved logs (no models are loaded).

Each function takes loaded `RunLogs` (or rows read from them) and returns
plain rows (lists of dicts), which report.py renders as markdown/CSV and
plots.py draws.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdistill.io import read_json, read_jsonl

METHOD_NAMES = {
    "zero_shot": "Zero-shot",
    "skd": "SKD",
    "step_by_step": "Distill Step-by-Step",
    "sft": "All paths (no router, no collab)",
    "answer_aug": "Answer Aug (k sampled paths, one style)",
    "qrdistill": "QR-Distill",
}
METHOD_ORDER = list(METHOD_NAMES)
#: `qrdistill run --seeds` writes one complete run directory per seed under D.
SEED_DIR = re.compile(r"seed-\d+")
#: what the `probs` behind a routing figure are: (y-axis label, where they come from)
ROUTE_SOURCES = {
    "final": ("mean P(route)", "the final router's noise-free P(route) per training path (train/routing_final.jsonl)"),
    "last_epoch": ("mean P(route)", "P(route) at each path's last step of the last epoch (train/routing.jsonl; "
                   "routing_final.jsonl is absent)"),
    "hard": ("selection rate (hard samples)", "the last epoch's hard routing samples (train/routing.jsonl logged "
             "no P(route))"),
}


@dataclass
class RunLogs:
    """Everything analyze reads from one run directory; absent artifacts are None."""

    path: Path
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_summary: dict[str, Any] | None = None
    train_summary: dict[str, Any] | None = None
    routing: list[dict[str, Any]] | None = None
    routing_final: list[dict[str, Any]] | None = None
    filtered: list[dict[str, Any]] | None = None
    filter_report: dict[str, Any] | None = None
    #: Every call the run's completion store logged (`qrdistill.cost.stored_calls`); None without a store.
    usage: list[dict[str, Any]] | None = None
    #: request key -> (task, style), for the teacher's calls (paths.jsonl) and the judge's (filtered.jsonl).
    usage_groups: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Which store `usage` came from: a seed directory's is its parent's, where generate and filter ran.
    store_path: Path | None = None

    @property
    def is_seed_dir(self) -> bool:
        return bool(SEED_DIR.fullmatch(self.path.name))

    @property
    def name(self) -> str:
        """The directory's name; a seed directory keeps its parent's, since every run's seeds are called seed-k."""
        return f"{self.path.parent.name}/{self.path.name}" if self.is_seed_dir else self.path.name

    @property
    def method(self) -> str:
        if self.train_summary is not None:
            return str(self.train_summary.get("method", "unknown"))
        if self.eval_summary is not None:
            return str(self.eval_summary.get("method", "zero_shot"))
        return "unknown"

    @property
    def seed(self) -> int | None:
        """The seed the run trained with: train's first, as generate and filter may have run once for all seeds."""
        for stage in ("train", "evaluate", "filter", "generate"):
            if (self.meta.get(stage) or {}).get("seed") is not None:
                return int(self.meta[stage]["seed"])
        for summary in (self.train_summary or {}, (self.eval_summary or {}).get("settings") or {}):
            if summary.get("seed") is not None:
                return int(summary["seed"])
        return None

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
    def prices(self) -> dict[str, Any]:
        """The `prices` of the stages' saved configs (a later stage's entry for a model wins)."""
        out: dict[str, Any] = {}
        for stage in ("generate", "filter", "train", "evaluate"):
            out.update(((self.meta.get(stage) or {}).get("config") or {}).get("prices") or {})
        return out

    @property
    def data_fraction(self) -> float:
        return float(((self.config.get("train") or {}).get("data_fraction")) or 1.0)

    @property
    def router_mode(self) -> str:
        """learned, random or off; summaries written before the random router only say whether one routed."""
        ts = self.train_summary or {}
        if ts.get("router_mode"):
            return str(ts["router_mode"])
        if "router" in ts:
            return "learned" if ts["router"] else "off"
        router = (self.config.get("train") or {}).get("router") or {}
        if router.get("mode"):
            return str(router["mode"])
        return "learned" if router.get("enabled") else "off"

    @property
    def routed(self) -> bool:
        """Whether routing selected students (learned or random); without it every path goes to every student."""
        return self.router_mode != "off"

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
        if self.router_mode == "random":
            parts.append("random router")
        if self.method == "qrdistill" and not train.get("single_student"):
            if self.router_mode == "off":
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

    @property
    def family(self) -> tuple[Any, ...]:
        """What seeds of one configuration share: method, variant, students and, for seed-k directories, D."""
        if self.train_summary is not None:
            students = tuple((s.get("name"), s.get("model")) if isinstance(s, dict) else (str(s), None)
                             for s in self.train_summary.get("students", []))
        else:
            students = tuple(sorted((self.eval_summary or {}).get("students", {})))
        return (self.path.parent if self.is_seed_dir else None, self.method, self.variant, students)


def model_label(model: str) -> str:
    """A short name for a model: local paths by their folder name."""
    return Path(model).name if ("/" in model or "\\" in model) else model


def expand_seed_dirs(paths: list[str | Path]) -> list[Path]:
    """Each directory itself, or its seed-k run directories (in seed order) when it holds them and no
    evaluation of its own, which is what `qrdistill run --seeds` leaves."""
    out: list[Path] = []
    for p in map(Path, paths):
        seeds = sorted((c for c in p.glob("seed-*") if c.is_dir() and SEED_DIR.fullmatch(c.name)),
                       key=lambda c: int(c.name.split("-", 1)[1]))
        out += seeds if seeds and not (p / "eval" / "summary.json").exists() else [p]
    return out


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
    if (path / "train" / "routing_final.jsonl").exists():
        logs.routing_final = read_jsonl(path / "train" / "routing_final.jsonl", required=("style", "probs"))
    if (path / "filtered.jsonl").exists():
        logs.filtered = read_jsonl(path / "filtered.jsonl")
    if (path / "filter_report.json").exists():
        logs.filter_report = read_json(path / "filter_report.json")
    data_dir = path if (path / "store.sqlite").is_file() or not logs.is_seed_dir else path.parent
    if (data_dir / "store.sqlite").is_file():
        from qrdistill.cost import stored_calls

        logs.store_path = data_dir / "store.sqlite"
        logs.usage = stored_calls(logs.store_path)
        logs.usage_groups = usage_groups(data_dir, logs.filtered if data_dir == path else None)
    return logs


def usage_groups(data_dir: Path, filtered: list[dict[str, Any]] | None = None) -> dict[str, tuple[str, str]]:
    """request key -> (task, style): teacher keys from paths.jsonl, judge keys from filtered.jsonl."""
    groups: dict[str, tuple[str, str]] = {}
    if (data_dir / "paths.jsonl").exists():
        for r in read_jsonl(data_dir / "paths.jsonl"):
            if isinstance(r.get("key"), str):
                groups[r["key"]] = (str(r.get("task", "?")), str(r.get("style", "?")))
    if filtered is None and (data_dir / "filtered.jsonl").exists():
        filtered = read_jsonl(data_dir / "filtered.jsonl")
    for r in filtered or []:
        judge = r.get("judge")
        if isinstance(judge, dict) and isinstance(judge.get("key"), str):
            groups[judge["key"]] = (str(r.get("task", "?")), str(r.get("style", "?")))
    return groups


def seed_groups(runs: list[RunLogs]) -> list[list[RunLogs]]:
    """Runs that are seeds of one configuration (same `RunLogs.family`, distinct seeds), in seed order;
    every other run alone.

    A family whose seeds repeat is not a seed sweep but configurations the
    variant names cannot tell apart (e.g. two data fractions of 100%), so
    its runs stay apart rather than be averaged.
    """
    families: dict[tuple[Any, ...], list[RunLogs]] = {}
    for r in runs:
        families.setdefault(r.family, []).append(r)
    out = []
    for fam in families.values():
        seeds = [r.seed for r in fam]
        if len(fam) > 1 and None not in seeds and len(set(seeds)) == len(seeds):
            out.append(sorted(fam, key=lambda r: r.seed))
        else:
            out += [[r] for r in fam]
    return out


def group_name(group: list[RunLogs]) -> str:
    """How a report names a run and its seeds: "D (seeds 0, 1, 2)" for `run --seeds` directories."""
    if len(group) == 1:
        return group[0].name
    seeds = ", ".join(str(r.seed) for r in group)
    parents = {r.path.parent for r in group}
    if all(r.is_seed_dir for r in group) and len(parents) == 1:
        return f"{parents.pop().name} (seeds {seeds})"
    return f"{', '.join(r.name for r in group)} (seeds {seeds})"


# ---------------------------------------------------------------- results (Table 1 / Table 2 layout)


def results_rows(runs: list[RunLogs]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per evaluated model and run (seeds of one configuration: one row); the tasks seen.

    Rows: {kind (base | trained | ensemble), key (eval summary key), name
    (student name without the @label suffix), model, model_id, base_key,
    method, variant, prefix, run, student, data_fraction, seeds, dirs,
    cells{task: cell}, average, average_std}. A row over several seeds has `seed_cell` cells
    and `seeds`/`dirs` listing every seed; zero-shot rows (base models) are
    shown once per base model, from the first run that evaluated it, since
    greedy decoding answers the same in every seed. Rows are grouped by base
    model like the paper's Table 1.
    """
    rows: list[dict[str, Any]] = []
    tasks: list[str] = []
    seen_base: set[str] = set()
    for group in seed_groups(runs):
        systems: dict[tuple[str, str], list[tuple[RunLogs, dict[str, Any]]]] = {}
        for run in group:
            s = run.eval_summary
            if s is None:
                continue
            for t in s.get("tasks", {}):
                if t not in tasks:
                    tasks.append(t)
            for key, st in s.get("students", {}).items():
                if st.get("kind") != "base":
                    systems.setdefault(("trained", key), []).append((run, st))
                elif key not in seen_base:
                    seen_base.add(key)
                    rows.append(_system_row("base", key, [(run, st)], run.name, s))
            for key, ens in s.get("ensembles", {}).items():
                members = list(ens.get("members", []))
                if not all(s["students"].get(m, {}).get("kind") == "base" for m in members):
                    systems.setdefault(("ensemble", key), []).append((run, ens))
                elif (ident := "ensemble:" + "+".join(members)) not in seen_base:
                    seen_base.add(ident)
                    rows.append(_system_row("base_ensemble", key, [(run, ens)], run.name, s))
        name = group_name(group)
        for (kind, key), members in systems.items():
            rows.append(_system_row(kind, key, members, name, members[0][0].eval_summary or {}))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (r["model"], order.get(r["method"], len(order)), r["run"], r["student"]))
    return rows, tasks


def _system_row(kind: str, key: str, members: list[tuple[RunLogs, dict[str, Any]]], run_name: str,
                summary: dict[str, Any]) -> dict[str, Any]:
    """A results row for one eval-summary entry, over the seeds in `members`."""
    run, entry = members[0]
    base = kind in ("base", "base_ensemble")
    if kind in ("ensemble", "base_ensemble"):
        member_keys = list(entry.get("members", []))
        models = sorted({model_label(summary["students"].get(m, {}).get("model", "")) for m in member_keys})
        model, model_id = " + ".join(models), None
        student = f"{key} ({' + '.join(_student_label(m) for m in member_keys)})"
    else:
        model_id = entry.get("model", "")
        model, student = model_label(model_id), _student_label(key)
    prefix = entry.get("prefix") or ("label" if key.endswith("@label") else None)
    row = {"kind": kind.removeprefix("base_"), "key": key,
           "name": key.removesuffix("@label"), "model": model, "model_id": model_id,
           "base_key": None if base or model_id is None else "base:" + model_id,
           "method": "zero_shot" if base else run.method, "variant": "" if base else run.variant,
           "prefix": None if base else prefix, "run": run_name, "student": student,
           "data_fraction": run.data_fraction,
           "seeds": [] if base else [m[0].seed for m in members], "dirs": [str(m[0].path) for m in members]}
    if len(members) == 1:
        return {**row, "cells": entry.get("tasks", {}), "average": entry.get("average"), "average_std": None}
    per_task: dict[str, list[dict[str, Any]]] = {}
    for _, e in members:
        for task, cell in e.get("tasks", {}).items():
            per_task.setdefault(task, []).append(cell)
    averages = [float(e["average"]) for _, e in members if e.get("average") is not None]
    avg = _over_seeds(averages) if len(averages) == len(members) else {"mean": None, "std": None}
    return {**row, "cells": {t: seed_cell(c) for t, c in per_task.items()}, "average": avg["mean"],
            "average_std": avg["std"]}


def _over_seeds(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1: seeds are a sample of all seeds) and range."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def seed_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One task's accuracy over seeds, from each seed's eval-summary cell: {n, seeds, accuracy (mean),
    std, min, max, strict{accuracy, std}, cut_by_budget, no_strict_answer (means)}.

    The spread over seeds replaces the per-seed bootstrap interval: it is
    the variation a rerun with another seed would show. Fields some seed
    lacks (summaries written before strict scoring) are left out.
    """
    flex = _over_seeds([float(c["accuracy"]) for c in cells])
    out: dict[str, Any] = {"n": cells[0].get("n"), "seeds": len(cells), "accuracy": flex["mean"],
                           "std": flex["std"], "min": flex["min"], "max": flex["max"]}
    if all(c.get("strict") for c in cells):
        strict = _over_seeds([float(c["strict"]["accuracy"]) for c in cells])
        out["strict"] = {"accuracy": strict["mean"], "std": strict["std"]}
    for k in ("cut_by_budget", "no_strict_answer"):
        if all(c.get(k) is not None for c in cells):
            out[k] = statistics.fmean(float(c[k]) for c in cells)
    shares = [_conflict_share(c) for c in cells]
    if all(x is not None for x in shares):
        out["conflict_share"] = statistics.fmean(shares)
    if all(c.get("letter_rule") for c in cells):
        out["letter_rule"] = {"accuracy": statistics.fmean(float(c["letter_rule"]["accuracy"]) for c in cells)}
    return out


def _conflict_share(cell: dict[str, Any]) -> float | None:
    """Share of answer lines whose letter and option text name different options (eval summary counts them)."""
    if cell.get("conflict_share") is not None:
        return float(cell["conflict_share"])
    if cell.get("conflicts") is None or not cell.get("n"):
        return None
    return cell["conflicts"] / cell["n"]


def method_label(method: str, variant: str = "", prefix: str | None = None) -> str:
    """The table's method name, e.g. "Distill Step-by-Step (label prefix)" or "QR-Distill (w/o Route)"."""
    extra = ([f"{prefix} prefix"] if prefix else []) + ([variant] if variant else [])
    return METHOD_NAMES.get(method, method) + (f" ({', '.join(extra)})" if extra else "")


def _row_label(r: dict[str, Any]) -> str:
    return method_label(r["method"], r["variant"], r["prefix"])


def _student_label(key: str) -> str:
    return "base:" + model_label(key[5:]) if key.startswith("base:") else key


def _pct(x: Any) -> str:
    return "–" if x is None or x != x else f"{100 * float(x):.1f}"


def _cell_text(a: dict[str, Any] | None) -> str:
    """ "flexible [interval] / strict"; over seeds "mean ± std (min–max) / strict mean"."""
    if a is None:
        return "–"
    if "std" in a:
        text = f"{_pct(a['accuracy'])} ± {_pct(a['std'])} ({_pct(a['min'])}–{_pct(a['max'])})"
    else:
        text = f"{_pct(a['accuracy'])} [{_pct(a.get('ci_low'))}, {_pct(a.get('ci_high'))}]"
    return text + (f" / {_pct(a['strict']['accuracy'])}" if a.get("strict") else "")


def results_markdown(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    head = ["model", "method", "run", "student", *tasks, "average", "seeds"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_cell_text(r["cells"].get(t)) for t in tasks]
        avg = _pct(r["average"]) + (f" ± {_pct(r['average_std'])}" if r["average_std"] is not None else "")
        seeds = str(len(r["seeds"])) if r["seeds"] else "–"
        out.append("| " + " | ".join([r["model"], _row_label(r), r["run"], r["student"], *cells, avg, seeds]) + " |")
    return "\n".join(out) + "\n"


def answer_form_markdown(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    """Per student x task: % of answers cut by the token budget / % without a strict answer line, and on
    multiple-choice tasks / % whose answer line's letter and option text disagree / accuracy by the letter
    alone (lm-eval's rule; the table's accuracy lets the option text win).

    These are the answers whose flexible credit rests on a value the model
    never stated as final, or on one of two values it stated. Empty when no
    row has the shares (older summaries, ensembles).
    """
    shown = [r for r in rows if any((r["cells"].get(t) or {}).get("cut_by_budget") is not None for t in tasks)]
    if not shown:
        return ""
    head = ["model", "method", "run", "student", *tasks]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in shown:
        cells = []
        for t in tasks:
            a = r["cells"].get(t) or {}
            if a.get("cut_by_budget") is None:
                cells.append("–")
                continue
            cell = f"{_pct(a['cut_by_budget'])} / {_pct(a.get('no_strict_answer'))}"
            conflicts, letter = _conflict_share(a), (a.get("letter_rule") or {}).get("accuracy")
            if conflicts is not None and letter is not None:
                cell += f" / {_pct(conflicts)} / {_pct(letter)}"
            cells.append(cell)
        out.append("| " + " | ".join([r["model"], _row_label(r), r["run"], r["student"], *cells]) + " |")
    return "\n".join(out) + "\n"


def results_csv(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    per_task = ("accuracy", "ci_low", "ci_high", "n", "std", "min", "max", "strict_accuracy", "cut_by_budget",
                "no_strict_answer")
    head = ["model", "method", "variant", "run", "student"]
    for t in tasks:
        head += [f"{t}_{k}" for k in per_task]
    w.writerow(head + ["average", "average_std", "prefix", "seeds"])
    for r in rows:
        line = [r["model"], r["method"], r["variant"], r["run"], r["student"]]
        for t in tasks:
            a = r["cells"].get(t) or {}
            values = {**a, "strict_accuracy": (a.get("strict") or {}).get("accuracy")}
            line += ["" if values.get(k) is None else values[k] for k in per_task]
        w.writerow(line + ["" if r["average"] is None else r["average"],
                           "" if r["average_std"] is None else r["average_std"], r["prefix"] or "",
                           " ".join(str(s) for s in r["seeds"])])
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


# ---------------------------------------------------------------- paired comparisons


def load_predictions(run_dir: str | Path, key: str, task: str) -> dict[str, dict[str, Any]] | None:
    """One student's per-question predictions on a task by question id (eval/<student>/<task>.jsonl), or None."""
    from qrdistill.stages.evaluate import predictions_path

    path = predictions_path(Path(run_dir), key, task)
    return {str(r["qid"]): r for r in read_jsonl(path, required=("qid", "correct"))} if path.exists() else None


def comparison_pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(A, B) results rows to compare, A - B: each trained student with the zero-shot base of its model;
    an RL student (`rl:<name>`) with the distilled student of its run it started from; and methods that
    trained the same student (name and model), each against plain QR-Distill when there is one, else
    every pair. Ensembles have no per-question file of their own and are left out."""
    from qrdistill.stages.evaluate import RL_PREFIX

    trained = [r for r in rows if r["kind"] == "trained"]
    bases = {r["key"]: r for r in rows if r["kind"] == "base"}
    pairs = [(r, bases[r["base_key"]]) for r in trained if r["base_key"] in bases]
    distilled = {(r["name"], r["model_id"], r["run"]): r for r in trained}
    pairs += [(r, d) for r in trained if r["name"].startswith(RL_PREFIX)
              and (d := distilled.get((r["name"].removeprefix(RL_PREFIX), r["model_id"], r["run"]))) is not None]
    same: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in trained:
        same.setdefault((r["name"], r["model_id"]), []).append(r)
    for cands in same.values():
        refs = [r for r in cands if r["method"] == "qrdistill" and not r["variant"]]
        if refs:
            pairs += [(ref, o) for ref in refs for o in cands if o not in refs]
        else:
            pairs += [(a, b) for i, a in enumerate(cands) for b in cands[i + 1:]]
    return pairs


def _seed_pairs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(A's run dir, B's candidate run dirs) per seed: seed k of A with seed k of B.

    A base model answers the same in every seed (greedy), so B = base reads
    the run's own base predictions, else those of the run its row came from.
    Two single runs pair whatever their seeds.
    """
    if b["kind"] == "base":
        return [(d, [d, *b["dirs"]]) for d in a["dirs"]]
    theirs = dict(zip(b["seeds"], b["dirs"], strict=True))
    pairs = [(d, [theirs[s]]) for s, d in zip(a["seeds"], a["dirs"], strict=True) if s in theirs]
    if not pairs and len(a["dirs"]) == len(b["dirs"]) == 1:
        pairs = [(a["dirs"][0], b["dirs"])]
    return pairs


def paired_comparisons(rows: list[dict[str, Any]], tasks: list[str], n_resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """A against B on the questions both answered, per `comparison_pairs` pair and task, flexible and strict:
    {a, b, task, seeds, questions, n, accuracy_a, accuracy_b, <metric>_diff, <metric>_ci_low,
    <metric>_ci_high, <metric>_p} with metric flexible or strict.

    Over several seeds the (question, seed) pairs are pooled and the interval
    resamples whole questions (`clusters`), since seeds of one question are
    not independent; the exact McNemar p is then given per seed (a list),
    as it needs one independent pair per question. Strict fields are None
    when the predictions predate strict scoring.
    """
    from qrdistill.evaluation.metrics import compare_paired, mcnemar_exact

    cache: dict[tuple[str, str, str], dict[str, dict[str, Any]] | None] = {}

    def preds(d: str, key: str, task: str) -> dict[str, dict[str, Any]] | None:
        if (d, key, task) not in cache:
            cache[(d, key, task)] = load_predictions(d, key, task)
        return cache[(d, key, task)]

    out = []
    for a, b in comparison_pairs(rows):
        for task in tasks:
            per_seed = []
            for da, dbs in _seed_pairs(a, b):
                pa = preds(da, a["key"], task)
                pb = next((p for p in (preds(d, b["key"], task) for d in dbs) if p is not None), None)
                qids = sorted(q for q in (pa or {}) if q in (pb or {}))  # as in eval/summary.json
                if qids:
                    per_seed.append([(q, pa[q], pb[q]) for q in qids])
            if not per_seed:
                continue
            pooled = [x for s in per_seed for x in s]
            row: dict[str, Any] = {"a": _system_label(a), "b": _system_label(b), "task": task,
                                   "seeds": len(per_seed), "questions": len({q for q, _, _ in pooled}),
                                   "n": len(pooled)}
            for metric, fld in (("flexible", "correct"), ("strict", "strict_correct")):
                if not all(fld in ra and fld in rb for _, ra, rb in pooled):
                    row.update({f"{metric}_{k}": None for k in ("diff", "ci_low", "ci_high", "p")})
                    continue
                clusters = [q for q, _, _ in pooled] if len(per_seed) > 1 else None
                c = compare_paired([bool(ra[fld]) for _, ra, _ in pooled], [bool(rb[fld]) for _, _, rb in pooled],
                                   n_resamples, confidence, seed, clusters)
                p = [c["p_value"]] if clusters is None else [
                    mcnemar_exact([bool(ra[fld]) for _, ra, _ in s], [bool(rb[fld]) for _, _, rb in s])["p_value"]
                    for s in per_seed]
                if metric == "flexible":
                    row.update({"accuracy_a": c["accuracy_a"], "accuracy_b": c["accuracy_b"]})
                row.update({f"{metric}_diff": c["diff"], f"{metric}_ci_low": c["ci_low"],
                            f"{metric}_ci_high": c["ci_high"], f"{metric}_p": p})
            out.append(row)
    return out


def _system_label(r: dict[str, Any]) -> str:
    """Method, student and run; a base model without its run, as every seed and run shares its answers."""
    label = f"{_row_label(r)}: {r['student']}"
    return label if r["kind"] == "base" else f"{label} ({r['run']})"


def _pts(x: Any) -> str:
    return "–" if x is None or x != x else f"{100 * float(x):+.1f}"


def _p_text(ps: list[float] | None) -> str:
    if ps is None:
        return "–"
    text = ", ".join(f"{p:.2g}" if p >= 1e-4 else "<1e-4" for p in ps)
    return f"per seed: {text}" if len(ps) > 1 else text


def comparisons_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = ["| A | B | task | seeds | n | flexible: A − B [interval] | p | strict: A − B [interval] | p |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["a"], r["b"], r["task"], str(r["seeds"]), str(r["n"])]
        for m in ("flexible", "strict"):
            cells += [f"{_pts(r[f'{m}_diff'])} [{_pts(r[f'{m}_ci_low'])}, {_pts(r[f'{m}_ci_high'])}]",
                      _p_text(r[f"{m}_p"])]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def comparisons_csv(rows: list[dict[str, Any]]) -> str:
    """The comparison rows with each p-value list as one cell, seeds separated by ';'."""
    flat = [{k: ";".join(f"{p:.6g}" for p in v) if isinstance(v, list) else ("" if v is None else v)
             for k, v in r.items()} for r in rows]
    return rows_csv(flat)


# ---------------------------------------------------------------- routing (Fig. 4, Fig. 5)


def routing_epoch_rows(routing: list[dict[str, Any]], epoch: int | str | None = None) -> list[dict[str, Any]]:
    """The rows of one epoch (default: the last), one per path (its last decision in that epoch);
    `epoch="all"`: every decision of the run."""
    if not routing:
        return []
    if epoch == "all":
        return list(routing)
    epoch = max(int(r["epoch"]) for r in routing) if epoch is None else epoch
    last: dict[Any, dict[str, Any]] = {}
    for i, r in enumerate(routing):
        if int(r["epoch"]) == epoch:
            last[r.get("path_key", i)] = r
    return list(last.values())


def route_inputs(run: RunLogs) -> tuple[list[dict[str, Any]], str]:
    """The per-path rows the routing figures average, each with `probs`, and their `ROUTE_SOURCES` key.

    The final router's noise-free P(route) when train wrote it; else each
    path's logged P(route) in the last epoch; else (logs without P(route))
    the hard samples as 0/1 probabilities, which turns the mean into the
    selection rate.
    """
    if run.routing_final:
        return run.routing_final, "final"
    last = routing_epoch_rows(run.routing or [])
    with_probs = [r for r in last if r.get("probs") is not None]
    if with_probs:
        return with_probs, "last_epoch"
    return [{**r, "probs": [float(a) for a in r["alpha"]]} for r in last], "hard"


def _students(r: dict[str, Any]) -> list[str]:
    return list(r.get("students") or [f"student{i}" for i in range(len(r["probs"]))])


def route_probability_rows(
    rows: list[dict[str, Any]], by: tuple[str, ...] = ("task", "style"), n_resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0
) -> list[dict[str, Any]]:
    """Mean P(route) per group and student with a percentile bootstrap interval over the group's paths.

    The paper's Fig. 4 (by task, style) and Fig. 5 (by difficulty, style)
    read the router's probabilities rather than its Gumbel samples: a sample
    is the probability plus noise, so sampled rates of a few paths scatter
    where the router is in fact indifferent. Returns rows {**group, student,
    paths, mean, ci_low, ci_high}, sorted by group then student.
    """
    from qrdistill.evaluation.metrics import bootstrap_ci

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(f) for f in by), []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: tuple(_sort_key(x) for x in k)):
        members = groups[key]
        for i, student in enumerate(_students(members[0])):
            p = [float(r["probs"][i]) for r in members]
            lo, hi = bootstrap_ci(p, n_resamples, confidence, seed)
            out.append({**dict(zip(by, key, strict=True)), "student": student, "paths": len(p),
                        "mean": statistics.fmean(p), "ci_low": lo, "ci_high": hi})
    return out


def route_spread(
    rows: list[dict[str, Any]], by: tuple[str, ...] = ("task",), n_resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0
) -> list[dict[str, Any]]:
    """How far a router separates styles: per group (task) x student, the max minus the min over styles
    of the style's mean P(route), with a bootstrap interval (paths resampled within each style).

    A router that ignores the path, e.g. the random one (every P = 1/2),
    gives exactly 0 [0, 0]. Max - min is biased upwards: a router whose
    P(route) varies from path to path for reasons unrelated to style spreads
    the style means too. So the spread is also compared with its permutation
    null: the same paths' P(route) with the style labels shuffled (`null_p95`,
    the null's 95th percentile, and `p_value`, the share of shuffles at least
    as spread, counting the observed one). Rows {**group, student, styles,
    spread, ci_low, ci_high, null_p95, p_value, top_style, bottom_style}; the
    top and bottom styles are None when the spread is 0.
    """
    import numpy as np

    groups: dict[tuple[Any, ...], dict[Any, list[dict[str, Any]]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(f) for f in by), {}).setdefault(r.get("style"), []).append(r)
    alpha = (1.0 - confidence) / 2.0
    out = []
    for key in sorted(groups, key=lambda k: tuple(_sort_key(x) for x in k)):
        styles = sorted(groups[key], key=_sort_key)
        for i, student in enumerate(_students(groups[key][styles[0]][0])):
            probs = [np.array([float(r["probs"][i]) for r in groups[key][s]]) for s in styles]
            means = np.array([p.mean() for p in probs])
            rng = np.random.default_rng(seed)
            boot = np.stack([p[rng.integers(0, p.size, size=(n_resamples, p.size))].mean(axis=1) for p in probs])
            lo, hi = np.quantile(boot.max(axis=0) - boot.min(axis=0), [alpha, 1.0 - alpha])
            spread = float(means.max() - means.min())
            pooled = np.concatenate(probs)
            cuts = np.cumsum([p.size for p in probs])[:-1]
            null = np.empty(n_resamples)
            for b in range(n_resamples):
                shuffled = np.split(rng.permutation(pooled), cuts)
                m = np.array([x.mean() for x in shuffled])
                null[b] = m.max() - m.min()
            p_value = float((1 + np.sum(null >= spread - 1e-12)) / (n_resamples + 1))
            out.append({**dict(zip(by, key, strict=True)), "student": student, "styles": len(styles),
                        "spread": spread, "ci_low": float(lo), "ci_high": float(hi),
                        "null_p95": float(np.quantile(null, 0.95)), "p_value": p_value,
                        "top_style": styles[int(means.argmax())] if spread > 0 else None,
                        "bottom_style": styles[int(means.argmin())] if spread > 0 else None})
    return out


def selection_rates(
    routing: list[dict[str, Any]], by: tuple[str, ...] = ("task", "style"), epoch: int | str | None = None
) -> list[dict[str, Any]]:
    """Selection rate = share of a group's paths routed to a student (alpha = 1), per student.

    `by` picks the grouping fields of routing.jsonl rows (() for one row per
    student: the router's usage). Returns rows {**group, student, paths,
    selected, rate}, sorted by group then student.
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
    `average` task is the mean over the run's tasks. Seeds of one
    configuration are one point, their mean, without an interval (their
    spread is in the results table).
    """
    rows, _ = results_rows(runs)
    out = []
    for r in rows:
        if r["kind"] != "trained" and r["key"] != "ensemble":
            continue
        point = {"method": r["method"], "student": r["key"], "data_fraction": r["data_fraction"]}
        for task, a in r["cells"].items():
            out.append({**point, "task": task, "accuracy": a.get("accuracy"), "ci_low": a.get("ci_low"),
                        "ci_high": a.get("ci_high"), "run": r["run"]})
        out.append({**point, "task": "average", "accuracy": r["average"], "ci_low": None, "ci_high": None,
                    "run": r["run"]})
    out.sort(key=lambda r: (r["method"], r["student"], r["task"] == "average", r["task"], r["data_fraction"]))
    return out


def has_sweep(rows: list[dict[str, Any]]) -> bool:
    """True when some method was run at two or more data fractions."""
    fracs: dict[str, set[float]] = defaultdict(set)
    for r in rows:
        fracs[r["method"]].add(r["data_fraction"])
    return any(len(v) >= 2 for v in fracs.values())


# ---------------------------------------------------------------- training time (Table 3)


def _epoch_times(ts: dict[str, Any]) -> list[float]:
    """Seconds of each whole epoch (a run's last, partial epoch would halve the mean)."""
    full = ts.get("time_per_full_epoch")
    return [float(x) for x in (full if full else ts.get("time_per_epoch") or [])]


def time_rows(runs: list[RunLogs]) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        ts = run.train_summary
        if not ts or not _epoch_times(ts):
            continue
        tpe = _epoch_times(ts)
        students = [s.get("name", "?") if isinstance(s, dict) else str(s) for s in ts.get("students", [])]
        out.append({"run": run.name, "method": run.method, "students": " + ".join(students),
                    "epochs": len(tpe), "seconds_per_epoch": sum(tpe) / len(tpe)})
    return out


def joint_vs_separate(runs: list[RunLogs]) -> list[dict[str, Any]]:
    """Table 3's comparison: a joint run's time per epoch over the sum of single-student runs of its students."""
    single: dict[str, float] = {}
    for run in runs:
        ts = run.train_summary or {}
        if _epoch_times(ts) and len(ts.get("students", [])) == 1:
            st = ts["students"][0]
            name = st.get("name") if isinstance(st, dict) else str(st)
            tpe = _epoch_times(ts)
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
        # Columns the filter writes only when they occur (an unverifiable answer check, a failed program run).
        optional = [k for k in ("unverifiable", "execution_failed", "contaminated", "duplicate")
                    if any(k in c for styles in rep.values() for c in styles.values())]
        return [{"task": t, "style": st, "paths": c.get("total"), "kept": c.get("kept"),
                 "wrong_answer": c.get("wrong_answer"), "judged_invalid": c.get("judged_invalid"),
                 "unparseable": c.get("unparseable", 0), **{k: c.get(k, 0) for k in optional}}
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


# ---------------------------------------------------------------- cost from stored usage


def cost_table(run: RunLogs) -> tuple[list[dict[str, Any]], list[str]]:
    """Stored usage per stage x task x style x model, with USD where the run's `prices` price the model,
    and the models without a price. Empty without a store."""
    from qrdistill.config import ModelPrice
    from qrdistill.cost import cost_rows

    if not run.usage:
        return [], []
    prices = {}
    for name, value in run.prices.items():
        if isinstance(value, dict):
            try:
                prices[name] = ModelPrice.model_validate(value)
            except ValueError:
                continue
    rows = cost_rows(run.usage, run.usage_groups, prices)
    if not any(r["unmetered"] for r in rows):
        rows = [{k: v for k, v in r.items() if k != "unmetered"} for r in rows]  # a column of zeros says nothing
    unpriced = sorted({r["model"] for r in rows if r["cost_usd"] is None})
    if not prices:
        # Tokens only: a cost column of blanks would read as "free".
        rows = [{k: v for k, v in r.items() if k != "cost_usd"} for r in rows]
    else:
        rows = [{**r, "cost_usd": None if r["cost_usd"] is None else round(r["cost_usd"], 6)} for r in rows]
    return rows, unpriced
