"""Batched vs per-example greedy evaluation of Gemma-3-270M on the same real Date questions.

Writes benchmarks/results/eval.json: tokens/s of each, their ratio (target >= 3x
on the 2-core CPU) and whether both give the same outputs and predictions
(fp32 greedy decoding with left padding should not change an answer; any
difference is listed with both outputs).

    python benchmarks/bench_eval.py [--n 32] [--batch-size 8] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="questions")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bigbench_date" / "task.json"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval.json"))
    args = p.parse_args()

    import torch

    from qrdistill.evaluation.generation import generate_greedy, load_causal_lm, load_tokenizer
    from qrdistill.io import atomic_write_json, git_sha
    from qrdistill.models import resolve_model
    from qrdistill.prompting import student_prompt
    from qrdistill.tasks import get_task

    task = get_task("date")
    records = task.load("test", args.data, args.n)
    prompts = [student_prompt(task, task.prompt(r)) for r in records]
    path = resolve_model("gemma3-270m")
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, "cpu", torch.float32)

    # The CPU is shared: run the two modes chunk by chunk, alternating which goes first, so that
    # both see the same load; wall and process CPU time are both recorded.
    runs = {k: {"batch_size": bs, "seconds": 0.0, "cpu_seconds": 0.0, "tokens": 0, "gens": []}
            for k, bs in (("batched", args.batch_size), ("per_example", 1))}
    for c, start in enumerate(range(0, len(prompts), args.batch_size)):
        chunk = prompts[start : start + args.batch_size]
        order = ["batched", "per_example"] if c % 2 == 0 else ["per_example", "batched"]
        for label in order:
            r = runs[label]
            t0, c0 = time.perf_counter(), time.process_time()
            gens = generate_greedy(model, tokenizer, chunk, r["batch_size"], args.max_new_tokens, True,
                                   progress=False)
            r["seconds"] += time.perf_counter() - t0
            r["cpu_seconds"] += time.process_time() - c0
            r["tokens"] += sum(g.n_tokens for g in gens)
            r["gens"] += gens
        print(f"questions {start + len(chunk)}/{len(prompts)}: "
              + ", ".join(f"{k} {v['tokens'] / v['seconds']:.1f} tok/s" for k, v in runs.items()), flush=True)
    for r in runs.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["tokens_per_cpu_s"] = r["tokens"] / r["cpu_seconds"]

    b, s = runs["batched"]["gens"], runs["per_example"]["gens"]
    preds_b = [task.extract_answer(g.output, r) for g, r in zip(b, records, strict=True)]
    preds_s = [task.extract_answer(g.output, r) for g, r in zip(s, records, strict=True)]
    diffs = [{"qid": r.id, "batched": gb.output, "per_example": gs.output, "pred_batched": pb, "pred_per_example": ps}
             for r, gb, gs, pb, ps in zip(records, b, s, preds_b, preds_s, strict=True) if gb.output != gs.output]
    acc = {k: sum(task.is_correct(g.output, r) for g, r in zip(runs[k]["gens"], records, strict=True)) / len(records)
           for k in runs}
    result = {
        "model": "gemma3-270m (fp32, CPU)",
        "questions": len(records),
        "data": "BIG-bench date_understanding, test split",
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "git_sha": git_sha(),
        **{k: {kk: vv for kk, vv in v.items() if kk != "gens"} for k, v in runs.items()},
        "speedup_tokens_per_s": runs["batched"]["tokens_per_s"] / runs["per_example"]["tokens_per_s"],
        "speedup_wall": runs["per_example"]["seconds"] / runs["batched"]["seconds"],
        "speedup_tokens_per_cpu_s": runs["batched"]["tokens_per_cpu_s"] / runs["per_example"]["tokens_per_cpu_s"],
        "load_average_after": os.getloadavg(),
        "same_outputs": len(records) - len(diffs),
        "same_predictions": sum(pb == ps for pb, ps in zip(preds_b, preds_s, strict=True)),
        "accuracy": acc,
        "differences": diffs,
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "differences"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
