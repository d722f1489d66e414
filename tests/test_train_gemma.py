"""Real models: two Gemma-3-270M students (one shared base, different LoRA) + the MiniLM router."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from train_helpers import make_filtered

pytestmark = pytest.mark.slow


def _response_nll(model, tok, prompts: list[str], responses: list[str]) -> float:
    """Mean NLL of the response tokens given the prompt (the distill loss, outside the train code)."""
    total, count = 0.0, 0
    for p, r in zip(prompts, responses, strict=True):
        p_ids = tok(p, add_special_tokens=True)["input_ids"]
        r_ids = tok(r, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(p_ids) - 1:-1].float()
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(r_ids), reduction="sum")
        total, count = total + float(nll), count + len(r_ids)
    return total / count


def test_two_gemma_students_learn_and_adapters_reload(tmp_path, gemma_path, minilm_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qrdistill.config import RunConfig
    from qrdistill.stages import train as train_stage
    from qrdistill.train.data import build_items, load_kept

    paths = make_filtered(tmp_path / "paths", limit=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(paths, run_dir / "filtered.jsonl")
    items = build_items(load_kept(paths), "qrdistill")
    assert 8 <= len(items) <= 24

    cfg = RunConfig.model_validate({"run_dir": str(run_dir), "train": {
        "students": [
            {"name": "gemma-a", "model": "gemma3-270m", "lr": 1.0e-3,
             "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"}},
            {"name": "gemma-b", "model": "gemma3-270m", "lr": 1.0e-3,
             "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}},
        ],
        "max_length": 128, "batch_size": 4, "epochs": 1, "warmup_ratio": 0.0,
    }})
    assert cfg.train.router.encoder == "minilm" and cfg.train.router.enabled
    summary = train_stage.run(cfg, run_dir)
    assert summary["steps"] == -(-len(items) // 4) and summary["params_without_grad"] == []
    rows = [json.loads(x) for x in (run_dir / "train" / "routing.jsonl").read_text().splitlines()]
    assert sorted(r["path_key"] for r in rows) == sorted(it.key for it in items)
    log = [json.loads(x) for x in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert all(r["mutual"] >= 0 for r in log) and (run_dir / "train" / "router.pt").exists()

    tok = AutoTokenizer.from_pretrained(gemma_path)
    # The paths each student trained on (truncated like training, to keep this quick).
    for name in ("gemma-a", "gemma-b"):
        trained = [r["path_key"] for r in rows if r["alpha"][0 if name == "gemma-a" else 1]][:3]
        by_key = {it.key: it for it in items}
        prompts = [by_key[k].prompt for k in trained]
        responses = [by_key[k].response[:200] for k in trained]
        assert prompts
        base = AutoModelForCausalLM.from_pretrained(gemma_path, dtype=torch.float32).eval()
        before = _response_nll(base, tok, prompts, responses)
        model = PeftModel.from_pretrained(base, str(run_dir / "train" / "adapters" / name)).eval()
        after = _response_nll(model, tok, prompts, responses)
        assert after < before - 0.05, (name, before, after)
        del base, model
