"""Benchmark: `qrdistill generate` at concurrency 64 against a server that answers instantly.

The llama.cpp benchmark (`bench_generate.py`) is bound by a server that runs one
completion at a time, so it cannot show the client's own overhead. Here the
server is `tests/instant_server.py`: a real HTTP/1.1 server on 127.0.0.1, in its
own process (so its CPU does not share the client's GIL), that answers every
`/v1/chat/completions` at once with a valid OpenAI body (usage included). The
same N chat requests (procedural_arith questions × six styles: exactly the
messages the stage sends) are issued, at the same concurrency, by:

- ``bare_openai`` (the baseline): ``openai.AsyncOpenAI``, the client library the
  ``openai`` backend uses, with its default HTTP client and ``max_retries=0``;
  one client, an ``asyncio.Semaphore``-style bound and ``gather``, replies kept
  in memory. The fair baseline: same library, same wire, nothing stored;
- ``generate``: the real stage, ``qrdistill.stages.generate.run``, on a fresh run
  dir, end to end (planning, calls, every completion committed to
  ``store.sqlite``, answer checks, ``paths.jsonl``, meta). After each run the
  store and ``paths.jsonl`` are counted: all N completions must be there, and
  the server must have served exactly N;
- ``bare_openai_pooled``: the bare loop spread over clients of
  ``REQUESTS_PER_CLIENT`` requests each, as the backend does; ``generate``
  against it is qrdistill's own overhead (store, retries, checks) alone;
- ``run_cached``: the backend through ``qrdistill.store.run_cached`` into a fresh
  store: the calling phase of generate without planning and checks;
- ``generate_one_client``: the stage with the backend as it was before it spread
  requests over clients (one client, one pool of 64 connections);
- ``bare_httpx`` (reference): ``httpx.AsyncClient`` POSTs and ``r.json()``.

Every timed client starts with an empty connection pool (as the backend's do:
it builds its clients per generate call); imports and a warm-up request happen
before. The target is ``generate / bare_openai >= 0.9`` (median of the per-repeat
ratios; the order of the sides rotates between repeats so drift in machine
load hits all of them). The machine has two cores: the server takes at most
one, the client the other; the CPU each used is printed (the client's as
process CPU time per request, threads included), so a server-bound run would
show, and on a loaded machine CPU per request is the steadier number.

The store's commit cost per completion is measured twice: inside the generate
runs (``Store.put`` timed by a wrapper, and its share of the stage's wall
time), and by a microbenchmark of the same ``put`` on N completions: one
transaction per completion as generate commits them (WAL,
``synchronous=NORMAL``), beside the same rows in one transaction (what batched
commits could reach) and with ``synchronous=FULL`` (an fsync per commit).

    python benchmarks/bench_generate_scale.py [--questions 500] [--concurrency 64] [--repeats 3]

Results: ``benchmarks/results/generate_scale.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from instant_server import InstantServer  # noqa: E402

from qrdistill.backends import Completion, Request, get_backend  # noqa: E402
from qrdistill.config import RunConfig  # noqa: E402
from qrdistill.store import Store, run_cached  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "generate_scale.json"
STYLES = ["vanilla", "cot", "tot", "program", "fact", "backward"]
MODEL = "instant-teacher"


def teacher(base_url: str, concurrency: int) -> dict[str, Any]:
    return {"kind": "openai", "base_url": base_url, "model": MODEL, "mode": "chat", "temperature": 0.7,
            "max_tokens": 512, "max_concurrency": concurrency, "timeout": 60.0, "max_retries": 2}


def run_config(run_dir: Path, base_url: str, questions: int, concurrency: int) -> RunConfig:
    return RunConfig.model_validate({
        "run_dir": str(run_dir),
        "tasks": [{"name": "procedural_arith", "split": "train", "limit": questions}],
        "generate": {"teacher": teacher(base_url, concurrency), "styles": STYLES},
    })


def stage_messages(cfg: RunConfig) -> list[list[dict[str, str]]]:
    """The chat messages the generate stage sends for `cfg`, in its order (so every side sends the same)."""
    from qrdistill.stages.generate import build_messages
    from qrdistill.styles import render, resolve_styles
    from qrdistill.tasks import get_task
    from qrdistill.tasks.base import load_records

    gen = cfg.generate
    styles = resolve_styles(gen.styles, gen.custom_styles)
    out = []
    for spec in cfg.tasks:
        task = get_task(spec.name, "tasks.0.name")
        for record in load_records(task, spec, spec.limit, "tasks.0"):
            question = task.prompt(record)
            for template in styles.values():
                user = render(template, question, task.answer_instruction)
                out.extend(build_messages(gen.system_prompt, user) for _ in range(gen.samples_per_style))
    return out


class Meter:
    """Wall time, client CPU time (this process, all threads) and the server's CPU time over a block."""

    def __init__(self, server: InstantServer) -> None:
        self.server = server

    def __enter__(self) -> Meter:
        self.stats0 = self.server.stats()
        self.server_cpu0 = self.server.cpu_seconds()
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.client_cpu = time.process_time() - self.cpu0
        self.server_cpu = self.server.cpu_seconds() - self.server_cpu0
        stats = self.server.stats()
        self.served = stats["served"] - self.stats0["served"]
        self.connections = stats["connections"] - self.stats0["connections"]

    def row(self, n: int, **extra: Any) -> dict[str, Any]:
        return {"requests": n, "seconds": round(self.seconds, 3), "req_per_s": round(n / self.seconds, 1),
                "client_cpu_s": round(self.client_cpu, 2), "server_cpu_s": round(self.server_cpu, 2),
                "client_cpu_ms_per_req": round(1000 * self.client_cpu / n, 3),
                "served": self.served, "connections": self.connections, **extra}


async def _bare_openai(base_url: str, messages: list[list[dict[str, str]]], concurrency: int,
                       on_start: Callable[[], None], per_client: int | None = None) -> list[str]:
    from openai import AsyncOpenAI

    def client() -> AsyncOpenAI:
        return AsyncOpenAI(api_key="no-key-local-server", base_url=base_url, max_retries=0, timeout=60.0)

    async def one(c: AsyncOpenAI, m: list[dict[str, str]]) -> str:
        r = await c.chat.completions.create(model=MODEL, messages=m, temperature=0.7, top_p=1.0, max_tokens=512)
        return r.choices[0].message.content or ""

    # Lazy imports and resources, untimed, on a throwaway client: the timed ones start with an empty
    # pool, as the backend's do (it builds its clients per generate call). A warm pool keeps about 15
    # connections open instead of 64, and httpcore's pool costs grow with the square of that.
    warm = client()
    await one(warm, [{"role": "user", "content": "warm-up"}])
    await warm.close()
    n_clients = -(-concurrency // per_client) if per_client else 1
    clients = [client() for _ in range(n_clients)]
    slots: asyncio.Queue[AsyncOpenAI] = asyncio.Queue()
    for i in range(concurrency):
        slots.put_nowait(clients[i % n_clients])

    async def bounded(m: list[dict[str, str]]) -> str:
        c = await slots.get()
        try:
            return await one(c, m)
        finally:
            slots.put_nowait(c)

    try:
        on_start()
        return await asyncio.gather(*(bounded(m) for m in messages))
    finally:
        for c in clients:
            await c.close()


async def _bare_httpx(base_url: str, messages: list[list[dict[str, str]]], concurrency: int,
                      on_start: Callable[[], None]) -> list[str]:
    import httpx

    def client() -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0)

    async def one(c: httpx.AsyncClient, m: list[dict[str, str]]) -> str:
        r = await c.post("/chat/completions", json={
            "model": MODEL, "messages": m, "temperature": 0.7, "top_p": 1.0, "max_tokens": 512})
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    async with client() as warm:
        await one(warm, [{"role": "user", "content": "warm-up"}])
    sem = asyncio.Semaphore(concurrency)
    async with client() as c:

        async def bounded(m: list[dict[str, str]]) -> str:
            async with sem:
                return await one(c, m)

        on_start()
        return await asyncio.gather(*(bounded(m) for m in messages))


def bare(kind: str, server: InstantServer, messages: list[list[dict[str, str]]], concurrency: int) -> dict[str, Any]:
    from qrdistill.backends.openai_backend import REQUESTS_PER_CLIENT

    meter = Meter(server)
    if kind == "httpx":
        run = _bare_httpx(server.base_url, messages, concurrency, meter.__enter__)
    else:
        per_client = REQUESTS_PER_CLIENT if kind == "openai_pooled" else None
        run = _bare_openai(server.base_url, messages, concurrency, meter.__enter__, per_client)
    texts = asyncio.run(run)
    meter.__exit__()
    assert len(texts) == len(messages) and all(texts), "bare loop lost replies"
    return meter.row(len(messages))


class PutTimer:
    """Wraps `Store.put` to sum the time spent storing completions (the stage itself is not touched)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def __enter__(self) -> PutTimer:
        self.orig = Store.put
        timer = self

        def timed(store: Store, *args: Any, **kw: Any) -> None:
            t = time.perf_counter()
            try:
                timer.orig(store, *args, **kw)
            finally:
                timer.seconds += time.perf_counter() - t
                timer.calls += 1

        Store.put = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        Store.put = self.orig  # type: ignore[method-assign]


def count_stored(run_dir: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{run_dir / 'store.sqlite'}?mode=ro", uri=True)
    try:
        ok = db.execute("SELECT COUNT(*) FROM completions WHERE status = 'ok'").fetchone()[0]
        calls = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    finally:
        db.close()
    paths = sum(1 for line in (run_dir / "paths.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
    return {"store_ok": ok, "store_calls": calls, "paths_jsonl": paths}


@contextlib.contextmanager
def one_client(concurrency: int) -> Iterator[None]:
    """The backend as it was before it spread requests over clients: one client carries them all."""
    from qrdistill.backends import openai_backend

    before = openai_backend.REQUESTS_PER_CLIENT
    openai_backend.REQUESTS_PER_CLIENT = concurrency
    try:
        yield
    finally:
        openai_backend.REQUESTS_PER_CLIENT = before


def stage(server: InstantServer, run_dir: Path, questions: int, concurrency: int, n: int,
          single_client: bool = False) -> dict[str, Any]:
    from qrdistill.stages import generate

    cfg = run_config(run_dir, server.base_url, questions, concurrency)
    # The progress bar and summary still do their work; only their text is kept off the table.
    with PutTimer() as puts, Meter(server) as meter, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), \
            (one_client(concurrency) if single_client else contextlib.nullcontext()):
        summary = generate.run(cfg, run_dir)
    counts = count_stored(run_dir)
    complete = (summary["paths"] == n and summary["calls_issued"] == n and meter.served == n
                and counts == {"store_ok": n, "store_calls": n, "paths_jsonl": n})
    if not complete:
        raise SystemExit(f"generate did not store every completion: summary paths={summary['paths']} "
                         f"issued={summary['calls_issued']} served={meter.served} counts={counts}")
    return meter.row(n, **counts, put_ms_per_completion=round(1000 * puts.seconds / max(puts.calls, 1), 4),
                     put_share_of_wall=round(puts.seconds / meter.seconds, 4))


def cached(server: InstantServer, store_path: Path, messages: list[list[dict[str, str]]],
           concurrency: int) -> dict[str, Any]:
    backend = get_backend(RunConfig.model_validate({
        "tasks": [{"name": "procedural_arith"}], "generate": {"teacher": teacher(server.base_url, concurrency)},
    }).generate.teacher, "generate.teacher")
    reqs = [Request(messages=m, sample=0) for m in messages]
    with Store(store_path) as store, Meter(server) as meter, contextlib.redirect_stderr(io.StringIO()):
        out = run_cached(backend, store, reqs, "teacher", "bench")
    assert len(out) == len(reqs) and out.stats["issued"] == len(reqs), out.stats
    return meter.row(len(reqs))


class _OneTransaction:
    """A connection stand-in that drops `put`'s own BEGIN/COMMIT, so n puts share one transaction."""

    in_transaction = True

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        return None if sql in ("BEGIN IMMEDIATE", "COMMIT") else self._db.execute(sql, *args)


def store_microbench(messages: list[list[dict[str, str]]], tmp: Path) -> dict[str, Any]:
    """`Store.put` of one completion per message: a transaction each (what generate does) vs alternatives."""
    from qrdistill.backends.openai_backend import OpenAIBackend
    from qrdistill.config.generate import OpenAIBackendConfig

    backend = OpenAIBackend(OpenAIBackendConfig(model=MODEL, base_url="http://127.0.0.1:1/v1"))
    text = "[ref 00000000] " + " ".join(f"step{i}" for i in range(56)) + " The answer is 42."
    items = [(Request(messages=m), Completion(text=text, prompt_tokens=200, completion_tokens=60, latency=0.01,
                                              finish_reason="stop", meta={"elapsed": 0.01})) for m in messages]
    keys = [backend.key(r) for r, _ in items]
    n = len(items)
    out: dict[str, Any] = {"completions": n}

    def timed(label: str, synchronous: str, one_transaction: bool) -> None:
        with Store(tmp / f"micro-{label}.sqlite") as store:
            store._db.execute(f"PRAGMA synchronous={synchronous}")
            batch = store._begin_batch("teacher", backend, "micro", n, 0, n)
            real = store._db
            t = time.perf_counter()
            if one_transaction:
                # The same rows through the same code in one transaction: the floor batched commits could reach.
                real.execute("BEGIN IMMEDIATE")
                store._db = _OneTransaction(real)  # type: ignore[assignment]
            try:
                for k, (r, c) in zip(keys, items, strict=True):
                    store.put(k, "teacher", backend, r, c, batch=batch)
            finally:
                store._db = real
            if one_transaction:
                real.execute("COMMIT")
            seconds = time.perf_counter() - t
            assert store.usage("teacher")["stored_ok"] == n
        out[label] = {"seconds": round(seconds, 4), "ms_per_completion": round(1000 * seconds / n, 4)}

    timed("commit_each_wal_normal", "NORMAL", one_transaction=False)  # what generate does
    timed("one_transaction_wal_normal", "NORMAL", one_transaction=True)
    timed("commit_each_wal_full_fsync", "FULL", one_transaction=False)
    out["commit_ms_per_completion"] = round(
        out["commit_each_wal_normal"]["ms_per_completion"] - out["one_transaction_wal_normal"]["ms_per_completion"], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=500, help="procedural_arith questions (× 6 styles = calls)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reply-words", type=int, default=60, help="words in every reply")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import openai  # noqa: F401  (imported once, before any side is timed: every side runs warm)

    from qrdistill.backends.openai_backend import REQUESTS_PER_CLIENT
    load_start = round(os.getloadavg()[0], 2)
    n = args.questions * len(STYLES)
    sides = ("bare_openai", "generate", "bare_openai_pooled", "run_cached", "generate_one_client", "bare_httpx")
    rounds: list[dict[str, Any]] = []
    with InstantServer(reply_words=args.reply_words) as server, tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        messages = stage_messages(run_config(tmp / "plan", server.base_url, args.questions, args.concurrency))
        assert len(messages) == n
        for i in range(args.repeats):
            r: dict[str, Any] = {}
            # Rotate the order so no side always runs first (or right after the one that warms the page cache).
            order = sides[i % len(sides):] + sides[: i % len(sides)]
            for side in order:
                if side.startswith("bare_"):
                    r[side] = bare(side.removeprefix("bare_"), server, messages, args.concurrency)
                elif side == "run_cached":
                    r[side] = cached(server, tmp / f"cached-{i}.sqlite", messages, args.concurrency)
                else:
                    r[side] = stage(server, tmp / f"{side}-{i}", args.questions, args.concurrency, n,
                                    single_client=side == "generate_one_client")
                print(f"repeat {i + 1} {side:<12} {r[side]['req_per_s']:>8.1f} req/s  "
                      f"client cpu {r[side]['client_cpu_s']:.1f}s  server cpu {r[side]['server_cpu_s']:.1f}s  "
                      f"wall {r[side]['seconds']:.1f}s", flush=True)
            r["ratio_generate_vs_bare_openai"] = round(r["generate"]["req_per_s"] / r["bare_openai"]["req_per_s"], 3)
            for other in ("bare_openai_pooled", "generate_one_client"):
                r[f"ratio_generate_vs_{other}"] = round(r["generate"]["req_per_s"] / r[other]["req_per_s"], 3)
            r["ratio_generate_one_client_vs_bare_openai"] = round(
                r["generate_one_client"]["req_per_s"] / r["bare_openai"]["req_per_s"], 3)
            # The client is CPU-bound (the server uses a few % of a core), so the rate it can sustain is
            # 1 / its CPU per request: the same ratio, steadier when other work shares the cores.
            for side in ("generate", "generate_one_client"):
                r[f"cpu_ratio_{side}_vs_bare_openai"] = round(
                    r["bare_openai"]["client_cpu_ms_per_req"] / r[side]["client_cpu_ms_per_req"], 3)
            rounds.append(r)
        micro = store_microbench(messages, tmp)

    def median(side: str, field: str) -> float:
        return statistics.median(r[side][field] for r in rounds)

    med = {s: median(s, "req_per_s") for s in sides}
    cpu_ms = {s: median(s, "client_cpu_ms_per_req") for s in sides}
    ratio = statistics.median(r["ratio_generate_vs_bare_openai"] for r in rounds)
    ratio_pooled = statistics.median(r["ratio_generate_vs_bare_openai_pooled"] for r in rounds)
    ratio_before = statistics.median(r["ratio_generate_one_client_vs_bare_openai"] for r in rounds)
    cpu_ratio = statistics.median(r["cpu_ratio_generate_vs_bare_openai"] for r in rounds)
    cpu_ratio_before = statistics.median(r["cpu_ratio_generate_one_client_vs_bare_openai"] for r in rounds)
    put_ms = median("generate", "put_ms_per_completion")
    put_share = median("generate", "put_share_of_wall")
    print(f"\n{n} chat completions per side, concurrency {args.concurrency}, median of {args.repeats}")
    print(f"{'side':<20}{'req/s':>8}{'vs bare_openai':>16}{'client cpu ms/req':>19}{'server cpu s':>14}"
          f"{'connections':>13}")
    for s in sides:
        print(f"{s:<20}{med[s]:>8.1f}{med[s] / med['bare_openai']:>16.3f}{cpu_ms[s]:>19.2f}"
              f"{median(s, 'server_cpu_s'):>14.1f}{median(s, 'connections'):>13.0f}")
    print(f"generate / bare_openai (median of per-repeat ratios): {ratio:.3f}  (target >= 0.9); "
          f"by client CPU per request: {cpu_ratio:.3f}")
    print(f"generate / bare_openai_pooled (same {REQUESTS_PER_CLIENT} requests per client): {ratio_pooled:.3f}")
    print(f"generate_one_client / bare_openai (the backend before it spread requests): {ratio_before:.3f}; "
          f"by client CPU per request: {cpu_ratio_before:.3f}")
    print(f"store commit inside generate: {put_ms:.3f} ms per completion, {put_share:.1%} of the stage's wall time")
    print("store microbenchmark (ms per completion): " + ", ".join(
        f"{k} {v['ms_per_completion']:.3f}" for k, v in micro.items() if isinstance(v, dict)))

    result = {
        "benchmark": "generate at scale: openai backend vs bare async loops against an instant local server",
        "command": "python benchmarks/bench_generate_scale.py " + " ".join(sys.argv[1:]),
        "requests_per_side": n,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "server": "tests/instant_server.py (stdlib asyncio HTTP/1.1, one process, 127.0.0.1)",
        "baseline": "openai.AsyncOpenAI (the backend's client library), default http client, max_retries=0",
        "median_req_per_s": med,
        "median_client_cpu_ms_per_req": cpu_ms,
        "ratio_generate_vs_bare_openai": ratio,
        "ratio_generate_vs_bare_openai_pooled": ratio_pooled,
        "ratio_generate_one_client_vs_bare_openai": ratio_before,
        "cpu_ratio_generate_vs_bare_openai": cpu_ratio,
        "cpu_ratio_generate_one_client_vs_bare_openai": cpu_ratio_before,
        "requests_per_client": REQUESTS_PER_CLIENT,
        "target": 0.9,
        "store_put_ms_per_completion_in_generate": put_ms,
        "store_put_share_of_generate_wall": put_share,
        "store_microbench": micro,
        "rounds": rounds,
        # Other work on the machine shows here (the client's wall rate suffers; its CPU per request less).
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1min_at_start_and_end": [load_start, round(os.getloadavg()[0], 2)]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
