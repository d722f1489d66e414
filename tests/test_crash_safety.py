"""Acceptance test "Crash safety": kill -9 generate at random points, then let it finish.

50 questions × 6 styles = 300 simulated teacher calls, each taking a small
latency, so a run lasts several seconds. The real CLI is started and killed
with SIGKILL four times, each a random 0.5–3 s after that run began storing
completions, then run to completion.
Checked: every completion committed before a kill survives it; the store
stays intact (PRAGMA integrity_check) after every kill; the final paths.jsonl
has exactly the 300 expected unique paths; no key was ever asked again after
it was stored ok, and exactly 300 successful calls were made in all.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS, STYLES = 50, 6
EXPECTED = QUESTIONS * STYLES
LATENCY = 0.05  # seconds per simulated call: a full run takes 15 s, longer than the four kill windows together


def _stored_ok(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT COUNT(*) FROM completions WHERE status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        db.close()


def test_kill_minus_nine_then_resume(tmp_path):
    seed = int(os.environ.get("QRDISTILL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    run = tmp_path / "run"
    cfg = tmp_path / "crash.yaml"
    cfg.write_text(
        f"run_dir: {run}\n"
        f"tasks:\n  - name: procedural_arith\n    limit: {QUESTIONS}\n"
        f"generate:\n  teacher:\n    kind: simulated\n    latency: {LATENCY}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "qrdistill", "generate", "-c", str(cfg)]
    db_path = run / "store.sqlite"
    why = f"(QRDISTILL_CRASH_SEED={seed})"

    partial_kills = 0
    for _ in range(4):
        stored_at_launch = _stored_ok(db_path)
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Count the random delay from the moment this run starts storing, so that a slow start on a
        # busy machine cannot turn the kills into kills before any work.
        deadline = time.monotonic() + 60
        while _stored_ok(db_path) == stored_at_launch and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.5, 3.0))
        seen_before_kill = _stored_ok(db_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"generate finished before it was killed {why}"
        after = _stored_ok(db_path)
        # Committed completions survive kill -9 (at most the in-flight calls are lost).
        assert after >= seen_before_kill, why
        if 0 < after < EXPECTED:
            partial_kills += 1
        if db_path.exists():
            db = sqlite3.connect(db_path)
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", why
            db.close()
    assert partial_kills == 4, f"a kill did not land mid-generation {why}"

    stored_before_final = _stored_ok(db_path)
    final = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    issued = EXPECTED - stored_before_final
    assert f"{issued} issued, {stored_before_final} cached" in final.stdout, final.stdout

    rows = [json.loads(line) for line in (run / "paths.jsonl").read_text().splitlines()]
    assert len(rows) == EXPECTED, why
    assert len({(r["qid"], r["style"], r["sample"]) for r in rows}) == EXPECTED, why
    assert len({r["key"] for r in rows}) == EXPECTED, why
    assert {r["style"] for r in rows} == {"vanilla", "cot", "tot", "program", "fact", "backward"}

    from qrdistill.store import Store

    with Store(db_path) as store:
        assert store.integrity_ok()
        assert store.reissued_keys() == [], why
        usage = store.usage("teacher")
        # Every successful call is stored exactly once: nothing paid for twice.
        assert usage["ok"] == EXPECTED and usage["stored_ok"] == EXPECTED, (usage, why)
        stored = {k for (k,) in store._db.execute("SELECT key FROM completions WHERE status = 'ok'")}
        assert stored == {r["key"] for r in rows}
        batches = store._db.execute("SELECT finished FROM batches ORDER BY id").fetchall()
        # Killed runs left their batch unfinished; the final run closed its own.
        assert batches[-1][0] is not None and all(b[0] is None for b in batches[:-1]), why
