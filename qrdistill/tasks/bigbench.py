"""BIG-bench tasks of the paper: Date (date_understanding) and StrategyQA.

Neither source has a train/test split (the files are BIG-bench's single JSON
task file, or StrategyQA's dev set), so `DatasetTask` divides them by a
seeded hash of each question. Hub source: tasksource/bigbench, whose own
train/validation splits are pooled first so the division is the same
whether the rows come from the hub or from a local task.json.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from qrdistill.tasks.base import TASKS, Record
from qrdistill.tasks.extract import MultipleChoiceTask, YesNoTask, normalize_text
from qrdistill.tasks.loading import DatasetTask, Row, content_id, shuffle_options

# tasksource/bigbench wraps inputs as "Q: ...\nA:"; the task.json files do not.
_QA_WRAP = re.compile(r"^\s*Q:\s*|\s*\n?A:\s*$")


def _input(row: Row) -> str:
    text = row.get("input", "inputs")
    if not isinstance(text, str) or not text.strip():
        raise row.error("field 'input' must be a non-empty string")
    return _QA_WRAP.sub("", text).strip()


def _scored_options(row: Row) -> tuple[list[str], int]:
    """Options and the index of the single best one, from `target_scores` (task.json)
    or `multiple_choice_targets` + `multiple_choice_scores` (hub)."""
    scores: Any = row.get("target_scores", default=None)
    if scores is not None:
        if not isinstance(scores, dict) or not scores:
            raise row.error("field 'target_scores' must be a non-empty object of option -> score")
        field = "target_scores"
        options, values = [str(k) for k in scores], list(scores.values())
    else:
        field = "multiple_choice_scores"
        targets, values = row.get("target_scores", "multiple_choice_targets"), row.get(field)
        if not isinstance(targets, list) or not isinstance(values, list):
            raise row.error("fields 'multiple_choice_targets' and 'multiple_choice_scores' must be lists")
        options = [str(x) for x in targets]
        if len(values) != len(options):
            raise row.error("multiple_choice_targets and multiple_choice_scores differ in length")
    for option, value in zip(options, values, strict=True):
        # bool is an int in Python, and "1" compares with 0 only by raising.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise row.error(f"field '{field}': the score of option {option!r} is {value!r}, not a number")
    best = max(values)
    if not best or values.count(best) != 1:
        raise row.error("the options must have exactly one highest score")
    return options, values.index(best)


class _BigBenchTask(DatasetTask):
    hub_id: ClassVar[str] = "tasksource/bigbench"
    hub_all_splits: ClassVar[tuple[str, ...]] = ("train", "validation")


@TASKS.register("date")
class DateUnderstanding(_BigBenchTask, MultipleChoiceTask):
    """BIG-bench date_understanding (the paper's "Date"), 369 questions, 5-6 dated options."""

    name: ClassVar[str] = "date"
    hub_configs: ClassVar[tuple[str | None, ...]] = ("date_understanding",)

    def records_from_rows(self, rows: list[Row], split: str) -> list[Record]:
        seen: dict[str, int] = {}
        out = []
        for row in rows:
            question = _input(row)
            options, gold = _scored_options(row)
            qid = content_id("date", question + "\0" + "\0".join(sorted(options)), seen)
            choices, letter = shuffle_options(qid, options, gold)
            out.append(
                Record(
                    id=qid,
                    question=question,
                    answer=letter,
                    choices=choices,
                    meta={"answer_text": options[gold]},
                )
            )
        return out

    def split_key(self, record: Record) -> str:
        return normalize_text(record.question) + "\0" + "\0".join(sorted(record.choices))


@TASKS.register("strategyqa")
class StrategyQA(_BigBenchTask, YesNoTask):
    """StrategyQA: implicit multi-step yes/no questions.

    Reads BIG-bench's strategyqa task.json (`input`, `target_scores`, `target` =
    answer + short human explanation, kept as meta["explanation"]) and the
    original StrategyQA files (`qid`, `question`, boolean `answer`, `facts`,
    `decomposition`, kept in meta).
    """

    name: ClassVar[str] = "strategyqa"
    hub_configs: ClassVar[tuple[str | None, ...]] = ("strategyqa",)

    def records_from_rows(self, rows: list[Row], split: str) -> list[Record]:
        seen: dict[str, int] = {}
        return [self._record(row, seen) for row in rows]

    def _record(self, row: Row, seen: dict[str, int]) -> Record:
        if "question" in row.data or "qid" in row.data:
            question = row.get("question")
            answer = row.get("answer")
            if not isinstance(answer, bool):
                raise row.error(f"field 'answer' must be true or false, got {answer!r}")
            meta: dict[str, Any] = {"answer_text": "Yes" if answer else "No"}
            for key in ("facts", "decomposition", "term", "description"):
                if row.data.get(key):
                    meta[key] = row.data[key]
            qid = row.data.get("qid")
            rid = f"strategyqa-{qid}" if qid else content_id("strategyqa", normalize_text(question), seen)
            return Record(id=rid, question=str(question).strip(), answer=meta["answer_text"], meta=meta)
        question = _input(row)
        options, gold = _scored_options(row)
        answer = options[gold].strip()
        if answer not in ("Yes", "No"):
            raise row.error(f"expected the best option to be 'Yes' or 'No', got {answer!r}")
        meta = {"answer_text": answer}
        target = row.get("target", "targets", default=None)
        if isinstance(target, list):
            target = target[0] if target else None
        if isinstance(target, str):
            # "Yes. College commencement ceremonies often happen ..." -> the explanation.
            explanation = re.sub(r"^\s*(yes|no)\b[.,:]?\s*", "", target, flags=re.IGNORECASE).strip()
            if explanation:
                meta["explanation"] = explanation
        return Record(
            id=content_id("strategyqa", normalize_text(question), seen),
            question=question,
            answer=answer,
            meta=meta,
        )

    def split_key(self, record: Record) -> str:
        return normalize_text(record.question)
