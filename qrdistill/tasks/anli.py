"""ANLI: adversarial natural-language inference, asked as 3-way multiple choice."""

from __future__ import annotations

from typing import ClassVar

from qrdistill.tasks.base import TASKS, Record
from qrdistill.tasks.extract import MultipleChoiceTask
from qrdistill.tasks.loading import DatasetTask, Row, content_id, shuffle_options

LABELS = ("entailment", "neutral", "contradiction")
# facebook/anli uses 0/1/2; the original jsonl files use "e"/"n"/"c".
_LABEL_CODES = {0: 0, 1: 1, 2: 2, "e": 0, "n": 1, "c": 2, **{name: i for i, name in enumerate(LABELS)}}
_ROUNDS = ("r1", "r2", "r3")


@TASKS.register("anli")
class ANLI(DatasetTask, MultipleChoiceTask):
    """facebook/anli, rounds 1-3 pooled per split; the round is kept in meta["round"]."""

    name: ClassVar[str] = "anli"
    hub_id: ClassVar[str] = "facebook/anli"
    native_splits: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": tuple(f"train_{r}" for r in _ROUNDS),
        "validation": tuple(f"dev_{r}" for r in _ROUNDS),
        "test": tuple(f"test_{r}" for r in _ROUNDS),
    }

    def records_from_rows(self, rows: list[Row], split: str) -> list[Record]:
        seen: dict[str, int] = {}
        return [self._record(row, seen) for row in rows]

    def _record(self, row: Row, seen: dict[str, int]) -> Record:
        premise = str(row.get("premise", "context")).strip()
        hypothesis = str(row.get("hypothesis")).strip()
        raw = row.get("label")
        gold = _LABEL_CODES.get(raw.strip().lower() if isinstance(raw, str) else raw)
        if gold is None:
            raise row.error(f"field 'label' must be one of 0/1/2, e/n/c or {'/'.join(LABELS)}, got {raw!r}")
        uid = row.get("uid", default=None)
        qid = f"anli-{uid}" if uid else content_id("anli", premise + "\0" + hypothesis, seen)
        question = (
            f"Premise: {premise}\nHypothesis: {hypothesis}\n"
            "Does the premise entail the hypothesis, contradict it, or neither (neutral)?"
        )
        choices, letter = shuffle_options(qid, list(LABELS), gold)
        meta = {"answer_text": LABELS[gold], "premise": premise, "hypothesis": hypothesis}
        where = row.where.lower()
        rnd = next((r for r in _ROUNDS if f"_{r}" in where), None)
        if rnd:
            meta["round"] = rnd
        if row.data.get("reason"):
            meta["reason"] = row.data["reason"]
        return Record(id=qid, question=question, answer=letter, choices=choices, meta=meta)
