"""Does the structure reward help RL after distillation? Two GRPO arms from one distilled student (issue 11).

From the same finished `qrdistill run` directory D, at equal RL steps and the same seeds, on the same
test questions of one task (default: procedural_date):

- arm `correctness`: rl.rewards.weights correctness 15, format 0, structure 0;
- arm `structure`:   correctness 15, format 0, structure 15;

so the structure term is the only difference between the arms (format is off in both: it would be a
second difference in what is rewarded, and the question is what the structure term adds). The
structure term uses the `claims` step extractor (offline, deterministic); every other rl setting is the
config's. Seed s is rl.seed = s in both arms, so the arms also share their sampling seed.

Each arm x seed runs in its own run directory O/<arm>/seed-<s>/, which holds copies of what the rl and
evaluate stages read from D: train/ (adapters, summary.json, routing logs; not its checkpoints),
filtered.jsonl, and D's saved predictions on the task (every trained student and base model, copied
with their mtimes so evaluate's row keys still match). D itself is never written. There the rl stage
trains rl:<student> (rl.students = [student]) and the evaluate stage, restricted to the task
(evaluate.tasks) and to the trained students (evaluate.students: trained), answers the test questions
with rl:<student> only: the distilled predictions are re-used (evaluate re-checks each row's key), and
the script checks afterwards that they were (`distilled_reused`). Both stages run in this process.
Run the same command again: a finished arm x seed is skipped by the stages themselves, an interrupted
one resumes (rl from its newest checkpoint, evaluate from its saved rows).

Reported (printed as markdown, saved as JSON with the command line, git SHA, config and wall times):
per arm and seed the accuracy of rl:<student> and of the distilled student on the same questions; per
seed and pooled over seeds (the (seed, question) pairs concatenated), structure vs correctness and each
arm vs the distilled student: accuracy difference in points, paired bootstrap interval and exact McNemar
p (`compare_paired`); pooled, also the interval with whole questions resampled (all seeds of a question
together: the seeds are not independent questions, so the pooled McNemar p is optimistic); the wall
time per RL step and the share of it in reward functions (rl/<student>/log.jsonl), and the mean reward
per term. A term with weight 0 is not computed, so the correctness arm has no structure reward to show.

    python benchmarks/bench_rl.py --distilled runs/demo [--config C.yaml] [--set KEY=VALUE ...]
        [--student smollm2] [--seeds 0 1 2] [--steps 8] [--max-completion-length N] [--task procedural_date]
        [--out runs/demo/bench_rl] [--save benchmarks/results/rl_<student>_<task>_<steps>steps_<n>seeds.json]

--config and --set must give the config D was made with (checked against D/meta/evaluate.json), since
the RL questions and the saved predictions' keys depend on it. Another --steps or rl setting trains
again in the same run directories (the rl stage sees a changed config); give it its own --out to keep both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("bench_rl")

#: the two arms: the structure term is their only difference
ARMS: dict[str, dict[str, float]] = {
    "correctness": {"correctness": 15.0, "format": 0.0, "structure": 0.0},
    "structure": {"correctness": 15.0, "format": 0.0, "structure": 15.0},
}
#: what the bench writes into each run directory: where it was copied from
SOURCE_FILE = "bench_rl_source.json"
#: the wall time of each stage when it last did work in that run directory
TIMES_FILE = "bench_rl_times.json"
#: D/train/ entries not copied: checkpoints and the router's embedding cache (nothing downstream reads them)
TRAIN_SKIP = {"checkpoints", "embeddings.pt", ".embeddings.pt.tmp"}
#: sections of the config that decide what RL trains on and which saved predictions still match
DRIFT_SECTIONS = ("seed", "tasks", "train")
DRIFT_EVALUATE = ("tasks", "limit", "max_new_tokens", "base_max_new_tokens", "stop_at_answer", "backend")


# ---------------------------------------------------------------- inputs


def fail(msg: str) -> NoReturn:
    from qrdistill.errors import QRDistillError

    raise QRDistillError(msg)


def eval_spec(cfg: Any, task: str) -> Any:
    """The evaluate task spec of `task`, as evaluate builds it (evaluate.tasks, else the test split of `tasks`)."""
    from qrdistill.config.evaluate import EvalTaskSpec

    specs = cfg.evaluate.tasks
    if specs is None:
        specs = [EvalTaskSpec(name=s.name, path=s.path, difficulty=s.difficulty) for s in cfg.tasks]
    found = [s for s in specs if s.name == task]
    if not found:
        fail(f"task {task!r} is not evaluated by this config (evaluate tasks: {', '.join(s.name for s in specs)})")
    if len(found) > 1:
        fail(f"task {task!r} is evaluated {len(found)} times by this config; bench_rl needs it once")
    return found[0]


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_leaves(v, f"{prefix}.{i}"))
        out[f"{prefix}.#"] = len(obj)
        return out
    return {prefix: obj}


def config_drift(cfg: Any, distilled: Path) -> list[str]:
    """Fields (present in both) where `cfg` differs from the config D's last evaluate ran with."""
    meta = distilled / "meta" / "evaluate.json"
    try:
        theirs = json.loads(meta.read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return []
    mine = cfg.model_dump(mode="json")

    def pick(d: dict[str, Any]) -> dict[str, Any]:
        ev = d.get("evaluate") or {}
        return {**{k: d.get(k) for k in DRIFT_SECTIONS}, "evaluate": {k: ev.get(k) for k in DRIFT_EVALUATE}}

    a, b = _leaves(pick(mine)), _leaves(pick(theirs))
    return sorted(k for k in a.keys() & b.keys() if a[k] != b[k])


def prediction_files(cfg: Any, label: str) -> list[str]:
    """D-relative paths of the saved predictions on `label` that evaluate (students: trained) reads: every
    trained student's (and a Distill Step-by-Step student's @label form), so none is answered again."""
    from qrdistill.stages.evaluate import LABEL_SUFFIX, predictions_path

    keys = [k for s in cfg.train.students for k in (s.name, s.name + LABEL_SUFFIX)]
    return [predictions_path(Path("."), k, label).as_posix() for k in keys]


def check_distilled(cfg: Any, distilled: Path, student: str, label: str) -> dict[str, Any]:
    """D's train summary, or a one-line error when D is not a finished, evaluated run of this config."""
    from qrdistill.stages.evaluate import predictions_path
    from qrdistill.train.artifacts import check_training

    if not distilled.is_dir():
        fail(f"--distilled {distilled}: not a directory")
    names = [s.name for s in cfg.train.students]
    if student not in names:
        fail(f"--student {student!r} is not a student of train.students (students: {', '.join(names)})")
    summary, why = check_training(distilled / "train", names)
    if summary is None:
        fail(f"--distilled {distilled} is not a finished run: {why}; run `qrdistill run` there first")
    if not (distilled / "filtered.jsonl").is_file():
        fail(f"--distilled {distilled}: no filtered.jsonl (the kept paths RL trains on)")
    pred = predictions_path(distilled, student, label)
    if not pred.is_file():
        fail(f"--distilled {distilled}: no saved predictions of {student} on {label} ({pred}); "
             "run `qrdistill evaluate` there first")
    if cfg.evaluate.backend != "hf":
        fail("evaluate.backend is not hf: bench_rl evaluates rl:<student> in this process, beside the distilled "
             "student's saved hf predictions")
    drift = config_drift(cfg, distilled)
    if drift:
        fail(f"this config differs from the one {distilled} was evaluated with ({distilled / 'meta' / 'evaluate.json'})"
             f" in {', '.join(drift[:6])}{' ...' if len(drift) > 6 else ''}: pass that run's config with --config")
    return summary


def prepare(distilled: Path, run_dir: Path, files: list[str], train_fingerprint: str) -> bool:
    """Copy what the stages read from D into `run_dir` (once: staged, then renamed); -> whether it copied."""
    marker = run_dir / SOURCE_FILE
    if marker.is_file():
        got = json.loads(marker.read_text(encoding="utf-8"))
        if got.get("train_fingerprint") != train_fingerprint:
            fail(f"{run_dir} was copied from another training than {distilled / 'train'}'s; delete it (or pick "
                 "another --out) to benchmark this one")
        return False
    from qrdistill.io import atomic_write_json

    tmp = run_dir.with_name(f".{run_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # copy2 (copytree's default) keeps mtimes: evaluate keys a row by its adapter's size and mtime
    shutil.copytree(distilled / "train", tmp / "train",
                    ignore=lambda d, names: [n for n in names if Path(d) == distilled / "train" and n in TRAIN_SKIP])
    shutil.copy2(distilled / "filtered.jsonl", tmp / "filtered.jsonl")
    copied = []
    for rel in files:
        if (distilled / rel).is_file():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(distilled / rel, tmp / rel)
            copied.append(rel)
    atomic_write_json(tmp / SOURCE_FILE, {"distilled": str(distilled), "train_fingerprint": train_fingerprint,
                                          "predictions": copied})
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, run_dir)
    return True


def arm_config(config: str | None, run_dir: Path, arm: str, seed: int, args: argparse.Namespace,
               spec: Any) -> Any:  # fmt: skip
    from qrdistill.config import load_config

    overrides: dict[str, Any] = {
        **dict(args.overrides),
        "run_dir": str(run_dir),
        "rl.seed": seed,
        "rl.students": [args.student],
        "rl.max_steps": args.steps,
        "rl.rewards.weights": dict(ARMS[arm]),
        "rl.rewards.extractor": "claims",
        "rl.rewards.backend": None,
        "evaluate.tasks": [spec.model_dump(mode="json")],
        "evaluate.students": "trained",
    }
    if args.max_completion_length is not None:
        overrides["rl.max_completion_length"] = args.max_completion_length
    return load_config(config, overrides)


# ---------------------------------------------------------------- one arm x seed


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    from qrdistill.io import read_jsonl

    return {str(r["qid"]): r for r in read_jsonl(path, required=("qid", "correct"))}


def run_one(config: str | None, distilled: Path, out: Path, arm: str, seed: int, args: argparse.Namespace,
            spec: Any, files: list[str], train_fingerprint: str) -> dict[str, Any]:  # fmt: skip
    from qrdistill.io import atomic_write_json
    from qrdistill.rl.grpo import LOG_FILE, read_log
    from qrdistill.stages import evaluate as evaluate_stage
    from qrdistill.stages import rl as rl_stage
    from qrdistill.stages.evaluate import RL_PREFIX, predictions_path

    student, label = args.student, spec.name
    run_dir = out / arm / f"seed-{seed}"
    copied = prepare(distilled, run_dir, files, train_fingerprint)
    cfg = arm_config(config, run_dir, arm, seed, args, spec)
    times_file = run_dir / TIMES_FILE
    times = json.loads(times_file.read_text(encoding="utf-8")) if times_file.is_file() else {}
    work = run_dir / rl_stage.RL_DIR / student
    rl_pred = predictions_path(run_dir, RL_PREFIX + student, label)

    log.info("bench_rl: %s, seed %d: %s", arm, seed, run_dir)
    before = _digest(work / rl_stage.SUMMARY_FILE)
    t0 = time.perf_counter()
    rl_stage.run(cfg, run_dir)
    rl_s = time.perf_counter() - t0
    trained = _digest(work / rl_stage.SUMMARY_FILE) != before
    if trained:
        times["rl_s"] = rl_s
    before = _digest(rl_pred)
    t0 = time.perf_counter()
    evaluate_stage.run(cfg, run_dir)
    eval_s = time.perf_counter() - t0
    answered = _digest(rl_pred) != before
    if answered:
        times["evaluate_s"] = eval_s
    atomic_write_json(times_file, times)
    _free_memory()

    st = json.loads((work / rl_stage.SUMMARY_FILE).read_text(encoding="utf-8"))
    steps = read_log(work / LOG_FILE)
    rl_rows = _rows(rl_pred)
    dist_file = predictions_path(run_dir, student, label)
    dist_rows = _rows(dist_file)
    if set(rl_rows) != set(dist_rows):
        fail(f"{rl_pred}: rl:{student} answered {len(rl_rows)} questions, the distilled student {len(dist_rows)}; "
             "they must be the same questions")
    saved = _rows(predictions_path(distilled, student, label))
    reused = all(q in saved and saved[q].get("key") == r.get("key") for q, r in dist_rows.items())
    if not reused:
        log.warning("bench_rl: evaluate answered %s's questions again in %s (its saved rows' keys did not match): "
                    "the comparison is with these new answers, not D's", student, run_dir)
    walls = [r["wall_s"] for r in steps if r.get("wall_s") is not None]
    timed = [(r["wall_s"], r["reward_s"]) for r in steps if r.get("wall_s") is not None
             and r.get("reward_s") is not None]  # fmt: skip
    return {
        "arm": arm, "seed": seed, "run_dir": str(run_dir), "weights": ARMS[arm],
        "copied_from_distilled": copied, "trained_now": trained, "answered_now": answered,
        "distilled_reused": reused,
        "stage_seconds": times,
        "rl": {
            "steps": len(steps),
            "max_completion_length": st.get("max_completion_length"),
            "wall_per_step_s": _mean(walls),
            "wall_per_step_after_first_s": _mean(walls[1:]) if len(walls) > 1 else None,
            "reward_s_per_step": _mean([s for _, s in timed]),
            "reward_share": (sum(s for _, s in timed) / sum(w for w, _ in timed))
            if timed and sum(w for w, _ in timed) > 0 else None,
            "mean_rewards": st.get("mean_rewards"),
            "mean_reward": st.get("mean_reward"),
            "mean_kl": st.get("mean_kl"),
            "references": st.get("references"),
            "reward_failures": st.get("reward_failures"),
        },
        "eval": {
            "n": len(rl_rows),
            "accuracy": _acc(rl_rows.values(), "correct"),
            "strict_accuracy": _acc(rl_rows.values(), "strict_correct"),
            "cut_by_budget": _share(rl_rows.values(), lambda r: r.get("stop") == "budget"),
            "distilled_accuracy": _acc(dist_rows.values(), "correct"),
            "distilled_strict_accuracy": _acc(dist_rows.values(), "strict_correct"),
        },
        # the per-question outcomes the comparisons pair (not saved: the predictions files hold them)
        "_correct": {q: bool(r["correct"]) for q, r in rl_rows.items()},
        "_distilled": {q: bool(r["correct"]) for q, r in dist_rows.items()},
    }


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _acc(rows: Any, key: str) -> float | None:
    rows = list(rows)
    return sum(bool(r.get(key)) for r in rows) / len(rows) if rows else None


def _share(rows: Any, pred: Any) -> float | None:
    rows = list(rows)
    return sum(bool(pred(r)) for r in rows) / len(rows) if rows else None


# ---------------------------------------------------------------- comparisons


def compare(a: str, b: str, pairs: list[tuple[int, str, bool, bool]], cfg: Any, seed: int | None) -> dict[str, Any]:
    """a vs b on (seed, qid, a correct, b correct) rows: diff in points, paired bootstrap interval, McNemar p;
    pooled (seed None) also the interval with whole questions resampled."""
    from qrdistill.evaluation.metrics import compare_paired, mcnemar_exact

    ev = cfg.evaluate
    xs, ys = [p[2] for p in pairs], [p[3] for p in pairs]
    c = compare_paired(xs, ys, n_resamples=ev.bootstrap_resamples, confidence=ev.confidence, seed=cfg.seed)
    row = {"a": a, "b": b, "seed": seed if seed is not None else "pooled", "n": c["n"],
           "accuracy_a": c["accuracy_a"], "accuracy_b": c["accuracy_b"], "diff_points": 100 * c["diff"],
           "interval": [100 * c["ci_low"], 100 * c["ci_high"]], "mcnemar_p": c["p_value"],
           "a_only": c["a_only"], "b_only": c["b_only"], "confidence": c["confidence"]}  # fmt: skip
    if seed is None:
        k = compare_paired(xs, ys, n_resamples=ev.bootstrap_resamples, confidence=ev.confidence, seed=cfg.seed,
                           clusters=[p[1] for p in pairs])  # fmt: skip
        row["interval_by_question"] = [100 * k["ci_low"], 100 * k["ci_high"]]
        row["questions"] = len({p[1] for p in pairs})
        # One vote per question (right in more than half of its seeds), so the p-value counts questions, not
        # (seed, question) pairs: the distilled side repeats one greedy answer per seed.
        votes: dict[str, list[tuple[bool, bool]]] = {}
        for _, qid, x, y in pairs:
            votes.setdefault(qid, []).append((x, y))
        qa = [2 * sum(x for x, _ in v) > len(v) for v in votes.values()]
        qb = [2 * sum(y for _, y in v) > len(v) for v in votes.values()]
        row["mcnemar_p_by_question"] = mcnemar_exact(qa, qb)["p_value"]
    return row


def comparisons(runs: list[dict[str, Any]], seeds: list[int], student: str, cfg: Any) -> list[dict[str, Any]]:
    by = {(r["arm"], r["seed"]): r for r in runs}
    out = []

    def pairs(a: str, b: str, s: int) -> list[tuple[int, str, bool, bool]]:
        ra = by[(a, s)]["_correct"]
        rb = by[(b, s)]["_correct"] if b in ARMS else by[(a, s)]["_distilled"]
        return [(s, q, ra[q], rb[q]) for q in sorted(ra.keys() & rb.keys())]

    distilled = f"distilled {student}"
    for a, b in (("structure", "correctness"), ("structure", distilled), ("correctness", distilled)):
        pooled: list[tuple[int, str, bool, bool]] = []
        for s in seeds:
            p = pairs(a, b, s)
            pooled += p
            out.append(compare(a, b, p, cfg, s))
        out.append(compare(a, b, pooled, cfg, None))
    return out


def timing(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for arm in ARMS:
        mine = [r["rl"] for r in runs if r["arm"] == arm]
        terms = sorted({t for r in mine for t in (r["mean_rewards"] or {})})
        out[arm] = {
            "wall_per_step_s": _mean([r["wall_per_step_s"] for r in mine if r["wall_per_step_s"] is not None]),
            "reward_share": _mean([r["reward_share"] for r in mine if r["reward_share"] is not None]),
            "reward_s_per_step": _mean([r["reward_s_per_step"] for r in mine if r["reward_s_per_step"] is not None]),
            "mean_rewards": {t: _mean([r["mean_rewards"][t] for r in mine
                                       if (r["mean_rewards"] or {}).get(t) is not None]) for t in terms},
        }
    return out


# ---------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def _pts(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:+.1f}"


def _p(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.2g}" if x >= 1e-4 else "<1e-4")


def _num(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def markdown(result: dict[str, Any]) -> str:
    s, task = result["student"], result["task"]
    lines = [f"## bench_rl: {s} on {task}, {result['steps']} RL steps per arm, seeds {result['seeds']}", "",
             f"Distilled run {result['distilled_run']}; arms: " + "; ".join(
                 f"{a} (" + ", ".join(f"{t} {w:g}" for t, w in ws.items()) + ")" for a, ws in result["arms"].items()),
             "", f"| arm | seed | n | rl:{s} % | strict % | distilled % | s/step | in rewards | mean reward per term |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["runs"]:
        e, rl = r["eval"], r["rl"]
        terms = ", ".join(f"{t} {_num(v, '.3f')}" for t, v in (rl["mean_rewards"] or {}).items())
        lines.append(f"| {r['arm']} | {r['seed']} | {e['n']} | {_pct(e['accuracy'])} | {_pct(e['strict_accuracy'])} | "
                     f"{_pct(e['distilled_accuracy'])} | {_num(rl['wall_per_step_s'])} | "
                     f"{_pct(rl['reward_share'])} % | {terms} |")
    conf = int(round(100 * result["comparisons"][0]["confidence"])) if result["comparisons"] else 95
    lines += ["", f"Paired on the same questions (flexible accuracy; difference in points, {conf} % paired bootstrap "
              "interval, exact McNemar p). Pooled: the (seed, question) pairs of every seed together; "
              "'by question' resamples whole questions (all seeds of one together); the pooled p treats "
              "the pairs as independent (optimistic), p by question takes one vote per question (right in more "
              "than half of its seeds).", "",
              "| a vs b | seed | n | a % | b % | diff | interval | by question | p | p by question |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        byq = c.get("interval_by_question")
        lines.append(f"| {c['a']} vs {c['b']} | {c['seed']} | {c['n']} | {_pct(c['accuracy_a'])} | "
                     f"{_pct(c['accuracy_b'])} | {_pts(c['diff_points'])} | [{_pts(c['interval'][0])}, "
                     f"{_pts(c['interval'][1])}] | {f'[{_pts(byq[0])}, {_pts(byq[1])}]' if byq else ''} | "
                     f"{_p(c['mcnemar_p'])} | {_p(c.get('mcnemar_p_by_question'))} |")
    lines += ["", "| arm | s/step (mean over seeds) | reward s/step | share in rewards | mean reward per term |",
              "|---|---|---|---|---|"]
    for arm, t in result["timing"].items():
        terms = ", ".join(f"{k} {_num(v, '.3f')}" for k, v in t["mean_rewards"].items())
        lines.append(f"| {arm} | {_num(t['wall_per_step_s'])} | {_num(t['reward_s_per_step'], '.3f')} | "
                     f"{_pct(t['reward_share'])} % | {terms} |")
    if not all(r["distilled_reused"] for r in result["runs"]):
        lines += ["", "Warning: in some run directories evaluate answered the distilled student's questions again "
                  "(its saved rows in the distilled run did not match): see `distilled_reused`."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distilled", required=True, help="a finished `qrdistill run` directory (never written)")
    ap.add_argument("--config", help="the YAML config D was run with (default: the built-in demo, as "
                                     "`qrdistill run` without --config)")
    ap.add_argument("--student", help="the train.students name to run RL on (default: the first)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="rl.seed values (default 0 1 2)")
    ap.add_argument("--steps", type=int, help="rl.max_steps of both arms (default: the config's)")
    ap.add_argument("--max-completion-length", type=int, help="rl.max_completion_length (default: the config's, "
                                                              "auto = evaluate's budget)")
    ap.add_argument("--task", default="procedural_date", help="the evaluated task to compare on")
    ap.add_argument("--out", help="work root of the arm x seed run directories (default: <distilled>/bench_rl)")
    ap.add_argument("--save", help="result JSON (default: benchmarks/results/rl_<student>_<task>_<steps>steps_<n>seeds.json)")
    ap.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="KEY=VALUE",
                    help="override a config field as `qrdistill --set` does (repeatable), e.g. what D was run with")
    ap.add_argument("--verbose", "-v", action="store_true")
    return ap.parse_args(argv)


def _override(text: str) -> tuple[str, Any]:
    import yaml

    key, eq, value = text.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"--set {key.strip()}: not a YAML value ({str(e).splitlines()[0]})") from None


def bench(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from qrdistill.config import load_config
    from qrdistill.io import atomic_write_json, git_sha
    from qrdistill.rl.grpo import require_trl

    distilled = Path(args.distilled).resolve()
    base = load_config(args.config, dict(args.overrides))
    args.student = args.student or base.train.students[0].name
    args.steps = args.steps if args.steps is not None else base.rl.max_steps
    if args.steps < 1 or (args.max_completion_length is not None and args.max_completion_length < 1):
        fail("--steps and --max-completion-length must be positive")
    if len(set(args.seeds)) != len(args.seeds):
        fail("--seeds lists a seed twice")
    spec = eval_spec(base, args.task)
    train_summary = check_distilled(base, distilled, args.student, spec.name)
    require_trl()
    out = Path(args.out).resolve() if args.out else distilled / "bench_rl"
    if out == distilled or any(out.is_relative_to(distilled / d) for d in ("train", "eval", "rl", "meta")):
        fail(f"--out {out} is (inside) the distilled run's own artifacts; give a folder of its own")
    save = Path(args.save) if args.save else ROOT / "benchmarks" / "results" / f"rl_{args.student}_{args.task}_{args.steps}steps_{len(args.seeds)}seeds.json"
    files = prediction_files(base, spec.name)
    t0 = time.perf_counter()
    runs = [run_one(args.config, distilled, out, arm, s, args, spec, files, train_summary["fingerprint"])
            for s in args.seeds for arm in ARMS]
    wall = time.perf_counter() - t0
    cfg = arm_config(args.config, out / "structure" / f"seed-{args.seeds[0]}", "structure", args.seeds[0], args,
                     spec)  # fmt: skip
    result = {
        "benchmark": "bench_rl",
        "command": shlex.join([sys.executable, *argv]),
        "git_sha": git_sha(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "cuda": _cuda()},
        "distilled_run": str(distilled),
        "distilled_train_fingerprint": train_summary["fingerprint"],
        "out": str(out),
        "student": args.student,
        "task": spec.name,
        "seeds": list(args.seeds),
        "steps": args.steps,
        "arms": ARMS,
        # the structure arm's resolved config at the first seed; the other runs differ in rl.seed and weights
        "config": cfg.model_dump(mode="json"),
        "wall_seconds_this_invocation": wall,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
        "comparisons": comparisons(runs, list(args.seeds), args.student, cfg),
        "timing": timing(runs),
    }
    text = markdown(result)
    result["markdown"] = text
    atomic_write_json(save, result)
    print(text)
    print(f"saved {save}")
    return result


def _cuda() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    from qrdistill.errors import QRDistillError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        bench(args, [str(Path(__file__)), *argv])
    except QRDistillError as e:
        print(f"bench_rl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_rl: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
