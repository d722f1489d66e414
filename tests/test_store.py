"""The completion store: put/get, resume, retry of errors, integrity, usage.

The backend here is a small fault-injecting fake (it fails chosen prompts);
the real simulated teacher goes through the same code in
test_generate_filter.py and test_crash_safety.py.
"""

from __future__ import annotations

import sqlite3

import pytest

from qrdistill.backends.base import Backend, Completion, Request
from qrdistill.store import Store, run_cached


class _Cfg:
    model = "echo-1"
    temperature = 0.0
    top_p = 1.0
    max_tokens = 16
    stop: list[str] = []


class EchoBackend(Backend):
    """Answers `echo: <prompt>`; fails prompts listed in `fail`; records what it was asked."""

    name = "echo"

    def __init__(self, fail: set[str] | None = None) -> None:
        super().__init__(_Cfg())
        self.fail = set(fail or ())
        self.asked: list[str] = []

    def generate(self, requests, on_result, progress=None):
        for r in requests:
            prompt = r.messages[-1]["content"]
            self.asked.append(prompt)
            if prompt in self.fail:
                on_result(r, Completion(text=None, status="error", error="HTTP 503 overloaded", latency=0.01))
            else:
                on_result(r, Completion(text=f"echo: {prompt}", prompt_tokens=3, completion_tokens=4,
                                        latency=0.01, meta={"n": len(prompt)}))


def _reqs(prompts, sample=0):
    return [Request(messages=[{"role": "user", "content": p}], sample=sample) for p in prompts]


def test_put_get_roundtrip(tmp_path):
    be = EchoBackend()
    req = _reqs(["q1"])[0]
    key = be.key(req)
    with Store(tmp_path / "s.sqlite") as st:
        assert st.get(key) is None
        st.put(key, "teacher", be, req, Completion(text="hello", prompt_tokens=2, completion_tokens=5,
                                                     latency=0.5, finish_reason="stop", meta={"planted": None}))
    with Store(tmp_path / "s.sqlite") as st:
        c = st.get(key)
        assert c is not None and c.ok
        assert (c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason) == ("hello", 2, 5, "stop")
        assert c.meta == {"planted": None}
        row = st._db.execute("SELECT kind, backend, model, request FROM completions").fetchone()
        assert tuple(row)[:3] == ("teacher", "echo:echo-1", "echo-1")
        assert '"q1"' in row["request"] and '"sample": 0' in row["request"]


def test_resume_asks_only_missing_keys(tmp_path):
    be = EchoBackend()
    with Store(tmp_path / "s.sqlite") as st:
        first = run_cached(be, st, _reqs(["a", "b"]), "teacher", "t")
        assert len(first) == 2 and first.stats["issued"] == 2
        second = run_cached(be, st, _reqs(["a", "b", "c"]), "teacher", "t")
        assert be.asked == ["a", "b", "c"]
        assert second.stats["cached"] == 2 and second.stats["issued"] == 1
        assert {c.text for c in second.values()} == {"echo: a", "echo: b", "echo: c"}
        # A different sample index is a different key, so it is asked.
        run_cached(be, st, _reqs(["a"], sample=1), "teacher", "t")
        assert be.asked[-1] == "a"
        u = st.usage("teacher")
        assert (u["calls"], u["ok"], u["errors"], u["stored_ok"]) == (4, 4, 0, 4)
        assert u["prompt_tokens"] == 12 and u["completion_tokens"] == 16
        assert st.reissued_keys() == []


def test_duplicate_requests_are_asked_once(tmp_path):
    be = EchoBackend()
    with Store(tmp_path / "s.sqlite") as st:
        out = run_cached(be, st, _reqs(["a", "a", "b"]), "teacher", "t")
    assert be.asked == ["a", "b"] and len(out) == 2


def test_error_rows_are_retried_then_kept(tmp_path):
    be = EchoBackend(fail={"b"})
    with Store(tmp_path / "s.sqlite") as st:
        out = run_cached(be, st, _reqs(["a", "b"]), "teacher", "t")
        assert set(c.text for c in out.values()) == {"echo: a"}
        assert out.stats["failed"] == 1 and "503" in out.stats["first_error"]
        key_b = be.key(_reqs(["b"])[0])
        row = st.get(key_b)
        assert row is not None and row.status == "error" and "503" in row.error
        be.fail.clear()
        out = run_cached(be, st, _reqs(["a", "b"]), "teacher", "t")
        assert be.asked == ["a", "b", "b"]
        assert len(out) == 2 and st.get(key_b).text == "echo: b"
        assert st.get(key_b).attempts == 2
        u = st.usage()
        assert (u["calls"], u["ok"], u["errors"]) == (3, 2, 1)


def test_ok_rows_are_never_overwritten(tmp_path):
    be = EchoBackend()
    req = _reqs(["a"])[0]
    key = be.key(req)
    with Store(tmp_path / "s.sqlite") as st:
        st.put(key, "teacher", be, req, Completion(text="first"))
        st.put(key, "teacher", be, req, Completion(text=None, status="error", error="late failure"))
        assert st.get(key).text == "first"


def test_kinds_are_accounted_separately(tmp_path):
    be = EchoBackend()
    with Store(tmp_path / "s.sqlite") as st:
        run_cached(be, st, _reqs(["a", "b"]), "teacher", "gen")
        run_cached(be, st, _reqs(["judge a"]), "judge", "judge")
        assert st.usage("teacher")["calls"] == 2 and st.usage("judge")["calls"] == 1
        assert st.usage()["calls"] == 3
        with pytest.raises(ValueError):
            run_cached(be, st, _reqs(["x"]), "other", "x")


def test_wal_mode_and_integrity(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as st:
        run_cached(EchoBackend(), st, _reqs(["a"]), "teacher", "t")
        assert st.integrity_ok()
        assert st._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Smash the b-tree page headers of a few pages: integrity_check must notice.
    with Store(path) as st:
        run_cached(EchoBackend(), st, _reqs([f"long prompt {i} " * 30 for i in range(200)]), "teacher", "t")
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    for page in range(3, 7):
        data[page * 4096 : page * 4096 + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))
    try:
        st = Store(path)
    except sqlite3.DatabaseError:
        return  # refusing to open a corrupt file is also a detection
    with st:
        try:
            assert not st.integrity_ok()
        except sqlite3.DatabaseError:
            pass


def test_secret_is_redacted_from_errors(tmp_path, monkeypatch):
    secret = "sk-test-DUMMY-redact-0123456789"
    monkeypatch.setenv("QRD_TEST_KEY", secret)

    class Leaky(EchoBackend):
        def generate(self, requests, on_result, progress=None):
            for r in requests:
                on_result(r, Completion(text=None, status="error", error=f"401 bad key {secret}"))

    be = Leaky()
    be.config.api_key_env = "QRD_TEST_KEY"
    with Store(tmp_path / "s.sqlite") as st:
        out = run_cached(be, st, _reqs(["a"]), "teacher", "t")
        assert secret not in out.stats["first_error"]
    for f in tmp_path.iterdir():
        assert secret.encode() not in f.read_bytes(), f


def test_unreadable_store_is_a_clear_error_and_left_alone(tmp_path):
    from qrdistill.errors import DataError

    path = tmp_path / "store.sqlite"
    junk = b"this is not a database, but it might be someone's work\n" * 100
    path.write_bytes(junk)
    with pytest.raises(DataError, match="not a readable completion store"):
        Store(path)
    assert path.read_bytes() == junk


def test_newer_schema_is_refused(tmp_path):
    from qrdistill.errors import DataError

    path = tmp_path / "store.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(DataError, match="schema version 99"):
        Store(path)
