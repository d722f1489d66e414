"""Secrets: an API key from the environment is sent to the server and written nowhere.

generate (teacher) and filter (llm judge) run through the real `openai`
backend against a local OpenAI-compatible stub, with debug logging. One
request makes the stub echo the Authorization header back in its error
message — the worst case of a provider quoting the key — so the key reaches
our process in an error text too. Afterwards no file under the run dir
(store.sqlite and its WAL included, read as bytes) and neither stdout nor
stderr may contain the key.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

from openai_stub import OpenAIStub

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "QRDISTILL_TEST_API_KEY"


def _reply(prompt: str) -> str:
    if "REASONING PATH" in prompt:  # the llm judge's prompt
        return "VERDICT: VALID\nREASON: every step holds."
    return "Half of 84 is 42. The answer is 42."


def _status(prompt: str) -> int:
    return 400 if "ECHO-KEY" in prompt else 200


def test_api_key_is_never_written(tmp_path):
    key = "sk-test-DUMMY-" + secrets.token_hex(16)
    data = tmp_path / "gsm.jsonl"
    rows = [
        {"question": "What is half of 84?", "answer": "84 / 2 = 42\n#### 42"},
        {"question": "What is 40 plus 2?", "answer": "40 + 2 = 42\n#### 42"},
        {"question": "ECHO-KEY: what is 6 times 7?", "answer": "6 * 7 = 42\n#### 42"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    env = {**os.environ, KEY_ENV: key, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    with OpenAIStub(reply=_reply, status=_status, echo_auth_in_errors=True) as stub:
        backend = (
            f"{{kind: openai, base_url: '{stub.base_url}', model: stub-model, api_key_env: {KEY_ENV}, "
            "max_retries: 0, max_concurrency: 2, timeout: 20}"
        )
        common = ["-d", str(run), "--verbose", "--set", f"tasks=[{{name: gsm8k, path: '{data}'}}]",
                  "--set", "generate.styles=[cot, program]"]
        gen = subprocess.run(
            [sys.executable, "-m", "qrdistill", "generate", *common, "--set", f"generate.teacher={backend}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )
        # The ECHO-KEY question fails (400) on purpose: generate reports it and exits non-zero.
        assert gen.returncode == 2, gen.stderr
        assert "2 of 6 teacher calls failed" in gen.stderr
        flt = subprocess.run(
            [sys.executable, "-m", "qrdistill", "filter", *common, "--set", f"filter.judge={{kind: llm, backend: {backend}}}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )
        assert flt.returncode == 0, flt.stderr
        seen = list(stub.requests)

    # The key was really used: every request carried it, and the echo really quoted it.
    assert seen and all(r["headers"].get("Authorization") == f"Bearer {key}" for r in seen)
    assert any("REASONING PATH" in json.dumps(r["body"]) for r in seen), "the llm judge was never called"
    assert stub.echoed, "the stub never echoed the key back"

    # The echoed message itself reached the store (scrubbed): without scrubbing the key would be there.
    db = sqlite3.connect(run / "store.sqlite")
    errors = [e for (e,) in db.execute("SELECT error FROM completions WHERE status = 'error'")]
    db.close()
    assert errors and all("bad credentials" in e and "Bearer" in e for e in errors), errors

    for proc in (gen, flt):
        assert key not in proc.stdout and key not in proc.stderr
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "store.sqlite" for p in files) and any(p.name == "filtered.jsonl" for p in files)
    for p in files:
        assert key.encode() not in p.read_bytes(), f"API key written to {p}"
    # Not even a fragment long enough to be useful.
    for p in files:
        assert key[-20:].encode() not in p.read_bytes(), f"part of the API key written to {p}"
