"""Crash-safe completion store: every teacher and judge completion, in SQLite.

One file per run (`D/store.sqlite`). A completion is committed the moment its
`on_result` callback fires, in its own transaction, so a run killed with
`kill -9` loses at most the calls that were in flight; the next run skips every
key already stored with status `ok` and retries the errors.

Durability choice: WAL journal with `synchronous=NORMAL`. In WAL mode a commit
appends the transaction to the `-wal` file with `write()` before returning;
once that returns, the data is in the kernel's page cache and survives the
*process* dying in any way (kill -9, OOM killer, a crash in a C extension),
and the next open replays it. NORMAL only skips the fsync per commit, so what
it risks is losing the last few commits on a power cut or kernel crash —
never corruption, and a lost completion is simply asked again. FULL would
add an fsync to every completion (milliseconds each, thousands per run) for
protection against a failure mode where re-asking a handful of calls is the
whole cost. `tests/test_crash_safety.py` kills generate at random points and
checks integrity and that no stored key is ever asked again.

Only the main thread writes (backends call `on_result` in the caller's
thread); a lock makes a stray callback from a worker thread safe anyway.

Secrets: a request is stored as its messages, sampling params and sample
index — never headers or keys. As a second line of defence, the value of the
backend's `api_key_env` variable, and any credential inside its `base_url`,
is redacted from every text the store writes (error messages from HTTP
clients sometimes echo what they were sent); errors, requests and meta also
have the credentials of any URL in them redacted.

A write that fails (disk full, read-only file system) raises a
`QRDistillError` that quotes SQLite's own reason; what was committed before
it stays committed.

Tables:
- `completions`: one row per request key (latest result; `ok` rows are final).
- `calls`: one row per call the backend answered (ok or error), with its start
  and finish time, so usage and cost can be audited and so it can be checked
  that no key was ever asked again after it was stored `ok`.
- `batches`: one row per `run_cached` invocation (how many were cached, handed
  to the backend, answered); a batch without `finished` was interrupted, and
  its `pending - answered` calls may have been in flight (possibly billed).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from qrdistill.backends.base import Backend, Completion, Request
from qrdistill.errors import DataError, QRDistillError
from qrdistill.io import redact_credentials, url_secrets

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT,
    request TEXT NOT NULL,
    text TEXT,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency REAL,
    attempts INTEGER,
    finish_reason TEXT,
    meta TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    backend TEXT NOT NULL,
    description TEXT,
    pid INTEGER,
    started REAL NOT NULL,
    finished REAL,
    requested INTEGER NOT NULL,
    cached INTEGER NOT NULL,
    pending INTEGER NOT NULL,
    answered INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    batch INTEGER REFERENCES batches(id),
    kind TEXT NOT NULL,
    backend TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    status TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency REAL,
    attempts INTEGER
);
CREATE INDEX IF NOT EXISTS calls_key ON calls(key);
CREATE INDEX IF NOT EXISTS completions_kind ON completions(kind, status);
"""

#: request params that must never reach the disk even if a caller puts them there.
_SECRET_PARAM_NAMES = {"api_key", "apikey", "authorization", "headers", "extra_headers", "default_headers"}


def _now() -> float:
    return time.time()


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


def _is_write_failure(e: sqlite3.Error) -> bool:
    """SQLite could not write (disk full, read-only, cannot create the file), as opposed to a bad file."""
    name = getattr(e, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM")):
        return True
    text = str(e).lower()
    return any(s in text for s in ("disk is full", "readonly database", "unable to open", "disk i/o error"))


class Store:
    """SQLite store of completions. Use as a context manager or call `close()`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per completion.
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise QRDistillError(f"{self.path}: cannot open the completion store for writing "
                                 f"({getattr(e, 'strerror', None) or e}); fix the run directory's permissions "
                                 f"or free disk space") from None
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DataError(f"{self.path}: store schema version {version} is newer than this qrdistill "
                                f"understands ({SCHEMA_VERSION}); upgrade qrdistill")
            with self._lock:
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            self._db.close()
            if _is_write_failure(e):
                raise self._write_error(e) from None
            # Never delete or rewrite it: it may hold paid-for completions.
            raise DataError(f"{self.path}: not a readable completion store ({e}); move it aside to start a "
                            f"fresh one") from None
        except BaseException:
            self._db.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None  # type: ignore[assignment]

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- secrets -------------------------------------------------------------------------------------------
    def add_secret(self, value: str | None) -> None:
        """Register a value (an API key) that must never be written; it is redacted wherever it appears."""
        if value and len(value) >= 4:
            self._secrets.add(value)

    def _redact(self, text: str | None, urls: bool = True) -> str | None:
        """`text` without registered secrets and, with `urls`, without the credentials of any URL in it.

        Completion texts pass `urls=False`: a teacher's program may legitimately contain
        `?token=...`, and it is training data; only registered secrets are cut from it.
        """
        if text is None:
            return None
        for s in self._secrets:
            text = text.replace(s, "[REDACTED]")
        return redact_credentials(text) if urls else text

    def _write_error(self, e: sqlite3.Error) -> QRDistillError:
        return QRDistillError(
            f"{self.path}: cannot write to the completion store: {e}; every completion stored before this one is "
            f"kept: free disk space (or make the run directory writable) and run the same command again to "
            f"continue where it stopped"
        )

    def teacher_paths_stored(self) -> int:
        """Teacher completions stored `ok` (0 for a store that is new, or was emptied or replaced)."""
        with self._lock:
            return int(self._db.execute(
                "SELECT COUNT(*) FROM completions WHERE kind = 'teacher' AND status = 'ok'"
            ).fetchone()[0])

    def _clean_request(self, req: Request, params: dict[str, Any]) -> str:
        safe = {k: v for k, v in params.items() if k.lower() not in _SECRET_PARAM_NAMES}
        return self._redact(_json({"messages": req.messages, "params": safe, "sample": req.sample}))  # type: ignore[return-value]

    # -- reads ---------------------------------------------------------------------------------------------
    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM completions WHERE key = ?", (key,)).fetchone()
        return _row_to_completion(row) if row else None

    def get_ok(self, keys: Iterable[str]) -> dict[str, Completion]:
        """key -> Completion for those of `keys` stored with status ok."""
        out: dict[str, Completion] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT * FROM completions WHERE status = 'ok' AND key IN ({','.join('?' * len(chunk))})"
            with self._lock:
                rows = self._db.execute(q, chunk).fetchall()
            for row in rows:
                out[row["key"]] = _row_to_completion(row)
        return out

    def usage(self, kind: str | None = None) -> dict[str, Any]:
        """Totals over every call the backends answered (cost accounting)."""
        where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        row = self._db.execute(
            f"""SELECT COUNT(*) AS calls,
                       COALESCE(SUM(status = 'ok'), 0) AS ok,
                       COALESCE(SUM(status != 'ok'), 0) AS errors,
                       COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
                       COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
                       COALESCE(SUM(latency), 0.0) AS latency
                FROM calls {where}""",
            args,
        ).fetchone()
        stored = self._db.execute(
            "SELECT COUNT(*) FROM completions WHERE status = 'ok'" + (" AND kind = ?" if kind else ""), args
        ).fetchone()[0]
        return {**dict(row), "stored_ok": stored}

    def last_batch_id(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM batches").fetchone()[0])

    def batch_totals(self, kind: str, after: int = 0) -> dict[str, int]:
        """Sums over the `run_cached` batches of `kind` with id > `after` (i.e. since a moment)."""
        row = self._db.execute(
            """SELECT COUNT(*) AS batches, COALESCE(SUM(requested), 0) AS requested,
                      COALESCE(SUM(cached), 0) AS cached, COALESCE(SUM(answered), 0) AS issued,
                      COALESCE(SUM(failed), 0) AS failed, COALESCE(SUM(pending - answered), 0) AS unanswered
               FROM batches WHERE kind = ? AND id > ?""",
            (kind, after),
        ).fetchone()
        return {k: int(row[k]) for k in row.keys()}

    def integrity_ok(self) -> bool:
        rows = self._db.execute("PRAGMA integrity_check").fetchall()
        return len(rows) == 1 and rows[0][0] == "ok"

    def reissued_keys(self) -> list[str]:
        """Keys that were asked again after a stored `ok` completion (must always be empty)."""
        rows = self._db.execute(
            """SELECT DISTINCT c.key FROM calls c JOIN completions p ON p.key = c.key
               WHERE p.status = 'ok' AND c.started > p.updated"""
        ).fetchall()
        dup = self._db.execute(
            "SELECT key FROM calls WHERE status = 'ok' GROUP BY key HAVING COUNT(*) > 1"
        ).fetchall()
        return sorted({r[0] for r in rows} | {r[0] for r in dup})

    # -- writes --------------------------------------------------------------------------------------------
    def put(
        self,
        key: str,
        kind: str,
        backend: Backend,
        req: Request,
        comp: Completion,
        *,
        batch: int | None = None,
        started: float | None = None,
    ) -> None:
        """Store one completion and log its call, atomically. An `ok` row is never overwritten."""
        now = _now()
        status = "ok" if comp.ok else "error"
        params = {**backend.sampling_params(), **req.params}
        call_started = now - comp.latency if comp.latency is not None else (started or now)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    """INSERT INTO calls (key, batch, kind, backend, started, finished, status, prompt_tokens,
                                          completion_tokens, latency, attempts)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (key, batch, kind, backend.label, call_started, now, status, comp.prompt_tokens,
                     comp.completion_tokens, comp.latency, comp.attempts),
                )
                db.execute(
                    """INSERT INTO completions (key, kind, backend, model, request, text, status, error,
                           prompt_tokens, completion_tokens, latency, attempts, finish_reason, meta, created, updated)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(key) DO UPDATE SET
                           text = excluded.text, status = excluded.status, error = excluded.error,
                           prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,
                           latency = excluded.latency, attempts = completions.attempts + excluded.attempts,
                           finish_reason = excluded.finish_reason, meta = excluded.meta,
                           updated = excluded.updated
                       WHERE completions.status != 'ok'""",
                    (key, kind, backend.label, backend.model, self._clean_request(req, params),
                     self._redact(comp.text, urls=False), status, self._redact(comp.error), comp.prompt_tokens,
                     comp.completion_tokens, comp.latency, comp.attempts, comp.finish_reason,
                     self._redact(_json(comp.meta or {})), now, now),
                )
                if batch is not None:
                    db.execute(
                        "UPDATE batches SET answered = answered + 1, failed = failed + ? WHERE id = ?",
                        (0 if comp.ok else 1, batch),
                    )
                db.execute("COMMIT")
            except BaseException as e:
                # SQLite rolls back by itself on some errors (SQLITE_FULL among them); a second ROLLBACK
                # would fail with "cannot rollback" and hide the reason the user needs to see.
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(e, sqlite3.Error):
                    raise self._write_error(e) from e
                raise

    def _begin_batch(self, kind: str, backend: Backend, desc: str, requested: int, cached: int, pending: int) -> int:
        with self._lock:
            try:
                cur = self._db.execute(
                    """INSERT INTO batches (kind, backend, description, pid, started, requested, cached, pending)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    (kind, backend.label, desc, os.getpid(), _now(), requested, cached, pending),
                )
            except sqlite3.Error as e:
                raise self._write_error(e) from e
            return int(cur.lastrowid)

    def _end_batch(self, batch: int) -> None:
        with self._lock:
            try:
                self._db.execute("UPDATE batches SET finished = ? WHERE id = ?", (_now(), batch))
            except sqlite3.Error as e:
                raise self._write_error(e) from e


def _row_to_completion(row: sqlite3.Row) -> Completion:
    return Completion(
        text=row["text"],
        status=row["status"],
        error=row["error"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        latency=row["latency"],
        attempts=row["attempts"] or 1,
        finish_reason=row["finish_reason"],
        meta=json.loads(row["meta"]) if row["meta"] else {},
    )


class CachedResults(dict):
    """key -> Completion, plus `stats` of the call: requested, cached, issued, failed, tokens, first_error."""

    stats: dict[str, Any]


def run_cached(
    backend: Backend, store: Store, requests: Sequence[Request], kind: str, desc: str
) -> CachedResults:
    """Answer `requests` through `backend`, asking only for keys not yet stored `ok`.

    Each completion is committed as soon as the backend reports it. Returns
    key -> Completion for every request that has an `ok` completion (stored
    before or now); keys whose call failed are absent (their error is stored
    and they are retried on the next run).
    """
    from tqdm.auto import tqdm

    if kind not in ("teacher", "judge"):
        raise ValueError(f"kind must be 'teacher' or 'judge', not {kind!r}")
    key_env = getattr(backend.config, "api_key_env", None)
    if key_env:
        store.add_secret(os.environ.get(key_env))
    for secret in url_secrets(getattr(backend.config, "base_url", None)):
        store.add_secret(secret)

    by_key: dict[str, Request] = {}
    for req in requests:
        by_key.setdefault(backend.key(req), req)
    results = store.get_ok(by_key)
    pending = [(k, r) for k, r in by_key.items() if k not in results]
    cached = len(results)
    batch = store._begin_batch(kind, backend, desc, len(by_key), cached, len(pending))

    key_of = {id(r): k for k, r in pending}
    stats = {"ok": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
    first_error: list[str] = []
    handed_over = _now()
    bar = tqdm(total=len(pending), desc=desc, unit="call", disable=not pending, dynamic_ncols=True)

    def on_result(req: Request, comp: Completion) -> None:
        key = key_of.get(id(req)) or backend.key(req)
        store.put(key, kind, backend, req, comp, batch=batch, started=handed_over)
        if comp.ok:
            results[key] = comp
            stats["ok"] += 1
        else:
            stats["failed"] += 1
            if not first_error:
                first_error.append(store._redact(comp.error) or "unknown error")
        stats["prompt_tokens"] += comp.prompt_tokens or 0
        stats["completion_tokens"] += comp.completion_tokens or 0
        bar.update(1)

    try:
        if pending:
            backend.generate([r for _, r in pending], on_result, None)
    finally:
        bar.close()
    store._end_batch(batch)
    missing = len(pending) - stats["ok"] - stats["failed"]
    log.info(
        "%s: %d requests to %s: %d cached, %d issued (%d ok, %d failed%s), tokens %d prompt + %d completion",
        desc, len(by_key), backend.label, cached, stats["ok"] + stats["failed"], stats["ok"], stats["failed"],
        f", {missing} never answered" if missing else "", stats["prompt_tokens"], stats["completion_tokens"],
    )
    if first_error:
        log.warning("%s: first error: %s", desc, first_error[0])
    out = CachedResults({k: results[k] for k in by_key if k in results})
    out.stats = {
        "requested": len(by_key), "cached": cached, "issued": stats["ok"] + stats["failed"],
        "failed": stats["failed"] + missing, "prompt_tokens": stats["prompt_tokens"],
        "completion_tokens": stats["completion_tokens"], "first_error": first_error[0] if first_error else None,
    }
    return out


__all__ = ["CachedResults", "Store", "run_cached"]
