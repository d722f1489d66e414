"""Real models: the default students (Gemma-3-270M + SmolLM2-135M), a same-base Gemma pair, the MiniLM router."""

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

    paths = make_filtered(tmp_path / "paths", limit=3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(paths, run_dir / "filtered.jsonl")
    items = build_items(load_kept(paths), "qrdistill")
    assert 8 <= len(items) <= 18  # 3 questions x 2 tasks x the demo's 3 styles, less what the filter drops

    cfg = RunConfig.model_validate({"run_dir": str(run_dir), "train": {
        "students": [
            {"name": "gemma-a", "model": "gemma3-270m", "lr": 1.0e-3,
             "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"}},
            {"name": "gemma-b", "model": "gemma3-270m", "lr": 1.0e-3,
             "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}},
        ],
        "batch_size": 4, "epochs": 1, "warmup_ratio": 0.0,
    }})
    assert cfg.train.router.encoder == "minilm" and cfg.train.router.enabled
    summary = train_stage.run(cfg, run_dir)
    assert summary["steps"] == -(-len(items) // 4) and summary["params_without_grad"] == []
    rows = [json.loads(x) for x in (run_dir / "train" / "routing.jsonl").read_text().splitlines()]
    assert sorted(r["path_key"] for r in rows) == sorted(it.key for it in items)
    log = [json.loads(x) for x in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert all(r["mutual"] >= 0 for r in log) and (run_dir / "train" / "router.pt").exists()

    tok = AutoTokenizer.from_pretrained(gemma_path)
    # The paths each student trained on (their first 200 characters, to keep this quick).
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


def test_default_students_train_whole_pairs_and_record_it(tmp_path, gemma_path, minilm_path):
    """The default config's two different students for a few steps: train/summary.json says what each
    tokenizer made of the data (max_length from the data, nothing cut), the router logs its final P(route),
    and the mutual term ran across the two tokenizers."""
    from qrdistill.config import load_config
    from qrdistill.stages import train as train_stage
    from qrdistill.train.data import build_items, load_kept

    paths = make_filtered(tmp_path / "paths", limit=3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(paths, run_dir / "filtered.jsonl")
    items = build_items(load_kept(paths), "qrdistill")
    cfg = load_config(None, {"run_dir": str(run_dir), "train.max_steps": 3, "train.router.peer_forward": True})
    assert [s.model for s in cfg.train.students] == ["gemma3-270m", "smollm2-135m"]
    summary = train_stage.run(cfg, run_dir)
    lengths = summary["sequence_lengths"]
    assert set(lengths) == {"gemma", "smollm2"}
    for fit in lengths.values():
        assert fit["dropped"] <= 0.01 * len(items)
        assert fit["longest"] <= fit["max_length"] or fit["dropped"] > 0
        assert fit["response_tokens_p99"] > 0 and fit["max_length"] % 8 == 0
    assert summary["items_dropped"] == len(items) - summary["paths"]
    final = [json.loads(x) for x in (run_dir / "train" / "routing_final.jsonl").read_text().splitlines()]
    assert len(final) == summary["paths"] and all(len(r["probs"]) == 2 for r in final)
    log = [json.loads(x) for x in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    # peer_forward: every path compares the two students, so the router learns from every path.
    assert [r["router_compared_paths"] for r in log] == [min(4, summary["paths"] - 4 * k) for k in range(3)]
    assert summary["router_mode"] == "learned" and summary["steps"] == 3
