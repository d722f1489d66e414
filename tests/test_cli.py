"""The command line: help of every command, and `--set` overrides reaching the stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "qrdistill", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_top_level_help_lists_every_command(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in ("generate", "filter", "train", "evaluate", "run", "analyze", "export", "lm-eval"):
        assert command in proc.stdout


@pytest.mark.parametrize("command", ["generate", "filter", "train", "evaluate", "run", "analyze"])
def test_command_help(tmp_path, command):
    proc = cli(command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: qrdistill {command}")
    assert "--config" in proc.stdout and "--run-dir" in proc.stdout
    if command != "analyze":
        assert "--set KEY=VALUE" in proc.stdout
    if command in ("generate", "filter"):
        assert "--limit" in proc.stdout


def test_set_overrides_reach_generate(tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\ngenerate:\n  styles: [vanilla, cot, tot]\n  samples_per_style: 1\n")
    proc = cli(
        "generate", "-c", str(cfg), "-d", str(run), "--limit", "2",
        "--set", "generate.styles=[cot, backward]",
        "--set", "generate.samples_per_style=2",
        "--set", "seed=7",
        "--set", "tasks=[{name: procedural_arith, limit: 5}]",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run / "paths.jsonl").read_text().splitlines()]
    # --limit 2 caps tasks[0].limit 5; 2 questions x 2 styles x 2 samples.
    assert len(rows) == 8
    assert {r["style"] for r in rows} == {"cot", "backward"}
    assert {r["sample"] for r in rows} == {0, 1}
    assert {r["task"] for r in rows} == {"procedural_arith"}
    meta = json.loads((run / "meta" / "generate.json").read_text())
    assert meta["seed"] == 7 and meta["config"]["seed"] == 7
    assert meta["config"]["generate"]["styles"] == ["cot", "backward"]
    assert meta["config"]["run_dir"] == str(run)


def test_set_requires_key_value(tmp_path):
    proc = cli("generate", "--set", "generate.styles", cwd=tmp_path)
    assert proc.returncode == 2
    assert "key=value" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_command(tmp_path):
    proc = cli("distil", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.parametrize("args", [
    ["--what", "dataset", "--quant", "q4_k_m"],
    ["--what", "model", "--push-to-hub", "me/x"],
    ["--what", "gguf", "--all-paths"],
    ["--what", "dataset", "--students", "gemma"],
])
def test_export_refuses_a_flag_of_another_kind_of_export(tmp_path, args):
    proc = cli("export", "--run-dir", str(tmp_path), *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("qrdistill: error: ") and "not an option of --what" in proc.stderr
    assert "Traceback" not in proc.stderr
