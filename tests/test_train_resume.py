"""Exact resume: a training killed with SIGKILL and resumed ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_students
from train_helpers import kill_when, make_filtered, qrdistill_cmd, subprocess_env, write_config

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
EVERY = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    models = make_tiny_students(base / "tiny")
    filtered = make_filtered(base / "paths", limit=3)
    return models, filtered


def _train(run_dir: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        qrdistill_cmd("train", "--config", str(config), "--run-dir", str(run_dir), *extra),
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for name in ("llama", "gpt2"):
        for k, v in load_file(str(run_dir / "train" / "adapters" / name / "adapter_model.safetensors")).items():
            out[f"{name}/{k}"] = v
    for f in ("router.pt", "mutual.pt"):
        for k, v in torch.load(run_dir / "train" / f)["state_dict"].items():
            out[f"{f}/{k}"] = v
    return out


def test_resume_after_kill_equals_uninterrupted(tmp_path, setup):
    models, filtered = setup
    # LoRA dropout is on, so the RNG state must be restored too, not only weights and optimizer.
    config = write_config(tmp_path / "c.yaml", tmp_path / "unused", models, max_steps=STEPS,
                          checkpoint_every=EVERY, keep_checkpoints=2, grad_accum=2, batch_size=2,
                          warmup_ratio=0.1)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for d in (straight, killed):
        d.mkdir()
        shutil.copy(filtered, d / "filtered.jsonl")

    res = _train(straight, config)
    assert res.returncode == 0, res.stderr[-2000:]

    proc = subprocess.Popen(
        qrdistill_cmd("train", "--config", str(config), "--run-dir", str(killed)),
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    ckpts = killed / "train" / "checkpoints"
    kill_when(proc, (ckpts / f"step-{EVERY}").exists, "training")
    assert not (killed / "train" / "summary.json").exists(), "the kill came too late to test anything"
    assert proc.returncode == -signal.SIGKILL, f"training ended with {proc.returncode} before the kill"
    done = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("step-*"))
    assert done and done[-1] < STEPS

    res = _train(killed, config, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {ckpts / f'step-{done[-1]}'}" in res.stderr

    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys() and len(a) > 10
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert diff == {}
    # The weights did move (the comparison is not between two untouched inits).
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)

    def rows(d: Path, name: str) -> list[dict]:
        return [json.loads(x) for x in (d / "train" / name).read_text().splitlines()]

    ra, rb = rows(straight, "routing.jsonl"), rows(killed, "routing.jsonl")
    assert [(r["step"], r["path_key"], r["alpha"]) for r in ra] == [(r["step"], r["path_key"], r["alpha"]) for r in rb]
    la, lb = rows(straight, "log.jsonl"), rows(killed, "log.jsonl")
    assert [r["step"] for r in lb] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-6)
    # Only the newest checkpoints are kept.
    assert len(list(ckpts.glob("step-*"))) == 2


def test_resume_without_checkpoint_starts_fresh_and_finished_run_is_not_repeated(tmp_path, setup, caplog):
    from train_helpers import tiny_config

    from qrdistill.stages import train as train_stage

    models, filtered = setup
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    shutil.copy(filtered, run_dir / "filtered.jsonl")
    cfg = tiny_config(run_dir, models, max_steps=2)
    with caplog.at_level("INFO"):
        first = train_stage.run(cfg, run_dir, resume=True)
    assert "no checkpoint" in caplog.text and first["steps"] == 2
    caplog.clear()
    with caplog.at_level("INFO"):
        again = train_stage.run(cfg, run_dir)
    assert "already trained" in caplog.text and again["total_time"] == first["total_time"]
    # An interrupted run of the same training continues from its checkpoint without --resume.
    (run_dir / "train" / "summary.json").unlink()
    caplog.clear()
    with caplog.at_level("INFO"):
        cont = train_stage.run(cfg, run_dir)
    assert "resuming from" in caplog.text and cont["steps"] == 2
    # A different step budget is a different training: it starts over.
    caplog.clear()
    with caplog.at_level("INFO"):
        third = train_stage.run(cfg, run_dir, max_steps=3)
    assert third["steps"] == 3 and "resuming" not in caplog.text


def test_a_checkpoint_that_would_run_code_is_refused_not_executed(tmp_path):
    """A run directory from someone else is data: a state.pt whose unpickling would call a function is
    refused with a clear error, and the function never runs."""
    import pickle

    import torch

    from qrdistill.errors import DataError
    from qrdistill.train.checkpoint import load_checkpoint, rng_state, set_rng_state

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    (ckpt / "state.pt").write_bytes(pickle.dumps({"step": 1, "x": Payload()}))
    with pytest.raises(DataError, match="not loaded"):
        load_checkpoint(ckpt, rank=0)
    assert not marker.exists()

    # What the trainer itself saves loads under weights_only, RNG state included, and restores it.
    torch.save({"step": 2, "w": torch.ones(2)}, ckpt / "state.pt")
    torch.save(rng_state(), ckpt / "rng-0.pt")
    import numpy as np

    expect = np.random.rand(3)
    state, rng = load_checkpoint(ckpt, rank=0)
    set_rng_state(rng)
    assert state["step"] == 2 and np.allclose(np.random.rand(3), expect)
