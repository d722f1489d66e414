"""The train stage end to end on two tiny students of different architectures and tokenizers.

Real generate + filter stages write the paths; every method and ablation switch
runs through the same loop and is checked on its artifacts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import make_filtered, tiny_config, tiny_train_section

from qrdistill.stages import train as train_stage


@pytest.fixture(scope="module")
def filtered(tmp_path_factory) -> Path:
    return make_filtered(tmp_path_factory.mktemp("paths"), limit=3)


def _run_dir(tmp_path: Path, filtered: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(filtered, run_dir / "filtered.jsonl")
    return run_dir


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _kept(filtered: Path) -> list[dict]:
    return [r for r in _jsonl(filtered) if r["kept"]]


def _adapter(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "train" / "adapters" / name / "adapter_model.safetensors"))


def test_qrdistill_artifacts_routing_log_and_reload(tmp_path, models, filtered):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = _run_dir(tmp_path, filtered)
    n_paths = len(_kept(filtered))
    cfg = tiny_config(run_dir, models, epochs=2, checkpoint_every=3)
    summary = train_stage.run(cfg, run_dir)
    out = run_dir / "train"

    steps_per_epoch = -(-n_paths // 4)
    assert summary["steps"] == 2 * steps_per_epoch
    assert summary["method"] == "qrdistill" and summary["router"] is True
    assert summary["paths"] == n_paths
    assert [s["name"] for s in summary["students"]] == ["llama", "gpt2"]
    assert len(summary["time_per_epoch"]) == 2 and all(t > 0 for t in summary["time_per_epoch"])
    assert summary["params_without_grad"] == []
    for f in ("router.pt", "mutual.pt", "log.jsonl", "routing.jsonl", "summary.json", "embeddings.pt"):
        assert (out / f).exists(), f
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "meta" / "train.json").exists()
    saved = sorted({s for s in range(3, summary["steps"] + 1, 3)} | {summary["steps"]})
    assert {p.name for p in (out / "checkpoints").iterdir()} == {f"step-{s}" for s in saved[-2:]}  # keep 2

    # routing.jsonl: every kept path exactly once per epoch, with the documented fields.
    rows = _jsonl(out / "routing.jsonl")
    assert len(rows) == 2 * n_paths
    for epoch in (0, 1):
        keys = [r["path_key"] for r in rows if r["epoch"] == epoch]
        assert len(keys) == len(set(keys)) == n_paths
    kept_qids = {r["qid"] for r in _kept(filtered)}
    for r in rows:
        assert set(r) >= {"epoch", "step", "path_key", "qid", "task", "style", "difficulty", "alpha", "probs",
                          "students"}
        assert r["qid"] in kept_qids and r["students"] == ["llama", "gpt2"]
        assert all(a in (0, 1) for a in r["alpha"]) and all(0 < p < 1 for p in r["probs"])
    # Routing is a real decision: some paths go to one student only, some to both.
    patterns = {tuple(r["alpha"]) for r in rows}
    assert len(patterns) >= 2

    log = _jsonl(out / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, summary["steps"] + 1))
    assert any(r["mutual"] > 0 for r in log) and any(r["co_routed_paths"] > 0 for r in log)
    assert all(0.0 <= r["entropy"] <= 0.7 for r in log)

    # Adapters reload with PEFT and change the student's output.
    tok = AutoTokenizer.from_pretrained(models[0])
    base = AutoModelForCausalLM.from_pretrained(models[0])
    ids = tok("The answer is 42.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        peft = PeftModel.from_pretrained(base, str(out / "adapters" / "llama"))
        after = peft(ids).logits
    assert not torch.allclose(before, after)

    # Running the same stage again does no work: it returns the finished summary.
    again = train_stage.run(cfg, run_dir)
    assert again["fingerprint"] == summary["fingerprint"] and again["total_time"] == summary["total_time"]


def test_every_trainable_tensor_is_optimized_and_gets_gradient(tmp_path, models, filtered):
    """Independent of the loop's own bookkeeping: inspect optimizer groups and .grad after one step."""
    from qrdistill.train.data import build_items, load_kept
    from qrdistill.train.loop import Trainer

    run_dir = _run_dir(tmp_path, filtered)
    # peer_paths all: every student runs every path, so one step must reach every tensor.
    cfg = tiny_config(run_dir, models, mutual={"peer_paths": "all"})
    items = build_items(load_kept(run_dir / "filtered.jsonl"), "qrdistill")
    trainer = Trainer(cfg, run_dir, items, max_steps=1, fingerprint="t")
    try:
        trainer.setup()
        in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        trainable = {id(p) for s in trainer.students for p in s.model.parameters() if p.requires_grad}
        trainable |= {id(p) for p in trainer.router.parameters()} | {id(p) for p in trainer.mutual.parameters()}
        assert trainable == in_opt
        names = sorted(g["group"] for g in trainer.optimizer.param_groups)
        assert names == ["mutual", "router", "student/gpt2", "student/llama"]
        lrs = {g["group"]: g["lr"] for g in trainer.optimizer.param_groups}
        assert lrs["router"] == cfg.train.router.lr and lrs["mutual"] == cfg.train.mutual.lr
        trainer.accumulate(epoch=0, micro=0, step=0)
        missing = [n for n, p in zip(trainer.param_names, trainer.params, strict=True) if p.grad is None]
        assert missing == []
        # The router and the competence regressors learn from the losses (non-zero gradient).
        assert trainer.router.mlp[-1].weight.grad.abs().sum() > 0
        assert all(r.weight.grad.abs().sum() > 0 for r in trainer.mutual.regressors)
        assert all(p.weight.grad.abs().sum() > 0 for p in trainer.mutual.projections)
    finally:
        trainer.close()


@pytest.mark.parametrize("case", ["sft", "no_router", "no_collab", "frozen_peer", "skd", "step_by_step", "single",
                                  "grad_ckpt"])
def test_methods_and_ablations(tmp_path, models, filtered, case):
    run_dir = _run_dir(tmp_path, filtered)
    kept = _kept(filtered)
    questions = {r["qid"] for r in kept}
    overrides = {
        "sft": {"method": "sft"},
        "no_router": {"router": {"enabled": False, "encoder": models[0]}},
        "no_collab": {"lambda_mutual": 0.0},
        "frozen_peer": {"frozen_peer": "gpt2"},
        "skd": {"method": "skd"},
        "step_by_step": {"method": "step_by_step"},
        "single": {"method": "sft", "single_student": True},
        "grad_ckpt": {"gradient_checkpointing": True, "grad_accum": 2, "mutual": {"peer_paths": "all"}},
    }[case]
    if case == "single":
        overrides["students"] = [tiny_train_section(models)["students"][0]]
    cfg = tiny_config(run_dir, models, max_steps=3, **overrides)
    summary = train_stage.run(cfg, run_dir)
    out = run_dir / "train"
    rows = _jsonl(out / "routing.jsonl")
    log = _jsonl(out / "log.jsonl")
    assert summary["steps"] == 3 and len(log) == 3
    assert summary["params_without_grad"] == []
    names = [s["name"] for s in summary["students"]]
    for name in names:
        assert (out / "adapters" / name / "adapter_config.json").exists()

    if case in ("sft", "no_router", "skd", "step_by_step", "single"):
        # No router: every path reaches every student.
        assert summary["router"] is False and not (out / "router.pt").exists()
        assert all(r["alpha"] == [1] * len(names) and r["probs"] is None for r in rows)
        assert all(r["entropy"] == 0.0 for r in log)
    if case in ("sft", "skd", "step_by_step", "single", "no_collab"):
        assert all(r["mutual"] == 0.0 for r in log)
        assert not (out / "mutual.pt").exists()
    if case == "no_router":
        assert (out / "mutual.pt").exists() and any(r["mutual"] > 0 for r in log)
    if case == "no_collab":
        assert summary["router"] is True and (out / "router.pt").exists()
    if case == "frozen_peer":
        # LoRA B starts at zero: a frozen adapter stays exactly at its initial (zero) B.
        frozen, trained = _adapter(run_dir, "gpt2"), _adapter(run_dir, "llama")
        assert all(v.abs().sum() == 0 for k, v in frozen.items() if "lora_B" in k)
        assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)
        assert summary["students"][1]["trainable"] is False
        # It still feeds the ensemble: the mutual term is computed.
        assert any(r["mutual"] > 0 for r in log)
    if case == "skd":
        assert summary["paths"] == len(questions)
        by_q = {}
        for r in kept:
            by_q.setdefault(r["qid"], set()).add(r["style"])
        cot_questions = {q for q, styles in by_q.items() if "cot" in styles}
        assert {r["qid"] for r in rows if r["style"] == "cot"} == cot_questions
    if case == "step_by_step":
        assert summary["paths"] == 2 * len(questions)
        assert summary["eval_prompt_prefix"] == "[rationale] "
    if case == "single":
        assert names == ["llama"]
    if case == "sft":
        assert summary["paths"] == len(kept)
    if case == "grad_ckpt":
        # Recomputed layers must run with the adapter that first ran them: every tensor still learns.
        assert summary["router"] is True and any(r["mutual"] > 0 for r in log)


def test_data_fraction_subsamples_questions(tmp_path, models, filtered):
    from qrdistill.train.data import build_items, load_kept, subsample_questions

    rows = load_kept(filtered)
    qids = sorted({r["qid"] for r in rows})
    half = subsample_questions(rows, 0.5, seed=0)
    kept_q = {r["qid"] for r in half}
    assert len(kept_q) == round(len(qids) * 0.5)
    # Whole questions: every kept path of a chosen question stays.
    assert len(half) == sum(1 for r in rows if r["qid"] in kept_q)
    assert subsample_questions(rows, 0.5, seed=0) == half
    assert {r["qid"] for r in subsample_questions(rows, 0.5, seed=1)} != kept_q or len(qids) < 3
    # Items use the same prompt as evaluation.
    from qrdistill.prompting import student_prompt
    from qrdistill.tasks import get_task

    items = build_items(rows, "qrdistill")
    assert items[0].prompt == student_prompt(get_task(rows[0]["task"]), rows[0]["question"])
    assert items[0].response == rows[0]["response"]


def test_first_step_gradient_check_separates_routing_gaps_from_faults(caplog):
    from qrdistill.train.loop import StepStats, Trainer

    t = Trainer.__new__(Trainer)
    t.names = ["a", "b"]
    t.param_names = ["a/lora.0", "a/lora.1", "b/lora.0", "router/mlp.0.weight", "mutual/projections.0.weight"]
    # Student b trained no path and no path had two students: its LoRA and the mutual head are idle.
    idle = [StepStats(distill=[1.0, 0.0], co_routed=0.0, paths_per_student=[3.0, 0.0])]
    with caplog.at_level("INFO", logger="qrdistill.train.loop"):
        t._first_step_gradient_check([True, True, False, True, False], idle)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "student b was routed no path" in caplog.text and "mutual head" in caplog.text
    caplog.clear()
    # Student a trained paths, yet one of its tensors got nothing: a wiring fault.
    with caplog.at_level("INFO", logger="qrdistill.train.loop"):
        t._first_step_gradient_check([True, False, True, True, True], idle)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "a/lora.1" in warnings[0]


def test_the_log_separates_eq8_from_the_competence_term_for_identical_students(tmp_path, models, filtered):
    """Two adapters on one base, every path to both (router off): at the first step their hidden states are
    identical, so with shared projections eq. 8 logs exactly 0, while `mutual` (the objective's term) adds the
    competence regressors' cross-entropy, about ln 2 for two equal students."""
    run_dir = _run_dir(tmp_path, filtered)
    section = tiny_train_section(models)
    same = [{"name": n, "model": models[0], "lr": 5.0e-3, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
            for n in ("first", "second")]
    cfg = tiny_config(run_dir, models, students=same, router={**section["router"], "mode": "off"}, max_steps=2)
    train_stage.run(cfg, run_dir)
    rows = _jsonl(run_dir / "train" / "log.jsonl")
    assert rows[0]["co_routed_paths"] > 0
    assert rows[0]["mutual_mse"] == pytest.approx(0.0, abs=1e-6)
    assert rows[0]["mutual"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=0.05)
    assert all(r["mutual"] >= r["mutual_mse"] - 1e-6 for r in rows)
