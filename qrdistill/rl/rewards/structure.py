"""`structure`: how well the steps of the student's path align with a reference teacher path's (RLKD).

Both paths are turned into lists of steps by a step extractor (`claims`, offline and deterministic, in
`qrdistill.rl.steps_claims`; `llm`, any judge backend, in `qrdistill.rl.steps_llm`). A step has three
parts, after RLKD's `[sub-think]-[Query]-[Answer]`: what the step sets out to do, the question it
answers, and its answer. The alignment follows RLKD's rule (its `rewards.py::process_item`), read
sequentially over the reference's steps r_1..r_n against the student's s_1..s_m:

    v_i = 0                                  if i > m, or the sub-think of some s_j, j <= i, failed
    v_i = 0.5^[query_i mismatched] * 0.5^[answer_i mismatched]      otherwise

    structure = (v_1 + ... + v_n) / n        in [0, 1]

so a step whose sub-think fails ends the sum (later steps score 0), a mismatched query or answer each
halve that step, and student steps beyond the reference's n are ignored (RLKD sums over min(m, n)
steps too). RLKD reports the raw sum; dividing by n puts the term on the scale of the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qrdistill.rl.rewards.base import RewardContext, RewardValue, TaskRecord, reward, task_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One reasoning step: what it sets out to do (`sub_think`), the question it answers (`query`), and
    its result (`answer`). Extractors may subclass it with structured fields their matcher reads."""

    sub_think: str
    query: str
    answer: str


@dataclass(frozen=True)
class StepMatch:
    """Whether a student step matches the reference step at the same position, part by part.
    `notes`: reasons a part was judged unmatched without a clear verdict (an unparseable reply, or no
    reply); `errors`: those of them where the reward model gave no reply at all (a failed call)."""

    think_ok: bool
    query_ok: bool
    answer_ok: bool
    notes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepsResult:
    """An extractor's steps for one path, or why there are none (`error`, never empty on failure)."""

    steps: tuple[Step, ...] | None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.steps is None and not self.error:
            raise ValueError("a failed extraction needs its reason")

    @property
    def ok(self) -> bool:
        return self.steps is not None


class StepExtractor(Protocol):
    name: str

    def extract(self, text: str, question: str) -> StepsResult: ...

    def match(self, student: Step, reference: Step) -> StepMatch: ...


Match = Callable[[Step, Step], StepMatch]


def step_values(student: Sequence[Step], reference: Sequence[Step], match: Match) -> tuple[list[float], list[str]]:
    """v_i for every reference step (see the module docstring), and the matcher's notes.

    `match` is not called once a sub-think has failed, nor past the student's last step: those
    steps score 0 whatever it says, and an LLM matcher would pay for the call."""
    values: list[float] = []
    notes: list[str] = []
    ended = False
    for i, ref in enumerate(reference):
        if ended or i >= len(student):
            values.append(0.0)
            continue
        m = match(student[i], ref)
        notes += [f"step {i + 1}: {n}" for n in m.notes]
        if not m.think_ok:
            ended = True
            values.append(0.0)
            continue
        values.append((1.0 if m.query_ok else 0.5) * (1.0 if m.answer_ok else 0.5))
    return values, notes


def structure_score(student_steps: Sequence[Step], reference_steps: Sequence[Step], match: Match) -> float:
    """The RLKD alignment of `student_steps` to `reference_steps`, normalised to [0, 1] (0 when the
    reference has no steps: there is nothing to align to)."""
    if not reference_steps:
        return 0.0
    values, _ = step_values(student_steps, reference_steps, match)
    return sum(values) / len(reference_steps)


@dataclass(frozen=True)
class StructureResult:
    """The structure term with what it was computed from (for logs and tests)."""

    value: float
    reason: str | None = None
    failed: bool = False
    student: StepsResult | None = None
    reference: StepsResult | None = None
    values: tuple[float, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _default_extractor() -> StepExtractor:
    from qrdistill.rl.steps_claims import ClaimsExtractor

    return ClaimsExtractor()


def structure_result(
    completion: str, question: str, reference: str | None, extractor: StepExtractor | None = None
) -> StructureResult:
    """Extract both paths' steps and align them. Every 0 that is not an alignment of two step lists
    carries its reason (`failed` when an extractor could not read a path) and is logged."""
    ex = extractor or _default_extractor()

    def fail(reason: str, failed: bool, **kw) -> StructureResult:
        (log.warning if failed else log.info)("structure reward (%s extractor): 0: %s", ex.name, reason)
        return StructureResult(0.0, reason=reason, failed=failed, **kw)

    if reference is None:
        return fail("no reference path for this question", failed=True)
    ref = ex.extract(reference, question)
    if not ref.ok:
        return fail(f"reference path unreadable: {ref.error}", failed=True, reference=ref)
    if not ref.steps:
        return fail("the reference path has no steps to align to", failed=True, reference=ref)
    got = ex.extract(completion, question)
    if not got.ok:
        return fail(f"student path unreadable: {got.error}", failed=True, student=got, reference=ref)
    errors: list[str] = []

    def match(student: Step, reference: Step) -> StepMatch:
        m = ex.match(student, reference)
        errors.extend(m.errors)
        return m

    values, notes = step_values(got.steps, ref.steps, match)
    if errors:
        # an outage is not a mismatch: scoring it as one would train on the judge's failures
        return fail(f"step match call failed: {'; '.join(errors)}", failed=True, student=got, reference=ref)
    if notes:
        log.warning("structure reward (%s extractor): %s", ex.name, "; ".join(notes))
    value = sum(values) / len(ref.steps)
    reason = None
    if not got.steps:
        reason = "the student path has no steps"
    elif notes:
        reason = "; ".join(notes)
    return StructureResult(value, reason=reason, student=got, reference=ref, values=tuple(values),
                           notes=tuple(notes))  # fmt: skip


@reward("structure")
def structure(
    prompt: str, completion: str, record: TaskRecord, reference: str | None, ctx: RewardContext | None = None
) -> RewardValue:
    question = task_for(record.task).prompt(record.record)
    res = structure_result(completion, question, reference, ctx.extractor if ctx else None)
    return RewardValue(res.value, res.reason, res.failed)
