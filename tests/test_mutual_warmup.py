"""The mutual term's warm-up (`train.mutual.warmup_ratio`): for its first steps L_mutual trains the mutual
head only (students' hidden states detached), then it is the usual term; a function of the step number."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import make_filtered, tiny_config, tiny_train_section

from qrdistill.errors import ConfigError

STEPS = 4
WARMUP = 0.5  # round(0.5 * 4) = 2 warm-up steps: steps 0 and 1 (logged as steps 1 and 2)


@pytest.fixture(scope="module")
def filtered(tmp_path_factory) -> Path:
    return make_filtered(tmp_path_factory.mktemp("paths"), limit=3)


def _run_dir(path: Path, filtered: Path) -> Path:
    path.mkdir()
    shutil.copy(filtered, path / "filtered.jsonl")
    return path


def _trainer(run_dir: Path, models: list[str], lambda_mutual: float):
    from qrdistill.train.data import build_items, load_kept
    from qrdistill.train.loop import Trainer

    # No LoRA dropout: the two trainers' forwards must be identical whatever RNG the mutual head's init used.
    students = tiny_train_section(models)["students"]
    for s in students:
        s["lora"] = {**s["lora"], "dropout": 0.0}
    # peer_paths all: every path enters the mutual term, whatever the router decides.
    cfg = tiny_config(run_dir, models, students=students, lambda_mutual=lambda_mutual,
                      mutual={"peer_paths": "all", "warmup_ratio": WARMUP})
    items = build_items(load_kept(run_dir / "filtered.jsonl"), "qrdistill")
    trainer = Trainer(cfg, run_dir, items, max_steps=STEPS, fingerprint="t")
    trainer.setup()
    return trainer


def _student_grads(trainer) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for s in trainer.students for p in s.trainable_parameters()]


def test_warmup_stops_the_mutual_gradient_into_the_students_only(tmp_path, models, filtered):
    on = _trainer(_run_dir(tmp_path / "on", filtered), models, lambda_mutual=0.5)
    off = _trainer(_run_dir(tmp_path / "off", filtered), models, lambda_mutual=0.0)
    try:
        assert on.mutual_warmup_steps == 2 and off.mutual is None and off.mutual_warmup_steps == 0
        # Inside the warm-up: the students' gradient is the distill loss's alone, exactly as without the term...
        res_on, res_off = on.accumulate(epoch=0, micro=0, step=1), off.accumulate(epoch=0, micro=0, step=1)
        assert res_on.mutual_warmup and not res_off.mutual_warmup
        assert sum(st.co_routed for st in res_on.stats) > 0 and sum(st.mutual for st in res_on.stats) > 0
        g_on, g_off = _student_grads(on), _student_grads(off)
        assert len(g_on) > 4 and any(g.abs().sum() > 0 for g in g_off)
        assert all(torch.equal(a, b) for a, b in zip(g_on, g_off, strict=True))
        # ...while the mutual head learns from it: projections through eq. 8, regressors through competence.
        assert all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0 for p in on.mutual.projections)
        assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for r in on.mutual.regressors)
        for t in (on, off):
            t.optimizer.zero_grad(set_to_none=True)

        # After it: the term reaches the students.
        res_on, res_off = on.accumulate(epoch=0, micro=0, step=2), off.accumulate(epoch=0, micro=0, step=2)
        assert not res_on.mutual_warmup
        g_on, g_off = _student_grads(on), _student_grads(off)
        assert not all(torch.equal(a, b) for a, b in zip(g_on, g_off, strict=True))
        on.optimizer.zero_grad(set_to_none=True)

        # The head's optimizer group still steps during the warm-up.
        before = [p.weight.detach().clone() for p in on.mutual.projections]
        on.apply_update(on.accumulate(epoch=0, micro=0, step=0).stats)
        assert all(not torch.equal(b, p.weight) for b, p in zip(before, on.mutual.projections, strict=True))
    finally:
        on.close()
        off.close()


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for name in ("llama", "gpt2"):
        path = run_dir / "train" / "adapters" / name / "adapter_model.safetensors"
        out |= {f"{name}/{k}": v for k, v in load_file(str(path)).items()}
    for f in ("router.pt", "mutual.pt"):
        out |= {f"{f}/{k}": v for k, v in torch.load(run_dir / "train" / f)["state_dict"].items()}
    return out


def test_resumed_inside_the_warmup_equals_uninterrupted_and_the_log_marks_it(tmp_path, models, filtered, caplog):
    from qrdistill.stages import train as train_stage

    straight = _run_dir(tmp_path / "straight", filtered)
    cfg = tiny_config(straight, models, max_steps=STEPS, checkpoint_every=1, keep_checkpoints=STEPS,
                      mutual={"peer_paths": "all", "warmup_ratio": WARMUP})
    train_stage.run(cfg, straight)
    rows = [json.loads(x) for x in (straight / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["mutual_warmup"] for r in rows] == [True, True, False, False]

    # The same training stopped after its first step (inside the warm-up) and continued.
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    (resumed / "train" / "summary.json").unlink()
    for s in range(2, STEPS + 1):
        shutil.rmtree(resumed / "train" / "checkpoints" / f"step-{s}")
    with caplog.at_level("INFO"):
        summary = train_stage.run(cfg.model_copy(update={"run_dir": str(resumed)}), resumed)
    assert f"resuming from {resumed / 'train' / 'checkpoints' / 'step-1'}" in caplog.text
    assert summary["steps"] == STEPS
    again = [json.loads(x) for x in (resumed / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["mutual_warmup"] for r in again] == [True, True, False, False]
    a, b = _final_weights(straight), _final_weights(resumed)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("value,expect", [
    (1.0, "less than 1"), (-0.1, "greater than or equal to 0"), (float("nan"), "less than 1"),
    ("soon", "valid number"),
])
def test_warmup_ratio_is_validated(value, expect):
    from qrdistill.config import load_config

    with pytest.raises(ConfigError, match=rf"train\.mutual\.warmup_ratio: .*{expect}"):
        load_config(None, {"train": {"mutual": {"warmup_ratio": value}}})


def test_warmup_ratio_default_and_off():
    from qrdistill.config import load_config
    from qrdistill.config.train import MutualConfig

    assert MutualConfig().warmup_ratio == 0.1
    assert load_config(None, {"train": {"mutual": {"warmup_ratio": 0}}}).train.mutual.warmup_ratio == 0.0
