"""Does the default run distill? README's first command's configuration, timed, with its verdict.

Runs `qrdistill run` (the built-in offline default, no --config) in a fresh run
directory as a subprocess, exactly as a user would, and reads what it wrote:

- wall time of the whole command and of each stage (from the log lines' clock);
- per trained student and task: accuracy (flexible and strict) against its
  zero-shot base on the same questions, the difference with a paired bootstrap
  interval and the exact McNemar p-value (eval/summary.json "comparisons");
- the answer-free shortcut baselines of the multiple-choice task;
- the router's spread of mean P(route) across styles per task x student
  (train/routing_final.jsonl), beside what the default's targets ask for.

    python benchmarks/bench_demo.py [--run-dir /tmp/qrdistill-demo] [--out benchmarks/results/demo.json]
    python benchmarks/bench_demo.py --existing runs/default --log run.log --wall-seconds S
        (summarise a run already made, e.g. README's command 1 in a clean clone, from its log)
    ... --control runs/random_router
        (also compare each trained student, paired, with the same student of a control run made with
         `qrdistill run --run-dir runs/random_router --set train.router.mode=random`)

The Gemma and SmolLM2 copies are dequantized once into the user cache; pass
--cold to time that too (the cache is moved aside for the run and restored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGE_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d) \S+ qrdistill\.stages\.(\w+)")


def stage_times(log_text: str) -> dict[str, float]:
    """Seconds from each stage's first log line to the next stage's first line (the last: to the end)."""
    firsts: dict[str, int] = {}
    last = None
    for line in log_text.splitlines():
        m = STAGE_LINE.match(line)
        if not m:
            continue
        t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
        firsts.setdefault(m.group(4), t)
        last = t
    order = sorted(firsts.items(), key=lambda kv: kv[1])
    out = {}
    for (name, t), nxt in zip(order, order[1:] + [(None, last)], strict=True):
        out[name] = float((nxt[1] - t) % 86400)
    return out


def route_spread(run_dir: Path) -> list[dict]:
    from qrdistill.io import read_jsonl

    path = run_dir / "train" / "routing_final.jsonl"
    if not path.exists():
        return []
    rows = read_jsonl(path)
    out = []
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task]
        for k, student in enumerate(sub[0]["students"]):
            means = {}
            for style in sorted({r["style"] for r in sub}):
                ps = [r["probs"][k] for r in sub if r["style"] == style]
                means[style] = sum(ps) / len(ps)
            out.append({"task": task, "student": student, "by_style": means,
                        "spread": max(means.values()) - min(means.values())})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="/tmp/qrdistill-demo")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo.json"))
    ap.add_argument("--cold", action="store_true", help="include dequantizing the bundled models")
    ap.add_argument("--existing", help="summarise this finished run directory instead of running")
    ap.add_argument("--log", help="with --existing: the run's captured stderr (for stage times)")
    ap.add_argument("--wall-seconds", type=float, help="with --existing: the command's measured wall time")
    ap.add_argument("--control", help="a control run directory (e.g. random router) to compare each student with")
    args = ap.parse_args()
    control = Path(args.control) if args.control else None

    if args.existing:
        run_dir = Path(args.existing)
        log_text = Path(args.log).read_text() if args.log else ""
        return report(run_dir, log_text, args.wall_seconds, args.cold, Path(args.out),
                      "README command 1 in a clean clone (summarised with --existing)", control)
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ)
    moved = None
    if args.cold:
        from qrdistill.models import cache_dir

        cache = cache_dir()
        if cache.exists():
            moved = cache.with_name(cache.name + ".bench-aside")
            shutil.rmtree(moved, ignore_errors=True)
            cache.rename(moved)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "qrdistill", "run", "--run-dir", str(run_dir)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
    finally:
        if moved is not None:
            from qrdistill.models import cache_dir

            shutil.rmtree(cache_dir(), ignore_errors=True)
            moved.rename(cache_dir())
    wall = time.perf_counter() - t0
    (run_dir / "bench_demo.log").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench_demo.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        print(f"qrdistill run failed (exit {proc.returncode}) after {wall:.0f}s", file=sys.stderr)
        return 1
    return report(run_dir, proc.stderr, wall, args.cold, Path(args.out),
                  "qrdistill run  (built-in default, no --config)", control)


_ANSWER_DATE = re.compile(r"the answer is[^\n]*?(\d{1,2}/\d{1,2}/\d{4})", re.IGNORECASE)


def answer_date(output: str) -> str | None:
    """The date the last "The answer is" line states, or None."""
    found = _ANSWER_DATE.findall(output)
    return found[-1] if found else None


def date_text_gains(run_dir: Path) -> list[dict]:
    """The date task scored by the date each answer line states (= the gold option's date), each trained
    student against its base on the same questions, and the answers the letter alone made correct.

    The task's score lets the option text win over the letter, but an answer-line date that is no option
    leaves the letter to decide; students that write one constant letter get those answers right whenever
    the gold has that letter. This count shows how much of an accuracy that is."""
    from qrdistill.evaluation.metrics import compare_paired
    from qrdistill.io import read_jsonl

    def rows(path: Path) -> dict[str, dict]:
        return {r["qid"]: r for r in read_jsonl(path, required=("qid", "correct", "output", "gold"))}

    train = json.loads((run_dir / "train" / "summary.json").read_text())
    model_of = {s.get("name"): s.get("model") for s in train.get("students", []) if isinstance(s, dict)}
    out = []
    for pred in sorted((run_dir / "eval").glob("*/procedural_date.jsonl")):
        if pred.parent.name.startswith("base_"):
            continue
        base = run_dir / "eval" / f"base_{model_of.get(pred.parent.name)}" / "procedural_date.jsonl"
        if not base.exists():
            continue
        a, b = rows(pred), rows(base)
        qids = sorted(a.keys() & b.keys())

        def by_date(r: dict) -> bool:
            return answer_date(r["output"]) == r["gold"].split()[-1]

        c = compare_paired([by_date(a[q]) for q in qids], [by_date(b[q]) for q in qids])
        letter_only = sum(bool(a[q]["correct"]) and not by_date(a[q]) for q in qids)
        out.append({"student": pred.parent.name, "baseline": base.parent.name, "n": c["n"],
                    "date_accuracy": c["accuracy_a"], "base_date_accuracy": c["accuracy_b"],
                    "gain_points": 100 * c["diff"], "interval": [100 * c["ci_low"], 100 * c["ci_high"]],
                    "mcnemar_p": c["p_value"], "correct_without_the_gold_date": letter_only})
    return out


def against_control(run_dir: Path, control: Path) -> list[dict]:
    """Each trained student of `run_dir` against the same student of `control`, on the questions both
    answered: accuracy of each, paired bootstrap interval of the difference, exact McNemar p."""
    from qrdistill.evaluation.metrics import compare_paired
    from qrdistill.io import read_jsonl

    out = []
    for pred in sorted((run_dir / "eval").glob("*/*.jsonl")):
        student, task = pred.parent.name, pred.stem
        other = control / "eval" / student / f"{task}.jsonl"
        if student.startswith("base_") or not other.exists():
            continue
        a, b = ({r["qid"]: bool(r["correct"]) for r in read_jsonl(f, required=("qid", "correct"))}
                for f in (pred, other))
        qids = sorted(a.keys() & b.keys())
        c = compare_paired([a[q] for q in qids], [b[q] for q in qids])
        out.append({"student": student, "task": task, "n": c["n"], "accuracy": c["accuracy_a"],
                    "control_accuracy": c["accuracy_b"], "diff_points": 100 * c["diff"],
                    "interval": [100 * c["ci_low"], 100 * c["ci_high"]], "mcnemar_p": c["p_value"]})
    return out


def report(run_dir: Path, log_text: str, wall: float | None, cold: bool, out: Path, command: str,
           control: Path | None = None) -> int:
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    train = json.loads((run_dir / "train" / "summary.json").read_text())
    gains = []
    for c in summary.get("comparisons", []):
        st = summary["students"][c["student"]]["tasks"][c["task"]]
        base = summary["students"][c["baseline"]]["tasks"][c["task"]]
        gains.append({
            "student": c["student"], "baseline": c["baseline"], "task": c["task"], "n": c["n"],
            "accuracy": st["accuracy"], "base_accuracy": base["accuracy"],
            "strict_accuracy": st["strict"]["accuracy"], "base_strict_accuracy": base["strict"]["accuracy"],
            "gain_points": 100 * c["flexible"]["diff"],
            "gain_interval": [100 * c["flexible"]["ci_low"], 100 * c["flexible"]["ci_high"]],
            "mcnemar_p": c["flexible"]["p_value"],
            "strict_gain_points": 100 * c["strict"]["diff"], "strict_mcnemar_p": c["strict"]["p_value"],
            "cut_by_budget": st.get("cut_by_budget"),
        })
    result = {
        "command": command,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "cold_model_cache": cold,
        "wall_seconds": wall,
        "stage_seconds": stage_times(log_text),
        "train": {"steps": train["steps"], "paths": train["paths"], "total_time": train["total_time"],
                  "sequence_lengths": train.get("sequence_lengths"), "routing_rate": train.get("routing_rate")},
        "gains": gains,
        "shortcut_baselines": summary.get("shortcut_baselines"),
        "date_text": date_text_gains(run_dir),
        "route_spread": route_spread(run_dir),
    }
    if control is not None:
        result["control"] = {"run_dir": str(control), "comparisons": against_control(run_dir, control)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"qrdistill run: {(wall or 0) / 60:.1f} min  (" + ", ".join(f"{k} {v:.0f}s" for k, v in
                                                          result["stage_seconds"].items()) + ")")
    for g in gains:
        print(f"  {g['student']:<16} {g['task']:<18} {100 * g['accuracy']:5.1f}% vs base {100 * g['base_accuracy']:5.1f}%"
              f"  gain {g['gain_points']:+.1f} [{g['gain_interval'][0]:+.1f}, {g['gain_interval'][1]:+.1f}]"
              f"  McNemar p {g['mcnemar_p']:.2g}  (strict {g['strict_gain_points']:+.1f}, p {g['strict_mcnemar_p']:.2g})")
    for d in result["date_text"]:
        print(f"  {d['student']:<16} by the answer line's date: {100 * d['date_accuracy']:5.1f}% vs base "
              f"{100 * d['base_date_accuracy']:5.1f}%  gain {d['gain_points']:+.1f} [{d['interval'][0]:+.1f}, "
              f"{d['interval'][1]:+.1f}]  McNemar p {d['mcnemar_p']:.2g}; {d['correct_without_the_gold_date']} "
              f"scored correct without stating the gold date")
    for task, values in (summary.get("shortcut_baselines") or {}).items():
        print(f"  shortcuts on {task}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in values.items()))
    for r in result["route_spread"]:
        print(f"  P(route) spread across styles, {r['task']} / {r['student']}: {r['spread']:.2f}  "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["by_style"].items()))
    for c in (result.get("control") or {}).get("comparisons", []):
        print(f"  vs control {c['student']:<8} {c['task']:<18} {100 * c['accuracy']:5.1f}% vs "
              f"{100 * c['control_accuracy']:5.1f}%  diff {c['diff_points']:+.1f} [{c['interval'][0]:+.1f}, "
              f"{c['interval'][1]:+.1f}]  McNemar p {c['mcnemar_p']:.2g}")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
