"""Benchmark: teacher generation through qrdistill vs bare async HTTP calls to the same server.

Starts llama.cpp's OpenAI-compatible server (llama-cpp-python) with the bundled
Gemma-3-270M GGUF, then sends the same N completion requests (real GSM8K
questions, greedy, same max_tokens, same concurrency) two ways:

- ``qrdistill``: ``run_cached`` with the ``openai`` backend in completions mode
  (bounded concurrency, retries, every completion committed to a SQLite store);
- ``raw``: a bare loop of ``httpx`` POSTs to ``/v1/completions`` behind an
  ``asyncio.Semaphore`` of the same size, results kept in memory.

It prints paths/s for both and their ratio (target >= 0.9), then runs the
qrdistill side again and prints how many calls it issued (must be 0: all are
stored). Results go to ``benchmarks/results/generate.json``.

Fairness: one server process, the same settings for both sides. llama-cpp-python's
server has no parallel slots (``n_parallel`` is a llama.cpp ``llama-server``
option, not one of llama-cpp-python's): it runs one completion at a time and
queues the rest, so the concurrency only keeps the queue full and the
comparison measures the client's overhead on top of a serial server. Greedy
decoding makes both sides generate the same tokens (checked: equal completion
token totals). A warm-up request runs first, and with ``--rounds`` > 1 the
sides alternate so drift in machine load hits both.

    python benchmarks/bench_generate.py [--n 32] [--max-tokens 32] [--concurrency 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from llama_server import llama_server  # noqa: E402

from qrdistill.backends import Request, get_backend  # noqa: E402
from qrdistill.config.generate import OpenAIBackendConfig  # noqa: E402
from qrdistill.store import Store, run_cached  # noqa: E402

DATA = (ROOT / ".." / "shared" / "data" / "gsm8k" / "test.jsonl").resolve()
RESULTS = ROOT / "benchmarks" / "results" / "generate.json"


def load_prompts(n: int) -> list[str]:
    lines = DATA.read_text(encoding="utf-8").splitlines()
    if len(lines) < n:
        raise SystemExit(f"{DATA} has only {len(lines)} questions, {n} requested")
    return [f"Question: {json.loads(line)['question']}\nAnswer: Let's think step by step." for line in lines[:n]]


def run_qrdistill(backend: Any, store_path: Path, prompts: list[str]) -> dict[str, Any]:
    reqs = [Request(messages=[{"role": "user", "content": p}]) for p in prompts]
    with Store(store_path) as store:
        t0 = time.perf_counter()
        out = run_cached(backend, store, reqs, kind="teacher", desc="qrdistill")
        seconds = time.perf_counter() - t0
    ok = len(out)
    return {
        "seconds": round(seconds, 3),
        "paths": ok,
        "paths_per_s": round(ok / seconds, 4),
        "calls_issued": out.stats["issued"],
        "completion_tokens": out.stats["completion_tokens"],
        "texts": [out[backend.key(r)].text for r in reqs if backend.key(r) in out],
    }


async def _raw(base_url: str, model: str, prompts: list[str], max_tokens: int, concurrency: int) -> dict[str, Any]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:

        async def one(prompt: str) -> dict[str, Any]:
            async with sem:
                r = await client.post(
                    "/completions",
                    json={"model": model, "prompt": prompt, "temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens},
                )
                r.raise_for_status()
                return r.json()

        t0 = time.perf_counter()
        bodies = await asyncio.gather(*(one(p) for p in prompts))
        seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 3),
        "paths": len(bodies),
        "paths_per_s": round(len(bodies) / seconds, 4),
        "completion_tokens": sum(b["usage"]["completion_tokens"] for b in bodies),
        "texts": [b["choices"][0]["text"] for b in bodies],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="requests per side")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1, help="alternate raw/qrdistill this many times")
    ap.add_argument("--n-threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from qrdistill.models import gemma_gguf_path

    prompts = load_prompts(args.n)
    rounds: list[dict[str, Any]] = []
    with llama_server(gemma_gguf_path(), n_ctx=2048, n_threads=args.n_threads) as server, \
            tempfile.TemporaryDirectory() as tmp:
        cfg = OpenAIBackendConfig(
            base_url=server.base_url, model=server.model_alias, mode="completions", temperature=0.0,
            max_tokens=args.max_tokens, max_concurrency=args.concurrency, timeout=300,
        )
        backend = get_backend(cfg)
        # warm-up: the first completion pays one-off costs (model pages, client imports) on either side
        asyncio.run(_raw(server.base_url, server.model_alias, ["Question: 1 + 1?\nAnswer:"], 4, 1))
        run_qrdistill(backend, Path(tmp) / "warmup.sqlite", ["Question: 2 + 2?\nAnswer:"])

        for i in range(args.rounds):
            raw = asyncio.run(_raw(server.base_url, server.model_alias, prompts, args.max_tokens, args.concurrency))
            ours = run_qrdistill(backend, Path(tmp) / f"round{i}.sqlite", prompts)
            same = sum(a == b for a, b in zip(raw.pop("texts"), ours.pop("texts"), strict=False))
            rounds.append({"raw": raw, "qrdistill": ours, "identical_texts": same,
                           "ratio": round(ours["paths_per_s"] / raw["paths_per_s"], 3)})
            print(f"round {i + 1}: raw {raw['paths_per_s']:.3f} paths/s ({raw['seconds']:.1f} s, "
                  f"{raw['completion_tokens']} tokens) | qrdistill {ours['paths_per_s']:.3f} paths/s "
                  f"({ours['seconds']:.1f} s, {ours['completion_tokens']} tokens) | ratio {rounds[-1]['ratio']:.3f} "
                  f"| identical texts {same}/{len(prompts)}")
        rerun = run_qrdistill(backend, Path(tmp) / f"round{args.rounds - 1}.sqlite", prompts)

    raw_total = sum(r["raw"]["seconds"] for r in rounds)
    ours_total = sum(r["qrdistill"]["seconds"] for r in rounds)
    ratio = round(raw_total / ours_total, 3)
    result = {
        "n_requests": args.n,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "server": {"impl": "llama-cpp-python server (one completion at a time)", "model": "Gemma-3-270M Q4_K_M GGUF",
                   "n_ctx": 2048, "n_threads": args.n_threads},
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "rounds": rounds,
        "raw_paths_per_s": round(args.n * args.rounds / raw_total, 4),
        "qrdistill_paths_per_s": round(args.n * args.rounds / ours_total, 4),
        "ratio": ratio,
        "target_ratio": 0.9,
        "rerun_calls_issued": rerun["calls_issued"],
        "rerun_seconds": rerun["seconds"],
    }
    print()
    print(f"{'':<12}{'paths/s':>10}")
    print(f"{'raw httpx':<12}{result['raw_paths_per_s']:>10.3f}")
    print(f"{'qrdistill':<12}{result['qrdistill_paths_per_s']:>10.3f}")
    print(f"ratio qrdistill/raw: {ratio:.3f} (target >= 0.9)")
    print(f"re-run: {rerun['calls_issued']} calls issued (must be 0), {rerun['seconds']:.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if rerun["calls_issued"] != 0:
        raise SystemExit("re-run issued calls: resume is broken")


if __name__ == "__main__":
    main()
