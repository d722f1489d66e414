"""What the RL stage trains on: the training questions, each student's prompt, and its reference path.

The questions are those the students were distilled on: the kept paths of D/filtered.jsonl, after the
same `train.data_fraction` subsample, grouped by question. A question's prompt is the one its training
items carry (`qrdistill.prompting.student_prompt`, with the rationale prefix for a Distill Step-by-Step
student), so RL asks what training taught and evaluation asks. Its `Record` (the gold answer the
correctness reward checks) comes from the task itself, loaded as `tasks` in the config describes.

The reference path (the structure reward aligns the student's steps to it) is, per `rl.rewards.reference`:
- `routed`: the kept path of the question that the router sent to this student most often in training
  (D/train/routing.jsonl, one row per path and epoch with the hard routing decision `alpha`); ties go to
  the higher final P(route) (routing_final.jsonl), then to file order. When the router sent this student
  none of the question's paths (a short training sees some paths in no epoch), the path with the highest
  final P(route) for the student, or, without that file, the `any` choice; the reference is then marked
  `fallback` and counted in the summary.
- `any`: one kept path of the question, drawn with a seed per question, the same for every student.

Pure: no torch, no model; `qrdistill.rl.grpo` turns these into TRL's dataset.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrdistill.errors import DataError
from qrdistill.tasks.base import Record
from qrdistill.train.data import RATIONALE_TAG, TrainItem

ROUTING_FILE = "routing.jsonl"
ROUTING_FINAL_FILE = "routing_final.jsonl"


@dataclass(frozen=True)
class RLQuestion:
    """A training question: its task record, the student prompt, and its kept paths (training items)."""

    qid: str
    task: str
    record: Record
    prompt: str
    paths: tuple[TrainItem, ...]


@dataclass(frozen=True)
class Reference:
    """The reference path of one question for one student, and how it was chosen (routed, any, fallback)."""

    path: TrainItem
    source: str


def question_items(items: Sequence[TrainItem], method: str) -> list[TrainItem]:
    """The training items that are reasoning paths: all of them, except a Distill Step-by-Step student's
    answer-only items (RL asks for the rationale, which ends in the answer)."""
    if method == "step_by_step":
        return [it for it in items if it.prompt.startswith(RATIONALE_TAG)]
    return list(items)


def build_questions(items: Sequence[TrainItem], records: dict[str, tuple[str, Record]], source: Path
                    ) -> list[RLQuestion]:  # fmt: skip
    """Group `items` by question, in file order. `records`: qid -> (task name, Record); a question
    missing there is a DataError naming `source` (its paths came from questions the config no longer lists)."""
    by_qid: dict[str, list[TrainItem]] = {}
    for it in items:
        by_qid.setdefault(it.qid, []).append(it)
    out = []
    for qid, paths in by_qid.items():
        if qid not in records:
            raise DataError(
                f"{source}: question {qid} has kept paths but is not among the questions the config's `tasks` "
                "load (was the config changed after `qrdistill generate`?); RL needs its gold answer")
        task, record = records[qid]
        out.append(RLQuestion(qid, task, record, paths[0].prompt, tuple(paths)))
    return out


def routed_counts(rows: Sequence[dict[str, Any]], where: str = ROUTING_FILE) -> dict[str, Counter[str]]:
    """student name -> path_key -> epochs in which the router sent the path to that student."""
    counts: dict[str, Counter[str]] = {}
    for i, row in enumerate(rows, start=1):
        try:
            students, alpha, key = row["students"], row["alpha"], str(row["path_key"])
            pairs = list(zip(students, alpha, strict=True))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}:{i}: a routing row needs path_key, and students and alpha of equal length"
                            ) from None  # fmt: skip
        for name, a in pairs:
            c = counts.setdefault(str(name), Counter())
            if a:
                c[key] += 1
    return counts


def final_probs(rows: Sequence[dict[str, Any]], where: str = ROUTING_FINAL_FILE) -> dict[str, dict[str, float]]:
    """student name -> path_key -> P(route) under the final router."""
    out: dict[str, dict[str, float]] = {}
    for i, row in enumerate(rows, start=1):
        try:
            pairs = list(zip(row["students"], row["probs"], strict=True))
            key = str(row["path_key"])
            for name, p in pairs:
                out.setdefault(str(name), {})[key] = float(p)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}:{i}: a row needs path_key, and students and probs of equal length"
                            ) from None  # fmt: skip
    return out


def any_reference(q: RLQuestion, seed: int) -> TrainItem:
    """The `any` choice: a seeded draw per question, independent of the student."""
    return random.Random(f"rl-reference:{seed}:{q.qid}").choice(q.paths)


def choose_reference(
    q: RLQuestion, student: str, mode: str, seed: int,
    routed: dict[str, Counter[str]] | None = None, probs: dict[str, dict[str, float]] | None = None,
) -> Reference:
    """The reference path of `q` for `student` under `mode` (`routed` or `any`); see the module."""
    if mode == "any":
        return Reference(any_reference(q, seed), "any")
    counts = (routed or {}).get(student, Counter())
    p = (probs or {}).get(student, {})
    order = {it.key: i for i, it in enumerate(q.paths)}

    def rank(it: TrainItem) -> tuple[float, float, int]:
        return (-counts[it.key], -p.get(it.key, 0.0), order[it.key])

    sent = [it for it in q.paths if counts[it.key] > 0]
    if sent:
        return Reference(min(sent, key=rank), "routed")
    if any(it.key in p for it in q.paths):
        return Reference(min(q.paths, key=rank), "fallback")
    return Reference(any_reference(q, seed), "fallback")


def training_questions(cfg: Any, run_dir: Path) -> list[RLQuestion]:
    """The questions the students were distilled on (see the module), with their records."""
    from qrdistill.io import require_artifact
    from qrdistill.tasks import get_task
    from qrdistill.tasks.base import load_records
    from qrdistill.train.data import build_items, load_kept, subsample_questions

    tc = cfg.train
    filtered = require_artifact(Path(run_dir) / "filtered.jsonl", "filter")
    rows = load_kept(filtered, need_gold=tc.method == "step_by_step")
    rows = subsample_questions(rows, tc.data_fraction, cfg.seed)
    items = question_items(build_items(rows, tc.method, tc.answer_aug_style), tc.method)
    needed = {it.task for it in items}
    records: dict[str, tuple[str, Record]] = {}
    for i, spec in enumerate(cfg.tasks):
        if spec.name not in needed:
            continue
        task = get_task(spec.name, f"tasks.{i}.name")
        for r in load_records(task, spec, spec.limit, f"tasks.{i}"):
            records[f"{task.name}/{r.id}"] = (task.name, r)
    return build_questions(items, records, filtered)


def read_routing(train_dir: Path) -> tuple[dict[str, Counter[str]], dict[str, dict[str, float]]]:
    """(routed counts, final P(route)) from a training folder; empty where its file is absent."""
    from qrdistill.io import read_jsonl

    routing, final = Path(train_dir) / ROUTING_FILE, Path(train_dir) / ROUTING_FINAL_FILE
    counts = routed_counts(read_jsonl(routing), str(routing)) if routing.exists() else {}
    probs = final_probs(read_jsonl(final), str(final)) if final.exists() else {}
    return counts, probs


__all__ = ["RLQuestion", "Reference", "build_questions", "choose_reference", "final_probs", "question_items",
           "read_routing", "routed_counts", "training_questions"]  # fmt: skip
