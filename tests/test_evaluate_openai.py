"""evaluate.backend: openai -- the same evaluation through an OpenAI-compatible server.

The fast tests use a small streaming server on 127.0.0.1 (`StreamServer`, below): it is the place to
look at the wire (the exact prompt, greedy settings, the stream closed at the answer line) and to make
the server fail on cue. The slow test exports a trained tiny student to GGUF and evaluates it both in
process (backend hf) and through the real llama.cpp server (backend openai): the predictions match.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from openai_stub import LocalServer

from qrdistill.config import load_config
from qrdistill.errors import ConfigError, QRDistillError

#: One reply: the streamed token texts and the finish_reason sent after them.
Reply = tuple[list[str], str]


class StreamServer(LocalServer):
    """`/v1/completions` with `stream: true` as Server-Sent Events, one token per event (as llama.cpp sends).

    `reply(prompt)` gives the tokens and finish_reason; `status(prompt, n)` (n = how many times this
    prompt was asked before) may return an HTTP error code, or -1 to end the stream after two tokens
    without a finish_reason (what llama-cpp-python's server does to an interrupted stream). A request
    without `stream` (the prompt-token probe) gets a JSON body whose usage counts `prompt_tokens(prompt)`.
    Every request body is recorded; `sent[prompt]` counts the tokens actually written before the client
    went away."""

    def __init__(self, reply: Callable[[str], Reply], status: Callable[[str, int], int] = lambda p, n: 200,
                 prompt_tokens: Callable[[str], int] = lambda p: len(p.split()), delay: float = 0.0) -> None:
        self.reply, self.status, self.prompt_tokens, self.delay = reply, status, prompt_tokens, delay
        self.requests: list[dict[str, Any]] = []
        self.sent: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send_json(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802  (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                prompt = str(body.get("prompt", ""))
                with stub._lock:
                    stub.requests.append(body)
                    n = stub.seen.get(prompt, 0) if body.get("stream") else 0
                    if body.get("stream"):
                        stub.seen[prompt] = n + 1
                code = stub.status(prompt, n)
                if code > 200:
                    self._send_json(code, {"error": {"message": f"stub error {code}", "type": "server_error"}})
                    return
                if not body.get("stream"):
                    usage = {"prompt_tokens": stub.prompt_tokens(prompt), "completion_tokens": 1, "total_tokens": 0}
                    self._send_json(200, {"id": "p", "object": "text_completion", "created": 0,
                                          "model": body.get("model"), "usage": usage,
                                          "choices": [{"index": 0, "text": "x", "finish_reason": "length"}]})
                    return
                tokens, finish = stub.reply(prompt)
                tokens = tokens[: body.get("max_tokens") or len(tokens)]
                if len(tokens) == body.get("max_tokens"):
                    finish = "length"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for i, tok in enumerate(tokens):
                        if code == -1 and i == 2:
                            break
                        lp = ({"tokens": [tok], "token_logprobs": [-0.25], "top_logprobs": None, "text_offset": [0]}
                              if body.get("logprobs") else None)
                        self._event({"choices": [{"index": 0, "text": tok, "logprobs": lp, "finish_reason": None}]})
                        with stub._lock:
                            stub.sent[prompt] = stub.sent.get(prompt, 0) + 1
                        time.sleep(stub.delay)
                    if code != -1:
                        self._event({"choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish}]})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client closed the stream: the answer was complete

            def _event(self, chunk: dict[str, Any]) -> None:
                payload = {"id": "s", "object": "text_completion", "created": 0, "model": "m", **chunk}
                self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.flush()

        self._serve(Handler, daemon_threads=True)

    def streamed(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("stream")]


def _words(text: str) -> list[str]:
    """`text` as token texts: each word with its leading space."""
    out = []
    for i, w in enumerate(text.split(" ")):
        out.append(w if i == 0 else " " + w)
    return out


def answer_reply(prompt: str) -> Reply:
    """Reasoning, an answer line, then text the model would ramble on with (the client must cut it)."""
    return _words("Compute it step by step. The answer is 42. Question: what next?" + " more" * 200), "stop"


def config(run_dir: Path, models: list[str], server: dict[str, Any] | None, students: str = "auto",
           limit: int = 3, **evaluate: Any):
    ev: dict[str, Any] = {"limit": limit, "max_new_tokens": 40, "batch_size": 3, "bootstrap_resamples": 50,
                          "students": students, **evaluate}
    if server is not None:
        ev["backend"] = "openai"
        ev["server"] = {"max_retries": 1, "backoff_base": 0.05, "backoff_max": 0.1, "timeout": 20, **server}
    return load_config(None, {
        "run_dir": str(run_dir),
        "tasks": [{"name": "procedural_arith", "limit": 2}],
        "train": {"students": [{"name": "llama", "model": models[0]}, {"name": "gpt2", "model": models[1]}]},
        "evaluate": ev,
    })


def _rows(path: Path) -> list[dict[str, Any]]:
    """A predictions file's rows by question (the file holds them in the order they were answered)."""
    return sorted((json.loads(x) for x in path.read_text().splitlines()), key=lambda r: r["qid"])


def test_config_names_the_missing_field(tmp_path, models):
    with pytest.raises(ConfigError, match=r"config field evaluate: backend openai needs evaluate\.server"):
        config(tmp_path, models, None, backend="openai")
    with pytest.raises(ConfigError, match=r"config field evaluate\.server\.base_url: Field required"):
        config(tmp_path, models, {"models": {}})
    with pytest.raises(ConfigError, match=r"evaluate\.server\.extra_params: max_tokens: set by evaluate itself"):
        config(tmp_path, models, {"base_url": "http://127.0.0.1:9/v1", "extra_params": {"max_tokens": 5}})
    with pytest.raises(ConfigError, match=r"evaluate\.server\.api_key_env: expects the NAME") as e:
        # Built at run time: a key-shaped literal in the repo would look like a leaked secret.
        config(tmp_path, models, {"base_url": "http://x/v1", "api_key_env": "sk-" + "FAKEKEY" * 5})
    assert "FAKEKEY" not in str(e.value)


def test_served_names_are_checked_before_any_request(tmp_path, models, one_thread):
    from test_evaluate import save_trained_adapters

    from qrdistill.stages import evaluate

    url = "http://127.0.0.1:9/v1"  # nothing listens there: a request would fail, not raise ConfigError
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"evaluate\.server\.models: nothing to evaluate: the train stage has not"):
        evaluate.run(config(run_dir, models, {"base_url": url}), run_dir)
    with pytest.raises(ConfigError, match=r"evaluate\.server\.models: 'lama' is not a student of train\.students"):
        evaluate.run(config(run_dir, models, {"base_url": url, "models": {"lama": "x"}}), run_dir)
    save_trained_adapters(run_dir, models)
    with pytest.raises(ConfigError, match=r"no served model name for student 'gpt2': add `gpt2: <name>`"):
        evaluate.run(config(run_dir, models, {"base_url": url, "models": {"llama": "l"}}), run_dir)
    with pytest.raises(ConfigError, match=r"no served model name for the zero-shot base 'base:.*evaluate\.students: all"):
        evaluate.run(config(run_dir, models, {"base_url": url, "models": {"llama": "l", "gpt2": "g"}},
                            students="all"), run_dir)
    with pytest.raises(ConfigError, match=r"evaluate\.server\.api_key_env: environment variable QRD_NOT_SET"):
        evaluate.run(config(run_dir, models, {"base_url": "https://api.example.com/v1", "api_key_env": "QRD_NOT_SET",
                                              "models": {"llama": "l", "gpt2": "g"}}), run_dir)
    assert not (run_dir / "eval").exists()


def test_streamed_answers_make_the_same_artifacts(tmp_path, models, one_thread, caplog):
    """The prompt as the hf path feeds it, greedy, the budget as max_tokens, the stream closed at the
    answer line; rows and summary of the same shape as backend hf's."""
    from qrdistill.evaluation.generation import load_tokenizer
    from qrdistill.stages import evaluate

    tok = load_tokenizer(models[0])
    base = f"base:{models[0]}"

    hf_run, run_dir = tmp_path / "hf", tmp_path / "run"
    hf_summary = evaluate.run(config(hf_run, models, None, students="base"), hf_run)
    hf_rows = _rows(evaluate.predictions_path(hf_run, base, "procedural_arith"))
    ends = hf_rows[1]["prompt"]

    def reply(prompt: str) -> Reply:
        if prompt == ends:
            return _words("I am not sure"), "stop"  # an end-of-generation token: eos
        return answer_reply(prompt)

    with StreamServer(reply, prompt_tokens=lambda p: len(tok(p)["input_ids"]), delay=0.002) as srv, \
            caplog.at_level("WARNING"):
        cfg = config(run_dir, models, {"base_url": srv.base_url, "models": {base: "tiny-base"}})
        summary = evaluate.run(cfg, run_dir)
    assert "prompt tokens" not in caplog.text  # the counts agreed
    assert list(summary["students"]) == [base]
    assert "not evaluated: evaluate.server.models gives no served name" in summary["note"]
    assert f"base:{models[1]}" in summary["note"]
    rows = _rows(evaluate.predictions_path(run_dir, base, "procedural_arith"))
    assert [set(r) for r in rows] == [set(r) for r in hf_rows]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in hf_rows]
    assert set(summary) == set(hf_summary)
    assert set(summary["students"][base]) - set(hf_summary["students"][base]) == {"served_model"}
    assert summary["settings"]["backend"] == "openai" and summary["settings"]["server"]["base_url"] == srv.base_url
    assert summary["settings"]["prompt_tokens"][base]["server"] == summary["settings"]["prompt_tokens"][base]["local"]

    streamed = srv.streamed()
    assert len(streamed) == 3
    for body in streamed:
        assert body["model"] == "tiny-base" and body["temperature"] == 0.0 and body["top_p"] == 1.0
        assert body["max_tokens"] == 40 and body["logprobs"] == 1 and body["repeat_penalty"] == 1.0
        assert "stop" not in body and "messages" not in body
    assert sorted(b["prompt"] for b in streamed) == sorted(r["prompt"] for r in rows)
    for r in rows:
        if r["prompt"] == ends:
            assert r["stop"] == "eos" and r["output"] == "I am not sure" and r["n_tokens"] == 4
        else:
            # The client closed the stream at the answer line, long before the 40 tokens the budget allows.
            assert r["stop"] == "answer_line" and r["output"] == "Compute it step by step. The answer is 42."
            assert r["pred"] == "42" and r["strict_pred"] == "42"
            assert r["n_tokens"] == 9 and r["logprob"] == {"sum": -2.25, "mean": -0.25}
            assert srv.sent[r["prompt"]] < 15
    md = (run_dir / "eval" / "summary.md").read_text()
    assert f"by the OpenAI-compatible server at {srv.base_url}" in md

    # A second BOS (or none) shows as a prompt length off by one: a warning with both counts.
    caplog.clear()
    with StreamServer(reply, prompt_tokens=lambda p: len(tok(p)["input_ids"]) + 1) as srv, caplog.at_level("WARNING"):
        cfg = config(run_dir, models, {"base_url": srv.base_url, "models": {base: "other-name"}})
        evaluate.run(cfg, run_dir)  # another served name: the rows are answered again
    assert len(srv.streamed()) == 3
    assert "one more: the server adds a BOS" in caplog.text


def test_budget_and_cut_streams(tmp_path, models, one_thread):
    """finish_reason length -> budget; a stream cut without a finish_reason is retried, not scored."""
    from qrdistill.stages import evaluate

    base = f"base:{models[0]}"
    with StreamServer(lambda p: (_words("one two three four five six"), "stop"),
                      status=lambda p, n: -1 if n == 0 else 200) as srv:
        cfg = config(tmp_path, models, {"base_url": srv.base_url, "models": {base: "b"}}, limit=2,
                     max_new_tokens=4)
        evaluate.run(cfg, tmp_path)
    rows = _rows(evaluate.predictions_path(tmp_path, base, "procedural_arith"))
    assert [r["stop"] for r in rows] == ["budget", "budget"]
    assert [r["output"] for r in rows] == ["one two three four"] * 2 and [r["n_tokens"] for r in rows] == [4, 4]
    assert len(srv.streamed()) == 4  # each question: a cut stream, then its retry

    # Every stream cut: the error says why and what to do.
    with StreamServer(lambda p: (_words("a b c d e"), "stop"), status=lambda p, n: -1) as srv:
        cfg = config(tmp_path / "cut", models, {"base_url": srv.base_url, "models": {base: "b"}}, limit=1)
        with pytest.raises(QRDistillError, match=r"ended the stream before the completion finished.*"
                           r"--interrupt_requests False.*gave up after 2 attempts"):
            evaluate.run(cfg, tmp_path / "cut")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_fails_clearly_and_evaluate_resumes(tmp_path, models, one_thread):
    from qrdistill.stages import evaluate

    base = f"base:{models[0]}"
    down = f"http://127.0.0.1:{_closed_port()}/v1"
    cfg = config(tmp_path, models, {"base_url": down, "models": {base: "b"}}, limit=4)
    t0 = time.monotonic()
    with pytest.raises(QRDistillError, match=r"evaluate\.server: b at http://127\.0\.0\.1:\d+/v1: connection error.*"
                       r"gave up after 2 attempts"):
        evaluate.run(cfg, tmp_path)
    assert time.monotonic() - t0 < 15

    # The server answers two questions, then fails the others (HTTP 500 every time): those two are kept.
    seen: list[str] = []

    def status(prompt: str, n: int) -> int:
        if prompt not in seen:
            seen.append(prompt)
        return 500 if seen.index(prompt) >= 2 else 200

    with StreamServer(answer_reply, status=status) as srv:
        cfg = config(tmp_path, models, {"base_url": srv.base_url, "models": {base: "b"}, "max_concurrency": 1},
                     limit=4)
        with pytest.raises(QRDistillError, match=r"HTTP 500.*gave up after 2 attempts.*2 of 4 answers of this batch "
                           r"came back and are saved: run `qrdistill evaluate` again"):
            evaluate.run(cfg, tmp_path)
    path = evaluate.predictions_path(tmp_path, base, "procedural_arith")
    assert len(_rows(path)) == 2
    with StreamServer(answer_reply) as srv:
        cfg = config(tmp_path, models, {"base_url": srv.base_url, "models": {base: "b"}}, limit=4)
        summary = evaluate.run(cfg, tmp_path)
    assert len(srv.streamed()) == 2  # only the two questions without an answer
    assert len(_rows(path)) == 4 and summary["students"][base]["tasks"]["procedural_arith"]["n"] == 4


# ---------------------------------------------------------------- the real llama.cpp server

#: Printable ASCII as one corpus line, so the tiny SentencePiece vocabulary has a piece for every character
#: of the evaluation prompts: llama.cpp's tokenizer aborts the server on a character its vocabulary (without
#: byte fallback) lacks, where transformers' maps it to <unk>.
ASCII_LINE = "".join(chr(c) for c in range(32, 127))


@pytest.fixture(scope="module")
def trained_gguf(tmp_path_factory, one_thread) -> tuple[Path, str, Path]:
    """A tiny Gemma 3 student trained by the real train stage until it writes answer lines, and its f32 GGUF
    from `export_gguf` -> (run dir, base model dir, GGUF file)."""
    import tiny_gguf_model
    from train_helpers import make_filtered, tiny_config

    from qrdistill.export.gguf import export_gguf
    from qrdistill.stages import train as train_stage

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_gguf_model, "CORPUS", [*tiny_gguf_model.CORPUS, ASCII_LINE])
        models = tiny_gguf_model.make_tiny_gguf_students(tmp_path_factory.mktemp("tiny-gguf"))
    run_dir = tmp_path_factory.mktemp("run")
    make_filtered(run_dir, limit=3)
    students = [{"name": "gemma", "model": models[1], "lr": 2.0e-2, "lora": {"r": 4, "alpha": 8}}]
    # 12 epochs (36 steps): enough for the answer lines that exercise the client's answer stop.
    train_stage.run(tiny_config(run_dir, models, students=students, epochs=12, single_student=True), run_dir)
    result = export_gguf(run_dir, tmp_path_factory.mktemp("gguf"), outtype="f32")
    return run_dir, models[1], Path(result["students"]["gemma"]["gguf"])


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(900)
def test_llama_cpp_server_on_the_exported_gguf_predicts_like_hf(trained_gguf):
    """backend openai against llama.cpp serving the student's f32 GGUF = backend hf on the adapter, row by row."""
    from llama_server import llama_cpp_available, llama_server

    from qrdistill.stages import evaluate

    if not llama_cpp_available():
        pytest.fail("llama-cpp-python is not installed: pip install 'qrdistill[server]' (CI must install it)")
    run_dir, base, gguf = trained_gguf
    tasks = [{"name": "procedural_arith", "split": "test", "limit": 4},
             {"name": "procedural_date", "split": "test", "limit": 3}]

    def cfg(server: dict[str, Any] | None = None):
        ev: dict[str, Any] = {"tasks": tasks, "students": "trained", "max_new_tokens": 40, "batch_size": 4,
                              "bootstrap_resamples": 50}
        if server is not None:
            ev |= {"backend": "openai", "server": server}
        return load_config(None, {"run_dir": str(run_dir), "evaluate": ev,
                                  "train": {"single_student": True, "students": [{"name": "gemma", "model": base}]}})

    def rows(task: str) -> list[dict[str, Any]]:
        return _rows(evaluate.predictions_path(run_dir, "gemma", task))

    hf = evaluate.run(cfg(), run_dir)
    hf_rows = {t["name"]: rows(t["name"]) for t in tasks}
    with llama_server(gguf, n_ctx=1024, model_alias="tiny-gemma",
                      extra_args=["--interrupt_requests", "False"]) as server:
        served = evaluate.run(cfg({"base_url": server.base_url, "models": {"gemma": "tiny-gemma"}}), run_dir)
    # The prompt reached the model as the hf path feeds it: BOS once, the same tokens.
    check = served["settings"]["prompt_tokens"]["gemma"]
    assert check["server"] == check["local"] > 1
    stops = []
    for t in tasks:
        mine = rows(t["name"])
        assert [r["qid"] for r in mine] == [r["qid"] for r in hf_rows[t["name"]]]
        for a, b in zip(hf_rows[t["name"]], mine, strict=True):
            assert a["key"] != b["key"]  # answered again by the server, not read back
            same = {k: (a[k], b[k]) for k in ("output", "pred", "correct", "strict_pred", "strict_correct", "stop",
                                              "n_tokens") if a[k] != b[k]}
            assert not same, f"{a['qid']}: hf vs llama.cpp differ in {same}"
            assert b["logprob"]["sum"] == pytest.approx(a["logprob"]["sum"], rel=1e-4, abs=1e-3)
            stops.append(b["stop"])
    # Both ends of an answer were exercised: the client's cut at the answer line, and the budget.
    assert "answer_line" in stops and "budget" in stops, stops
    assert served["students"]["gemma"]["tasks"] == hf["students"]["gemma"]["tasks"]
