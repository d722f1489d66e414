"""Procedural task family: determinism, disjoint splits, solutions, shortcut baselines, checking."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from dateutil.relativedelta import relativedelta

from qrdistill.errors import ConfigError
from qrdistill.tasks import get_task
from qrdistill.tasks.procedural import PROCEDURAL_TASKS, recompute, shortcut_baselines

ID_RE = {
    "procedural_date": re.compile(r"^pdate-(train|test)-\d{6}$"),
    "procedural_date_free": re.compile(r"^pdatefree-(train|test)-\d{6}$"),
    "procedural_arith": re.compile(r"^parith-(train|test)-\d{6}$"),
}


def _date(s: str) -> dt.date:
    m, d, y = (int(x) for x in s.split("/"))
    return dt.date(y, m, d)


def _independent_shift(d: dt.date, delta: int, unit: str) -> dt.date:
    """dateutil's calendar arithmetic, independent of the generator's own."""
    return d + relativedelta(**{unit + "s": delta})


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_deterministic_stable_ids_and_limit_is_a_prefix(name: str) -> None:
    task = get_task(name)
    a = [r.to_dict() for r in task.load("train", limit=120)]
    b = [r.to_dict() for r in get_task(name).load("train", limit=120)]
    assert a == b
    full = task.load("train")
    assert len(full) == 2000 and len(task.load("test")) == 500
    assert [r.to_dict() for r in full[:120]] == a
    assert all(ID_RE[name].match(r.id) for r in full)
    assert len({r.id for r in full}) == len(full)
    assert full[123].id.endswith("-train-000123")


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_splits_are_disjoint(name: str) -> None:
    task = get_task(name)
    train = {r.question for r in task.load("train")}
    test = {r.question for r in task.load("test")}
    assert len(train) == 2000 and len(test) == 500  # no duplicate questions within a split either
    assert not train & test


def test_bad_split_or_path_is_a_config_error() -> None:
    task = get_task("procedural_arith")
    with pytest.raises(ConfigError, match="unknown split 'validation'"):
        task.load("validation")
    with pytest.raises(ConfigError, match="generated from a seed"):
        task.load("train", path="some.jsonl")


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_difficulty_covers_one_to_four(name: str) -> None:
    recs = get_task(name).load("train", limit=400)
    levels = {r.meta["difficulty"] for r in recs}
    assert levels == {1, 2, 3, 4}
    # difficulty = number of operations, or of chained date steps (finding "today" from an anchor is one)
    assert all(len(r.meta["solution"]) == r.meta["difficulty"] for r in recs)


def test_date_solutions_recompute_to_the_answer() -> None:
    for r in get_task("procedural_date").load("train", limit=500):
        steps = r.meta["solution"]
        assert steps[0]["from"] == r.meta["question_date"]
        cur = _date(steps[0]["from"])
        for s in steps:
            assert _date(s["from"]) == cur, "each step starts where the previous ended"
            cur = _independent_shift(cur, s["delta"], s["unit"])
            assert cur == _date(s["result"])
        assert f"{cur:%m/%d/%Y}" == r.meta["answer_text"] == recompute(steps)
        assert r.choices[ord(r.answer) - 65] == r.meta["answer_text"]
        assert len(r.choices) == 6 and len(set(r.choices)) == 6
        # the question states its date in one of the two formats
        q = _date(r.meta["question_date"])
        assert f"{q:%m/%d/%Y}" in r.question or f"{q:%B} {q.day}, {q.year}" in r.question


def test_arith_solutions_recompute_to_the_answer() -> None:
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
    for r in get_task("procedural_arith").load("train", limit=500):
        steps = r.meta["solution"]
        cur = steps[0]["a"]
        for s in steps:
            assert s["a"] == cur
            value = ops[s["op"]](s["a"], s["b"])
            assert value == int(value) and value == s["result"]
            cur = s["result"]
        assert str(cur) == r.answer == recompute(steps)
        assert int(r.answer) > 0
        # every operand after the first appears in the question text
        for s in steps:
            assert re.search(rf"(?<!\d){s['b']}(?!\d)", r.question), (s, r.question)


def test_free_form_asks_the_same_questions() -> None:
    mc = get_task("procedural_date").load("test", limit=100)
    free = get_task("procedural_date_free").load("test", limit=100)
    assert [r.question for r in mc] == [r.question for r in free]
    assert [r.meta["answer_text"] for r in mc] == [r.answer for r in free]
    assert all(not r.choices for r in free)


@pytest.mark.parametrize("split", ["train", "test"])
def test_shortcut_baselines_stay_near_chance(split: str) -> None:
    recs = get_task("procedural_date").load(split, limit=600 if split == "train" else 500)
    base = shortcut_baselines(recs)
    assert set(base) >= {"nearest_date", "first_option", "most_common_letter", "middle_date"}
    for name, acc in base.items():
        # near 1/6 from both sides: an option that is never the answer is a tell as well
        assert 0.08 <= acc <= 0.30, (name, acc, base)


def test_shortcut_baseline_detects_a_shortcut() -> None:
    """The baseline must be able to fail: options where the answer is always nearest score 100 %."""
    recs = get_task("procedural_date").load("train", limit=50)
    for r in recs:
        q = _date(r.meta["question_date"])
        gold = r.meta["answer_text"]
        far = [f"{q + dt.timedelta(days=5000 + 10 * i):%m/%d/%Y}" for i in range(5)]
        r.choices = [gold] + far
        r.answer = "A"
    base = shortcut_baselines(recs)
    assert base["nearest_date"] == 1.0 and base["first_option"] == 1.0


def test_is_correct_accepts_gold_and_rejects_distractors() -> None:
    task = get_task("procedural_date")
    for r in task.load("test", limit=100):
        gold = task.gold_text(r)
        assert gold == f"({r.answer}) {r.meta['answer_text']}"
        assert task.is_correct(f"Some reasoning.\nThe answer is {gold}.", r)
        assert task.is_correct(f"The answer is {r.meta['answer_text']}.", r)  # option text alone
        assert task.is_correct(f"The answer is ({r.answer}).", r)  # letter alone
        for i, choice in enumerate(r.choices):
            letter = chr(65 + i)
            if letter != r.answer:
                assert not task.is_correct(f"The answer is ({letter}) {choice}.", r)
                assert not task.is_correct(f"The answer is {choice}.", r)

    free = get_task("procedural_date_free")
    mc = task.load("test", limit=50)
    for r, m in zip(free.load("test", limit=50), mc, strict=True):
        assert free.is_correct(f"The answer is {free.gold_text(r)}.", r)
        for choice in m.choices:
            if choice != r.answer:
                assert not free.is_correct(f"The answer is {choice}.", r)

    arith = get_task("procedural_arith")
    for r in arith.load("test", limit=100):
        assert arith.is_correct(f"So the total is {r.answer}.\nThe answer is {arith.gold_text(r)}.", r)
        assert not arith.is_correct(f"The answer is {int(r.answer) + 1}.", r)
