"""A real server: the `openai` backend and the `llm` judge against llama.cpp's OpenAI-compatible
server (llama-cpp-python) serving the bundled Gemma-3-270M GGUF on 127.0.0.1.

The model is a weak base model: these tests check the plumbing (prompts in,
texts and token usage stored, resume issues no calls), not its accuracy.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from llama_server import llama_cpp_available, llama_server

from qrdistill.backends import Request, get_backend
from qrdistill.config import RunConfig
from qrdistill.config.generate import OpenAIBackendConfig
from qrdistill.io import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def server(gemma_gguf):
    if not llama_cpp_available():
        pytest.fail("llama-cpp-python is not installed: pip install 'qrdistill[server]' (CI must install it)")
    with llama_server(gemma_gguf, n_ctx=2048) as s:
        yield s


def _backend(server: Any, **kw: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": server.base_url, "model": server.model_alias, "mode": "completions",
            "temperature": 0.0, "max_concurrency": 2, "timeout": 120, "max_retries": 2, **kw}


def _store(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(run_dir / "store.sqlite")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM completions WHERE kind = ?", (kind,))]
    db.close()
    return rows


def _calls(run_dir: Path, kind: str) -> int:
    db = sqlite3.connect(run_dir / "store.sqlite")
    n = db.execute("SELECT COUNT(*) FROM calls WHERE kind = ?", (kind,)).fetchone()[0]
    db.close()
    return n


def test_generate_and_llm_filter_through_real_llamacpp_server(server, shared_data, tmp_path):
    from qrdistill.stages import filter as filter_stage
    from qrdistill.stages import generate

    # two real GSM8K questions
    src = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:2]]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in src))
    run_dir = tmp_path / "run"
    raw = {
        "run_dir": str(run_dir),
        "tasks": [{"name": "gsm8k", "split": "test", "path": str(data)}],
        "generate": {"teacher": _backend(server, max_tokens=48), "styles": ["cot", "program"]},
        # The two questions come from GSM8K's test split, which the run would also evaluate: decontamination
        # would drop both before the judge sees them.
        "filter": {"judge": {"kind": "llm", "backend": _backend(server, max_tokens=24)},
                   "decontaminate": {"enabled": False}},
    }
    cfg = RunConfig.model_validate(raw)

    summary = generate.run(cfg, run_dir)
    assert summary["paths"] == 4 and summary["failed_calls"] == 0 and summary["calls_issued"] == 4
    teacher = _store(run_dir, "teacher")
    assert len(teacher) == 4 and all(r["status"] == "ok" for r in teacher)
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in teacher)
    assert all(r["completion_tokens"] <= 48 for r in teacher)
    paths = read_jsonl(run_dir / "paths.jsonl")
    assert all(p["response"].strip() for p in paths), "the server returned empty completions"
    assert {r["text"] for r in teacher} == {p["response"] for p in paths}
    assert all(p["teacher"] == f"openai[completions]:{server.model_alias}" for p in paths)

    # A re-run issues no call.
    calls = _calls(run_dir, "teacher")
    assert generate.run(cfg, run_dir)["calls_issued"] == 0
    assert _calls(run_dir, "teacher") == calls == 4

    # The base model rarely answers right, and the filter only judges correct paths. So that the
    # judge sees some, make the gold answer of each question what the model itself answered (the
    # same questions, so the teacher's stored completions still apply: again no call).
    preds = {}
    for p in paths:
        if p["pred"] is not None:
            preds.setdefault(p["qid"], p["pred"])
    assert preds, f"no number extracted from any completion: {[p['response'] for p in paths]}"
    fixed = []
    for i, row in enumerate(src):
        qid = f"gsm8k/gsm8k-test-{i:05d}"
        answer = preds.get(qid, "999999")
        fixed.append({**row, "answer": f"rewritten gold\n#### {answer}"})
    data.write_text("".join(json.dumps(r) + "\n" for r in fixed))
    assert generate.run(cfg, run_dir)["calls_issued"] == 0
    paths = read_jsonl(run_dir / "paths.jsonl")
    n_correct = sum(p["correct"] for p in paths)
    assert n_correct >= 1

    report = filter_stage.run(cfg, run_dir)
    judged = _store(run_dir, "judge")
    assert len(judged) == n_correct and all(r["status"] == "ok" for r in judged)
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in judged)
    # the judge saw the question and the path, and its prompt ended at "VERDICT:" for the base model
    for r in judged:
        prompt = json.loads(r["request"])["messages"][-1]["content"]
        assert prompt.endswith("VERDICT:") and "REASONING PATH:" in prompt
    rows = read_jsonl(run_dir / "filtered.jsonl")
    verdicts = [r["judge"] for r in rows if r["correct"]]
    assert len(verdicts) == n_correct and all(v is not None and v["reason"] is not None for v in verdicts)
    # the two worked verdicts in the prompt make even this base model answer in the format
    assert any(v["parsed"] for v in verdicts), verdicts
    # only an explicit, parsed VALID keeps a path
    for r in rows:
        assert r["kept"] == bool(r["correct"] and r["judge"]["valid"] and r["judge"]["parsed"])
    assert report["overall"]["total"] == 4 and report["overall"]["wrong_answer"] == 4 - n_correct

    # the filter again: verdicts come from the store, no judge call
    judge_calls = _calls(run_dir, "judge")
    filter_stage.run(cfg, run_dir)
    assert _calls(run_dir, "judge") == judge_calls == n_correct


def test_chat_mode_plumbing_on_base_model(server):
    """llama.cpp applies the GGUF's chat template; the base model tends to stop at once there.
    An empty reply is still an answer (status ok, stored as ""), with the usage the server reports."""
    backend = get_backend(OpenAIBackendConfig.model_validate(_backend(server, mode="chat", max_tokens=16)))
    reqs = [Request(messages=[{"role": "user", "content": "What is 12 + 7? Answer with a number."}]),
            Request(messages=[{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Name a prime number."}])]
    got: dict[int, Any] = {}
    backend.generate(reqs, lambda r, c: got.__setitem__(id(r), c))
    assert len(got) == 2
    for c in got.values():
        assert c.status == "ok" and isinstance(c.text, str), c
        assert c.prompt_tokens > 0 and c.completion_tokens is not None and c.completion_tokens <= 16
        assert c.finish_reason in ("stop", "length")
        assert c.attempts == 1
