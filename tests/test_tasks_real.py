"""Answer checking on real data, loaders and splits.

Every question of ../shared/data is loaded through the real tasks; for each one,
responses written in the ways models actually end their answers must be
accepted and responses naming a wrong option/number/answer rejected.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from qrdistill.errors import DataError
from qrdistill.tasks import TASKS, get_task
from qrdistill.tasks.base import Record
from qrdistill.tasks.extract import normalize_number


def load_all(name: str, path: Path) -> tuple[list[Record], list[Record]]:
    task = get_task(name)
    return task.load("train", str(path)), task.load("test", str(path))


def test_registered_names():
    for name in ("date", "strategyqa", "arc_challenge", "anli", "math", "gsm8k"):
        assert name in TASKS


# ---------------------------------------------------------------- BIG-bench Date


@pytest.fixture(scope="module")
def date_records(shared_data):
    train, test = load_all("date", shared_data / "bigbench_date" / "task.json")
    return train, test


def test_date_split_disjoint_and_complete(date_records):
    train, test = date_records
    assert len(train) + len(test) == 369
    assert not {r.id for r in train} & {r.id for r in test}
    assert not {r.question for r in train} & {r.question for r in test}
    assert 0.1 < len(test) / 369 < 0.3


def test_date_gold_letter_spread_across_positions(date_records):
    records = date_records[0] + date_records[1]
    counts = Counter(r.answer for r in records)
    # BIG-bench lists the right option first in 364/369 questions; after shuffling (A) is right ~1/6 of the time.
    assert counts["A"] / len(records) < 0.35
    assert set(counts) == set("ABCDEF")
    assert min(counts.values()) > 30
    for r in records:
        assert r.choices[ord(r.answer) - 65] == r.meta["answer_text"]


def test_date_shuffle_is_seeded(shared_data, date_records):
    again = get_task("date").load("train", str(shared_data / "bigbench_date"))
    assert [(r.id, r.choices, r.answer) for r in again] == [
        (r.id, r.choices, r.answer) for r in date_records[0]
    ]
    # ...and differs between questions (not one fixed permutation).
    first_original = [r.choices.index(r.meta["answer_text"]) for r in again]
    assert len(set(first_original)) == 6


def _mc_correct_forms(task, r: Record) -> list[str]:
    letter, text = r.answer, r.meta["answer_text"]
    return [
        f"({letter})",
        f"**{letter}**",
        f"{letter}.",
        f"The answer is {letter}.",
        f"The answer is ({letter}).",
        text,
        f"{text}.",
        f"The answer is {text}.",
        f"Let me think. {r.question}\nSo the answer is ({letter}) {text}.",
        f"**The answer is ({letter}) {text}**",
        f"The answer is **({letter})**",
        f"I first considered {r.choices[0]}, but it is wrong.\nThe answer is {task.gold_text(r)}.",
    ]


def _mc_wrong_forms(r: Record) -> list[str]:
    out = []
    for i, option in enumerate(r.choices):
        letter = chr(65 + i)
        if letter == r.answer:
            continue
        out += [
            f"({letter})",
            f"The answer is {letter}.",
            option,
            f"The answer is ({letter}) {option}.",
            f"**{letter}**",
        ]
    # A tentative mention of the gold before committing to a wrong option.
    out.append(
        f"Maybe ({r.answer}) {r.meta['answer_text']}? No. The answer is ({'A' if r.answer != 'A' else 'B'})."
    )
    return out


def test_date_every_question_checked(date_records):
    task = get_task("date")
    records = date_records[0] + date_records[1]
    for r in records:
        for text in _mc_correct_forms(task, r):
            assert task.is_correct(text, r), (r.id, text)
            assert task.extract_answer(text, r) == r.answer
        for text in _mc_wrong_forms(r):
            assert not task.is_correct(text, r), (r.id, text, r.answer)
    assert task.gold_text(records[0]) == f"({records[0].answer}) {records[0].meta['answer_text']}"


# ---------------------------------------------------------------- StrategyQA (both formats)


def _yes_no_forms(r: Record) -> tuple[list[str], list[str]]:
    gold = r.answer
    wrong = "No" if gold == "Yes" else "Yes"
    reasoning = r.meta.get("explanation") or " ".join(r.meta.get("facts", [])) or "Thinking about it."
    correct = [
        gold,
        f"**{gold}**.",
        f"The answer is {gold}.",
        f"{reasoning} So the answer is {gold.lower()}.",
        f"{reasoning}\n**{gold}**",
        f"The answer is {gold}, because {reasoning}",
    ]
    wrong_forms = [
        wrong,
        f"**{wrong}**.",
        f"The answer is {wrong}.",
        f"{reasoning} So the answer is {wrong}.",
        f"First I thought {gold}. The answer is {wrong}.",
    ]
    return correct, wrong_forms


@pytest.mark.parametrize(
    ("rel", "n"), [("bigbench_strategyqa/task.json", 2290), ("strategyqa/dev.json", 229)]
)
def test_strategyqa_every_question_checked(shared_data, rel, n):
    task = get_task("strategyqa")
    train, test = load_all("strategyqa", shared_data / rel)
    assert len(train) + len(test) == n
    assert not {r.id for r in train} & {r.id for r in test}
    assert not {r.question for r in train} & {r.question for r in test}
    assert {r.answer for r in train + test} == {"Yes", "No"}
    for r in train + test:
        assert task.gold_text(r) == r.answer
        correct, wrong = _yes_no_forms(r)
        for text in correct:
            assert task.is_correct(text, r), (r.id, text)
        for text in wrong:
            assert not task.is_correct(text, r), (r.id, text)


def test_strategyqa_majority_shortcut_counts_the_test_answers(shared_data):
    """The yes/no shortcut a StrategyQA accuracy must beat: the share of each answer among the questions."""
    task = get_task("strategyqa")
    test = task.load("test", str(shared_data / "strategyqa" / "dev.json"))
    cuts = task.shortcut_baselines(test)
    yes = sum(r.answer == "Yes" for r in test)
    assert cuts == {"always_yes": yes / len(test), "always_no": 1 - yes / len(test)}
    assert 0 < yes < len(test)
    assert task.shortcut_baselines([]) == {}


def test_strategyqa_meta_kept(shared_data):
    bb = get_task("strategyqa").load("train", str(shared_data / "bigbench_strategyqa" / "task.json"))
    assert all(r.meta.get("explanation") for r in bb)
    assert not any(r.meta["explanation"].split()[0].lower() in ("yes.", "no.") for r in bb)
    dev = get_task("strategyqa").load("test", str(shared_data / "strategyqa" / "dev.json"))
    assert all(r.meta["facts"] and r.meta["decomposition"] for r in dev)
    assert all(r.id.startswith("strategyqa-") for r in dev)


# ---------------------------------------------------------------- GSM8K


def _with_commas(n: str) -> str:
    return f"{int(n):,}"


@pytest.mark.parametrize(("split", "n"), [("test", 1319), ("train", 7473)])
def test_gsm8k_every_question_checked(shared_data, split, n):
    task = get_task("gsm8k")
    records = task.load(split, str(shared_data / "gsm8k"))
    assert len(records) == n
    for r in records:
        gold = r.answer
        assert normalize_number(gold) == gold
        solution = r.meta["solution"]
        assert solution.rstrip().endswith(f"#### {solution.rsplit('####', 1)[1].strip()}")
        wrong = str(int(gold) + 1)
        correct = [
            f"The answer is {_with_commas(gold)}.",
            f"${gold}",
            f"\\boxed{{{gold}}}",
            f"The answer is ${gold}.00.",
            solution,
            f"{solution.rsplit('####', 1)[0]}The answer is **{gold}**.",
        ]
        for text in correct:
            assert task.is_correct(text, r), (r.id, text)
        for text in [
            f"The answer is {_with_commas(wrong)}.",
            f"${wrong}",
            f"\\boxed{{{wrong}}}",
            f"{solution.rsplit('####', 1)[0]}#### {wrong}",
            f"I thought {gold}. The answer is {wrong}.",
        ]:
            assert not task.is_correct(text, r), (r.id, text)
    assert {r.meta["difficulty"] for r in records} >= {1, 2, 3, 4, 5}


def test_gsm8k_difficulty_and_gold(shared_data):
    r = get_task("gsm8k").load("test", str(shared_data / "gsm8k" / "test.jsonl"), limit=1)[0]
    assert r.answer == "18"
    assert r.meta["difficulty"] == 2  # <<16-3-4=9>> and <<9*2=18>>
    assert get_task("gsm8k").gold_text(r) == "18"


def test_gsm8k_split_file_mismatch(shared_data):
    with pytest.raises(DataError, match=r"test\.jsonl: this file holds split 'test', not 'train'"):
        get_task("gsm8k").load("train", str(shared_data / "gsm8k" / "test.jsonl"))


# ---------------------------------------------------------------- loader errors


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_jsonl_line_named(tmp_path):
    good = json.dumps({"question": "q", "answer": "x\n#### 1"})
    p = _write(tmp_path / "train.jsonl", f"{good}\n\n{good}\n{{not json\n")
    with pytest.raises(DataError, match=rf"{p}:4: malformed JSON"):
        get_task("gsm8k").load("train", str(p))


def test_missing_field_named_with_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "x\n#### 1"})
    p = _write(tmp_path / "train.jsonl", f"{good}\n{json.dumps({'question': 'q2'})}\n")
    with pytest.raises(DataError, match=rf"{p}:2: missing field 'answer'"):
        get_task("gsm8k").load("train", str(p))


def test_bad_gold_named(tmp_path):
    p = _write(tmp_path / "test.jsonl", json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(DataError, match=rf"{p}:1: .*####"):
        get_task("gsm8k").load("test", str(p))


def test_empty_file(tmp_path):
    p = _write(tmp_path / "train.jsonl", "\n")
    with pytest.raises(DataError, match="no questions in split 'train'"):
        get_task("gsm8k").load("train", str(p))


def test_unknown_split():
    with pytest.raises(DataError, match=r"no split 'dev' \(splits: train, test\)"):
        get_task("date").load("dev", "unused.json")
    with pytest.raises(DataError, match=r"splits: train, validation, test"):
        get_task("anli").load("dev")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        get_task("date").load("train", str(tmp_path / "nope.json"))


def test_bigbench_missing_field_names_the_example_line(tmp_path):
    examples = [
        {
            "input": "Today is 01/01/2021. What is tomorrow?",
            "target_scores": {"01/02/2021": 1, "01/03/2021": 0},
        },
        {"input": "Today is 01/01/2021. What is yesterday?"},
    ]
    text = json.dumps({"name": "x", "examples": examples}, indent=2)
    p = _write(tmp_path / "task.json", text)
    # The second example's "{" is on the line before its "input".
    line = _line_of(text, '"input": "Today is 01/01/2021. What is yesterday?"') - 1
    with pytest.raises(DataError, match=rf"{p}:{line}: missing field 'target_scores'"):
        get_task("date").load("train", str(p))


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_malformed_json_line(tmp_path):
    p = _write(tmp_path / "task.json", '{\n  "examples": [\n    {"input": "a",\n  ]\n}\n')
    with pytest.raises(DataError, match=rf"{p}:4: malformed JSON"):
        get_task("date").load("train", str(p))


def test_directory_without_the_split(tmp_path):
    _write(tmp_path / "train.jsonl", json.dumps({"question": "q", "answer": "#### 1"}) + "\n")
    with pytest.raises(DataError, match=r"no file for split 'test' \(found splits: train\)"):
        get_task("gsm8k").load("test", str(tmp_path))


def test_offline_hub_says_to_use_a_path():
    with pytest.raises(DataError, match="openai/gsm8k.*point the task's `path`"):
        get_task("gsm8k").load("test")


# ---------------------------------------------------------------- other formats: ARC, ANLI, MATH, Parquet


def test_arc_both_layouts(tmp_path):
    hub_row = {
        "id": "Mercury_1",
        "question": "Which part of a plant cell makes food?",
        "choices": {
            "text": ["nucleus", "chloroplast", "cell wall", "vacuole"],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "B",
    }
    ai2_row = {
        "id": "NYSED_2",
        "answerKey": "3",
        "question": {
            "stem": "What is 2+2?",
            "choices": [{"text": t, "label": str(i + 1)} for i, t in enumerate(["3", "5", "4"])],
        },
    }
    p = _write(
        tmp_path / "ARC-Challenge-Test.jsonl", "\n".join(json.dumps(x) for x in (hub_row, ai2_row)) + "\n"
    )
    task = get_task("arc_challenge")
    recs = task.load("test", str(p))
    assert [r.meta["answer_text"] for r in recs] == ["chloroplast", "4"]
    for r in recs:
        assert r.choices[ord(r.answer) - 65] == r.meta["answer_text"]
        assert task.is_correct(f"The answer is {task.gold_text(r)}.", r)
        assert task.is_correct(r.meta["answer_text"], r)
        wrong = next(c for c in r.choices if c != r.meta["answer_text"])
        assert not task.is_correct(f"The answer is {wrong}.", r)
    assert "(A)" in task.prompt(recs[0])
    with pytest.raises(DataError, match=r"this file holds split 'test'"):
        task.load("train", str(p))


def test_anli_labels_and_rounds(tmp_path):
    rows = [
        {"uid": "u1", "premise": "A man plays guitar.", "hypothesis": "A person makes music.", "label": 0},
        {"uid": "u2", "context": "The sky is clear.", "hypothesis": "It is raining.", "label": "c"},
        {"uid": "u3", "premise": "She left.", "hypothesis": "She was tired.", "label": 1},
    ]
    p = _write(tmp_path / "test_r2.jsonl", "\n".join(json.dumps(x) for x in rows) + "\n")
    task = get_task("anli")
    recs = task.load("test", str(tmp_path))
    assert [r.meta["answer_text"] for r in recs] == ["entailment", "contradiction", "neutral"]
    assert all(r.meta["round"] == "r2" for r in recs)
    for r in recs:
        assert sorted(r.choices) == ["contradiction", "entailment", "neutral"]
        assert task.is_correct(f"The premise rules nothing out, so the answer is {r.meta['answer_text']}.", r)
        other = next(c for c in r.choices if c != r.meta["answer_text"])
        assert not task.is_correct(f"The answer is {other}.", r)
    _write(p, json.dumps({"uid": "u4", "premise": "p", "hypothesis": "h", "label": 7}) + "\n")
    with pytest.raises(DataError, match=rf"{p}:1: field 'label'"):
        task.load("test", str(p))


def test_math_levels_and_math_verify(tmp_path):
    rows = [
        {
            "problem": "What is $1/2 + 1/4$?",
            "level": "Level 2",
            "type": "Prealgebra",
            "solution": "We have $\\frac12+\\frac14 = \\boxed{\\frac{3}{4}}$.",
        },
        {
            "problem": "Simplify $\\sqrt{8}$.",
            "level": "Level 5",
            "type": "Algebra",
            "solution": "$\\sqrt{8} = \\boxed{2\\sqrt{2}}$",
        },
        {
            "problem": "Odd one.",
            "level": "Level ?",
            "type": "Geometry",
            "solution": "\\boxed{\\left( 1, 2 \\right)}",
        },
    ]
    p = _write(tmp_path / "test.jsonl", "\n".join(json.dumps(x) for x in rows) + "\n")
    task = get_task("math")
    recs = task.load("test", str(p))
    assert [r.answer for r in recs] == ["\\frac{3}{4}", "2\\sqrt{2}", "\\left( 1, 2 \\right)"]
    assert [r.meta["difficulty"] for r in recs] == [2, 5, None]
    assert task.is_correct("So the answer is 0.75.", recs[0])
    assert task.is_correct("\\boxed{\\frac{6}{8}}", recs[0])
    assert not task.is_correct("The answer is $\\frac{2}{3}$.", recs[0])
    assert task.is_correct("The answer is $\\sqrt{8}$.", recs[1])
    assert not task.is_correct("The answer is $\\sqrt{2}$.", recs[1])
    assert task.is_correct("The answer is (1, 2).", recs[2])
    assert not task.is_correct("The answer is (2, 1).", recs[2])
    _write(p, json.dumps({"problem": "x", "solution": "no box here"}) + "\n")
    with pytest.raises(DataError, match=rf"{p}:1: .*boxed"):
        task.load("test", str(p))


def test_parquet_directory_like_the_hub(tmp_path, shared_data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:5]]
    pq.write_table(pa.Table.from_pylist(src), tmp_path / "test-00000-of-00001.parquet")
    recs = get_task("gsm8k").load("test", str(tmp_path))
    assert [r.answer for r in recs] == [
        r.answer for r in get_task("gsm8k").load("test", str(shared_data / "gsm8k" / "test.jsonl"), limit=5)
    ]
    with pytest.raises(DataError, match="found splits: test"):
        get_task("gsm8k").load("train", str(tmp_path))


def test_hub_layout_of_bigbench(tmp_path, shared_data):
    # tasksource/bigbench rows: inputs / multiple_choice_targets / multiple_choice_scores, "Q: ...\nA:" wrapping.
    examples = json.loads((shared_data / "bigbench_date" / "task.json").read_text())["examples"]
    rows = [
        {
            "inputs": f"Q: {e['input']}\nA:",
            "targets": [k for k, v in e["target_scores"].items() if v],
            "multiple_choice_targets": list(e["target_scores"]),
            "multiple_choice_scores": list(e["target_scores"].values()),
            "idx": i,
        }
        for i, e in enumerate(examples)
    ]
    p = _write(tmp_path / "date.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    from_hub_layout = get_task("date").load("test", str(p))
    from_task_json = get_task("date").load("test", str(shared_data / "bigbench_date" / "task.json"))
    assert [(r.id, r.question, r.choices, r.answer) for r in from_hub_layout] == [
        (r.id, r.question, r.choices, r.answer) for r in from_task_json
    ]
