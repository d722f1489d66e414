"""Fuzz every registered task's answer reading: `extract_answer`, `is_correct` and `score` on arbitrary
and adversarial text (towers of exponents, long digit strings, deeply nested braces, "the answer is"
thousands of times, long runs of one character, any unicode including lone surrogates).

Each call must return within BOUND_S, measured, and raise nothing but the project's own errors. A
call runs in a daemon thread joined with the bound, so a hang fails the example instead of the run.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from qrdistill.errors import QRDistillError
from qrdistill.tasks import TASKS, extract, get_task
from qrdistill.tasks.base import AnswerScore, Record, Task

BOUND_S = 5.0
#: The math deadline here: short, so that the towers (each killing a child) keep the run fast.
MATH_DEADLINE_S = 1.0

CHOICES = ["05/01/2021", "5/2/2021", "salt water", "water", "Yes", "A cell wall"]
FRAGMENTS = [
    "The answer is ",
    "the final answer is ",
    "Answer:",
    "answer would be ",
    "####",
    "\n",
    " ",
    ".",
    ":",
    "*",
    "**",
    "(",
    ")",
    "(A)",
    "(B)",
    "**C**",
    "D.",
    "option E",
    "\\boxed{",
    "\\boxed ",
    "\\fbox{",
    "{",
    "}",
    "$",
    "^",
    "9",
    "0",
    "-",
    "1,000",
    "1e999999999",
    "3.50",
    "\\frac{1}{2}",
    "\\sqrt{",
    "\\infty",
    "x=",
    "=",
    "05/01/2021",
    "5/2/2021",
    "13/45/2021",
    "yes",
    "No",
    "no meat",
    "true",
    "salt water",
    "water",
    "\ud800",
]


def record_for(task: Task) -> Record:
    """A plausible record for the task's kind of answer (the data-backed tasks need no files for this)."""
    if isinstance(task, extract.MultipleChoiceTask):
        return Record(id="mc", question="q", answer="C", choices=CHOICES, meta={"answer_text": CHOICES[2]})
    if isinstance(task, extract.YesNoTask):
        return Record(id="yn", question="q", answer="Yes")
    if isinstance(task, extract.NumberTask):
        return Record(id="n", question="q", answer="42")
    if isinstance(task, extract.MathTask):
        return Record(id="m", question="q", answer="\\frac{1}{2}")
    if isinstance(task, extract.DateTask):
        return Record(id="d", question="q", answer="05/01/2021")
    raise AssertionError(f"task {task.name!r} has an answer kind this fuzz test does not know: add it here")


any_text = st.text(st.characters(exclude_categories=()), max_size=200)
mixed = st.lists(st.one_of(st.sampled_from(FRAGMENTS), any_text), max_size=40).map("".join)
towers = st.lists(st.integers(2, 99), min_size=2, max_size=6).map(
    lambda xs: "The answer is $\\boxed{" + "^{".join(map(str, xs)) + "}" * (len(xs) - 1) + "}$."
)
long_digits = st.tuples(
    st.sampled_from(["The answer is ", "#### ", "\\boxed{", "$"]), st.integers(1, 300_000)
).map(lambda t: t[0] + "9" * t[1])
nested = st.tuples(
    st.sampled_from(["\\boxed{", "{", "\\frac{", "\\sqrt{"]), st.integers(1, 60_000), st.booleans()
).map(lambda t: t[0] * t[1] + "1" + "}" * (t[1] if t[2] else t[1] // 2))
repeats = st.tuples(st.sampled_from(FRAGMENTS[:5]), mixed, st.integers(1, 30_000)).map(
    lambda t: ((t[0] + t[1] + "\n") * t[2])[:600_000]
)
runs = st.tuples(
    st.sampled_from(["", "A", "(B)", "no", "7", "The answer is 5"]),
    st.sampled_from(" .\t*-$,\n{"),
    st.integers(1, 250_000),
    st.sampled_from(["", "x", "A", "."]),
).map(lambda t: t[0] + t[1] * t[2] + t[3])
texts = st.one_of(mixed, towers, long_digits, nested, repeats, runs)

# No shrinking: a failing example is already small in its drawn parameters, and shrinking a hang
# would leave one stuck thread per attempt.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def call_bounded(fn: Any, *args: Any) -> Any:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn(*args)
        except QRDistillError:
            out["value"] = None
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            out["error"] = e

    t0 = time.monotonic()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(BOUND_S)
    elapsed = time.monotonic() - t0
    assert not worker.is_alive(), f"{fn.__qualname__} still running after {BOUND_S:g}s"
    if "error" in out:
        raise out["error"]
    assert elapsed < BOUND_S, f"{fn.__qualname__} took {elapsed:.2f}s"
    return out["value"]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_answer_reader_is_bounded_and_raises_only_project_errors(name, monkeypatch):
    task = get_task(name)
    record = record_for(task)
    if isinstance(task, extract.MathTask):
        from qrdistill.tasks import mathcheck

        monkeypatch.setattr(mathcheck, "DEADLINE_S", MATH_DEADLINE_S)
    # Fewer for math: each tower costs its deadline twice (is_correct, score) and a fresh child.
    examples = 15 if isinstance(task, extract.MathTask) else FUZZ.max_examples

    @settings(FUZZ, max_examples=examples)
    @given(texts)
    @example("The answer is $\\boxed{9^{9^{9^{9}}}}$.")
    @example("The answer is " + "9" * 300_000)
    @example("\\boxed{" * 60_000 + "1" + "}" * 60_000)
    @example("The answer is (A) 05/01/2021.\n" * 20_000)
    @example("A" + " " * 199_000 + "x")
    def check(text: str) -> None:
        pred = call_bounded(task.extract_answer, text, record)
        assert pred is None or isinstance(pred, str)
        assert call_bounded(task.is_correct, text, record) in (True, False)
        score = call_bounded(task.score, text, record)
        assert score is None or isinstance(score, AnswerScore)

    check()


# ---------------------------------------------------------------- task data files


@pytest.mark.parametrize(
    "text, why",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('[{"question": "q", "answer": ' + "9" * 100_000 + "}]", "unreadable JSON value"),
        ('{"examples": [{"input": "q", "target": ' + "1" * 50_000 + "}]}", "unreadable JSON value"),
    ],
    ids=["deeply_nested", "huge_int", "huge_int_under_examples"],
)
def test_a_pathological_task_json_file_is_one_data_error_naming_it(tmp_path, text, why):
    from qrdistill.errors import DataError
    from qrdistill.tasks.loading import read_rows

    path = tmp_path / "data.json"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_rows(path)
    assert str(err.value).startswith(f"{path}:1: ") and why in str(err.value)
    with pytest.raises(DataError, match=why):
        get_task("gsm8k").load("train", str(path))
