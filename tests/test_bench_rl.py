"""benchmarks/bench_rl.py on a tiny distilled run: two arms x two seeds of one GRPO step each, paired with the
distilled student on the same test questions; a rerun trains and answers nothing again; the distilled run
is never written; bad inputs are one line, no traceback."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from test_rl_grpo import TINY_RL
from tiny_models import make_tiny_students
from train_helpers import make_filtered, tiny_train_section

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_rl", ROOT / "benchmarks" / "bench_rl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """(run dir with a finished 2-step training of the two tiny students and their evaluation, its config)."""
    import torch

    from qrdistill.config import load_config
    from qrdistill.stages import evaluate as evaluate_stage
    from qrdistill.stages import train as train_stage

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("bench_rl")
    models = make_tiny_students(base / "tiny")
    run_dir = base / "run"
    config = base / "c.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(run_dir), "train": tiny_train_section(models, max_steps=2), "rl": TINY_RL,
        "evaluate": {"max_new_tokens": 6, "batch_size": 8, "limit": 3},
    }))  # fmt: skip
    make_filtered(run_dir, limit=3)
    cfg = load_config(config)
    train_stage.run(cfg, run_dir)
    evaluate_stage.run(cfg, run_dir)
    return run_dir, config


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its sha256 and mtime."""
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _qids(path: Path) -> list[str]:
    return sorted(json.loads(x)["qid"] for x in path.read_text().splitlines() if x.strip())


@pytest.mark.slow  # four GRPO runs and evaluations of tiny students, then a rerun: about 40 s on 2 busy cores
def test_bench_rl_two_arms_two_seeds_paired_resumable_and_the_distilled_run_untouched(tmp_path, distilled,
                                                                                        caplog):  # fmt: skip
    pytest.importorskip("trl")
    bench = _bench()
    run_dir, config = distilled
    before = _tree(run_dir)
    out, save = tmp_path / "bench", tmp_path / "rl.json"
    argv = ["--distilled", str(run_dir), "--config", str(config), "--seeds", "0", "1", "--steps", "1",
            "--out", str(out), "--save", str(save)]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(save.read_text())
    assert result["student"] == "llama" and result["task"] == "procedural_date" and result["steps"] == 1
    assert result["git_sha"] and "bench_rl.py" in result["command"] and result["config"]["rl"]["max_steps"] == 1
    distilled_qids = _qids(run_dir / "eval" / "llama" / "procedural_date.jsonl")
    assert len(distilled_qids) == 3
    assert [(r["arm"], r["seed"]) for r in result["runs"]] == [
        ("correctness", 0), ("structure", 0), ("correctness", 1), ("structure", 1)]
    for r in result["runs"]:
        seed_dir = out / r["arm"] / f"seed-{r['seed']}"
        # rl:llama answered the distilled student's questions; the distilled answers are D's, not new ones
        assert _qids(seed_dir / "eval" / "rl_llama" / "procedural_date.jsonl") == distilled_qids
        assert r["distilled_reused"] and r["trained_now"] and r["answered_now"] and r["eval"]["n"] == 3
        assert (seed_dir / "eval" / "llama" / "procedural_date.jsonl").read_bytes() == \
            (run_dir / "eval" / "llama" / "procedural_date.jsonl").read_bytes()
        assert not (seed_dir / "eval" / "llama" / "procedural_arith.jsonl").exists()  # evaluate: the task only
        rl = r["rl"]
        assert rl["steps"] == 1 and rl["wall_per_step_s"] > 0 and 0 <= rl["reward_share"] < 1
        assert set(rl["mean_rewards"]) == ({"correctness", "structure"} if r["arm"] == "structure"
                                           else {"correctness"})  # fmt: skip
        assert r["stage_seconds"]["rl_s"] > 0 and r["stage_seconds"]["evaluate_s"] > 0
        st = json.loads((seed_dir / "rl" / "llama" / "summary.json").read_text())
        assert st["seed"] == r["seed"] and st["grpo"]["reward_weights"] == (
            [15.0, 15.0] if r["arm"] == "structure" else [15.0])
    # per seed and pooled, each of the three comparisons, with the paired fields
    got = {(c["a"], c["b"], c["seed"]) for c in result["comparisons"]}
    assert got == {(a, b, s) for a, b in (("structure", "correctness"), ("structure", "distilled llama"),
                                          ("correctness", "distilled llama")) for s in (0, 1, "pooled")}
    for c in result["comparisons"]:
        assert {"n", "accuracy_a", "accuracy_b", "diff_points", "interval", "mcnemar_p", "a_only", "b_only"} <= set(c)
        assert c["n"] == (6 if c["seed"] == "pooled" else 3) and 0 <= c["mcnemar_p"] <= 1
        assert c["interval"][0] <= c["diff_points"] <= c["interval"][1]
        if c["seed"] == "pooled":
            assert c["questions"] == 3 and len(c["interval_by_question"]) == 2
    assert set(result["timing"]) == {"correctness", "structure"}
    assert result["timing"]["structure"]["wall_per_step_s"] > 0
    assert "| structure vs correctness | pooled |" in result["markdown"]

    # a rerun trains and answers nothing again, and reports the same numbers
    summary = out / "structure" / "seed-1" / "rl" / "llama" / "summary.json"
    mtime = summary.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO"):
        assert bench.main(argv) == 0
    assert caplog.text.count("already trained with this config") == 4
    assert summary.stat().st_mtime_ns == mtime
    again = json.loads(save.read_text())
    assert not any(r["trained_now"] or r["answered_now"] or r["copied_from_distilled"] for r in again["runs"])
    assert again["comparisons"] == result["comparisons"]
    assert [r["stage_seconds"] for r in again["runs"]] == [r["stage_seconds"] for r in result["runs"]]
    assert _tree(run_dir) == before  # the distilled run: not one file written


def test_bench_rl_bad_inputs_are_one_line(tmp_path, distilled, capsys, monkeypatch):
    bench = _bench()
    run_dir, config = distilled
    common = ["--config", str(config), "--out", str(tmp_path / "o"), "--save", str(tmp_path / "r.json")]
    cases = [
        (["--distilled", str(run_dir), "--student", "nope"], "--student 'nope' is not a student of train.students "
                                                             "(students: llama, gpt2)"),
        (["--distilled", str(tmp_path / "missing")], "not a directory"),
        (["--distilled", str(tmp_path)], "is not a finished run"),
        (["--distilled", str(run_dir), "--task", "gsm8k"], "task 'gsm8k' is not evaluated by this config"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert bench.main([*extra, *common]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bench_rl: error: ") and message in err and "Traceback" not in err
    # another config than the one the distilled run was made with
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace("limit: 3", "limit: 2"))
    assert bench.main(["--distilled", str(run_dir), "--config", str(other), "--out", str(tmp_path / "o")]) == 2
    assert "evaluate.limit: pass that run's config with --config" in capsys.readouterr().err
    # without TRL: how to get it
    monkeypatch.setitem(sys.modules, "trl", None)
    assert bench.main(["--distilled", str(run_dir), *common]) == 2
    assert "pip install 'qrdistill[rl]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.json").exists()


def test_comparisons_pair_each_seed_and_pool_the_seed_question_pairs():
    """Structure vs correctness and each arm vs the distilled student, per seed and pooled, on known outcomes."""
    from qrdistill.config import load_config

    bench = _bench()
    distilled = {"q1": True, "q2": False, "q3": False}
    outcomes = {("correctness", 0): [True, False, False], ("structure", 0): [True, True, False],
                ("correctness", 1): [False, False, False], ("structure", 1): [True, True, True]}
    runs = [{"arm": a, "seed": s, "_correct": dict(zip(distilled, got, strict=True)), "_distilled": distilled}
            for (a, s), got in outcomes.items()]  # fmt: skip
    rows = {(c["a"], c["b"], c["seed"]): c for c in bench.comparisons(runs, [0, 1], "x", load_config(None))}
    c = rows[("structure", "correctness", 0)]
    assert (c["n"], c["a_only"], c["b_only"], c["mcnemar_p"]) == (3, 1, 0, 1.0)
    assert c["diff_points"] == pytest.approx(100 / 3)
    pooled = rows[("structure", "correctness", "pooled")]
    assert (pooled["n"], pooled["questions"], pooled["a_only"], pooled["b_only"]) == (6, 3, 4, 0)
    assert pooled["diff_points"] == pytest.approx(100 * 4 / 6) and pooled["mcnemar_p"] == pytest.approx(0.125)
    lo, hi = pooled["interval_by_question"]
    assert lo <= pooled["diff_points"] <= hi
    vs = rows[("correctness", "distilled x", "pooled")]
    assert (vs["accuracy_a"], vs["accuracy_b"], vs["a_only"], vs["b_only"]) == (1 / 6, 2 / 6, 0, 1)
