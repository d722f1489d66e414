"""Faults: the `openai` backend against a local OpenAI-compatible server that misbehaves on cue.

The fake server (the one place a fake is right: to inject faults) answers
~30 % of requests with 429 (Retry-After 0 or 1 s), 500, a hang beyond the
client timeout, or a 200 whose body is not JSON. Which fault a request meets
is a seeded function of (prompt, how many times the server has seen that
prompt), so the run is deterministic whatever the concurrency interleaving.
The generate stage must then produce every path with a bounded, exactly
counted number of calls, honour Retry-After, and resume: a prompt that fails
permanently is stored as an error and only it is asked again on the next run.
The same backend is tested against a real llama.cpp server in
test_llamacpp_server.py.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from qrdistill.backends import Request, get_backend
from qrdistill.backends.openai_backend import TokenBucket, parse_retry_after, render_plain_prompt
from qrdistill.config import RunConfig
from qrdistill.config.generate import OpenAIBackendConfig
from qrdistill.errors import ConfigError, QRDistillError
from qrdistill.io import read_jsonl
from qrdistill.store import Store

FAULTS = ("429", "500", "hang", "badjson")
HANG_S = 2.5
TIMEOUT_S = 1.0
MAX_RETRIES = 6


class FaultyServer:
    """OpenAI-compatible /v1/completions and /v1/chat/completions with seeded faults and a call log."""

    def __init__(self, fault_rate: float = 0.3, seed: int = 7) -> None:
        self.fault_rate = fault_rate
        self.seed = seed
        #: prompt substring -> HTTP status returned for it every time (a permanent failure)
        self.poison: dict[str, int] = {}
        self.log: list[dict[str, Any]] = []
        self.seen: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802  (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                server.handle(self, body)

        class Server(ThreadingHTTPServer):
            # The default listen backlog (5) drops SYNs when 8 clients connect at once, and the
            # kernel's 1 s SYN retry then looks like a timeout that the server never saw.
            request_queue_size = 128

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fault_for(self, prompt: str, n: int) -> str | None:
        r = random.Random(f"{self.seed}|{prompt}|{n}")
        if r.random() >= self.fault_rate:
            return None
        return r.choice(FAULTS)

    def handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        prompt = body.get("prompt") if "prompt" in body else json.dumps(body.get("messages"))
        with self._lock:
            n = self.seen[prompt]
            self.seen[prompt] += 1
        poison = next((code for s, code in self.poison.items() if s in prompt), None)
        fault = None if poison else self.fault_for(prompt, n)
        entry = {"prompt": prompt, "n": n, "fault": fault or (str(poison) if poison else None),
                 "t_in": time.monotonic(), "retry_after": None}
        with self._lock:
            self.log.append(entry)
        if poison:
            self._send(h, poison, {"error": {"message": f"permanent failure {poison}", "type": "server_error"}})
        elif fault == "429":
            entry["retry_after"] = random.Random(f"ra|{prompt}|{n}").choice([0, 1])
            self._send(h, 429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                       {"Retry-After": str(entry["retry_after"])})
        elif fault == "500":
            self._send(h, 500, {"error": {"message": "internal error", "type": "server_error"}})
        elif fault == "hang":
            time.sleep(HANG_S)
            self._send(h, 200, self._completion(body, prompt))
        elif fault == "badjson":
            self._send_raw(h, 200, b'{"id": "x", "choices": [{"text": "trunc')
        else:
            self._send(h, 200, self._completion(body, prompt))
        entry["t_out"] = time.monotonic()

    @staticmethod
    def _completion(body: dict[str, Any], prompt: str) -> dict[str, Any]:
        text = f"Step 1: read the question. The answer is {len(prompt) % 97}."
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if "messages" in body:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        return {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": usage}

    def _send(self, h: BaseHTTPRequestHandler, code: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        self._send_raw(h, code, json.dumps(payload).encode(), headers)

    @staticmethod
    def _send_raw(h: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a hung request, as it should


def _teacher(server: FaultyServer, **kw: Any) -> dict[str, Any]:
    return {
        "kind": "openai", "base_url": server.base_url, "model": "fake-teacher", "mode": "completions",
        "temperature": 0.0, "max_tokens": 32, "timeout": TIMEOUT_S, "max_retries": MAX_RETRIES,
        "max_concurrency": 8, "backoff_base": 0.05, "backoff_max": 2.0, **kw,
    }


def _config(run_dir: Path, server: FaultyServer, questions: int = 10) -> RunConfig:
    return RunConfig.model_validate({
        "run_dir": str(run_dir),
        "tasks": [{"name": "procedural_arith", "split": "train", "limit": questions}],
        "generate": {"teacher": _teacher(server)},
    })


def _store_rows(run_dir: Path) -> list[dict[str, Any]]:
    import sqlite3

    db = sqlite3.connect(run_dir / "store.sqlite")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT key, status, error, attempts, prompt_tokens FROM completions")]
    db.close()
    return rows


def test_generate_through_faults_produces_every_path_with_bounded_retries(tmp_path):
    from qrdistill.stages import generate

    run_dir = tmp_path / "run"
    with FaultyServer(fault_rate=0.3, seed=7) as server:
        cfg = _config(run_dir, server)
        t0 = time.monotonic()
        summary = generate.run(cfg, run_dir)
        elapsed = time.monotonic() - t0
        first_log = list(server.log)

        # the faults really happened, of every kind
        kinds = {e["fault"] for e in first_log if e["fault"]}
        assert kinds == set(FAULTS), kinds
        n_faults = sum(1 for e in first_log if e["fault"])
        assert 0.15 < n_faults / len(first_log) < 0.45

        # every path produced
        paths = read_jsonl(run_dir / "paths.jsonl")
        assert summary["expected_paths"] == 60 and len(paths) == 60 and summary["failed_calls"] == 0
        # ... with the text the server sent for that exact prompt (no mix-ups under concurrency)
        for p in paths:
            assert p["response"] == f"Step 1: read the question. The answer is {len(p['prompt']) % 97}."

        # retries bounded per request, and the server's count equals the attempts we recorded
        stored = _store_rows(run_dir)
        assert len(stored) == 60 and all(r["status"] == "ok" for r in stored)
        assert all(1 <= r["attempts"] <= MAX_RETRIES + 1 for r in stored)
        assert sum(r["attempts"] for r in stored) == len(first_log) <= 60 * (MAX_RETRIES + 1)
        assert all(r["prompt_tokens"] > 0 for r in stored)
        # every request was retried exactly as often as the server faulted it, then succeeded
        per_prompt = defaultdict(list)
        for e in first_log:
            per_prompt[e["prompt"]].append(e)
        for calls in per_prompt.values():
            assert calls[-1]["fault"] is None and all(c["fault"] for c in calls[:-1])

        # Retry-After honoured: the retry after a "Retry-After: 1" comes >= 1 s later, while
        # other retries (backoff 0.05 s and up) come much sooner
        gaps_ra1, gaps_500 = [], []
        for calls in per_prompt.values():
            for prev, nxt in pairwise(calls):
                if prev["fault"] == "429" and prev["retry_after"] == 1:
                    gaps_ra1.append(nxt["t_in"] - prev["t_out"])
                elif prev["fault"] == "500" and prev["n"] == 0:
                    gaps_500.append(nxt["t_in"] - prev["t_out"])
        assert gaps_ra1 and min(gaps_ra1) >= 0.95, gaps_ra1
        assert gaps_500 and max(gaps_500) < 0.5, gaps_500
        # a hang costs the timeout, not the hang: the whole run is far shorter than serial hangs
        assert elapsed < 30

        # a second run issues no call at all
        before = len(server.log)
        again = generate.run(cfg, run_dir)
        assert len(server.log) == before and again["calls_issued"] == 0 and again["paths"] == 60


def test_permanent_failure_is_stored_and_only_it_is_retried_next_run(tmp_path):
    from qrdistill.stages import generate

    run_dir = tmp_path / "run"
    with FaultyServer(fault_rate=0.0) as server:
        cfg = _config(run_dir, server, questions=5)
        # Ask once on a throwaway dir to learn two real prompts, then poison them for the real run.
        generate.run(_config(tmp_path / "probe", server, questions=5), tmp_path / "probe")
        probe = read_jsonl(tmp_path / "probe" / "paths.jsonl")
        p500, p400 = probe[3]["prompt"], probe[7]["prompt"]
        server.poison = {p500: 500, p400: 400}
        server.log.clear()

        with pytest.raises(QRDistillError, match="2 of 30 teacher calls failed permanently"):
            generate.run(cfg, run_dir)
        calls = {p500: 0, p400: 0, "other": 0}
        for e in server.log:
            calls[e["prompt"] if e["prompt"] in calls else "other"] += 1
        # 500 is retried until max_retries is spent; 400 fails at once; the rest once each
        assert calls == {p500: MAX_RETRIES + 1, p400: 1, "other": 28}
        errors = {r["attempts"]: r["error"] for r in _store_rows(run_dir) if r["status"] == "error"}
        assert set(errors) == {MAX_RETRIES + 1, 1}
        assert "HTTP 500" in errors[MAX_RETRIES + 1] and f"gave up after {MAX_RETRIES + 1} attempts" in errors[7]
        assert "HTTP 400" in errors[1]
        assert len(read_jsonl(run_dir / "paths.jsonl")) == 28

        # the server is fixed: the next run asks exactly the two failed prompts, once each
        server.poison = {}
        server.log.clear()
        summary = generate.run(cfg, run_dir)
        assert sorted(e["prompt"] for e in server.log) == sorted([p500, p400])
        assert summary["calls_issued"] == 2 and summary["paths"] == 30 and summary["failed_calls"] == 0
        with Store(run_dir / "store.sqlite") as store:
            assert store.reissued_keys() == []


def test_chat_mode_and_direct_generate_call_on_result_in_callers_thread(tmp_path):
    with FaultyServer(fault_rate=0.3, seed=3) as server:
        backend = get_backend(OpenAIBackendConfig.model_validate(_teacher(server, mode="chat")))
        reqs = [Request(messages=[{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": f"What is {i} + {i}?"}]) for i in range(12)]
        caller = threading.get_ident()
        got: dict[int, Any] = {}
        threads = set()
        ticks: list[int] = []

        def on_result(req: Request, comp: Any) -> None:
            threads.add(threading.get_ident())
            got[id(req)] = comp

        backend.generate(reqs, on_result, ticks.append)
        assert threads == {caller} and sum(ticks) == 12 and len(got) == 12
        assert all(c.ok and c.text.startswith("Step 1") and c.completion_tokens > 0 for c in got.values())
        # chat mode sent the messages, not a rendered prompt
        assert all(json.loads(e["prompt"])[0]["role"] == "system" for e in server.log)


def test_generate_works_from_inside_a_running_event_loop():
    import asyncio

    with FaultyServer(fault_rate=0.0) as server:
        backend = get_backend(OpenAIBackendConfig.model_validate(_teacher(server)))
        reqs = [Request(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(5)]
        got: list[Any] = []
        threads = set()

        async def inside() -> None:
            backend.generate(reqs, lambda r, c: (got.append(c), threads.add(threading.get_ident())))

        asyncio.run(inside())
        assert len(got) == 5 and all(c.ok for c in got) and threads == {threading.get_ident()}


def test_requests_per_minute_limits_the_rate():
    with FaultyServer(fault_rate=0.0) as server:
        # 1200/min = 20/s with bursts of at most 20: 40 requests need >= ~1 s
        backend = get_backend(OpenAIBackendConfig.model_validate(_teacher(server, requests_per_minute=1200)))
        reqs = [Request(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(40)]
        t0 = time.monotonic()
        backend.generate(reqs, lambda r, c: None)
        assert time.monotonic() - t0 >= 0.9
        starts = sorted(e["t_in"] for e in server.log)
        assert len(starts) == 40 and starts[-1] - starts[0] >= 0.9


def test_token_bucket_allows_the_rate_and_no_more():
    import asyncio

    async def go() -> float:
        bucket = TokenBucket(rate=600, period=60)  # 10/s, burst 10
        t0 = time.monotonic()
        for _ in range(25):
            await bucket.acquire()
        return time.monotonic() - t0

    took = asyncio.run(go())
    assert 1.3 <= took < 3.0, took


def test_parse_retry_after_seconds_date_and_ms():
    import email.utils

    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    future = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 17 <= parse_retry_after({"retry-after": future}) <= 21
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_honours_retry_after_capped_and_grows_otherwise():
    cfg = OpenAIBackendConfig(base_url="http://127.0.0.1:9/v1", model="m", backoff_base=0.5, backoff_max=4.0)
    b = get_backend(cfg)
    assert b.backoff_delay(1, 1.0) == 1.0
    assert b.backoff_delay(1, 30.0) == 4.0  # capped by backoff_max
    assert b.backoff_delay(1, 0.0) == 0.0
    for attempt, nominal in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        for _ in range(20):
            assert nominal / 2 <= b.backoff_delay(attempt, None) <= nominal


def test_missing_api_key_for_remote_endpoint_is_a_config_error(monkeypatch):
    monkeypatch.delenv("QRDISTILL_NO_SUCH_KEY", raising=False)
    cfg = OpenAIBackendConfig(base_url="https://api.example.com/v1", model="m", api_key_env="QRDISTILL_NO_SUCH_KEY")
    with pytest.raises(ConfigError, match="api_key_env.*QRDISTILL_NO_SUCH_KEY"):
        get_backend(cfg)
    # a local server needs no key
    local = OpenAIBackendConfig(base_url="http://127.0.0.1:8080/v1", model="m", api_key_env="QRDISTILL_NO_SUCH_KEY")
    assert get_backend(local).model == "m"
    with pytest.raises(ConfigError, match="model"):
        get_backend(OpenAIBackendConfig(base_url="http://127.0.0.1:8080/v1", model=""))


def test_key_is_scrubbed_from_errors(monkeypatch):
    secret = "sk-test-scrub-0123456789abcdef"
    monkeypatch.setenv("QRDISTILL_TEST_SCRUB_KEY", secret)
    b = get_backend(OpenAIBackendConfig(base_url="https://api.example.com/v1", model="m",
                                        api_key_env="QRDISTILL_TEST_SCRUB_KEY"))
    assert secret not in b.scrub(f"401: bad key Bearer {secret}")
    assert secret not in repr(b.__dict__.get("config"))


def test_request_key_depends_on_mode_not_on_base_url():
    a = get_backend(OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1", model="m", mode="chat"))
    b = get_backend(OpenAIBackendConfig(base_url="http://127.0.0.1:2/v1", model="m", mode="chat"))
    c = get_backend(OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1", model="m", mode="completions"))
    req = Request(messages=[{"role": "user", "content": "hi"}])
    assert a.key(req) == b.key(req) != c.key(req)


def test_render_plain_prompt():
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Q: 2+2?\n"},
            {"role": "assistant", "content": "A:"}]
    assert render_plain_prompt(msgs) == "You are terse.\n\nQ: 2+2?\n\nA:"
    assert render_plain_prompt([{"role": "user", "content": "VERDICT:"}]) == "VERDICT:"
