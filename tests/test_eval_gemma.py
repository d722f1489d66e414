"""The evaluate stage on the real Gemma-3-270M base and 50 real BIG-bench Date questions."""

from __future__ import annotations

import json

import pytest

from qrdistill.config import load_config


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 2 minutes on 2 idle cores; the generous limit is for a shared CPU
def test_gemma_zero_shot_on_real_date_questions(tmp_path, shared_data, gemma_path):
    from qrdistill.stages import evaluate

    data = str(shared_data / "bigbench_date" / "task.json")
    run_dir = tmp_path / "run"
    cfg = load_config(None, {
        "run_dir": str(run_dir),
        "tasks": [{"name": "date", "path": data}],
        "train": {"single_student": True, "method": "sft", "students": [{"name": "gemma", "model": "gemma3-270m"}]},
        # A base model zero-shot rarely reaches an answer line; 40 tokens keep the test short.
        "evaluate": {"limit": 50, "batch_size": 10, "max_new_tokens": 40, "students": "base"},
    })
    summary = evaluate.run(cfg, run_dir)
    acc = summary["students"]["base:gemma3-270m"]["tasks"]["date"]
    assert acc["n"] == 50
    assert 0.0 <= acc["ci_low"] <= acc["accuracy"] <= acc["ci_high"] <= 1.0
    assert acc["ci_high"] - acc["ci_low"] > 0 or acc["accuracy"] in (0.0, 1.0)
    # A base model zero-shot is near chance (5-6 options) or below it (it rarely names a letter).
    assert acc["accuracy"] < 0.5
    rows = [json.loads(x) for x in evaluate.predictions_path(run_dir, "base:gemma3-270m", "date").read_text()
            .splitlines()]
    assert len(rows) == 50 and len({r["qid"] for r in rows}) == 50
    assert all(0 < r["n_tokens"] <= 40 and r["logprob"]["mean"] < 0 for r in rows)
    assert all(r["gold"].startswith("(") for r in rows)  # lettered options, shuffled by the task
    print(f"\nGemma-3-270M base, 50 BIG-bench Date questions: {100 * acc['accuracy']:.1f}% "
          f"[{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}]")
