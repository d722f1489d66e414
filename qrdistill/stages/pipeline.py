"""`qrdistill run`: the stages in order, once, or once per training seed.

With `seeds` (config) or `--seeds`, the teacher's paths are generated and
filtered once in the run directory D (they do not depend on the training
seed), and each seed gets a complete run directory D/seed-<s>/ holding a copy
of the filtered paths, its own training and its own evaluation; analyze then
reads them as seeds of one run (mean and spread over seeds, paired tests
pooled over seeds). Base models decode greedily, so their zero-shot predictions
are the same for every seed: each later seed starts from the first seed's
saved base predictions, which evaluate reuses only where their keys still match.

Each stage takes the run-dir lock (`generate.run_dir_lock`) for itself and
releases it when it returns, so the stages lock one after another; the lock is
not held across stages, as a second lock of the same file in one process is
refused, not re-entered.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEED_DIR = "seed-{}"
#: Artifacts of the shared data stages each seed directory needs.
SHARED_FILES = ("filtered.jsonl", "filter_report.json")


def seed_dirs(run_dir: Path, seeds: list[int]) -> list[Path]:
    return [run_dir / SEED_DIR.format(s) for s in seeds]


def run(cfg: Any, run_dir: Path, seeds: list[int] | None = None, limit: int | None = None,
        max_steps: int | None = None, resume: bool = False) -> dict[str, Any]:
    from qrdistill.stages import analyze, evaluate, filter, generate, train
    from qrdistill.stages.generate import run_dir_lock

    data_opts = {} if limit is None else {"limit": limit}
    train_opts: dict[str, Any] = {"resume": resume} if resume else {}
    if max_steps is not None:
        train_opts["max_steps"] = max_steps
    results: dict[str, Any] = {}
    if "generate" in cfg.stages:
        results["generate"] = generate.run(cfg, run_dir, **data_opts)
    if "filter" in cfg.stages:
        results["filter"] = filter.run(cfg, run_dir, **data_opts)
    seeds = list(seeds if seeds is not None else (cfg.seeds or []))
    if not seeds:
        if "train" in cfg.stages:
            results["train"] = train.run(cfg, run_dir, **train_opts)
        if "evaluate" in cfg.stages:
            results["evaluate"] = evaluate.run(cfg, run_dir, **data_opts)
        if "analyze" in cfg.stages:
            results["analyze"] = analyze.run([run_dir])
        return results
    dirs = seed_dirs(run_dir, seeds)
    per_seed = []
    for seed, sub in zip(seeds, dirs, strict=True):
        log.info("seed %d of %s: %s", seed, ", ".join(map(str, seeds)), sub)
        scfg = cfg.model_copy(update={"seed": seed, "run_dir": str(sub), "seeds": None})
        with run_dir_lock(sub, "run"):
            share_data(run_dir, sub)
        out: dict[str, Any] = {}
        if "train" in cfg.stages:
            out["train"] = train.run(scfg, sub, **train_opts)
        if "evaluate" in cfg.stages:
            if sub != dirs[0]:
                with run_dir_lock(sub, "run"):
                    seed_base_predictions(dirs[0], sub)
            out["evaluate"] = evaluate.run(scfg, sub, **data_opts)
        per_seed.append(out)
    results["seeds"] = dict(zip(seeds, per_seed, strict=True))
    if "analyze" in cfg.stages:
        results["analyze"] = analyze.run([run_dir], out=run_dir / "report")
    return results


def share_data(root: Path, sub: Path) -> None:
    """Copy the shared filter output into a seed's run directory when it changed (data, not code)."""
    for name in SHARED_FILES:
        src, dst = root / name, sub / name
        if src.exists() and (not dst.exists() or dst.read_bytes() != src.read_bytes()):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)


def seed_base_predictions(first: Path, sub: Path) -> None:
    """Start a seed's base-model predictions from the first seed's (evaluate re-checks every row's key)."""
    from qrdistill.stages.evaluate import BASE_PREFIX, student_dirname

    prefix = student_dirname(BASE_PREFIX) + "_"
    src_root = first / "eval"
    if not src_root.is_dir():
        return
    for folder in src_root.iterdir():
        if folder.is_dir() and folder.name.startswith(prefix):
            dst = sub / "eval" / folder.name
            for f in folder.glob("*.jsonl"):
                if not (dst / f.name).exists():
                    dst.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, dst / f.name)
