"""Every baseline/ablation config in configs/ runs end to end (`qrdistill run`) on tiny students and writes its row.

The configs are used as shipped; only the students (tiny models under the
same names), the router encoder and the sizes are overridden, through the
CLI's --set like a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_models import make_tiny_students

from qrdistill.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
#: rows a tiny run reproduces; date_openai needs a paid teacher, and the human pools import paths for their own
#: tasks only (tests/test_human_pools.py); their configs are checked for validity below.
ROWS = [c for c in CONFIGS if c not in ("date_openai", "strategyqa_human", "gsm8k_human")]
#: student name in the configs -> tiny model (two architectures, two tokenizers)
TINY_FOR = {"gemma": 0, "smollm2": 1, "gemma-a": 0, "gemma-b": 1}
LORA = [{"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, {"r": 2, "alpha": 4, "target_modules": ["c_attn"]}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    return make_tiny_students(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def tiny_overrides(name: str, tiny: list[str], run_dir: Path) -> dict:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    students = [{"name": s.name, "model": tiny[TINY_FOR[s.name]], "lr": 5.0e-3, "lora": LORA[TINY_FOR[s.name]]}
                for s in cfg.train.students]
    return {
        "run_dir": str(run_dir),
        # One training seed here; test_seeds_run_once_each_and_analyze_pools_them runs several.
        "seeds": None,
        "tasks": [{"name": "procedural_date", "limit": 3}, {"name": "procedural_arith", "limit": 3}],
        "train.students": students,
        "train.router.encoder": tiny[0],
        "train.max_steps": 2,
        "evaluate.limit": 3,
        "evaluate.max_new_tokens": 6,
        "evaluate.bootstrap_resamples": 100,
    }


@pytest.mark.parametrize("name", ROWS)
def test_config_runs_end_to_end_and_writes_its_row(name, tiny, runs_root, tmp_path):
    from qrdistill.cli import main

    run_dir = runs_root / name
    sets = []
    for key, value in tiny_overrides(name, tiny, run_dir).items():
        sets += ["--set", f"{key}={json.dumps(value)}"]
    assert main(["run", "--config", str(ROOT / "configs" / f"{name}.yaml"), *sets]) == 0

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert set(summary["tasks"]) == {"procedural_date", "procedural_arith"}
    if name == "zero_shot":
        assert not (run_dir / "train").exists() and not (run_dir / "paths.jsonl").exists()
        assert summary["method"] == "zero_shot"
        assert {s["kind"] for s in summary["students"].values()} == {"base"}
    else:
        train = json.loads((run_dir / "train" / "summary.json").read_text())
        assert train["method"] == summary["method"] == cfg.train.method
        names = set(cfg.train.student_names)
        if cfg.train.method == "step_by_step":
            # Evaluated with both prefixes: the rationale one (the student's name) and the label one.
            names |= {f"{n}@label" for n in names}
        trained = {k for k, s in summary["students"].items() if s["kind"] == "trained"}
        assert trained == names
        # Table rows evaluate their trained students (zero-shot is its own row); the demo's same-base pair,
        # like the built-in demo, also evaluates the base model beside them (evaluate.students: auto).
        bases = set(summary["students"]) - trained
        assert all(k.startswith("base:") for k in bases)
        assert bool(bases) == (cfg.evaluate.students != "trained")
        meta = json.loads((run_dir / "meta" / "train.json").read_text())["config"]["train"]
        # The switch the row is about reached the train stage.
        for field in ("method", "data_fraction", "lambda_mutual", "frozen_peer", "single_student"):
            assert meta[field] == getattr(cfg.train, field), field
        assert meta["router"]["mode"] == cfg.train.router.mode
        filt = json.loads((run_dir / "meta" / "filter.json").read_text())["config"]["filter"]
        assert filt["enabled"] == cfg.filter.enabled
    for st in summary["students"].values():
        for acc in st["tasks"].values():
            assert acc["n"] == 3 and acc["ci_low"] <= acc["accuracy"] <= acc["ci_high"]
    report = (run_dir / "report" / "report.md").read_text()
    from qrdistill.analysis.tables import METHOD_NAMES

    assert f"| {METHOD_NAMES[summary['method']]}" in report and f" | {name} | " in report


def test_analyze_all_rows_together(runs_root, tmp_path):
    from qrdistill.stages import analyze

    done = [runs_root / n for n in ROWS if (runs_root / n / "eval" / "summary.json").exists()]
    if len(done) < len(ROWS):
        pytest.skip("needs every row's run (run the whole module)")
    res = analyze.run(done, tmp_path / "report")
    results = (tmp_path / "report" / "results.md").read_text()
    for label in ("Zero-shot", "SKD", "Distill Step-by-Step (rationale prefix)", "Distill Step-by-Step (label prefix)",
                  "Answer Aug (k sampled paths, one style)", "All paths (no router, no collab)", "QR-Distill"):
        assert f"| {label} |" in results
    # Zero-shot rows are shown once per base model, under the first run that evaluated it (the demo pair's
    # run evaluates its base too), so every trained row's run is named and the zero-shot row is labelled.
    for name in ROWS:
        if name != "zero_shot":
            assert f"| {name} |" in results
    assert res["sections"]["sample_efficiency"] and res["sections"]["time"] and res["sections"]["routing"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Joint training vs. the students trained separately" in report


def test_every_shipped_config_is_valid():
    assert set(ROWS) >= {
        "zero_shot", "skd", "step_by_step", "answer_aug", "qrdistill", "ablation_no_filter", "ablation_no_router",
        "ablation_no_collab", "ablation_frozen_peer", "sample_efficiency_10", "sample_efficiency_30",
        "sample_efficiency_50", "sample_efficiency_100", "all_paths_sft", "ablation_random_router",
        "qrdistill_same_base", "separate_gemma", "separate_smollm2",
    }
    run_dirs = set()
    for name in CONFIGS:
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        run_dirs.add(cfg.run_dir)
        assert yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["run_dir"] == f"runs/{name}"
    assert len(run_dirs) == len(CONFIGS)
    real = load_config(ROOT / "configs" / "date_openai.yaml")
    assert real.generate.teacher.kind == "openai" and real.tasks[0].name == "date"


def test_seeds_run_once_each_and_analyze_pools_them(tiny, tmp_path):
    """`seeds: [0, 1]`: data generated once, one complete run directory per seed, base predictions reused,
    and the report averages the seeds."""
    from qrdistill.cli import main

    run_dir = tmp_path / "seeded"
    overrides = {**tiny_overrides("qrdistill", tiny, run_dir), "seeds": [0, 1], "evaluate.students": "all"}
    sets = []
    for key, value in overrides.items():
        sets += ["--set", f"{key}={json.dumps(value)}"]
    assert main(["run", "--config", str(ROOT / "configs" / "qrdistill.yaml"), *sets]) == 0
    assert (run_dir / "paths.jsonl").exists() and not (run_dir / "train").exists()
    seeds = []
    for s in (0, 1):
        sub = run_dir / f"seed-{s}"
        assert (sub / "filtered.jsonl").read_bytes() == (run_dir / "filtered.jsonl").read_bytes()
        train = json.loads((sub / "train" / "summary.json").read_text())
        seeds.append(train["seed"])
        assert json.loads((sub / "eval" / "summary.json").read_text())["students"]
    assert seeds == [0, 1]
    # Greedy base predictions are the same for both seeds; different seeds train different adapters.
    base = sorted((run_dir / "seed-0" / "eval").glob("base_*/*.jsonl"))
    assert base and all((run_dir / "seed-1" / "eval" / p.parent.name / p.name).read_text() == p.read_text()
                        for p in base)
    report = (run_dir / "report" / "report.md").read_text()
    assert "seeds 0, 1" in report and "±" in report


def test_the_same_base_demo_is_the_built_in_demo_with_another_pair():
    """configs/demo_same_base.yaml changes only the students (and its run_dir), so its numbers sit beside
    the demo's in README as a like-for-like contrast; a drift of the built-in demo fails here."""
    demo = load_config(None).model_dump(mode="json")
    same = load_config(ROOT / "configs" / "demo_same_base.yaml").model_dump(mode="json")
    assert [s["model"] for s in same["train"]["students"]] == ["gemma3-270m", "gemma3-270m"]
    assert [s["lora"] for s in same["train"]["students"]] == [s["lora"] for s in demo["train"]["students"]]
    # Each Gemma adapter trains at the demo's Gemma lr (the demo's SmolLM2 has its own).
    gemma_lr = {s["lr"] for s in demo["train"]["students"] if s["model"] == "gemma3-270m"}
    assert len(gemma_lr) == 1 and {s["lr"] for s in same["train"]["students"]} == gemma_lr
    for cfg in (demo, same):
        cfg.pop("run_dir")
        cfg["train"].pop("students")
    assert same == demo
