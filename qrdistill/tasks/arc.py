"""ARC-Challenge: grade-school science multiple choice (3-5 options)."""

from __future__ import annotations

from typing import Any, ClassVar

from qrdistill.tasks.base import TASKS, Record
from qrdistill.tasks.extract import MultipleChoiceTask
from qrdistill.tasks.loading import DatasetTask, Row, shuffle_options


def _options(row: Row) -> tuple[list[str], list[str]]:
    """(texts, labels) from the hub layout `choices: {text: [...], label: [...]}` or the
    original AI2 layout `question: {stem, choices: [{text, label}, ...]}`."""
    choices: Any = row.get("choices", "question.choices")
    if isinstance(choices, dict):
        texts, labels = list(choices.get("text") or []), list(choices.get("label") or [])
    elif isinstance(choices, list):
        texts = [c.get("text") if isinstance(c, dict) else None for c in choices]
        labels = [c.get("label") if isinstance(c, dict) else None for c in choices]
    else:
        raise row.error("field 'choices' must be {text: [...], label: [...]} or a list of {text, label}")
    if len(texts) < 2 or len(texts) != len(labels) or None in texts or None in labels:
        raise row.error("field 'choices' needs at least two options, each with a text and a label")
    return [str(t) for t in texts], [str(lab) for lab in labels]


@TASKS.register("arc_challenge")
class ARCChallenge(DatasetTask, MultipleChoiceTask):
    name: ClassVar[str] = "arc_challenge"
    hub_id: ClassVar[str] = "allenai/ai2_arc"
    hub_configs: ClassVar[tuple[str | None, ...]] = ("ARC-Challenge",)
    native_splits: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("train",),
        "validation": ("validation",),
        "test": ("test",),
    }

    def records_from_rows(self, rows: list[Row], split: str) -> list[Record]:
        return [self._record(row, split, i) for i, row in enumerate(rows)]

    def _record(self, row: Row, split: str, index: int) -> Record:
        stem = row.get("question.stem", "question")
        if not isinstance(stem, str):
            raise row.error("field 'question' must be a string or {stem, choices}")
        texts, labels = _options(row)
        key = str(row.get("answerKey", "answer")).strip()
        if key not in labels:
            raise row.error(f"answerKey {key!r} is not one of the option labels {labels}")
        qid = f"arc-{row.get('id', default=f'{split}-{index:05d}')}"
        gold = labels.index(key)
        choices, letter = shuffle_options(qid, texts, gold)
        return Record(
            id=qid, question=stem.strip(), answer=letter, choices=choices, meta={"answer_text": texts[gold]}
        )
