"""Train stage: D/filtered.jsonl -> D/train/ (adapters, router, mutual head, logs, checkpoints).

`qrdistill train` runs the method named in `train.method` through one loop
(qrdistill.train.loop); the baselines and ablations are configs of it. Run
again, it returns a finished training as is and continues an interrupted one
from its last checkpoint (same config and data); `--resume` continues from the
last checkpoint even if the config changed. Runs on
one CPU, one GPU, or many through `accelerate launch` / `torchrun -m qrdistill
train`; only rank 0 writes artifacts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILTERED_FILE = "filtered.jsonl"


def _fingerprint(cfg: Any, max_steps: int | None, filtered: Path) -> str:
    """Identifies a training: train config, seed, step cap and the exact data."""
    h = hashlib.sha256()
    h.update(json.dumps({"train": cfg.train.model_dump(mode="json"), "seed": cfg.seed, "max_steps": max_steps},
                        sort_keys=True).encode())
    with filtered.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:24]


def _finished(run_dir: Path, fingerprint: str, names: list[str]) -> dict[str, Any] | None:
    path = run_dir / "train" / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    adapters = run_dir / "train" / "adapters"
    if summary.get("fingerprint") != fingerprint or not all((adapters / n).is_dir() for n in names):
        return None
    return summary


def run(cfg: Any, run_dir: Path, max_steps: int | None = None, resume: bool = False) -> dict[str, Any]:
    from qrdistill.io import require_artifact, write_run_meta
    from qrdistill.train.data import RATIONALE_TAG, build_items, load_kept, subsample_questions

    run_dir = Path(run_dir)
    tc = cfg.train
    filtered = require_artifact(run_dir / FILTERED_FILE, "filter")
    rows = load_kept(filtered, need_gold=tc.method == "step_by_step")
    rows = subsample_questions(rows, tc.data_fraction, cfg.seed)
    items = build_items(rows, tc.method, tc.answer_aug_style)
    steps = max_steps if max_steps is not None else tc.max_steps
    fingerprint = _fingerprint(cfg, steps, filtered)

    done = None if resume else _finished(run_dir, fingerprint, tc.student_names)
    if done is not None:
        log.info("train: already trained with this config and data (%s); delete %s to retrain",
                 run_dir / "train" / "summary.json", run_dir / "train")
        return done

    extra: dict[str, Any] = {"data_fraction": tc.data_fraction}
    if tc.method == "step_by_step":
        # Students learned a rationale task and an answer task; the rationale prompt is the one
        # that yields a path ending in "The answer is ...", so evaluation must use it.
        extra["eval_prompt_prefix"] = RATIONALE_TAG
    from qrdistill.train.loop import Trainer

    # step_budget: matched -- every method trains as many steps as an epoch over all kept paths takes.
    trainer = Trainer(cfg, run_dir, items, steps, fingerprint, extra, reference_paths=len(rows))
    try:
        trainer.setup()
        if trainer.main:
            log.info("train: %s, %d students, %d items from %d questions, %d steps (%d per epoch, step budget %s) "
                     "on %d process(es); max_length %s", tc.method, len(tc.students), len(trainer.items),
                     len({it.qid for it in trainer.items}), trainer.total_steps, trainer._steps_per_epoch(),
                     tc.step_budget, trainer.world,
                     ", ".join(f"{n} {f.max_length}" for n, f in trainer.length_fits.items()))
        summary = trainer.run(resume)
        if trainer.main:
            write_run_meta(run_dir, "train", cfg, extra={"max_steps": steps, "resume": resume,
                                                         "world_size": trainer.world})
            _print_summary(summary, run_dir)
    finally:
        trainer.close()
    return summary


def _print_summary(s: dict[str, Any], run_dir: Path) -> None:
    rates = ", ".join(f"{k} {v:.2f}" for k, v in (s.get("routing_rate") or {}).items())
    print(f"train: {s['method']}, {len(s['students'])} student(s), {s['steps']} steps over {s['paths']} paths "
          f"in {s['total_time']:.0f}s" + (f"; routing rate {rates}" if s.get("router") else ""))
    lengths = s.get("sequence_lengths") or {}
    print("  max_length: " + ", ".join(f"{n} {f['max_length']} ({f['dropped']} dropped, 0 cut)" for n, f in lengths.items()))
    print(f"  adapters: {run_dir / 'train' / 'adapters'}")
