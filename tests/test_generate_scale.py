"""Generation at scale: the `openai` backend at high concurrency against a real local server.

The server is `tests/instant_server.py`, a real HTTP server in its own process
that answers at once (or after `hold_s`, to keep requests in flight) and tags
each reply with the CRC of its prompt. The backend spreads `max_concurrency`
over several HTTP clients (`REQUESTS_PER_CLIENT` each, for speed: see
`benchmarks/bench_generate_scale.py`); these tests pin what that must keep:
the bound on requests in flight, every answer reaching its own request, every
completion stored at concurrency 64, and a kill -9 mid-run losing nothing that
was already stored and asking no stored key again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from instant_server import InstantServer, reply_ref

from qrdistill.backends import Request, get_backend
from qrdistill.backends.openai_backend import REQUESTS_PER_CLIENT
from qrdistill.config import RunConfig
from qrdistill.config.generate import OpenAIBackendConfig
from qrdistill.io import read_jsonl
from qrdistill.store import Store

STYLES = ["vanilla", "cot", "tot", "program", "fact", "backward"]


def _teacher(server: InstantServer, concurrency: int) -> dict:
    return {"kind": "openai", "base_url": server.base_url, "model": "instant", "mode": "chat",
            "max_concurrency": concurrency, "timeout": 30.0, "max_retries": 1}


def _ok_keys(db_path: Path) -> dict[str, float]:
    """key -> updated for every completion stored ok, read as another process would see them."""
    if not db_path.exists():
        return {}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return dict(db.execute("SELECT key, updated FROM completions WHERE status = 'ok'").fetchall())
    except sqlite3.OperationalError:  # schema not created yet
        return {}
    finally:
        db.close()


def test_in_flight_requests_never_exceed_max_concurrency_across_clients():
    # 20 = 8 + 8 + 4 slots over three clients; each answer held 0.2 s so every slot fills.
    concurrency = 20
    assert concurrency > 2 * REQUESTS_PER_CLIENT
    with InstantServer(hold_s=0.2) as server:
        backend = get_backend(OpenAIBackendConfig.model_validate(_teacher(server, concurrency)))
        reqs = [Request(messages=[{"role": "user", "content": f"question {i}"}]) for i in range(80)]
        got: dict[int, str] = {}
        backend.generate(reqs, lambda r, c: got.__setitem__(id(r), c.text))
        stats = server.stats()
    assert stats["peak"] == concurrency, stats
    assert stats["served"] == len(reqs)
    # Each answer is the one the server wrote for that request's own prompt.
    assert all(got[id(r)].startswith(f"[ref {reply_ref(r.messages[0]['content'])}]") for r in reqs)


def test_generate_at_concurrency_64_stores_every_completion(tmp_path):
    from qrdistill.stages import generate

    run = tmp_path / "run"
    questions = 30
    n = questions * len(STYLES)
    with InstantServer(hold_s=0.05) as server:
        cfg = RunConfig.model_validate({
            "run_dir": str(run),
            "tasks": [{"name": "procedural_arith", "split": "train", "limit": questions}],
            "generate": {"teacher": _teacher(server, 64), "styles": STYLES},
        })
        summary = generate.run(cfg, run)
        first = server.stats()
        again = generate.run(cfg, run)
        second = server.stats()
    # Far more in flight than one client carries (the client's own CPU, not the bound, caps the peak
    # against a server this fast), and never more than asked.
    assert 4 * REQUESTS_PER_CLIENT < first["peak"] <= 64, first
    assert summary["paths"] == n and summary["calls_issued"] == n and summary["failed_calls"] == 0
    assert first["served"] == n
    rows = read_jsonl(run / "paths.jsonl")
    assert len(rows) == n and len({r["key"] for r in rows}) == n
    for r in rows:
        assert r["response"].startswith(f"[ref {reply_ref(r['prompt'])}]"), r["qid"]
    with Store(run / "store.sqlite") as store:
        usage = store.usage("teacher")
        assert usage["calls"] == n and usage["ok"] == n and usage["stored_ok"] == n, usage
        assert store.reissued_keys() == []
    # Everything was stored: the second run asks nothing.
    assert again["calls_issued"] == 0 and again["calls_cached"] == n
    assert second["served"] == first["served"]


def _generate_in_child(cfg: dict, run: Path) -> None:
    from qrdistill.stages import generate

    generate.run(RunConfig.model_validate(cfg), run)


def test_kill_during_concurrent_generate_loses_no_stored_completion(tmp_path):
    import multiprocessing

    from qrdistill.stages import generate

    questions, concurrency = 40, 32
    n = questions * len(STYLES)
    run = tmp_path / "run"
    db_path = run / "store.sqlite"
    # 0.1 s per answer at 32 in flight: the calls take about a second, long enough to kill mid-run.
    with InstantServer(hold_s=0.1) as server:
        cfg = {
            "run_dir": str(run),
            "tasks": [{"name": "procedural_arith", "split": "train", "limit": questions}],
            "generate": {"teacher": _teacher(server, concurrency), "styles": STYLES},
        }
        # A forked child has everything imported already (a fresh interpreter spends seconds on openai),
        # and SIGKILL gives it no chance to clean up, as with kill -9 from a shell.
        proc = multiprocessing.get_context("fork").Process(target=_generate_in_child, args=(cfg, run))
        proc.start()
        deadline = time.monotonic() + 60
        while len(_ok_keys(db_path)) < 2 * concurrency and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = _ok_keys(db_path)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGKILL, f"generate ended before the kill (exit code {proc.exitcode})"
        after = _ok_keys(db_path)
        assert 0 < len(seen) and len(after) < n, (len(seen), len(after))
        # Every completion another process saw stored is still there, untouched.
        assert all(after.get(k) == t for k, t in seen.items())
        time.sleep(0.5)  # the answers the server still held for the dead client are dropped, not served
        served_at_kill = server.stats()["served"]

        summary = generate.run(RunConfig.model_validate(cfg), run)
        served = server.stats()["served"]
    assert summary["calls_issued"] == n - len(after) and summary["calls_cached"] == len(after), summary
    assert served - served_at_kill == n - len(after)  # the rerun asked exactly the keys not stored
    assert summary["paths"] == n and len(read_jsonl(run / "paths.jsonl")) == n
    with Store(db_path) as store:
        assert store.integrity_ok()
        assert store.reissued_keys() == []
        usage = store.usage("teacher")
        # One successful call per key: the answers lost in the kill were at most those in flight.
        assert usage["ok"] == n and usage["stored_ok"] == n, usage
        assert served - n <= 2 * concurrency, (served, n)
