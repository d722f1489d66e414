"""evaluate.backend openai (llama.cpp's server on an exported GGUF) against the in-process batched hf path.

Both answer the same test questions with the same prompts, budget and answer stops (the generation cores
of `qrdistill evaluate`: `generate_greedy` with the student's adapter active, and `generate_remote` through
llama-cpp-python's OpenAI-compatible server on 127.0.0.1, streaming, closed at the answer line). Reported:
tokens/s of each (tokens = those of the kept answers, counted alike), their ratio, and how many outputs and
predictions agree. Two students:

- tiny: the tiny Gemma 3 of tests/tiny_gguf_model.py trained by the real train stage (as in
  tests/test_evaluate_openai.py), exported to f32 GGUF;
- gemma: the trained Gemma-3-270M student of a real run (default /work/demo2/runs/default, read only),
  exported with `export_gguf` (f16 by default: what users ship) under --work.

llama-cpp-python's server computes a token's log-probabilities by sorting the whole vocabulary in Python
(262k entries for Gemma), so the Gemma runs ask for none (evaluate.server.logprobs: false); one short
probe measures what asking costs.

    python benchmarks/bench_eval_backend.py [--models tiny,gemma] [--n 16] [--run-dir D] [--outtype f16]

Writes benchmarks/results/eval_backend.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

THREADS = 2


def questions(task_name: str, n: int) -> tuple[Any, list[Any], list[str]]:
    """The first n test questions at the demo's difficulty levels, with the student prompt."""
    from qrdistill.config.evaluate import EvalTaskSpec
    from qrdistill.prompting import student_prompt
    from qrdistill.tasks import get_task
    from qrdistill.tasks.base import load_records

    task = get_task(task_name)
    records = load_records(task, EvalTaskSpec(name=task_name, split="test", difficulty=[1, 2]), n, "bench")
    return task, records, [student_prompt(task, task.prompt(r)) for r in records]


def run_hf(base: str, adapter: Path, prompts: list[str], budget: int, batch_size: int) -> dict[str, Any]:
    import torch
    from peft import PeftModel

    from qrdistill.evaluation.generation import generate_greedy, load_causal_lm, load_tokenizer

    torch.set_num_threads(THREADS)
    tokenizer = load_tokenizer(base)
    model = PeftModel.from_pretrained(load_causal_lm(base, "cpu", torch.float32), str(adapter)).eval()
    generate_greedy(model, tokenizer, prompts[:1], 1, 2, True, progress=False)  # untimed, as the server's
    t0, c0 = time.perf_counter(), time.process_time()
    gens = generate_greedy(model, tokenizer, prompts, batch_size, budget, True, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    del model
    return _result(gens, seconds, {"batch_size": batch_size, "cpu_seconds": round(cpu, 2)})


def run_openai(gguf: Path, prompts: list[str], budget: int, concurrency: int, logprobs: bool,
               n_ctx: int) -> dict[str, Any]:
    from llama_server import llama_server

    from qrdistill.config.evaluate import EvalServerConfig
    from qrdistill.evaluation.server import generate_remote, make_backend

    with llama_server(gguf, n_ctx=n_ctx, n_threads=THREADS, model_alias="student",
                      extra_args=["--interrupt_requests", "False"]) as server:
        cfg = EvalServerConfig(base_url=server.base_url, max_concurrency=concurrency, logprobs=logprobs)
        backend = make_backend(cfg, "student")
        # One untimed request: the server's first evaluation warms its caches.
        generate_remote(backend, prompts[:1], 2, progress=False)
        t0, c0, s0 = time.perf_counter(), time.process_time(), _cpu_seconds(server.process.pid)
        gens = generate_remote(backend, prompts, budget, progress=False)
        seconds = time.perf_counter() - t0
        server_cpu, client_cpu = _cpu_seconds(server.process.pid) - s0, time.process_time() - c0
    return _result(gens, seconds, {"concurrency": concurrency, "logprobs": logprobs,
                                   "cpu_seconds": round(server_cpu + client_cpu, 2),
                                   "server_cpu_seconds": round(server_cpu, 2),
                                   "server": "llama-cpp-python " + _llama_cpp_version()})


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): the server's work, whatever else shares the CPU."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _llama_cpp_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("llama_cpp_python")


def _result(gens: list[Any], seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    tokens = sum(g.n_tokens for g in gens)
    stops: dict[str, int] = {}
    for g in gens:
        stops[g.stop] = stops.get(g.stop, 0) + 1
    out = {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 2),
           "stops": stops, **extra, "gens": gens}
    if extra.get("cpu_seconds"):
        out["tokens_per_cpu_s"] = round(tokens / extra["cpu_seconds"], 2)
    return out


def compare(task: Any, records: list[Any], hf: dict[str, Any], oa: dict[str, Any]) -> dict[str, Any]:
    a, b = hf.pop("gens"), oa.pop("gens")
    preds = [(task.extract_answer(x.output, r), task.extract_answer(y.output, r)) for x, y, r in zip(a, b, records,
                                                                                                     strict=True)]
    diffs = [{"qid": r.id, "hf": x.output[:300], "openai": y.output[:300], "pred_hf": p, "pred_openai": q}
             for r, x, y, (p, q) in zip(records, a, b, preds, strict=True) if x.output != y.output]
    acc = {k: sum(task.is_correct(g.output, r) for g, r in zip(gens, records, strict=True)) / len(records)
           for k, gens in (("hf", a), ("openai", b))}
    return {
        "openai_vs_hf_tokens_per_s": round(oa["tokens_per_s"] / hf["tokens_per_s"], 3),
        "openai_vs_hf_tokens_per_cpu_s": round(oa["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"], 3),
        "same_outputs": sum(x.output == y.output for x, y in zip(a, b, strict=True)),
        "same_predictions": sum(p == q for p, q in preds),
        "accuracy": acc,
        "differences": diffs,
    }


def bench_tiny(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import tiny_gguf_model
    import torch
    from train_helpers import make_filtered, tiny_config

    from qrdistill.export.gguf import export_gguf
    from qrdistill.stages import train as train_stage

    root = work / "tiny"
    shutil.rmtree(root, ignore_errors=True)
    # As tests/test_evaluate_openai.py: a piece for every printable character (llama.cpp's tokenizer aborts
    # on a character a vocabulary without byte fallback lacks).
    tiny_gguf_model.CORPUS = [*tiny_gguf_model.CORPUS, "".join(chr(c) for c in range(32, 127))]
    models = tiny_gguf_model.make_tiny_gguf_students(root / "models")
    run_dir = root / "run"
    torch.set_num_threads(1)
    make_filtered(run_dir, limit=3)
    students = [{"name": "gemma", "model": models[1], "lr": 2.0e-2, "lora": {"r": 4, "alpha": 8}}]
    train_stage.run(tiny_config(run_dir, models, students=students, epochs=12, single_student=True), run_dir)
    gguf = Path(export_gguf(run_dir, root / "gguf", outtype="f32")["students"]["gemma"]["gguf"])
    task, records, prompts = questions("procedural_arith", args.n)
    budget = args.tiny_max_new_tokens
    hf = run_hf(models[1], run_dir / "train" / "adapters" / "gemma", prompts, budget, args.batch_size)
    oa = run_openai(gguf, prompts, budget, args.concurrency, True, 1024)
    return {"student": "tiny Gemma 3 (hidden 64, 2 layers, 300-piece vocabulary), trained 12 epochs",
            "task": "procedural_arith", "questions": len(prompts), "max_new_tokens": budget, "gguf": "f32",
            "hf": hf, "openai": oa, **compare(task, records, hf, oa)}


def bench_gemma(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from qrdistill.export.gguf import export_gguf
    from qrdistill.io import read_json
    from qrdistill.models import resolve_model
    from qrdistill.stages.evaluate import AUTO_BUDGET_FACTOR
    from qrdistill.train.artifacts import adapter_dir

    run_dir = Path(args.run_dir)
    summary = read_json(run_dir / "train" / "summary.json")
    entry = next(s for s in summary["students"] if s["name"] == args.student)
    fit = summary["sequence_lengths"][args.student]
    # The date questions' budget, as max_new_tokens: auto gives it (older summaries: over all tasks).
    p99 = (fit.get("response_tokens_p99_by_task") or {}).get("procedural_date", fit["response_tokens_p99"])
    budget = args.max_new_tokens or -(-int(AUTO_BUDGET_FACTOR * 100 * p99) // 100)
    out = work / "gemma-gguf"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    gguf = Path(export_gguf(run_dir, out, students=[args.student], outtype=args.outtype)["students"][args.student]
                ["gguf"])
    export_s = time.perf_counter() - t0
    task, records, prompts = questions("procedural_date", args.n)
    hf = run_hf(resolve_model(entry["model"]), adapter_dir(run_dir / "train" / "adapters" / args.student), prompts,
                budget, args.batch_size)
    oa = run_openai(gguf, prompts, budget, args.concurrency, False, 2048)
    result = {"student": f"{args.student} ({entry['model']} + LoRA) of {run_dir}", "task": "procedural_date",
              "questions": len(prompts), "max_new_tokens": budget, "gguf": args.outtype,
              "export_seconds": round(export_s, 1), "hf": hf, "openai": oa, **compare(task, records, hf, oa)}
    if args.logprobs_probe:
        probe = run_openai(gguf, prompts[:1], 8, 1, True, 2048)
        probe.pop("gens")
        result["openai_with_logprobs_probe"] = {**probe, "questions": 1, "max_new_tokens": 8}
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,gemma", help="comma-separated: tiny, gemma")
    p.add_argument("--n", type=int, default=16, help="questions per model")
    p.add_argument("--batch-size", type=int, default=8, help="hf: questions decoded at once")
    p.add_argument("--concurrency", type=int, default=2, help="openai: requests in flight")
    p.add_argument("--tiny-max-new-tokens", type=int, default=40)
    p.add_argument("--max-new-tokens", type=int, default=None, help="gemma; default: the evaluate stage's auto")
    p.add_argument("--run-dir", default="/work/demo2/runs/default", help="a finished run (read only)")
    p.add_argument("--student", default="gemma")
    p.add_argument("--outtype", default="f16")
    p.add_argument("--no-logprobs-probe", dest="logprobs_probe", action="store_false")
    p.add_argument("--work", default="/tmp/bench_eval_backend")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_backend.json"))
    args = p.parse_args()

    from qrdistill.io import atomic_write_json, git_sha

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result |= {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": THREADS,
               "git_sha": git_sha(), "command": "python benchmarks/bench_eval_backend.py " + " ".join(sys.argv[1:])}
    for name in args.models.split(","):
        fn = {"tiny": bench_tiny, "gemma": bench_gemma}[name.strip()]
        r = fn(args, work)
        r["load_average_after"] = list(os.getloadavg())
        # Per model: the models may be measured by separate commands at different commits.
        r["command"], r["git_sha"] = result["command"], result["git_sha"]
        result[name.strip()] = r
        print(json.dumps({k: v for k, v in r.items() if k != "differences"}, indent=1), flush=True)
        atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
