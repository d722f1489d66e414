"""GSM8K: grade-school math word problems with a numeric answer."""

from __future__ import annotations

import re
from typing import ClassVar

from qrdistill.tasks.base import TASKS, Record
from qrdistill.tasks.extract import NumberTask, normalize_number
from qrdistill.tasks.loading import DatasetTask, Row

_STEP = re.compile(r"<<[^>]*>>")


@TASKS.register("gsm8k")
class GSM8K(DatasetTask, NumberTask):
    """openai/gsm8k ("main"). The gold answer is the number after `####` in the human
    solution, which is kept in meta["solution"]; meta["difficulty"] is the number of
    calculator steps (`<<...>>`) in it (0 for the few solutions written without them)."""

    name: ClassVar[str] = "gsm8k"
    hub_id: ClassVar[str] = "openai/gsm8k"
    hub_configs: ClassVar[tuple[str | None, ...]] = ("main",)
    native_splits: ClassVar[dict[str, tuple[str, ...]]] = {"train": ("train",), "test": ("test",)}

    def records_from_rows(self, rows: list[Row], split: str) -> list[Record]:
        return [self._record(row, split, i) for i, row in enumerate(rows)]

    def _record(self, row: Row, split: str, index: int) -> Record:
        question = row.get("question")
        solution = row.get("answer")
        if not isinstance(solution, str) or "####" not in solution:
            raise row.error("field 'answer' must be a solution ending in '#### <number>'")
        final = solution.rsplit("####", 1)[1].strip()
        number = normalize_number(final)
        if number is None:
            raise row.error(f"the answer after '####' is not a number: {final!r}")
        rid = row.data.get("id") or f"gsm8k-{split}-{index:05d}"
        return Record(
            id=str(rid),
            question=str(question).strip(),
            answer=number,
            meta={"solution": solution, "difficulty": len(_STEP.findall(solution))},
        )
