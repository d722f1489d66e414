"""Unit tests of answer extraction and checking (qrdistill.tasks.extract)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from qrdistill.tasks import TASKS, get_task
from qrdistill.tasks.base import AnswerScore, Record
from qrdistill.tasks.extract import (
    DateTask,
    MathTask,
    MultipleChoiceTask,
    NumberTask,
    YesNoTask,
    check_choice,
    check_date,
    check_math,
    check_number,
    check_yes_no,
    extract_choice,
    extract_date,
    extract_math,
    extract_number,
    extract_yes_no,
    last_boxed,
    math_equal,
    normalize_number,
    normalize_text,
    strict_choice,
    strict_number,
    strict_span,
    strict_yes_no,
)

DATES = ["05/02/2021", "05/01/2021", "04/29/2021", "05/09/2021"]


def mc(answer: str = "B", choices: list[str] | None = None) -> Record:
    choices = choices or DATES
    return Record(
        id="q", question="?", answer=answer, choices=choices, meta={"answer_text": choices[ord(answer) - 65]}
    )


# ---------------------------------------------------------------- strict vs flexible


def test_strict_phrase_beats_earlier_letters():
    text = "I first thought (A) 05/02/2021, then (B). The answer is (C) 04/29/2021."
    assert extract_choice(text, DATES) == "C"


def test_strict_phrase_beats_later_letters():
    # The committed answer wins even when other letters follow it.
    text = "The answer is (C).\n\nNote: (A) and (B) are wrong because ..."
    assert extract_choice(text, DATES) == "C"


def test_last_strict_phrase_wins():
    text = "One might say the answer is (A). But checking again, the final answer is **(D)**."
    assert extract_choice(text, DATES) == "D"


def test_flexible_takes_the_one_letter_without_strict_phrase():
    assert extract_choice("Thinking... so it must be\n**C**", DATES) == "C"
    assert extract_choice("Option B", DATES) == "B"
    # Letter and text of the same option are one option.
    assert extract_choice("So today is (B) 05/01/2021.", DATES) == "B"


def test_flexible_takes_the_one_option_text():
    assert extract_choice("Yesterday was 4/30/2021, so today is 5/1/2021.", DATES) == "B"


def test_flexible_names_several_options_is_no_answer():
    # Was "D" (the last one named), as lm-eval's MultiChoiceRegexFilter reads it.
    assert extract_choice("Compare (A) with (B); clearly (D) fits.", DATES) is None
    assert extract_choice("Not 05/02/2021 but 5/9/2021.", DATES) is None
    assert extract_choice("(A) or\n**B**", DATES) is None
    assert extract_choice("So today is (A) 05/01/2021.", DATES) is None


def test_walking_through_the_options_is_not_credited():
    # A weak student lists the options in order and never picks one; the gold is the last listed.
    options = ["03/02/2011", "04/10/2011", "04/29/2011", "05/05/2011"]
    text = (
        "Step 1: 03/02/2011 is the date one week ago.\nStep 2: 04/10/2011 is the date\n"
        "Step 3: 04/29/2011 is the\nStep 4: 05/05/2011 is the"
    )
    assert extract_choice(text, options) is None
    assert not check_choice(text, mc("D", options))
    assert not MultipleChoiceTask().score(text, mc("D", options)).correct


def test_option_inside_a_longer_option_is_not_named_too():
    choices = ["water", "salt water", "sand"]
    assert extract_choice("It dissolves best in salt water.", choices) == "B"
    assert extract_choice("It dissolves best in water.", choices) == "A"
    assert extract_choice("Not water: salt water.", choices) is None


def test_letter_outside_options_is_ignored():
    # Only four options: (E) is not an answer, so the flexible pass falls back to (B).
    assert extract_choice("(B) ... (E)", DATES) == "B"
    assert extract_choice("The answer is (F).", DATES) is None


def test_no_answer_at_all():
    assert extract_choice("I do not know.", DATES) is None
    assert extract_number("no digits here") is None
    assert extract_yes_no("maybe") is None
    assert extract_date("sometime in May") is None


@pytest.mark.parametrize(
    "text",
    [
        "(B)",
        "B",
        "B.",
        "**B**",
        "**(B)**",
        "The answer is B.",
        "the answer is (B)",
        "The answer is (B) 05/01/2021.",
        "The answer is **(B) 05/01/2021**.",
        "05/01/2021",
        "05/01/2021.",
        "The answer is 05/01/2021.",
        "The answer is 5/1/2021",
        "Final answer: (B)",
        "The answer is:\n(B)",
        "Yesterday was 04/30/2021, so today is 05/01/2021.",
    ],
)
def test_choice_forms_accepted(text):
    assert check_choice(text, mc("B"))


@pytest.mark.parametrize(
    "text",
    [
        "(A)",
        "**D**",
        "The answer is C.",
        "04/29/2021",
        "The answer is (A) 05/02/2021.",
        "The answer is (E)",
        "",
    ],
)
def test_choice_wrong_rejected(text):
    assert not check_choice(text, mc("B"))


def test_option_text_wins_over_a_mismatched_letter():
    # The response computed the right date but mis-lettered it: the stated text decides.
    assert check_choice("The answer is (A) 05/01/2021.", mc("B"))
    assert not check_choice("The answer is (B) 05/02/2021.", mc("B"))


def test_text_options_matched_case_and_space_insensitively():
    choices = ["a cell wall", "the nucleus", "a  Cell membrane"]
    rec = mc("C", choices)
    assert check_choice("The answer is A cell membrane.", rec)
    assert check_choice("The answer is (C)", rec)
    assert not check_choice("The answer is a cell wall.", rec)


def test_gsm8k_hash_is_strict():
    assert strict_span("blah 3 + 4 = 7\n#### 7") == "7"
    assert extract_number("Earlier 12, later 99.\n#### 1,200") == "1200"


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 1,000.",
        "$1000",
        "\\boxed{1000}",
        "1000.00",
        "The answer is $1,000.00 total.",
        "**1000**",
        "#### 1000",
        "We get 999 + 1 = 1000",
        "The answer is 1000 dollars.",
    ],
)
def test_number_forms(text):
    assert check_number(text, "1000")
    assert not check_number(text, "100")


def test_number_strict_first_number_vs_flexible_last():
    assert extract_number("The answer is 18 (9 eggs times 2 dollars).") == "18"
    assert extract_number("9 eggs times 2 dollars = 18") == "18"
    assert extract_number("The answer is 9 * 2 = $18.") == "18"


def test_normalize_number():
    assert normalize_number("$1,234.50") == "1234.5"
    assert normalize_number("-3.0") == "-3"
    assert normalize_number("18.") == "18"
    assert normalize_number("twelve") is None


def test_negative_and_decimal_numbers():
    assert check_number("The answer is -5.", "-5")
    assert not check_number("The answer is 5.", "-5")
    assert check_number("The answer is 0.75.", ".75")


# ---------------------------------------------------------------- yes / no


@pytest.mark.parametrize(
    "text",
    [
        "Yes",
        "**Yes**.",
        "The answer is Yes.",
        "the answer is yes, because ...",
        "No idea at first, but yes",
        "The answer is **YES**",
    ],
)
def test_yes_forms(text):
    assert check_yes_no(text, "Yes")
    assert not check_yes_no(text, "No")


def test_yes_no_strict_beats_last_word():
    assert extract_yes_no("The answer is No. (Some would say yes.)") == "No"


def test_yes_no_words_inside_other_words_do_not_count():
    assert extract_yes_no("Nobody knows; eyes closed.") is None


def test_yes_no_flexible_with_both_words_is_no_answer():
    assert extract_yes_no("Yes, it could. But no, it cannot.") is None
    assert extract_yes_no("**No**\nWait, yes.") is None
    assert not check_yes_no("Yes, it could. But no, it cannot.", "No")
    # A strict answer line still decides.
    assert extract_yes_no("Yes, it could. But no. The answer is No.") == "No"


def test_no_before_a_word_is_a_determiner_not_an_answer():
    # Was "No" (the last yes/no word) although the response says yes.
    assert extract_yes_no("Yes, because pancakes contain no meat.") == "Yes"
    assert extract_yes_no("There is no record of it.") is None
    assert extract_yes_no("There is no record of it, so no.") == "No"


# ---------------------------------------------------------------- dates never go through math-verify


def test_dates_compared_exactly_not_numerically():
    from math_verify import parse, verify

    # math-verify reads both as the leading number and calls them equal ...
    assert verify(
        parse("01/02/2021", parsing_timeout=None),
        parse("01/09/2021", parsing_timeout=None),
        timeout_seconds=None,
    )
    # ... the date checker does not.
    assert not check_date("The answer is 01/09/2021.", "01/02/2021")
    assert check_date("The answer is 1/2/2021.", "01/02/2021")
    assert not check_choice("The answer is 01/09/2021", mc("A", ["01/02/2021", "01/09/2021"]))


def test_date_strict_then_last():
    assert (
        extract_date("From 04/30/2021 add a day. The answer is 05/01/2021; not 05/02/2021.") == "05/01/2021"
    )
    assert extract_date("From 04/30/2021 add a day: 5/1/2021") == "05/01/2021"


def test_numbers_and_dates_keep_taking_the_last_value():
    # Intermediate values are no lack of commitment: unchanged from lm-eval.
    assert extract_number("First 3 apples, then 5 more, so 8 in total") == "8"
    assert strict_number("First 3 apples, then 5 more, so 8 in total") is None
    assert extract_date("04/29/2021 plus two days gives 05/01/2021") == "05/01/2021"


def test_normalize_text():
    assert normalize_text("  **The  Nucleus.** ") == "the nucleus"
    assert normalize_text("5/1/2021.") == "05/01/2021"


# ---------------------------------------------------------------- math expressions (math-verify)


def test_last_boxed_handles_nesting():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{\sqrt{2}}}.") == r"\frac{1}{\sqrt{2}}"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed 5 and then {x}") == "5"
    assert last_boxed(r"\boxed{unclosed") is None


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        (r"The answer is $\frac{1}{2}$.", "0.5"),
        (r"so $x = \boxed{\frac{2}{4}}$", r"\frac12"),
        (r"The final answer is $\frac{\sqrt{2}}{2}$. I hope it is correct.", r"\frac{1}{\sqrt{2}}"),
        (r"The answer is (3, -1).", "(3,-1)"),
        ("The answer is 1,000.", "1000"),
    ],
)
def test_math_equivalent_answers(text, gold):
    assert check_math(text, gold)


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        (r"The answer is $\frac{1}{3}$.", "0.5"),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{2}"),
        ("The answer is 7.", "8"),
    ],
)
def test_math_wrong_answers(text, gold):
    assert not check_math(text, gold)


def test_extract_math_prefers_boxed():
    assert extract_math(r"The answer is 3. Actually \boxed{4}") == "4"
    assert extract_math(r"We find $x=2$ and then $y = 5$") == "y = 5"


def test_math_verify_works_off_the_main_thread():
    # Its default timeouts use SIGALRM, which raises in worker threads; ours are off.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda g: math_equal(r"\frac{6}{4}", g), [r"\frac{3}{2}", "1.5", "2"]))
    assert results == [True, True, False]


# ---------------------------------------------------------------- Task.score: strict and flexible side by side

CONFLICT_DATES = ["09/03/2028", "08/29/2028", "08/30/2028", "09/02/2028", "09/01/2028"]


def test_letter_text_conflict_is_flagged_and_the_text_wins():
    # (E) is 09/01/2028; 08/29/2028 is option (B).
    text = "The answer is (E) 08/29/2028."
    got = MultipleChoiceTask().score(text, mc("B", CONFLICT_DATES))
    assert got == AnswerScore(pred="B", correct=True, strict_pred="B", strict_correct=True, conflict=True,
                               letter_correct=False)
    assert strict_choice(text, CONFLICT_DATES) == "B"
    assert not MultipleChoiceTask().score(text, mc("E", CONFLICT_DATES)).correct


@pytest.mark.parametrize(
    "text",
    ["The answer is (B) 08/29/2028.", "The answer is (E).", "The answer is 08/29/2028.", "(E) 08/29/2028"],
)
def test_no_conflict_without_a_disagreeing_answer_line(text):
    assert not MultipleChoiceTask().score(text, mc("B", CONFLICT_DATES)).conflict


def test_one_clear_option_without_answer_line_is_flexible_only():
    text = "Yesterday was 04/30/2021, so today is 05/01/2021."
    got = MultipleChoiceTask().score(text, mc("B"))
    assert got == AnswerScore(pred="B", correct=True, strict_pred=None, strict_correct=False, conflict=False,
                              letter_correct=True)


def test_unreadable_answer_line_falls_back_to_flexible():
    got = MultipleChoiceTask().score("So (B).\nThe answer is unclear.", mc("B"))
    assert (got.pred, got.correct, got.strict_pred, got.strict_correct) == ("B", True, None, False)


def test_strict_scores_of_the_other_kinds():
    rec = Record(id="q", question="?", answer="8")
    assert NumberTask().score("3 + 5 = 8", rec) == AnswerScore("8", True, None, False, False)
    assert NumberTask().score("The answer is 8.", rec) == AnswerScore("8", True, "8", True, False)
    assert NumberTask().score("The answer is 7, not 8", rec) == AnswerScore("7", False, "7", False, False)
    yes = Record(id="q", question="?", answer="Yes")
    assert YesNoTask().score("**Yes**", yes) == AnswerScore("Yes", True, None, False, False)
    assert strict_yes_no("The answer is yes.") == "Yes"
    day = Record(id="q", question="?", answer="05/01/2021")
    assert DateTask().score("The answer is 5/1/2021.", day) == AnswerScore(
        "05/01/2021", True, "05/01/2021", True, False
    )
    half = Record(id="q", question="?", answer="0.5")
    assert MathTask().score(r"so $x = \frac{1}{2}$", half) == AnswerScore(
        r"x = \frac{1}{2}", True, None, False, False
    )
    assert MathTask().score(r"The answer is $\frac{2}{4}$.", half) == AnswerScore(
        r"\frac{2}{4}", True, r"\frac{2}{4}", True, False
    )


_KIND_RECORDS = [
    (MultipleChoiceTask, mc("B")),
    (YesNoTask, Record(id="q", question="?", answer="Yes")),
    (NumberTask, Record(id="q", question="?", answer="1000")),
    (MathTask, Record(id="q", question="?", answer=r"\frac{1}{2}")),
    (DateTask, Record(id="q", question="?", answer="05/01/2021")),
]
_TEXTS = [
    "",
    "I do not know.",
    "The answer is (B) 05/01/2021.",
    "The answer is (A) 05/01/2021.",
    "The answer is (C).",
    "Yesterday was 04/30/2021, so today is 05/01/2021.",
    "Compare (A) with (B); clearly (D) fits.",
    "The answer is Yes.",
    "Yes, it could. But no.",
    "**Yes**",
    "The answer is 1,000.",
    "999 + 1 = 1000",
    "#### 999",
    r"\boxed{\frac{2}{4}}",
    r"We find $x = 0.5$",
    "The answer is unclear. Maybe 1000.",
]


@pytest.mark.parametrize("name", TASKS.names())
def test_score_agrees_with_extract_answer_and_is_correct(name):
    task = get_task(name)
    record = next(r for kind, r in _KIND_RECORDS if isinstance(task, kind))
    for text in _TEXTS:
        got = task.score(text, record)
        assert got.pred == task.extract_answer(text, record), text
        assert got.correct == task.is_correct(text, record), text
        # A strict answer is the answer: the flexible pass only runs without one.
        assert got.strict_pred is None or got.strict_pred == got.pred, text
        assert got.strict_correct == (got.strict_pred is not None and got.correct), text
        assert not got.conflict or isinstance(task, MultipleChoiceTask), text


def test_score_says_what_the_letter_rule_would_have_decided():
    from qrdistill.tasks import get_task
    from qrdistill.tasks.base import Record

    task = get_task("procedural_date")
    rec = Record(id="x", question="q", answer="B", choices=["01/01/2020", "02/02/2020", "03/03/2020"],
                 meta={"answer_text": "02/02/2020"})
    text_right = task.score("The answer is (A) 02/02/2020.", rec)
    assert text_right.correct and text_right.conflict and text_right.letter_correct is False
    letter_right = task.score("The answer is (B) 01/01/2020.", rec)
    assert not letter_right.correct and letter_right.letter_correct is True
    agree = task.score("The answer is (B) 02/02/2020.", rec)
    assert agree.correct and not agree.conflict and agree.letter_correct is True
    assert get_task("procedural_arith").score("The answer is 5.", Record("y", "q", "5")).letter_correct is None


CHOICES = ["12/14/1998", "01/11/1999", "01/09/1999", "01/11/2000", "12/12/1998", "12/13/1998"]


@pytest.mark.parametrize("text, strict", [
    ("Blah. The answer: (B).", "B"),  # lm-eval's BBH phrase, at a sentence start
    ("So the answer is (b).", "B"),  # a lower-case letter alone (lm-eval ignores case)
    ("So the answer is (b) 01/11/1999.", "B"),  # ... or followed by its option's text
    ("Let me find the answer: one day after 01/01/2020 is 01/02/2020.", None),  # working, not an answer line
    ("We need the answer:\n(a) one day after is 01/11/1999, (b) gives 01/09/1999.", None),  # a list marker
    ("The answer is (b) first we add.", None),  # a lower-case "(b)" opening more working
])
def test_answer_line_forms_and_what_is_not_an_answer_line(text, strict):
    from qrdistill.tasks.extract import strict_choice

    assert strict_choice(text, CHOICES) == strict
