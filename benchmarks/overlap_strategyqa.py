"""How many StrategyQA dev questions BIG-bench's strategyqa also holds, per decontamination method.

BIG-bench's strategyqa task (2,290 questions) and StrategyQA's dev file (229) come from the same
question pool, so a StrategyQA table that trains on BIG-bench questions and tests on dev questions
must drop the shared ones. This script loads both files as the `strategyqa` task does and prints,
with the filter's own matcher (qrdistill/decontam.py, default settings unless overridden):

- all vs all: the BIG-bench questions matching a dev question, per method (exact, ngram, fuzzy),
  how many of them are the same text character for character, and how many dev questions are matched;
- as a config would run it: BIG-bench's `train` split against dev's `test` split (both hash splits
  of the normalised question, so an identical question lands in the same split of both files and
  only reworded copies can cross), and every BIG-bench question against dev's `test` split (a pool
  imported from the whole BIG-bench file, which the hash split does not protect);
- clean pools for the false-positive rate: BIG-bench train vs BIG-bench test, and dev train vs dev test;
- and a sample of each method's matches, to read.

    python benchmarks/overlap_strategyqa.py [--data ../shared/data] [--examples 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def overlap(train: list, test: list, label: str, **kw) -> dict:
    """Per method, how many `train` records a `test` record contaminates, and how many `test` records are hit."""
    from qrdistill.decontam import ContaminationIndex, EvalQuestion

    t0 = time.perf_counter()
    index = ContaminationIndex([EvalQuestion(label, r.id, r.question) for r in test], **kw)
    by_method: Counter[str] = Counter()
    hit: set[str] = set()
    examples: dict[str, list] = {}
    text = {r.id: r.question for r in test}
    for r in train:
        m = index.find_contamination(r.question)
        if m is None:
            continue
        by_method[m.method] += 1
        hit.add(m.qid)
        examples.setdefault(m.method, []).append(
            {"train": r.question, "test": text[m.qid], "score": round(m.score, 4)})
    seconds = time.perf_counter() - t0
    raw = {r.question for r in test}
    return {"train": len(train), "test": len(test), "flagged": sum(by_method.values()),
            "identical_text": sum(r.question in raw for r in train),
            "by_method": {k: by_method.get(k, 0) for k in index.methods}, "test_questions_hit": len(hit),
            "seconds": round(seconds, 3), "examples": examples}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder of ../shared/data")
    p.add_argument("--ngram", type=int, default=None)
    p.add_argument("--ngram-coverage", type=float, default=None)
    p.add_argument("--fuzzy-threshold", type=float, default=None)
    p.add_argument("--examples", type=int, default=3, help="matches shown per method")
    p.add_argument("--json", default=None, help="also write the numbers (and every match) to this file")
    args = p.parse_args()

    from qrdistill.tasks import get_task

    kw = {k: v for k, v in (("ngram", args.ngram), ("ngram_coverage", args.ngram_coverage),
                            ("fuzzy_threshold", args.fuzzy_threshold)) if v is not None}
    task = get_task("strategyqa")
    bb_path = str(Path(args.data) / "bigbench_strategyqa" / "task.json")
    dev_path = str(Path(args.data) / "strategyqa" / "dev.json")
    bb = {s: task.load(s, bb_path) for s in ("train", "test")}
    dev = {s: task.load(s, dev_path) for s in ("train", "test")}
    cases = {
        "bigbench (all) vs dev (all)": (bb["train"] + bb["test"], dev["train"] + dev["test"]),
        "bigbench train vs dev test (a config's view)": (bb["train"], dev["test"]),
        "bigbench (all) vs dev test (a pool built from every BIG-bench question)": (bb["train"] + bb["test"],
                                                                                   dev["test"]),
        "bigbench test vs dev train": (bb["test"], dev["train"]),
        "bigbench train vs bigbench test (clean)": (bb["train"], bb["test"]),
        "dev train vs dev test (clean)": (dev["train"], dev["test"]),
    }
    results = {}
    settings = kw or "defaults"
    print(f"decontamination settings: {settings}")
    for name, (train, test) in cases.items():
        r = overlap(train, test, "strategyqa", **kw)
        results[name] = r
        methods = ", ".join(f"{m} {n}" for m, n in r["by_method"].items())
        print(f"{name}: {r['train']} training vs {r['test']} test questions -> {r['flagged']} flagged "
              f"({r['flagged'] / r['train']:.1%}; {methods}; {r['identical_text']} character for character); "
              f"{r['test_questions_hit']} test questions hit; "
              f"{r['seconds']:.2f} s")
        for method, rows in r["examples"].items():
            for ex in rows[: args.examples]:
                if method != "exact" or ex["train"] != ex["test"]:
                    print(f"    {method} {ex['score']}: {ex['train']!r}\n{'':>10}~ {ex['test']!r}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": kw, "results": results}, indent=2) + "\n",
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
