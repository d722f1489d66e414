"""MATH (Hendrycks et al.): competition mathematics, answers checked with math-verify."""

from __future__ import annotations

import re
from typing import ClassVar

from qrdistill.tasks.base import TASKS, Record
from qrdistill.tasks.extract import MathTask, last_boxed
from qrdistill.tasks.loading import DatasetTask, Row, content_id

SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def _level(row: Row) -> int | None:
    """ "Level 3" / 3 -> 3; the few "Level ?" problems -> None."""
    raw = row.get("level", default=None)
    if isinstance(raw, int):
        return raw
    m = re.search(r"\d+", str(raw)) if raw is not None else None
    return int(m.group()) if m else None


@TASKS.register("math")
class MATH(DatasetTask, MathTask):
    """EleutherAI/hendrycks_math (all seven subjects pooled). The gold answer is the
    last \\boxed{} of the solution (or an `answer` field, as in MATH-500);
    meta["difficulty"] is the level 1-5 and meta["subject"] the subject."""

    name: ClassVar[str] = "math"
    hub_id: ClassVar[str] = "EleutherAI/hendrycks_math"
    hub_configs: ClassVar[tuple[str | None, ...]] = SUBJECTS
    native_splits: ClassVar[dict[str, tuple[str, ...]]] = {"train": ("train",), "test": ("test",)}

    def records_from_rows(self, rows: list[Row], split: str) -> list[Record]:
        seen: dict[str, int] = {}
        return [self._record(row, seen) for row in rows]

    def _record(self, row: Row, seen: dict[str, int]) -> Record:
        problem = str(row.get("problem", "question")).strip()
        solution = row.get("solution", default=None)
        answer = row.get("answer", default=None)
        if answer is None:
            if not isinstance(solution, str):
                raise row.error("missing field 'solution' (or 'answer')")
            answer = last_boxed(solution)
            if answer is None:
                raise row.error("field 'solution' has no \\boxed{...} final answer")
        meta: dict = {"difficulty": _level(row)}
        subject = row.get("type", "subject", default=None)
        if subject:
            meta["subject"] = subject
        if isinstance(solution, str):
            meta["solution"] = solution
        uid = row.get("unique_id", default=None)
        qid = f"math-{uid}" if uid else content_id("math", problem, seen)
        return Record(id=qid, question=problem, answer=str(answer).strip(), meta=meta)
