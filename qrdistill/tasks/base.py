"""The task interface: data loading, prompt, answer extraction and check.

A task owns everything that depends on its answer format, so generate,
filter, train and evaluate all call the same `is_correct` (or `score`, which
also says how the answer was read).

A check has a third outcome besides right and wrong: `Verdict.UNVERIFIABLE`,
when it could not decide within its time or size bounds (a symbolic answer
whose comparison would not finish, a response too long to read). Such an
answer is never counted correct: the filter does not keep its path and
evaluate scores it as incorrect.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from qrdistill.registry import Registry


@dataclass
class Record:
    """A canonical question. `choices` is empty for free-answer tasks; for
    multiple choice `answer` is the gold letter ("C") and `meta["answer_text"]`
    the gold option's text. `meta["difficulty"]` (int) is set when known."""

    id: str
    question: str
    answer: str
    choices: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            id=str(d["id"]),
            question=d["question"],
            answer=str(d["answer"]),
            choices=list(d.get("choices") or []),
            meta=dict(d.get("meta") or {}),
        )


class Verdict(enum.Enum):
    """What an answer check concluded."""

    CORRECT = "correct"
    WRONG = "wrong"
    UNVERIFIABLE = "unverifiable"


@dataclass(frozen=True)
class AnswerScore:
    """How one response was read and scored (`Task.score`).

    `pred`/`correct` are what accuracy counts: the strict answer if the response
    has one, else the flexible pass's (equal to `extract_answer`/`is_correct`).
    `strict_pred`/`strict_correct` use only the final answer line ("The answer
    is ...", "####", \\boxed), so their gap shows how much accuracy rests on
    answers the response never stated as final. `conflict` (multiple choice
    only): that line's letter and option text name different options, and the
    text decided. `unverifiable`: the check could not decide (`correct` is then False).
    """

    pred: str | None
    correct: bool
    strict_pred: str | None
    strict_correct: bool
    conflict: bool
    #: multiple choice: the check had the letter won the conflict instead (= correct without a conflict),
    #: so a report can show how much accuracy the text-wins rule decides
    letter_correct: bool | None = None
    unverifiable: bool = False


class Task:
    """Base class; subclasses set `name` and implement `load` and `extract_answer`."""

    name: ClassVar[str] = ""
    #: splits this task offers; evaluate says so when `test` is missing.
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    #: instruction appended to every teacher/student prompt so the answer is extractable.
    answer_instruction: ClassVar[str] = (
        'End your response with "The answer is X." where X is your final answer.'
    )
    #: generation budget for a base model under evaluate.max_new_tokens: auto (trained students size
    #: theirs from their training responses).
    max_new_tokens: ClassVar[int] = 256

    def load(self, split: str = "train", path: str | None = None, limit: int | None = None) -> list[Record]:
        raise NotImplementedError

    def prompt(self, record: Record) -> str:
        """The question as shown to teacher and student (with lettered options if any)."""
        if record.choices:
            opts = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(record.choices))
            return f"{record.question}\nOptions:\n{opts}"
        return record.question

    def gold_text(self, record: Record) -> str:
        """How a correct final answer is written, e.g. "(C) 03/15/2021" or "42"."""
        if record.choices:
            return f"({record.answer}) {record.meta.get('answer_text', '')}".strip()
        return record.answer

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        raise NotImplementedError

    def is_correct(self, text: str, record: Record) -> bool:
        raise NotImplementedError

    def check(self, text: str, record: Record) -> Verdict:
        """`is_correct` with the third outcome: UNVERIFIABLE when the check could not decide."""
        return Verdict.CORRECT if self.is_correct(text, record) else Verdict.WRONG

    def score(self, text: str, record: Record) -> AnswerScore:
        raise NotImplementedError


def load_records(task: Task, spec: Any, limit: int | None, where: str) -> list[Record]:
    """`task.load` for a TaskSpec-like `spec` (split, path, difficulty); `limit` counts after the filter."""
    levels = getattr(spec, "difficulty", None)
    if not levels:
        return task.load(spec.split, spec.path, limit)
    records = task.load(spec.split, spec.path, None)
    if any("difficulty" not in r.meta for r in records):
        from qrdistill.errors import ConfigError

        raise ConfigError(f"{where}.difficulty: task {task.name!r} records carry no difficulty level")
    kept = [r for r in records if r.meta["difficulty"] in set(levels)]
    return kept[:limit] if limit else kept


TASKS: Registry[type[Task]] = Registry("task")
