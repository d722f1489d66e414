"""The deterministic `steps` judge: true claims pass, false ones are caught, noise is ignored."""

from __future__ import annotations

import json

import pytest

from qrdistill.config.filter import StepsJudgeConfig
from qrdistill.judges import get_judge
from qrdistill.judges.steps import check_text, verdict_for

TRUE_TEXTS = [
    "7 × 8 = 56",
    "She sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = $18.",
    "$1,200 + $300 = $1,500 in total.",
    "80,000 * 1.5 = 120,000",
    "2 + 3 * 4 = 14, and (2 + 3) × 4 = 20.",
    "120 ÷ 12 = 10 and 120 / 12 = 10 and 6 x 7 = 42 and 9 − 4 = 5",
    "10 / 3 = 3.33 cups",
    "20% * 50 = 10",
    "18 / 450 x 100 = 4%",
    "30 - 8 * 3 = 30 - 24 = 6",
    "The room's perimeter is 2(40+9) = 98",
    "5 - 1 - 1/2 = 3 1/2 hours",
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
    "03/05/2021 + 10 days = 03/15/2021",
    "03/05/2021 − 2 weeks = 02/19/2021",
    "10 days before 03/05/2021 is 02/23/2021",
    "one week after March 5, 2021 is March 12, 2021",
    "2 months after 01/15/2021 is 03/15/2021",
    "a year before 02/28/2021 would be 02/28/2020",
    "three days later than 12/30/2020 gives 01/02/2021",
]

FALSE_TEXTS = [
    ("7 × 8 = 54", "false claim: '7 × 8 = 54' (7 × 8 = 56)"),
    ("She has 16 - 3 - 4 = 8 eggs.", "16 - 3 - 4 = 9"),
    ("$1,200 + $300 = $1,600", "1500"),
    ("2 + 3 * 4 = 20", "2 + 3 * 4 = 14"),
    ("(2 + 3) × 4 = 21", "= 20"),
    ("120 ÷ 12 = 11", "120 ÷ 12 = 10"),
    ("10 / 4 = 2", "2.5"),
    ("0.5 - 0.25 = 0.35", "0.25"),
    ("20 - 5 = 15 - 3 = 11", "15 - 3 = 12"),
    ("Natalia sold 48/2 = <<48/2=25>>25 clips.", "48/2 = 24"),
    ("total = total * 3  # 12 * 3 = 38", "12 * 3 = 36"),
    (
        "03/05/2021 + 10 days = 03/16/2021",
        "false claim: '03/05/2021 + 10 days = 03/16/2021' (03/05/2021 + 10 days = 03/15/2021)",
    ),
    ("10 days before 03/05/2021 is 02/24/2021", "02/23/2021"),
    ("one week after March 5, 2021 is March 13, 2021", "03/12/2021"),
    ("2 months after 01/15/2021 is 04/15/2021", "03/15/2021"),
    ("11/27/2008 minus 1 year = 11/27/2006", "11/27/2007"),
    ("Moving back: 3 weeks earlier than 06/25/2010 would be 06/05/2010.", "06/04/2010"),
]

NOISE = [
    "x = a * b",
    "Step 1 = 5 + 3",
    "60 minutes = 1 hour",
    "total = 12 * 4",
    "The date is 03/05/2021, written MM/DD/YYYY.",
    "The sun sets at 6:00 + 48 minutes = 6:48 PM.",
    "If 2x + 3 = 11 then x = 4.",
    "He slept 9 hours * 2/3 = 6 hours.",  # a word cuts the expression; its tail '2/3 = 6' is no claim
    "d = d - timedelta(days=10)",
    "01/31/2021 + 1 month = 02/28/2021",  # ambiguous month end: not judged
]


@pytest.mark.parametrize("text", TRUE_TEXTS)
def test_true_claims_pass(text: str) -> None:
    claims = check_text(text)
    assert claims, f"no claim found in {text!r}"
    assert all(c.ok for c in claims), [c for c in claims if not c.ok]
    v = verdict_for(text)
    assert v.valid and v.parsed and "checked" in v.reason


@pytest.mark.parametrize("text,reason", FALSE_TEXTS)
def test_false_claims_are_caught(text: str, reason: str) -> None:
    v = verdict_for(text)
    assert not v.valid and v.parsed
    assert v.reason.startswith("false claim: '")
    assert reason in v.reason


@pytest.mark.parametrize("text", NOISE)
def test_noise_is_not_a_claim(text: str) -> None:
    assert check_text(text) == []
    assert verdict_for(text).valid


def test_judge_interface_on_paths_rows() -> None:
    judge = get_judge(StepsJudgeConfig())
    rows = [
        {"qid": "a", "prompt": "q", "response": "3 + 4 = 7. The answer is 7."},
        {"qid": "b", "prompt": "q", "response": "3 + 4 = 8. The answer is 8."},
        {"qid": "c", "prompt": "q", "response": "It is 7. The answer is 7."},
    ]
    ticks: list[int] = []
    verdicts = judge.judge(rows, progress=ticks.append)
    assert [v.valid for v in verdicts] == [True, False, True]
    assert verdicts[0].reason == "1 claim checked"
    assert verdicts[1].reason == "false claim: '3 + 4 = 8' (3 + 4 = 7)"
    assert verdicts[2].reason == "no checkable claims"
    assert sum(ticks) == 3


def test_tolerance_is_configurable() -> None:
    text = "1 / 3 = 0.3333334"
    assert verdict_for(text, tolerance=1e-6).valid
    assert not verdict_for(text, tolerance=1e-9).valid


def test_gsm8k_human_solutions_are_judged_valid(shared_data) -> None:
    """The 1,319 GSM8K test solutions are correct (bar a few typos in the data): ≥ 97 % must pass.
    Measured: 1,317 of 1,319 (99.8 %); the two flagged hold real slips ("364 / 4 = 273" for 3/4 of
    364, "$32 - $20 = $300")."""
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 1319
    verdicts = get_judge(StepsJudgeConfig()).judge([{"response": r["answer"]} for r in rows])
    valid = sum(v.valid for v in verdicts)
    checked = sum(len(check_text(r["answer"])) for r in rows)
    print(f"steps judge on GSM8K test solutions: {valid}/{len(rows)} valid, {checked} claims checked")
    assert valid / len(rows) >= 0.97
    assert checked >= 5 * len(rows)  # it really reads the solutions' arithmetic


def test_gsm8k_solution_with_a_planted_error_is_caught(shared_data) -> None:
    rows = [
        json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:200]
    ]
    caught = 0
    for r in rows:
        # change the result of the first calculator annotation: "<<16-3-4=9>>" -> "<<16-3-4=10>>"
        a = r["answer"]
        start = a.find("<<")
        if start < 0:
            continue
        end = a.find(">>", start)
        lhs, rhs = a[start + 2 : end].split("=")
        try:
            wrong = str(float(rhs) + 1).removesuffix(".0")
        except ValueError:
            continue
        caught += not verdict_for(a[:start] + f"<<{lhs}={wrong}>>" + a[end + 2 :]).valid
    assert caught >= 190
