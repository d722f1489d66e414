"""Two processes on CPU (gloo) through torchrun: same routing decisions on every rank, clean exit."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tiny_models import make_tiny_students
from train_helpers import make_filtered, subprocess_env, torchrun_cmd, write_config

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_cpu_ranks(tmp_path):
    models = make_tiny_students(tmp_path / "tiny")
    filtered = make_filtered(tmp_path / "paths", limit=3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(filtered, run_dir / "filtered.jsonl")
    config = write_config(tmp_path / "c.yaml", run_dir, models, epochs=2, batch_size=2)
    cmd = torchrun_cmd(2, "train", "--config", str(config))
    res = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    for bad in ("abort", "destroy_process_group() was not called", "Traceback"):
        assert bad.lower() not in res.stderr.lower(), bad

    out = run_dir / "train"
    summary = json.loads((out / "summary.json").read_text())
    n_paths = sum(1 for line in filtered.read_text().splitlines() if json.loads(line)["kept"])
    assert summary["world_size"] == 2
    # Global batch = 2 per rank x 2 ranks.
    assert summary["steps"] == 2 * -(-n_paths // 4)
    assert summary["params_without_grad"] == []

    rows = [json.loads(x) for x in (out / "routing.jsonl").read_text().splitlines()]
    # Each path once per epoch, trained on one rank; both ranks trained paths.
    assert len(rows) == 2 * n_paths
    assert {r["rank"] for r in rows} == {0, 1}
    for epoch in (0, 1):
        keys = [r["path_key"] for r in rows if r["epoch"] == epoch]
        assert len(set(keys)) == n_paths == len(keys)
    # Every rank's own decision for each path it trained, gathered at the end, equals rank 0's.
    check = summary["routing_rank_check"]
    assert check == {"ranks": 2, "checked": 2 * n_paths, "mismatches": 0}
    # The data really was split: a path trained on different ranks in the two epochs is
    # common, and a path's decision is a function of (seed, epoch, path, router weights) only.
    assert all(r["students"] == ["llama", "gpt2"] for r in rows)
    for name in ("llama", "gpt2"):
        assert (out / "adapters" / name / "adapter_model.safetensors").exists()
