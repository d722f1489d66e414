"""Train stage: D/filtered.jsonl -> D/train/ (adapters, router, mutual head, logs, checkpoints).

`qrdistill train` runs the method named in `train.method` through one loop
(qrdistill.train.loop); the baselines and ablations are configs of it. Run
again, it returns a finished training as is and continues an interrupted one
from its last good checkpoint (same config and data; a damaged checkpoint is
reported and the one before it used); `--resume` continues from the last
checkpoint even if the config changed.

A finished training is never destroyed before its replacement exists. When
D/train/ holds a finished training (its summary.json) and the config or data
changed, the new training runs in D/train.new/, which resumes like D/train/
when interrupted; D/train/ stays intact and usable (evaluate reads it) until
the new one has finished. Then two renames swap them, and the old training,
moved to D/train.old/, is deleted file by file: only what the train stage
writes; anything else (a user's notes) is moved into the new D/train/. A swap
cut short by a kill is completed by the next train or evaluate.

Runs on one CPU, one GPU, or many through `accelerate launch` / `torchrun -m
qrdistill train`; only rank 0 takes the run-dir lock and writes artifacts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILTERED_FILE = "filtered.jsonl"
TRAIN_DIR = "train"
STAGING_DIR = "train.new"
OLD_DIR = "train.old"


def _fingerprint(cfg: Any, max_steps: int | None, filtered: Path) -> str:
    """Identifies a training: train config, seed, step cap and the exact data."""
    h = hashlib.sha256()
    h.update(json.dumps({"train": cfg.train.model_dump(mode="json"), "seed": cfg.seed, "max_steps": max_steps},
                        sort_keys=True).encode())
    with filtered.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:24]


def _rank() -> int:
    # The launchers' global rank, known before accelerate starts; the Trainer's `main` is the same process.
    return int(os.environ.get("RANK", "0"))


@dataclass
class _Plan:
    work: Path  # where this training writes: D/train/ or D/train.new/
    resume_from: list[Path] = field(default_factory=list)  # checkpoint folders, searched in order
    done: dict[str, Any] | None = None  # a finished training of this config and data: nothing to do
    staged: bool = False  # `work` is D/train.new/: it replaces D/train/ when finished
    note: str | None = None  # why D/train/ is not kept as it is


def _plan(run_dir: Path, fingerprint: str, resume: bool) -> _Plan:
    """Where to train. Reads only, so every rank of a distributed run arrives at the same plan."""
    from qrdistill.train.artifacts import SUMMARY_FILE, check_training

    train, new = run_dir / TRAIN_DIR, run_dir / STAGING_DIR
    current, why = check_training(train)
    staged = check_training(new)[0] if new.is_dir() else None
    if not train.exists() and staged is not None:
        # A swap stopped between its renames (rank 0 has completed it by now: the same state, renamed).
        current, why, staged = staged, None, None
        finished = True
    else:
        finished = (train / SUMMARY_FILE).exists()
    if not resume:
        if staged is not None and staged["fingerprint"] == fingerprint:
            return _Plan(new, done=staged, staged=True)
        if current is not None and current["fingerprint"] == fingerprint:
            return _Plan(train, done=current)
    if not finished:
        return _Plan(train, [train / "checkpoints"])
    roots = [new / "checkpoints"]
    if resume or (current is None and _summary_fingerprint(train) == fingerprint):
        # --resume, or this very training, its adapters damaged since: continue from its checkpoints.
        roots.append(train / "checkpoints")
    return _Plan(new, roots, staged=True, note=why if current is None else None)


def _summary_fingerprint(train: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((train / "summary.json").read_text(encoding="utf-8")).get("fingerprint")
    return None


def _free(run_dir: Path, name: str) -> Path:
    path, n = run_dir / name, 1
    while path.exists():
        n += 1
        path = run_dir / f"{name}-{n}"
    return path


def swap_in_staged(run_dir: Path) -> None:
    """Make the finished D/train.new/ D/train/: two renames, then delete the replaced training."""
    from qrdistill.train.artifacts import discard_training

    train, new = run_dir / TRAIN_DIR, run_dir / STAGING_DIR
    old = None
    if train.exists():
        old = _free(run_dir, OLD_DIR)
        os.replace(train, old)
    os.replace(new, train)
    log.info("train: %s replaced the previous training in %s", new, train)
    if old is not None:
        discard_training(old, into=train)


def recover(run_dir: Path) -> None:
    """Complete a swap a kill cut short (caller holds the run-dir lock)."""
    from qrdistill.train.artifacts import check_training, discard_training

    train, new = run_dir / TRAIN_DIR, run_dir / STAGING_DIR
    if not train.exists() and new.is_dir():
        if check_training(new)[0] is not None:
            swap_in_staged(run_dir)
        else:
            # The training it was to replace is gone: the staged one becomes the training in progress, so its
            # checkpoints are resumed rather than left behind while a new one starts from step 0.
            os.replace(new, train)
            log.info("train: %s is gone; continuing the unfinished training of %s there", train, new)
    for old in sorted(run_dir.glob(OLD_DIR + "*")):
        if train.is_dir() and old.is_dir() and (old.name == OLD_DIR or old.name[len(OLD_DIR) + 1:].isdigit()):
            discard_training(old, into=train)


def run(cfg: Any, run_dir: Path, max_steps: int | None = None, resume: bool = False) -> dict[str, Any]:
    from qrdistill.stages.generate import run_dir_lock
    from qrdistill.train.artifacts import permission_errors

    run_dir = Path(run_dir)
    # Every rank of torchrun / accelerate runs this; rank 0 writes every artifact, and a second rank taking the
    # same lock would be refused.
    lock = run_dir_lock(run_dir, "train") if _rank() == 0 else contextlib.nullcontext()
    with permission_errors(run_dir, "train"), lock:
        return _run(cfg, run_dir, max_steps, resume)


def _run(cfg: Any, run_dir: Path, max_steps: int | None, resume: bool) -> dict[str, Any]:
    from qrdistill.io import require_artifact, write_run_meta
    from qrdistill.train.data import RATIONALE_TAG, build_items, load_kept, subsample_questions

    tc = cfg.train
    filtered = require_artifact(run_dir / FILTERED_FILE, "filter")
    rows = load_kept(filtered, need_gold=tc.method == "step_by_step")
    rows = subsample_questions(rows, tc.data_fraction, cfg.seed)
    items = build_items(rows, tc.method, tc.answer_aug_style)
    steps = max_steps if max_steps is not None else tc.max_steps
    fingerprint = _fingerprint(cfg, steps, filtered)

    main = _rank() == 0
    if main:
        recover(run_dir)
    plan = _plan(run_dir, fingerprint, resume)
    if plan.done is not None:
        if plan.staged and main:
            swap_in_staged(run_dir)
        log.info("train: already trained with this config and data (%s)", run_dir / TRAIN_DIR / "summary.json")
        return plan.done
    if plan.staged and main and plan.note:
        log.warning("train: %s; training again in %s, which replaces it when finished", plan.note, plan.work)
    elif plan.staged and main:
        log.info("train: %s holds a finished training of another config or data; it stays as it is while this "
                 "one trains in %s", run_dir / TRAIN_DIR, plan.work)

    extra: dict[str, Any] = {"data_fraction": tc.data_fraction}
    if tc.method == "step_by_step":
        # Students learned a rationale task and an answer task; the rationale prompt is the one
        # that yields a path ending in "The answer is ...", so evaluation must use it.
        extra["eval_prompt_prefix"] = RATIONALE_TAG
    from qrdistill.train.loop import Trainer

    # step_budget: matched -- every method trains as many steps as an epoch over all kept paths takes.
    trainer = Trainer(cfg, run_dir, items, steps, fingerprint, extra, reference_paths=len(rows),
                      train_dir=plan.work, resume_from=plan.resume_from)
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
    finally:
        trainer.close()
    if trainer.main:
        if plan.staged:
            swap_in_staged(run_dir)
        _print_summary(summary, run_dir)
    return summary


def _print_summary(s: dict[str, Any], run_dir: Path) -> None:
    rates = ", ".join(f"{k} {v:.2f}" for k, v in (s.get("routing_rate") or {}).items())
    print(f"train: {s['method']}, {len(s['students'])} student(s), {s['steps']} steps over {s['paths']} paths "
          f"in {s['total_time']:.0f}s" + (f"; routing rate {rates}" if s.get("router") else ""))
    lengths = s.get("sequence_lengths") or {}
    print("  max_length: " + ", ".join(f"{n} {f['max_length']} ({f['dropped']} dropped, 0 cut)" for n, f in lengths.items()))
    print(f"  adapters: {run_dir / 'train' / 'adapters'}")
