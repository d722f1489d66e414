"""`qrdistill table` (issue 9, item 4): every row x seed runs, a rerun skips finished rows, a kill mid-row resumes,
and the table has the paired columns, with values that a hand computation from the saved predictions reproduces.

The end-to-end tests run a real table (zero-shot, SKD, QR-Distill; seeds 0 and 1) on the tiny students of two
architectures: first `qrdistill table` in a subprocess, killed with SIGKILL inside QR-Distill's first seed, then
the same command again in this process, which must skip the finished rows and resume the killed training from
its checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import subprocess
from pathlib import Path

import pytest
import yaml
from train_helpers import kill_when, qrdistill_cmd, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [0, 1]
ROWS = ["zero_shot", "skd", "qrdistill"]
QR_STEPS, EVERY = 12, 2

pytestmark = pytest.mark.usefixtures("one_thread")


def table_config(path: Path, root: Path, models: list[str]) -> Path:
    llama, gpt2 = models
    base = {
        "seed": 0,
        "tasks": [{"name": "procedural_date", "split": "train", "limit": 2}],
        "generate": {"styles": ["cot", "vanilla"]},
        "train": {
            "students": [
                {"name": "llama", "model": llama, "lr": 5e-3,
                 "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
                {"name": "gpt2", "model": gpt2, "lr": 5e-3, "lora": {"r": 2, "alpha": 4, "target_modules": ["c_attn"]}},
            ],
            "router": {"encoder": llama}, "max_steps": 4, "checkpoint_every": EVERY, "batch_size": 2,
            "warmup_ratio": 0.0,
        },
        "evaluate": {"students": "trained", "tasks": [{"name": "procedural_date", "split": "test", "limit": 3}],
                     "max_new_tokens": 6, "bootstrap_resamples": 200},
    }
    table = {
        "base": base, "seeds": SEEDS, "run_dir": str(root),
        "rows": [
            {"name": "zero_shot", "label": "Zero-shot", "override": {"stages": ["evaluate"],
                                                                     "evaluate": {"students": "base"}}},
            {"name": "skd", "label": "SKD", "override": {"train": {"method": "skd"}}},
            # More steps, so that the kill lands between a checkpoint and the end of the training.
            {"name": "qrdistill", "label": "QR-Distill", "override": {"train": {"max_steps": QR_STEPS}}},
        ],
    }
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    return path


@contextlib.contextmanager
def captured_logs():
    """INFO records of every logger, as `qrdistill` prints them (pytest's own handlers stay in place)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, root = Keep(level=logging.INFO), logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file the rows and the shared data hold (the report and lock files aside)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")
            if p.is_file() and p.name != ".qrdistill.lock" and p.relative_to(root).parts[0] != "table"}


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory, models):
    from qrdistill.cli import main

    base = tmp_path_factory.mktemp("table")
    root = base / "run"
    config = table_config(base / "table.yaml", root, models)
    qr0 = root / "qrdistill" / "seed-0"
    proc = subprocess.Popen(qrdistill_cmd("table", "--config", str(config)), cwd=ROOT,
                            env={**subprocess_env(), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: (qr0 / "train" / "checkpoints" / f"step-{EVERY}").exists(), "the table")
    assert not (qr0 / "train" / "summary.json").exists(), "the kill came too late to test anything"
    killed = {"before": snapshot(root), "marker": json.loads((qr0 / "table_seed.json").read_text())}
    with captured_logs() as logs:
        assert main(["table", "--config", str(config)]) == 0
    return {"root": root, "config": config, "killed": killed, "logs": logs}


def _eval(root: Path, row: str, seed: int) -> dict:
    return json.loads((root / row / f"seed-{seed}" / "eval" / "summary.json").read_text())


@pytest.mark.slow
def test_kill_mid_row_resumes_and_finished_rows_are_not_rerun(killed_then_resumed):
    root, logs, killed = (killed_then_resumed[k] for k in ("root", "logs", "killed"))
    assert killed["marker"]["status"] == "running"
    text = "\n".join(logs)
    for row in ("zero_shot", "skd"):
        assert f"table: row {row}: seeds 0, 1 finished earlier, skipped" in text
    ckpts = root / "qrdistill" / "seed-0" / "train" / "checkpoints"
    resumed = [m for m in logs if m.startswith("train: resuming from") and str(ckpts) in m]
    assert resumed, text[-3000:]
    # The resumed training ran each optimizer step once: the killed attempt's steps were not repeated.
    log_rows = [json.loads(x) for x in (ckpts.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_rows] == list(range(1, QR_STEPS + 1))
    marker = json.loads((root / "qrdistill" / "seed-0" / "table_seed.json").read_text())
    assert marker["status"] == "finished" and len(marker["attempts"]) == 2
    assert marker["attempts"][0]["ended"].startswith("killed") and marker["attempts"][0]["wall_s"] > 0
    assert marker["wall_s"] == pytest.approx(sum(a["wall_s"] for a in marker["attempts"]))
    # The rows that finished before the kill were left exactly as they were.
    before = {k: v for k, v in killed["before"].items() if k.split("/")[0] in ("zero_shot", "skd")}
    after = snapshot(root)
    assert before and {k: after.get(k) for k in before} == before


@pytest.mark.slow
def test_every_row_and_seed_ran_with_the_data_shared(killed_then_resumed):
    root = killed_then_resumed["root"]
    for row in ROWS:
        for s in SEEDS:
            sub = root / row / f"seed-{s}"
            summary = _eval(root, row, s)
            marker = json.loads((sub / "table_seed.json").read_text())
            assert marker["status"] == "finished" and marker["seed"] == s
            if row == "zero_shot":
                assert not (sub / "train").exists()
                assert set(summary["students"]) == {f"base:{m}" for m in _models(root)}
            else:
                train = json.loads((sub / "train" / "summary.json").read_text())
                assert train["seed"] == s and train["method"] == ("skd" if row == "skd" else "qrdistill")
                assert train["steps"] == (4 if row == "skd" else QR_STEPS)
                assert set(summary["students"]) == {"llama", "gpt2"}
    # Seeds train different adapters.
    a = (root / "qrdistill" / "seed-0" / "train" / "adapters" / "llama" / "adapter_model.safetensors").read_bytes()
    b = (root / "qrdistill" / "seed-1" / "train" / "adapters" / "llama" / "adapter_model.safetensors").read_bytes()
    assert a != b
    # One generate + filter for both trained rows (their data configs are identical), copied into each row.
    data_dirs = [p for p in (root / "data").iterdir() if p.is_dir()]
    assert len(data_dirs) == 1 and (data_dirs[0] / "store.sqlite").is_file()
    for row in ("skd", "qrdistill"):
        assert (root / row / "filtered.jsonl").read_bytes() == (data_dirs[0] / "filtered.jsonl").read_bytes()
        assert not (root / row / "store.sqlite").exists()
    # The zero-shot row's second seed started from the first seed's greedy base predictions.
    for p in (root / "zero_shot" / "seed-0" / "eval").glob("base_*/*.jsonl"):
        assert (root / "zero_shot" / "seed-1" / "eval" / p.parent.name / p.name).read_text() == p.read_text()


def _models(root: Path) -> set[str]:
    cfg = json.loads((root / "qrdistill" / "seed-0" / "meta" / "train.json").read_text())["config"]
    return {s["model"] for s in cfg["train"]["students"]}


@pytest.mark.slow
def test_rerun_skips_every_finished_row(killed_then_resumed):
    from qrdistill.cli import main

    root, config = killed_then_resumed["root"], killed_then_resumed["config"]
    before = snapshot(root)
    # A figure of an earlier report over fewer seeds: the new report must not leave it beside its own.
    stale = root / "table" / "fig4_routing_by_task_qrdistill_seed_0.png"
    stale.write_bytes(b"old")
    with captured_logs() as logs:
        assert main(["table", "--config", str(config)]) == 0
    text = "\n".join(logs)
    assert not stale.exists()
    routing_files = json.loads((root / "table" / "table.json").read_text())["routing_files"]
    assert routing_files and all("seeds_0_1" in f for f in routing_files), routing_files
    for row in ROWS:
        assert f"table: row {row}: seeds 0, 1 finished earlier, skipped" in text
    # No stage ran: none of them logged, and no file of a row or of the shared data changed.
    assert not [m for m in logs if m.startswith(("train:", "evaluation summary", "generate", "filter", "seed "))]
    assert snapshot(root) == before
    assert (root / "table" / "table.md").is_file()


def _hand_compare(a_dirs: dict[int, Path], a_key: str, b_dirs: dict[int, Path], b_key: str, task: str):
    """Pooled difference over (question, seed) pairs and the question-level exact McNemar p, written out."""
    from qrdistill.stages.evaluate import predictions_path

    diffs, margin = [], {}
    for s, da in a_dirs.items():
        pa = {json.loads(x)["qid"]: json.loads(x)["correct"] for x in
              predictions_path(da, a_key, task).read_text().splitlines()}
        pb = {json.loads(x)["qid"]: json.loads(x)["correct"] for x in
              predictions_path(b_dirs[s], b_key, task).read_text().splitlines()}
        for q in pa:
            diffs.append(int(pa[q]) - int(pb[q]))
            margin[q] = margin.get(q, 0) + int(pa[q]) - int(pb[q])
    wins, losses = sum(m > 0 for m in margin.values()), sum(m < 0 for m in margin.values())
    k, n = min(wins, losses), wins + losses
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return sum(diffs) / len(diffs), p


@pytest.mark.slow
def test_the_table_has_the_paired_columns(killed_then_resumed):
    root = killed_then_resumed["root"]
    lines = list(csv.DictReader((root / "table" / "table.csv").open()))
    cols = set(lines[0])
    for what in ("reference", "zero_shot"):
        for k in ("diff", "ci_low", "ci_high", "p", "p_per_seed", "strict_diff", "strict_p"):
            assert f"vs_{what}_{k}" in cols
    assert {"accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max", "seeds"} <= cols
    assert {(r["row"], r["student"]) for r in lines} == {(row, s) for row in ROWS for s in ("llama", "gpt2")}
    cuts = _eval(root, "zero_shot", 0)["shortcut_baselines"]["procedural_date"]
    assert cuts and f"Answer-free shortcuts on these questions (accuracy %): nearest_date " \
        f"{100 * cuts['nearest_date']:.1f}" in (root / "table" / "table.md").read_text()
    dirs = {row: {s: root / row / f"seed-{s}" for s in SEEDS} for row in ROWS}
    base_key = {s["name"]: "base:" + s["model"] for s in json.loads(
        (root / "qrdistill" / "seed-0" / "meta" / "train.json").read_text())["config"]["train"]["students"]}
    for r in lines:
        task, row, student = r["task"], r["row"], r["student"]
        key = base_key[student] if row == "zero_shot" else student
        accs = [_eval(root, row, s)["students"][key]["tasks"][task]["accuracy"] for s in SEEDS]
        assert float(r["accuracy_mean"]) == pytest.approx(sum(accs) / len(accs))
        assert r["seeds"] == "0 1"
        if row == "qrdistill":
            assert r["vs_reference_diff"] == "" and r["vs_reference_row"] == ""
        else:
            diff, p = _hand_compare(dirs[row], key, dirs["qrdistill"], student, task)
            assert r["vs_reference_row"] == "qrdistill"
            assert float(r["vs_reference_diff"]) == pytest.approx(diff)
            assert float(r["vs_reference_p"]) == pytest.approx(p)
            assert float(r["vs_reference_ci_low"]) <= diff <= float(r["vs_reference_ci_high"])
            assert len(r["vs_reference_p_per_seed"].split(";")) == len(SEEDS)
        if row == "zero_shot":
            assert r["vs_zero_shot_diff"] == ""
        else:
            diff, p = _hand_compare(dirs[row], student, dirs["zero_shot"], base_key[student], task)
            assert float(r["vs_zero_shot_diff"]) == pytest.approx(diff)
            assert float(r["vs_zero_shot_p"]) == pytest.approx(p)
    md = (root / "table" / "table.md").read_text()
    assert "Δ vs QR-Distill" in md and "Δ vs Zero-shot" in md and "## Wall time" in md
    assert "## Routing of the reference row (QR-Distill)" in md
    routing = json.loads((root / "table" / "table.json").read_text())["routing_files"]
    assert any(f.startswith("fig4_") and f.endswith(".png") for f in routing)
    assert all((root / "table" / f).is_file() for f in routing)
    assert (root / "table" / "analysis" / "report.md").is_file()
    wall = json.loads((root / "table" / "wall_time.json").read_text())
    for row in ROWS:
        w = wall["rows"][row]
        assert w["total_s"] == pytest.approx(sum(v["wall_s"] for v in w["seeds"].values()))
        assert all(v["wall_s"] > 0 for v in w["seeds"].values())
    (data,) = wall["data"].values()
    assert sorted(data["rows"]) == ["qrdistill", "skd"] and data["wall_s"] > 0


# ---------------------------------------------------------------- the statistics on outcomes known by hand


def _fake_seed(sub: Path, key: str, correct: list[bool], task: str = "t") -> None:
    from qrdistill.stages.evaluate import predictions_path

    path = predictions_path(sub, key, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"qid": f"q{i}", "correct": c, "strict_correct": c}) + "\n"
                            for i, c in enumerate(correct)))
    summary_path = sub / "eval" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"tasks": {task: {"n": len(correct)}},
                                                                                   "students": {}}
    acc = sum(correct) / len(correct)
    summary["students"][key] = {"tasks": {task: {"n": len(correct), "accuracy": acc, "strict": {"accuracy": acc}}}}
    summary_path.write_text(json.dumps(summary))


def _mark(table, root: Path, row: str, seed: int, status: str = "finished", fingerprint: str | None = None) -> None:
    """Write the marker the table stage leaves in a row x seed (`stages.table._finish`)."""
    from qrdistill.stages.table import SEED_MARKER, seed_fingerprint

    fp = fingerprint or seed_fingerprint(table.rows[row], seed)
    done = status == "finished"
    marker = {"row": row, "seed": seed, "fingerprint": fp, "status": status,
              "attempts": [{"started": 0.0, "wall_s": 1.0 if done else None, **({"ended": status} if done else {})}]}
    (root / row / f"seed-{seed}" / SEED_MARKER).write_text(json.dumps({**marker, **({"wall_s": 1.0} if done else {})}))


def test_statistics_match_a_hand_computation(tmp_path):
    """Two rows, two seeds, ten questions: the mean, the spread and the paired columns on outcomes chosen so
    that every number is known by hand."""
    from qrdistill.analysis.table_report import build_table_report
    from qrdistill.config.table import load_table_config

    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": {"train": {"students": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m2"}]}},
        "seeds": [0, 1], "run_dir": str(tmp_path / "run"),
        "rows": [{"name": "zs", "override": {"stages": ["evaluate"], "evaluate": {"students": "base"}}},
                 {"name": "qr"}]}))
    table = load_table_config(cfg)
    assert table.reference == "qr" and table.zero_shot == "zs"
    root = tmp_path / "run"
    # Student a: seed 0 right on q0-q7, seed 1 on q0-q5 (80 %, 60 %); its base right on q0-q1 (20 %).
    qr = {0: [True] * 8 + [False] * 2, 1: [True] * 6 + [False] * 4}
    zs = [True] * 2 + [False] * 8
    for s in (0, 1):
        _fake_seed(root / "qr" / f"seed-{s}", "a", qr[s])
        _fake_seed(root / "qr" / f"seed-{s}", "b", zs)
        _fake_seed(root / "zs" / f"seed-{s}", "base:m1", zs)
        _fake_seed(root / "zs" / f"seed-{s}", "base:m2", zs)
        _mark(table, root, "qr", s)
        _mark(table, root, "zs", s)
    result = build_table_report(table, root)
    by = {(e["row"], e["student"]): e for e in result["entries"]}
    a = by[("qr", "a")]
    assert a["accuracy"]["accuracy"] == pytest.approx(0.7)
    assert a["accuracy"]["std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.8 and 0.6
    assert (a["accuracy"]["min"], a["accuracy"]["max"]) == (pytest.approx(0.6), pytest.approx(0.8))
    f = a["vs_zero_shot"]["flexible"]
    # 20 (question, seed) pairs: a right and base wrong on 6 + 4 of them, never the reverse: +50 points.
    assert f["diff"] == pytest.approx(0.5) and a["vs_zero_shot"]["pairs"] == 20
    # Question level: q2-q7 go to a (right in more seeds), q0-q1 and q8-q9 are ties: 6 discordant, 0 against,
    # exact two-sided p = 2 / 2**6.
    assert (f["questions_a_better"], f["questions_b_better"]) == (6, 0)
    assert f["p"] == pytest.approx(2 / 2**6)
    # Per seed: 6 and 4 discordant questions.
    assert f["p_per_seed"] == {"0": pytest.approx(2 / 2**6), "1": pytest.approx(2 / 2**4)}
    assert f["ci_low"] <= 0.5 <= f["ci_high"] and f["ci_low"] > 0
    # The zero-shot row against the reference: the same numbers with the sign turned.
    z = by[("zs", "a")]["vs_reference"]["flexible"]
    assert z["diff"] == pytest.approx(-0.5) and z["p"] == pytest.approx(2 / 2**6)
    # A student no better than its base: zero difference, p = 1.
    b = by[("qr", "b")]["vs_zero_shot"]["flexible"]
    assert b["diff"] == 0 and b["p"] == 1.0
    md = (root / "table" / "table.md").read_text()
    assert "| qr | a | 70.0 ± 14.1 (60.0–80.0) | 2 |" in md and "+50.0 [" in md and "| 0.031 |" in md


def test_a_same_base_pair_has_one_zero_shot_line(tmp_path):
    """Two students on one base model share its zero-shot answers: the table shows them once, naming both
    students, and compares each trained student with that one line."""
    from qrdistill.analysis.table_report import build_table_report
    from qrdistill.config.table import load_table_config

    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": {"train": {"students": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m1"}]}},
        "seeds": [0], "run_dir": str(tmp_path / "run"),
        "rows": [{"name": "zs", "override": {"stages": ["evaluate"], "evaluate": {"students": "base"}}},
                 {"name": "qr"}]}))
    table = load_table_config(cfg)
    root = tmp_path / "run"
    _fake_seed(root / "qr" / "seed-0", "a", [True] * 6 + [False] * 4)
    _fake_seed(root / "qr" / "seed-0", "b", [True] * 2 + [False] * 8)
    _fake_seed(root / "zs" / "seed-0", "base:m1", [True] * 2 + [False] * 8)
    _mark(table, root, "qr", 0)
    _mark(table, root, "zs", 0)
    result = build_table_report(table, root)
    zero = [e for e in result["entries"] if e["row"] == "zs"]
    assert [e["students"] for e in zero] == [["a", "b"]]
    assert "| zs | a / b (base) |" in (root / "table" / "table.md").read_text()
    assert "a / b" in (root / "table" / "table.csv").read_text()
    vs = {e["student"]: e["vs_zero_shot"]["flexible"]["diff"] for e in result["entries"] if e["row"] == "qr"}
    assert vs == {"a": pytest.approx(0.4), "b": pytest.approx(0.0)}
    assert zero[0]["vs_reference"] is None  # a against the base and b against it differ: no one number


def test_a_seed_run_with_another_config_or_not_finished_is_not_reported(tmp_path):
    """A seed folder left from an earlier version of the table config (a stale fingerprint), or one whose run
    stopped after evaluating, holds an evaluation summary like a finished one; the report counts neither."""
    from qrdistill.analysis.table_report import build_table_report
    from qrdistill.config.table import load_table_config

    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": {"train": {"students": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m2"}]}},
        "seeds": [0, 1, 2], "run_dir": str(tmp_path / "run"), "rows": [{"name": "qr"}]}))
    table = load_table_config(cfg)
    root = tmp_path / "run"
    for s, right in ((0, 8), (1, 2), (2, 0)):
        for key in ("a", "b"):
            _fake_seed(root / "qr" / f"seed-{s}", key, [True] * right + [False] * (10 - right))
    _mark(table, root, "qr", 0)
    _mark(table, root, "qr", 1, fingerprint="0123456789abcdef")
    _mark(table, root, "qr", 2, status="running")
    left = root / "table" / "analysis" / "results_qr_seeds_0_1.csv"  # from a report when seed 1 still counted
    left.parent.mkdir(parents=True)
    left.write_text("x\n")
    result = build_table_report(table, root)
    assert not left.exists()
    assert "| 1 | 0: 1, 1: 1 (stale), 2: – | 1, 1, 1 |" in (root / "table" / "table.md").read_text()
    assert [e["accuracy"]["accuracy"] for e in result["entries"]] == [pytest.approx(0.8)] * 2
    assert result["finished_seeds"] == [0]
    seeds = result["wall_time"]["rows"]["qr"]["seeds"]
    assert seeds["1"]["status"].startswith("stale") and seeds["2"]["status"] == "running"
    assert result["wall_time"]["rows"]["qr"]["total_s"] == pytest.approx(1.0)  # seed 0 only: not the stale one
    # The standard analysis report beside the table pools the same seeds.
    analysis = (root / "table" / "analysis" / "report.md").read_text()
    assert "qr/seed-0" in analysis and "qr/seed-1" not in analysis and "qr/seed-2" not in analysis


# ---------------------------------------------------------------- bad configs


@pytest.mark.parametrize("text, expected", [
    ("base: {}\nrows:\n  - name: a\n    override:\n      train:\n        methd: skd\n",
     r"t\.yaml:6: table row 'a': config field train\.methd: unknown field"),
    ("base:\n  train:\n    epochs: 0\nrows: [{name: a}]\n",
     r"t\.yaml:3: table row 'a': config field train\.epochs: Input should be greater than 0"),
    ("base: {}\nrows: [{name: a, override: {train: {method: sft, router: {mode: random}}}}]\n",
     r"t\.yaml:2: table row 'a': config field train\.router: method sft trains without a router"),
    ("base: nowhere.yaml\nrows: [{name: a}]\n", r"t\.yaml:1: config field base: nowhere\.yaml: run config file not "),
    ("base: {}\nrows: [{name: a}, {name: a}]\n", r"t\.yaml:2: config field rows: .*both named 'a'"),
    ("base: {}\nreference: qr\nrows: [{name: a}]\n", r"reference: 'qr' names no row"),
    ("base: {}\nrows: [{name: a, override: {run_dir: x}}]\n", r"rows\.0\.override\.run_dir: the table runs each row"),
    ("base: {}\nrows: [{name: table}]\n", r"'table' is reserved"),
    ("base: {}\nseeds: [0, 0]\nrows: [{name: a}]\n", r"t\.yaml:2: config field seeds: .*distinct seeds"),
    ("base: {}\nrows: [{name: a}, {name: b}]\n", r"rows 'a', 'b' all qualify as the reference row; set reference"),
    ("base: {}\nrows: [{name: a, override: {stages: [train]}}]\n", r"the row runs no evaluate stage"),
    ("base: {}\nzero_shot: a\nrows: [{name: a}]\n", r"zero_shot: row 'a' trains"),
    ("rows: [}\n", r"t\.yaml:1: invalid YAML"),
    ("base: {}\noverride:\n  train:\n    epochs: 0\nrows: [{name: a}]\n",
     r"t\.yaml:4: table row 'a': config field train\.epochs: Input should be greater than 0"),
    ("base: {}\noverride: {seeds: [1]}\nrows: [{name: a}]\n", r"t\.yaml:2: config field override\.seeds: every row"),
])
def test_bad_table_config_gives_one_clear_line(tmp_path, capsys, monkeypatch, text, expected):
    import re

    from qrdistill.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.yaml").write_text(text)
    assert main(["table", "--config", "t.yaml"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("qrdistill: error: ") and re.search(expected, err), err
    assert not (tmp_path / "runs").exists()  # nothing is created before the config is valid


def test_the_tables_override_reaches_every_row_and_a_rows_own_wins(tmp_path, monkeypatch):
    from qrdistill.config.table import load_table_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("seed: 0\ntrain:\n  epochs: 3\n  batch_size: 4\n")
    (tmp_path / "t.yaml").write_text(
        "base: run.yaml\noverride: {train: {epochs: 1}, evaluate: {batch_size: 2}}\nreference: a\n"
        "rows: [{name: a}, {name: b, override: {train: {epochs: 2}}}]\n")
    rows = load_table_config("t.yaml").rows
    assert [(r.train.epochs, r.train.batch_size, r.evaluate.batch_size) for r in rows.values()] == [(1, 4, 2),
                                                                                                  (2, 4, 2)]
    assert "epochs: 3" in (tmp_path / "run.yaml").read_text()  # the base file is read, never rewritten


def test_a_base_file_error_names_the_base_file_and_line(tmp_path, capsys, monkeypatch):
    from qrdistill.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("seed: 0\ntrain:\n  epochs: -1\n")
    (tmp_path / "t.yaml").write_text("base: run.yaml\nrows: [{name: a}, {name: b, override: {seed: 1}}]\n"
                                     "reference: a\n")
    assert main(["table", "--config", "t.yaml"]) == 2
    assert "run.yaml:3: table row 'a': config field train.epochs" in capsys.readouterr().err


def test_the_shipped_table_configs_validate(monkeypatch):
    from qrdistill.config.table import load_table_config

    monkeypatch.chdir(ROOT)  # their paths are relative to the project root, like every config's
    want = ["zero_shot", "skd", "all_paths", "random_router", "qrdistill"]
    for name in ("date_transfer", "strategyqa", "gsm8k"):
        table = load_table_config(ROOT / "configs" / "tables" / f"{name}.yaml")
        assert list(table.rows) == want and table.seeds == [0, 1, 2]
        assert (table.reference, table.zero_shot) == ("qrdistill", "zero_shot")
        rows = table.rows
        assert rows["zero_shot"].stages == ["evaluate"] and rows["zero_shot"].evaluate.students == "base"
        assert (rows["skd"].train.method, rows["all_paths"].train.method) == ("skd", "sft")
        assert rows["all_paths"].train.router.mode == "off" and rows["all_paths"].train.lambda_mutual == 0
        assert rows["random_router"].train.router.mode == "random"
        assert rows["qrdistill"].train.router.mode == "learned" and rows["qrdistill"].train.lambda_mutual > 0
        assert [s.model for s in rows["qrdistill"].train.students] == ["gemma3-270m", "smollm2-135m"]
    date = load_table_config(ROOT / "configs" / "tables" / "date_transfer.yaml").rows["qrdistill"]
    assert [(t.name, t.split) for t in date.evaluate.tasks] == [("date", "train"), ("date", "test")]
    assert {t.path for t in date.evaluate.tasks} == {"../shared/data/bigbench_date/task.json"}
    assert [t.name for t in date.tasks] == ["procedural_date"]
    gsm = load_table_config(ROOT / "configs" / "tables" / "gsm8k.yaml").rows["qrdistill"]
    assert [(t.split, t.limit) for t in gsm.tasks] == [("train", 100)]
    assert [(t.split, t.limit) for t in gsm.evaluate.tasks] == [("test", 50)]
    # The same-base contrast differs from the StrategyQA table in its students only.
    pair = load_table_config(ROOT / "configs" / "tables" / "strategyqa_same_base.yaml")
    mixed = load_table_config(ROOT / "configs" / "tables" / "strategyqa.yaml").rows["qrdistill"]
    assert list(pair.rows) == ["zero_shot", "random_router", "qrdistill"] and pair.reference == "qrdistill"
    same = pair.rows["qrdistill"]
    assert [s.model for s in same.train.students] == ["smollm2-135m", "smollm2-135m"]
    other = {"run_dir": True, "train": {"students"}}
    assert same.model_dump(exclude=other) == mixed.model_dump(exclude=other)


def test_seeds_outside_the_table_give_one_clear_line(tmp_path, capsys, monkeypatch):
    from qrdistill.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.yaml").write_text("base: {}\nseeds: [0, 1]\nrows: [{name: a}]\n")
    assert main(["table", "--config", "t.yaml", "--seeds", "1", "7"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--seeds 7: not among the table's seeds" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_table_runs_one_seed_per_sitting(tmp_path, models):
    """`--seeds` runs only those seeds; the report covers the seeds finished so far; a later sitting runs the rest
    and skips the finished one."""
    from qrdistill.cli import main

    root = tmp_path / "run"
    config = table_config(tmp_path / "table.yaml", root, models)
    table = yaml.safe_load(config.read_text())
    table["rows"] = table["rows"][:1]  # zero-shot only: no training, seconds on the tiny models
    config.write_text(yaml.safe_dump(table, sort_keys=False))
    assert main(["table", "--config", str(config), "--seeds", "1"]) == 0
    assert (root / "zero_shot" / "seed-1" / "eval" / "summary.json").is_file()
    assert not (root / "zero_shot" / "seed-0").exists()
    cells = json.loads((root / "table" / "table.json").read_text())
    assert {tuple(e["accuracy"]["seed_list"]) for e in cells["entries"]} == {(1,)}, cells["entries"]
    assert cells["finished_seeds"] == [1] and "(finished in every row: 1)" in (root / "table" / "table.md").read_text()
    seed1 = snapshot(root / "zero_shot" / "seed-1")
    with captured_logs() as logs:
        assert main(["table", "--config", str(config)]) == 0
    assert "table: row zero_shot, seed 0 (" in "\n".join(logs) and "seed 1 (" not in "\n".join(logs)
    assert snapshot(root / "zero_shot" / "seed-1") == seed1
    cells = json.loads((root / "table" / "table.json").read_text())
    assert {tuple(e["accuracy"]["seed_list"]) for e in cells["entries"]} == {(0, 1)}


@pytest.mark.slow
def test_an_export_holds_every_finished_seed_without_weights_and_imports_into_a_new_table(
        killed_then_resumed, tmp_path):
    """Seeds run elsewhere come together: `--export` copies results and the completion store (no adapters,
    checkpoints or tracker logs);
    `--import` into a fresh table directory makes every imported row x seed count as finished (nothing reruns),
    and the report there equals the original's."""
    from qrdistill.cli import main

    root, config = killed_then_resumed["root"], killed_then_resumed["config"]
    out = tmp_path / "export"
    assert main(["table", "--config", str(config), "--export", str(out)]) == 0
    names = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert not [n for n in names if {"adapters", "checkpoints", "tb"} & set(n.parts) or n.suffix == ".safetensors"]
    assert [n.parts[0] for n in names if n.suffix == ".sqlite"] == ["data"]  # the teacher's completions only
    for row in ROWS:
        for s in SEEDS:
            for f in ("table_seed.json", "eval/summary.json"):
                assert (out / row / f"seed-{s}" / f).read_bytes() == (root / row / f"seed-{s}" / f).read_bytes()
    assert (out / "qrdistill" / "seed-0" / "train" / "routing_final.jsonl").is_file()
    assert (out / "qrdistill" / "filtered.jsonl").is_file() and (out / "table" / "table.json").is_file()

    new = tmp_path / "elsewhere"
    with captured_logs() as logs:
        assert main(["table", "--config", str(config), "--run-dir", str(new), "--import", str(out)]) == 0
    text = "\n".join(logs)
    for row in ROWS:
        assert f"table: row {row}: seeds 0, 1 finished earlier, skipped" in text
    assert not [m for m in logs if m.startswith(("train:", "evaluation summary", "generate", "filter"))], text
    old_cells = json.loads((root / "table" / "table.json").read_text())
    new_cells = json.loads((new / "table" / "table.json").read_text())
    assert new_cells["entries"] == old_cells["entries"] and new_cells["entries"]
    assert new_cells["routing_files"] == old_cells["routing_files"] and new_cells["routing_files"]
    assert (new / "table" / "analysis" / "report.md").read_text().replace(str(new), str(root)) == (
        root / "table" / "analysis" / "report.md").read_text()

    # A third seed on this machine after importing the first two: the rows with generate + filter rerun them in
    # the imported data directory (its completion store came along), and the report pools all three seeds.
    third = tmp_path / "third.yaml"
    third.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "seeds": [*SEEDS, 2]}, sort_keys=False))
    later = tmp_path / "later"
    with captured_logs() as logs:
        assert main(["table", "--config", str(third), "--run-dir", str(later), "--seeds", "2", "--import",
                     str(out)]) == 0
    text = "\n".join(logs)
    assert "table: imported from" in text and "not imported" not in text, text[-2000:]
    for row in ROWS:
        assert f"table: row {row}, seed 2 (" in text and f"table: row {row}, seed 0 (" not in text
    cells = json.loads((later / "table" / "table.json").read_text())
    assert {tuple(e["accuracy"]["seed_list"]) for e in cells["entries"]} == {(0, 1, 2)}


def test_an_import_takes_only_seeds_run_with_the_tables_config_and_keeps_local_ones(tmp_path, models, capsys):
    """A seed exported under another config is not imported (a warning names it); a seed the table directory has
    already is kept as it is; an unfinished seed is not exported; an export replaces an earlier one only when it
    loses none of its seeds, and refuses a folder that is neither new nor an export."""
    from qrdistill.cli import main
    from qrdistill.config.table import load_table_config
    from qrdistill.stages.table import import_results

    root = tmp_path / "run"
    config = table_config(tmp_path / "table.yaml", root, models)
    table = yaml.safe_load(config.read_text())
    table["rows"] = table["rows"][:1]  # zero-shot only: seconds on the tiny models
    config.write_text(yaml.safe_dump(table, sort_keys=False))
    assert main(["table", "--config", str(config)]) == 0
    out = tmp_path / "export"
    assert main(["table", "--config", str(config), "--export", str(out)]) == 0
    assert json.loads((out / "table_export.json").read_text())["seeds"] == {"zero_shot": SEEDS}
    assert (out / "zero_shot" / "seed-1" / "eval" / "summary.json").is_file()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["table", "--config", str(config), "--export", str(tmp_path / "busy")]) == 2
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
    assert main(["table", "--config", str(config), "--run-dir", str(tmp_path / "fresh"),
                 "--import", str(tmp_path / "busy")]) == 2
    assert "no table_export.json" in capsys.readouterr().err
    assert not (tmp_path / "fresh" / "zero_shot").exists()

    # The same table with a different evaluation budget: the exported seeds were not run with it.
    changed = dict(table, run_dir=str(tmp_path / "changed"))
    changed["base"] = {**table["base"], "evaluate": {**table["base"]["evaluate"], "max_new_tokens": 5}}
    changed_cfg = tmp_path / "changed.yaml"
    changed_cfg.write_text(yaml.safe_dump(changed, sort_keys=False))
    (tmp_path / "changed").mkdir()
    with captured_logs() as logs:
        result = import_results(load_table_config(str(changed_cfg)), tmp_path / "changed", out)
    assert result["imported"] == {"zero_shot": []} and not (tmp_path / "changed" / "zero_shot" / "seed-0").exists()
    assert "zero_shot seed 0 (not finished, or run with another config" in "\n".join(logs)

    # The original table directory already holds both seeds: an import leaves them exactly as they were.
    before = snapshot(root / "zero_shot")
    with captured_logs() as logs:
        assert main(["table", "--config", str(config), "--import", str(out)]) == 0
    assert "zero_shot seed 0 (" in "\n".join(logs) and "exists; remove it to import" in "\n".join(logs)
    assert snapshot(root / "zero_shot") == before

    # Seed 1 unfinished here: a new export would lose the earlier export's seed 1, so it is refused; a new folder
    # gets seed 0 only.
    marker = root / "zero_shot" / "seed-1" / "table_seed.json"
    marker.write_text(marker.read_text().replace('"finished"', '"running"'))
    assert main(["table", "--config", str(config), "--export", str(out)]) == 2
    assert json.loads((out / "table_export.json").read_text())["seeds"] == {"zero_shot": SEEDS}
    assert main(["table", "--config", str(config), "--export", str(tmp_path / "export0")]) == 0
    assert not (tmp_path / "export0" / "zero_shot" / "seed-1").exists()
    assert (tmp_path / "export0" / "zero_shot" / "seed-0" / "eval" / "summary.json").is_file()
