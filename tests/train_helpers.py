"""Shared setup of the train-stage tests: tiny students, real filtered paths, tiny configs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_filtered(run_dir: Path, limit: int = 3, seed: int = 0) -> Path:
    """Real D/filtered.jsonl from the generate and filter stages (simulated teacher, procedural tasks)."""
    from qrdistill.config import load_config
    from qrdistill.stages import filter as filter_stage
    from qrdistill.stages import generate

    cfg = load_config(None, {"run_dir": str(run_dir), "seed": seed})
    generate.run(cfg, run_dir, limit=limit)
    filter_stage.run(cfg, run_dir, limit=limit)
    return run_dir / "filtered.jsonl"


def tiny_train_section(models: list[str], **overrides: Any) -> dict[str, Any]:
    """A train section for two tiny students of different architectures and tokenizers."""
    llama, gpt2 = models
    section: dict[str, Any] = {
        "students": [
            {"name": "llama", "model": llama, "lr": 5.0e-3, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
            {"name": "gpt2", "model": gpt2, "lr": 5.0e-3,
             "lora": {"r": 2, "alpha": 4, "target_modules": ["c_attn"]}},
        ],
        # Any HF encoder works as eq. 1's Enc; the tiny Llama keeps tests fast (MiniLM: the slow test).
        "router": {"encoder": llama},
        # one pass unless a test asks for more (the demo's default is two)
        "epochs": 1,
        "batch_size": 4,
        "checkpoint_every": 50,
        "warmup_ratio": 0.0,
    }
    section.update(overrides)
    return section


def tiny_config(run_dir: Path, models: list[str], seed: int = 0, **overrides: Any):
    from qrdistill.config import RunConfig

    return RunConfig.model_validate(
        {"run_dir": str(run_dir), "seed": seed, "train": tiny_train_section(models, **overrides)}
    )


def write_config(path: Path, run_dir: Path, models: list[str], **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump({"run_dir": str(run_dir), "train": tiny_train_section(models, **overrides)}))
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def qrdistill_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "qrdistill", *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    """`qrdistill <args>` under torchrun on `nproc` local processes, on a free port (other tests, or engineers,
    may hold torchrun's default)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
            "-m", "qrdistill", *args]


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout_s: float = 300.0) -> None:
    """SIGKILL `proc` as soon as `ready()` holds; fails if `what` ends first or is not ready within `timeout_s`."""
    deadline = time.time() + timeout_s
    try:
        while not ready():
            assert proc.poll() is None, f"{what} ended before the kill"
            assert time.time() < deadline, f"{what}: not ready to kill after {timeout_s:.0f} s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
