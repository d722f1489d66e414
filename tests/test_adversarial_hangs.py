"""Nothing hangs, nothing lost, nothing leaked: adversarial teacher answers, servers and data.

case 1: an answer check on any input ends in bounded time on any thread (math-verify runs in a
        child process with a deadline; the extractors are linear and bounded in input size), and an
        undecided check is `unverifiable`: not kept by the filter, incorrect for evaluate;
case 2: a server that sends headers and then drips bytes cannot hold an attempt past `timeout`;
case 9: a response body over `max_response_bytes` (counted after any decompression) is an error, not
        stored, and not read past the cap;
case 10: a BIG-bench score that is not a number is one DataError naming the file and the example.

Every server here listens on 127.0.0.1 only and is bounded in requests and in time. A call that
must end is run in a daemon thread joined with a limit, so a regression fails the test instead of
hanging it (and proves the check works off the main thread).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from openai_stub import OpenAIStub

from qrdistill.config import load_config
from qrdistill.config.generate import OpenAIBackendConfig
from qrdistill.errors import ConfigError, DataError, QRDistillError
from qrdistill.io import read_jsonl
from qrdistill.tasks import extract, get_task
from qrdistill.tasks.base import Record

TOWER = r"The answer is $\boxed{9^{9^{9^{9}}}}$."
#: How long a cold math-verify child may take to start on a loaded machine, beyond the deadline.
STARTUP_ALLOWANCE_S = 30.0
#: mathcheck.DEADLINE_S, the default deadline of one math comparison.
DEFAULT_DEADLINE_S = 5.0
#: Adversarial texts this long are read whole (within extract.MAX_RESPONSE_CHARS), so each extractor
#: must be linear in them; OVER is past that bound, so it is not read at all.
N, OVER = 199_000, 600_000


def bounded(fn: Callable[[], Any], limit: float) -> tuple[Any, float]:
    """fn() run in a daemon thread; its result and duration, or a failure if it outlives `limit`."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            out["error"] = e

    t0 = time.monotonic()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(limit)
    elapsed = time.monotonic() - t0
    if worker.is_alive():
        pytest.fail(f"still running after {limit:g}s")
    if "error" in out:
        raise out["error"]
    return out["value"], elapsed


@pytest.fixture
def short_deadline(monkeypatch):
    from qrdistill.tasks import mathcheck

    monkeypatch.setattr(mathcheck, "DEADLINE_S", 1.0)
    return 1.0


# ---------------------------------------------------------------- case 1: answer checks are bounded


def test_case1_math_check_is_bounded_on_a_tower_of_powers():
    # The default deadline, off the main thread, as generate and evaluate may call it.
    got, elapsed = bounded(lambda: extract.check_math(TOWER, "5"), DEFAULT_DEADLINE_S + STARTUP_ALLOWANCE_S)
    assert got is False
    from qrdistill.tasks import mathcheck

    assert mathcheck.DEADLINE_S == DEFAULT_DEADLINE_S


def test_case1_an_undecided_check_is_unverifiable_and_scored_incorrect(short_deadline):
    from qrdistill.tasks.base import Verdict

    task = get_task("math")
    record = Record(id="m1", question="q", answer="5")
    verdict, _ = bounded(lambda: task.check(TOWER, record), short_deadline + STARTUP_ALLOWANCE_S)
    assert verdict is Verdict.UNVERIFIABLE
    score, _ = bounded(lambda: task.score(TOWER, record), short_deadline + STARTUP_ALLOWANCE_S)
    # What evaluate stores: the answer as read, counted incorrect, flagged undecided.
    assert (score.pred, score.correct, score.strict_correct, score.unverifiable) == (
        "9^{9^{9^{9}}}",
        False,
        False,
        True,
    )
    assert not task.is_correct(TOWER, record)
    # A decidable answer after a killed child is checked as before.
    assert task.check(r"The answer is $\frac{10}{2}$.", record) is Verdict.CORRECT
    assert task.check("The answer is 4.", record) is Verdict.WRONG


def test_case1_threads_share_the_checker_and_each_gets_its_own_verdict(short_deadline):
    pairs = [
        (TOWER, "5"),
        (r"The answer is $\frac{6}{4}$.", r"\frac{3}{2}"),
        (r"\boxed{2^{2^{40}}}", "7"),
        (r"The answer is $\sqrt{8}$.", r"2\sqrt{2}"),
        (r"The answer is $\frac{1}{3}$.", "0.5"),
    ]

    def run_all() -> list[bool]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda p: extract.check_math(*p), pairs))

    got, _ = bounded(run_all, 2 * short_deadline * len(pairs) + STARTUP_ALLOWANCE_S)
    assert got == [False, True, False, True, False]


def test_case1_a_long_answer_is_not_parsed_at_all():
    from qrdistill.tasks import mathcheck
    from qrdistill.tasks.base import Verdict

    long_answer = "+".join(["x"] * mathcheck.MAX_CHARS)
    got, elapsed = bounded(lambda: extract.math_verdict(long_answer, "x"), 5.0)
    assert got is Verdict.UNVERIFIABLE and elapsed < 1.0


PARENT_CODE = """
import sys, threading, time
from qrdistill.tasks import mathcheck
mathcheck.DEADLINE_S = 600.0  # the parent never gives up on its own: only its death may end the child
threading.Thread(target=mathcheck.compare, args=(r"9^{9^{9^{9}}}", "5"), daemon=True).start()
while mathcheck._child is None or not mathcheck._child.ready:
    time.sleep(0.05)
time.sleep(1.0)  # the child is now deep in the tower
print(mathcheck._child.proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_case1_the_math_child_dies_with_its_parent_even_by_sigkill():
    import os
    import select
    import signal
    import subprocess
    import sys

    import qrdistill

    root = Path(qrdistill.__file__).resolve().parent.parent
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_CODE], cwd=root, stdout=subprocess.PIPE, text=True
    )
    child = None
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], STARTUP_ALLOWANCE_S + 30)
        assert ready, "the parent did not report its math child in time"
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5.0
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the math child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_case1_a_math_child_that_cannot_start_is_a_project_error_with_an_install_hint(monkeypatch):
    from qrdistill.tasks import mathcheck

    # What a missing math-verify does to the child: it dies importing it.
    monkeypatch.setattr(mathcheck, "_CHILD_CODE", "import math_verify_is_not_installed_here")
    monkeypatch.setattr(mathcheck, "_child", None)
    with pytest.raises(QRDistillError, match=r"pip install") as err:
        mathcheck.compare(r"\frac{1}{2}", "x")
    assert type(err.value) is not RuntimeError
    monkeypatch.undo()
    assert mathcheck.compare(r"\frac{1}{2}", r"\frac{2}{4}") == mathcheck.EQUAL


ADVERSARIAL = {
    "letter_then_spaces": "A" + " " * N + "x",
    "repeated_option": ("05/01/2021 " * (N // 11))[:N],
    "repeated_answer_is": ("The answer is 05/01/2021.\n" * (N // 26))[:N],
    "trailing_dots": "The answer is (A)" + "." * N,
    "huge_exponent_number": r"The answer is $\boxed{1e999999999}$.",
    "long_digit_string": "The answer is " + "7" * 5000 + ".",
    "nested_braces": "\\boxed{" * (N // 14) + "}" * (N // 14),
    "over_the_bound": "The answer is (A).\n" * (OVER // 19),
}


def test_case1_a_response_over_the_bound_is_not_read():
    from qrdistill.tasks.base import Verdict

    assert N < extract.MAX_RESPONSE_CHARS < OVER
    task, record = get_task("gsm8k"), Record(id="g", question="q", answer="7")
    text = "The answer is 7.\n" * (OVER // 17)
    assert task.extract_answer(text, record) is None and task.check(text, record) is Verdict.UNVERIFIABLE
    assert task.score(text, record).unverifiable


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_case1_every_non_math_check_is_fast_on_adversarial_text(name):
    text = ADVERSARIAL[name]
    choices = ["05/01/2021", "06/01/2021", "salt water", "water"]
    cases = [
        ("procedural_date", Record(id="d", question="q", answer="A", choices=choices)),
        ("strategyqa", Record(id="s", question="q", answer="Yes")),
        ("gsm8k", Record(id="g", question="q", answer="7")),
        ("procedural_date_free", Record(id="f", question="q", answer="05/01/2021")),
    ]

    def run_all() -> list[float]:
        times = []
        for task_name, record in cases:
            task = get_task(task_name)
            for call in (task.extract_answer, task.is_correct, task.score):
                t0 = time.monotonic()
                call(text, record)
                times.append(time.monotonic() - t0)
        return times

    times, _ = bounded(run_all, 30.0)
    assert max(times) < 2.0, times


def _math_pool(
    tmp_path: Path, problems: list[tuple[str, str]], reply, deadline: float, timeout: float | None = None
):
    """A math run dir whose teacher is a stub on 127.0.0.1 answering `reply(prompt)`; generate has run."""
    from qrdistill.stages import generate as generate_stage

    data = tmp_path / "math.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"problem": q, "solution": f"So \\boxed{{{a}}}.", "level": "Level 1", "type": "Algebra"}
            )
            + "\n"
            for q, a in problems
        )
    )
    teacher = {
        "kind": "openai",
        "model": "stub",
        "max_retries": 0,
        **({"timeout": timeout} if timeout else {}),
    }
    run = tmp_path / "run"
    with OpenAIStub(reply=reply) as stub:
        cfg = load_config(
            None,
            {
                "run_dir": str(run),
                "tasks": [{"name": "math", "path": str(data)}],
                "generate": {"styles": ["cot"], "teacher": {**teacher, "base_url": stub.base_url}},
                "filter": {"judge": {"kind": "none"}},
            },
        )
        bounded(lambda: generate_stage.run(cfg, run), 2 * deadline + STARTUP_ALLOWANCE_S + 30)
    return cfg, run


def test_case1_filter_records_unverifiable_and_keeps_nothing_undecided(tmp_path, short_deadline):
    from qrdistill.stages import filter as filter_stage

    problems = [("Compute the tower.", "5"), ("Halve one.", r"\frac{1}{2}")]
    cfg, run = _math_pool(
        tmp_path,
        problems,
        lambda prompt: TOWER if "tower" in prompt else r"Half of one. The answer is $0.5$.",
        short_deadline,
        timeout=10,
    )
    report, _ = bounded(lambda: filter_stage.run(cfg, run), 2 * short_deadline + STARTUP_ALLOWANCE_S)
    rows = {r["question"]: r for r in read_jsonl(run / "filtered.jsonl")}
    tower, half = rows["Compute the tower."], rows["Halve one."]
    assert (tower["correct"], tower["kept"], tower["check"]) == (False, False, "unverifiable")
    assert half["correct"] and half["kept"]
    assert report["overall"]["unverifiable"] == 1 and report["overall"]["wrong_answer"] == 0
    assert report["overall"]["kept"] == 1


def test_case1_generate_records_the_check_and_filter_trusts_it(tmp_path, short_deadline, monkeypatch):
    from qrdistill.stages import filter as filter_stage
    from qrdistill.tasks import mathcheck

    def reply(prompt: str) -> str:
        if "tower" in prompt:
            return TOWER
        return r"Half of one. The answer is $\frac{2}{4}$." if "Halve" in prompt else "The answer is 4."

    problems = [("Compute the tower.", "5"), ("Halve one.", r"\frac{1}{2}"), ("Add.", "3")]
    cfg, run = _math_pool(tmp_path, problems, reply, short_deadline)
    paths = {r["question"]: r for r in read_jsonl(run / "paths.jsonl")}
    assert {q: (r["correct"], r["check"]) for q, r in paths.items()} == {
        "Compute the tower.": (False, "unverifiable"),
        "Halve one.": (True, "correct"),
        "Add.": (False, "wrong"),
    }

    # The filter reads the stored verdicts: no check runs again.
    def no_check(pred: str, gold: str) -> str | None:
        raise AssertionError(f"the filter re-ran the check on {pred!r}")

    monkeypatch.setattr(mathcheck, "compare", no_check)
    report, elapsed = bounded(lambda: filter_stage.run(cfg, run), 30)
    overall = report["overall"]
    assert (overall["unverifiable"], overall["wrong_answer"], overall["kept"]) == (1, 1, 1)

    # A pool from before `check` was recorded is checked again.
    monkeypatch.undo()
    rows = read_jsonl(run / "paths.jsonl")
    (run / "paths.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "check"}) + "\n" for r in rows)
    )
    report, _ = bounded(lambda: filter_stage.run(cfg, run), 2 * short_deadline + STARTUP_ALLOWANCE_S)
    overall = report["overall"]
    assert (overall["unverifiable"], overall["wrong_answer"], overall["kept"]) == (1, 1, 1)


# ---------------------------------------------------------------- servers bounded in requests and time


class Server:
    """A 127.0.0.1 server whose POST handler is `respond(handler, body)`; it counts requests and the
    bytes each response got out before the client hung up."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler, dict[str, Any]], int]) -> None:
        self.requests: list[dict[str, str]] = []
        self.sent: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802  (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                server.requests.append(dict(self.headers))
                try:
                    server.sent.append(respond(self, body))
                except (BrokenPipeError, ConnectionResetError):
                    server.sent.append(-1)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def wait_sent(self, n: int, limit: float = 10.0) -> list[int]:
        """`sent` once `n` handlers have finished (a handler ends a moment after the client hangs up)."""
        t0 = time.monotonic()
        while len(self.sent) < n and time.monotonic() - t0 < limit:
            time.sleep(0.05)
        return self.sent

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(text: str) -> bytes:
    return json.dumps(
        {
            "id": "c",
            "object": "text_completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def send_head(h: BaseHTTPRequestHandler, headers: dict[str, str]) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()


def one_question_config(run: Path, server: Server, **teacher: Any):
    return load_config(
        None,
        {
            "run_dir": str(run),
            "tasks": [{"name": "procedural_arith", "limit": 1}],
            "generate": {
                "styles": ["cot"],
                "teacher": {
                    "kind": "openai",
                    "base_url": server.base_url,
                    "model": "m",
                    "mode": "completions",
                    "backoff_base": 0.05,
                    **teacher,
                },
            },
        },
    )


def stored(run: Path) -> list[dict[str, Any]]:
    import sqlite3

    db = sqlite3.connect(run / "store.sqlite")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT status, error, attempts, length(text) AS n FROM completions")]
    db.close()
    return rows


# ---------------------------------------------------------------- case 2: a dripping server


DRIP_EVERY_S = 0.25
DRIP_FOR_S = 8.0  # the server's own bound per request


def test_case2_dripping_server_cannot_hold_an_attempt_past_its_timeout(tmp_path):
    import openai  # noqa: F401  (imported before the clock starts: the first import takes a while under load)

    from qrdistill.stages import generate as generate_stage

    def drip(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> int:
        send_head(h, {"Content-Length": "100000"})
        sent, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < DRIP_FOR_S:  # each byte well inside httpx's read timeout
            h.wfile.write(b" ")
            h.wfile.flush()
            sent += 1
            time.sleep(DRIP_EVERY_S)
        return sent

    run = tmp_path / "run"
    with Server(drip) as server:
        cfg = one_question_config(run, server, timeout=1.0, max_retries=2)
        t0 = time.monotonic()
        with pytest.raises(
            QRDistillError, match=r"1 of 1 teacher calls failed permanently.*timeout after 1s"
        ):
            bounded(lambda: generate_stage.run(cfg, run), 60)
        elapsed = time.monotonic() - t0
        assert len(server.requests) == 3
    # Three attempts of 1 s each plus short backoffs, not three drips of 8 s.
    assert elapsed < 6.0, elapsed
    assert [(r["status"], r["attempts"]) for r in stored(run)] == [("error", 3)]
    assert "timeout after 1s" in stored(run)[0]["error"]


# ---------------------------------------------------------------- case 9: oversized responses

BIG = 40 * 1024 * 1024
CAP = 1024 * 1024


def big_body() -> bytes:
    return completion("x" * BIG)


def test_case9_oversized_streamed_response_is_an_error_and_never_read_whole(tmp_path):
    from qrdistill.stages import generate as generate_stage

    def chunked(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> int:
        send_head(h, {"Transfer-Encoding": "chunked"})
        data, sent, step = big_body(), 0, 256 * 1024
        for i in range(0, len(data), step):
            chunk = data[i : i + step]
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        h.wfile.write(b"0\r\n\r\n")
        return sent

    run = tmp_path / "run"
    with Server(chunked) as server:
        cfg = one_question_config(run, server, max_response_bytes=CAP, max_retries=3)
        with pytest.raises(QRDistillError, match="larger than max_response_bytes"):
            bounded(lambda: generate_stage.run(cfg, run), 60)
        # Not retried (the same server sends the same body), and the client hung up long before the end.
        assert len(server.requests) == 1
        assert server.wait_sent(1) == [-1]
        assert server.requests[0].get("Accept-Encoding") == "identity"
    assert [(r["status"], r["n"]) for r in stored(run)] == [("error", None)]
    assert not (run / "paths.jsonl").exists() or read_jsonl(run / "paths.jsonl") == []


def one_call(server: Server) -> Any:
    from qrdistill.backends import Request, get_backend

    cfg = OpenAIBackendConfig(
        base_url=server.base_url, model="m", mode="completions", max_response_bytes=CAP, max_retries=0
    )
    got: list[Any] = []
    bounded(
        lambda: get_backend(cfg).generate(
            [Request(messages=[{"role": "user", "content": "q"}])], lambda req, comp: got.append(comp)
        ),
        60,
    )
    (comp,) = got
    return comp


def test_case9_declared_oversized_length_is_refused_before_the_body(tmp_path):
    def declared(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> int:
        data = big_body()
        send_head(h, {"Content-Length": str(len(data))})
        h.wfile.write(data)
        return len(data)

    with Server(declared) as server:
        comp = one_call(server)
    assert comp.status == "error" and comp.text is None
    assert (
        f"response of {len(big_body())} bytes is larger than max_response_bytes ({CAP} bytes)" in comp.error
    )


def gzip_server(payload: bytes) -> Server:
    """A server that gzips its body whatever the request's Accept-Encoding says (some gateways do)."""

    def gzipped(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> int:
        data = gzip.compress(payload)
        send_head(h, {"Content-Length": str(len(data)), "Content-Encoding": "gzip"})
        h.wfile.write(data)
        return len(data)

    return Server(gzipped)


def test_case9_gzip_bomb_is_stopped_at_the_cap_on_its_decoded_bytes(tmp_path, monkeypatch):
    import zlib

    # 40 MB of text in about 40 kB of gzip: a cap on the bytes that arrive would let it through.
    inflated: list[int] = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *a: Any, **kw: Any) -> None:
            self._d = real(*a, **kw)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._d, name)

        def decompress(self, data: bytes, *a: Any) -> bytes:
            out = self._d.decompress(data, *a)
            inflated.append(len(out))
            return out

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    with gzip_server(big_body()) as server:
        comp = one_call(server)
    assert comp.status == "error" and comp.text is None
    assert f"larger than max_response_bytes ({CAP} bytes)" in comp.error
    # Never inflated far past the cap, not even for a moment in one piece.
    assert sum(inflated) <= 2 * CAP and max(inflated) <= CAP + 1, (sum(inflated), max(inflated))


def test_case9_a_gzipped_response_within_the_cap_is_read(tmp_path):
    with gzip_server(completion("The answer is 7.")) as server:
        comp = one_call(server)
    assert comp.status == "ok" and comp.text == "The answer is 7.", comp.error
    assert server.requests[0].get("Accept-Encoding") == "identity"


def test_case9_max_response_bytes_has_a_few_mb_default_and_is_validated():
    assert OpenAIBackendConfig().max_response_bytes == 4 * 1024 * 1024
    with pytest.raises(ConfigError, match="max_response_bytes"):
        load_config(
            None, {"generate": {"teacher": {"kind": "openai", "model": "m", "max_response_bytes": 0}}}
        )


# ---------------------------------------------------------------- case 10: BIG-bench scores that are not numbers


@pytest.mark.parametrize("task_name", ["date", "strategyqa"])
@pytest.mark.parametrize("scores", [{"Yes": "1", "No": 0}, {"Yes": "1", "No": "0"}])
def test_case10_bigbench_string_target_score_is_one_data_error(tmp_path, task_name, scores):
    path = tmp_path / "task.json"
    good = {"input": "Is water wet?", "target_scores": {"Yes": 1, "No": 0}}
    bad = {"input": "Is fire cold?", "target_scores": scores}
    path.write_text(json.dumps({"name": "t", "examples": [good, bad]}, indent=1))
    line = path.read_text().splitlines().index("  {", 5) + 1  # the second example's opening brace
    with pytest.raises(DataError) as err:
        get_task(task_name).load("train", str(path))
    msg = str(err.value)
    assert msg.startswith(
        f"{path}:{line}: field 'target_scores': the score of option 'Yes' is '1', not a number"
    )
    assert "\n" not in msg


def test_case10_hub_style_string_score_is_one_data_error():
    from qrdistill.tasks.bigbench import _scored_options
    from qrdistill.tasks.loading import Row

    row = Row(
        {"inputs": "Q?", "multiple_choice_targets": ["Yes", "No"], "multiple_choice_scores": ["1", 0]},
        "tasksource/bigbench:strategyqa[train] row 3",
    )
    with pytest.raises(
        DataError, match=r"row 3: field 'multiple_choice_scores': the score of option 'Yes' is '1'"
    ):
        _scored_options(row)
