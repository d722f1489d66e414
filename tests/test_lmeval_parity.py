"""Evaluation parity with lm-evaluation-harness (issue 9): on the same responses, the project's answer
extraction and lm-eval's published extraction rules agree on at least 99 % of rows, per filter, and every
row where they differ is one this file explains.

lm-eval's side is lm-eval itself: the task YAMLs of the installed package, read with the loader its
TaskManager uses (`!function` tags and `include`s resolved), turned into filter pipelines by
`lm_eval.filters.build_filter_ensemble` as `ConfigurableTask.__init__` does, applied by
`FilterEnsemble.apply` to `Instance`s, and scored by its `exact_match` metric with the `metric_list`
options of the YAML (ignore_case, regexes_to_ignore) against the YAML's `doc_to_target`. No regex is
re-typed here; `test_direct_scoring_is_lm_eval_task_scoring` checks this path against lm-eval's own task
objects (TaskManager, `apply_filters`, `process_results`) on every stress row and a sample of the others.

- Date: `bbh_cot_zeroshot_date_understanding` (lm_eval/tasks/bbh/cot_zeroshot/date_understanding.yaml):
  strict-match (the rest of the line after "The answer is " / "the answer is " / "The answer: ", the
  first such line, exact match with "(X)") and flexible-extract (`utils.MultiChoiceRegexFilter` of that
  folder: the last "(X)", else the last option text, else ": X").
- GSM8K: `gsm8k_cot_zeroshot` (lm_eval/tasks/gsm8k/gsm8k-cot-zeroshot.yaml): strict-match
  ("The answer is (-?[0-9.,]+).") and flexible-extract (the last number). Chosen over the 8-shot
  `gsm8k_cot` because the project evaluates zero-shot and its lm-eval bridge (`qrdistill.lmeval`) runs
  gsm8k_cot_zeroshot (and gsm8k_student, its scoring); the two YAMLs have the same filter_list and
  metric_list (checked below), so the figures hold for gsm8k_cot as well.

Compared per row: the project's `AnswerScore.strict_correct` (the answer line only) with strict-match's
verdict, and its `AnswerScore.correct` (the accuracy it reports beside strict: the answer line, else the
flexible pass) with flexible-extract's; and, where both read an answer, the answers (a letter; a number
compared as a decimal).

The fixture is built here, deterministically, from the real questions in ../shared/data (all 369 Date
questions, both splits, options shuffled and lettered by the project's loader; all 1319 GSM8K test
questions) and from the project's simulated teacher on the procedural tasks:
- date: three BBH-style chain-of-thought responses per question ending "So the answer is (X)." (right
  and wrong options), plus 32 stress rows (`DATE_STRESS`);
- gsm8k: the human solution of each question without its calculator notes, ending "The answer is N."
  (right, or a wrong N), 120 simulated-teacher paths of `procedural_arith` in all six styles, plus 25
  stress rows (`GSM8K_STRESS`).
Stress rows: bare letter, option text only, letter and text naming different options, no answer line,
several options walked through, trailing text, "$", thousands separators, "####", \\boxed, "18.00",
truncated responses. Each stress kind names the filters it is expected to disagree on and why; the test
fails on any other disagreement and on an expected one that no longer happens. Each kind that disagrees
gets one row: the 99 % bar leaves 11 disagreeing rows in ~1100 (which is why every question is used), so
a new kind of disagreement is a decision to make here, with its reason, not noise.

Measured with lm_eval 0.4.13 (verdict agreement; the explained rows are the only disagreements):
- date (1139 rows): strict-match 99.30 % (8 explained), flexible-extract 99.39 % (7 explained);
- gsm8k (1464 rows): strict-match 99.32 % (10 explained), flexible-extract 99.86 % (2 explained).

Not in those figures, and pinned on its own (`test_project_answer_format_gets_no_lm_eval_strict_credit`):
the answer line the project instructs and trains on, "The answer is (X) <option text>.", is never credited
by BBH strict-match (it compares "(x) 05/02/2021" with "(x)"): on 489 such responses the project's strict
accuracy is 68.5 % and lm-eval's strict-match 0 %, while flexible-extract agrees with the project on all.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI"):
    # CI installs the lmeval extra: a skip there would hide a missing install step.
    import lm_eval
else:
    lm_eval = pytest.importorskip("lm_eval", reason="the parity test needs the extra: pip install -e '.[lmeval]'")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_metric  # noqa: E402
from lm_eval.filters import build_filter_ensemble  # noqa: E402

# The YAML loader of lm_eval's TaskManager: it resolves `include` and the `!function` tags.
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402
from lm_eval.utils import apply_template  # noqa: E402
from lm_eval.utils import env as jinja_env  # noqa: E402

from qrdistill.backends import Request, get_backend  # noqa: E402
from qrdistill.config.generate import SimulatedBackendConfig  # noqa: E402
from qrdistill.styles import STYLES, render  # noqa: E402
from qrdistill.tasks import Record, get_task  # noqa: E402

LM_TASKS = Path(lm_eval.__file__).parent / "tasks"
DATE_YAML = "bbh/cot_zeroshot/date_understanding.yaml"
GSM8K_YAML = "gsm8k/gsm8k-cot-zeroshot.yaml"
STRICT, FLEX = "strict-match", "flexible-extract"
MIN_AGREEMENT = 0.99


# ---------------------------------------------------------------- lm-eval's scoring


class LmEvalScoring:
    """One lm_eval task's filters and exact_match, built from its installed YAML as lm_eval builds them."""

    def __init__(self, yaml: str) -> None:
        self.config = load_yaml(LM_TASKS / yaml)
        # As ConfigurableTask.__init__: each filter_list entry is a pipeline of (function, kwargs) steps.
        self.filters = [
            build_filter_ensemble(f["name"], [[step["function"], {k: v for k, v in step.items() if k != "function"}]
                                              for step in f["filter"]])
            for f in self.config["filter_list"]
        ]
        (metric,) = self.config["metric_list"]
        assert metric["metric"] == "exact_match"
        self.metric = get_metric("exact_match", False)
        self.metric_kwargs = {k: v for k, v in metric.items()
                              if k not in ("metric", "aggregation", "higher_is_better", "hf_evaluate")}
        # lm_eval.utils.apply_template, compiled once (it compiles the template on every call).
        self._target = jinja_env.from_string(self.config["doc_to_target"])

    def target(self, doc: dict[str, Any]) -> str:
        return self._target.render(**doc)

    def run(self, docs: list[dict[str, Any]], responses: list[str]) -> dict[str, list[tuple[str, bool]]]:
        """{filter name: [(filtered answer, exact_match), ...]} for one response per doc."""
        instances = [Instance("generate_until", doc, ("", {}), 0, resps=[resp])
                     for doc, resp in zip(docs, responses, strict=True)]
        for ensemble in self.filters:
            ensemble.apply(instances)
        targets = [self.target(doc) for doc in docs]
        out: dict[str, list[tuple[str, bool]]] = {}
        for ensemble in self.filters:
            answers = [inst.filtered_resps[ensemble.name] for inst in instances]
            out[ensemble.name] = [
                (answer, bool(self.metric(references=[gold], predictions=[answer], **self.metric_kwargs)["exact_match"]))
                for answer, gold in zip(answers, targets, strict=True)
            ]
        return out

    def normalized(self, answer: str) -> str:
        """`answer` as exact_match compares it (its regexes_to_ignore, ignore_case, ignore_punctuation)."""
        for rx in self.metric_kwargs.get("regexes_to_ignore") or []:
            answer = re.sub(rx, "", answer)
        if self.metric_kwargs.get("ignore_case"):
            answer = answer.lower()
        assert not self.metric_kwargs.get("ignore_punctuation") and not self.metric_kwargs.get("ignore_numbers")
        return answer


@pytest.fixture(scope="module")
def bbh() -> LmEvalScoring:
    return LmEvalScoring(DATE_YAML)


@pytest.fixture(scope="module")
def gsm() -> LmEvalScoring:
    return LmEvalScoring(GSM8K_YAML)


# ---------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    id: str
    #: the project task whose `score` reads it ("date", "gsm8k", or the procedural task of a simulated path)
    task: str
    kind: str
    record: Record
    response: str
    doc: dict[str, Any]
    #: filter name -> why the two sides differ on this row (by design, or a gap reported on issue 9);
    #: empty: they agree
    expect: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stress:
    """A response variant that stresses the extractors; `expect` says on which filters it disagrees, and why."""

    build: Callable[..., str]
    expect: dict[str, str] = field(default_factory=dict)
    #: how many records get it
    n: int = 1
    #: only records it applies to
    when: Callable[[Record], bool] | None = None


# ---------------------------------------------------------------- date rows

_ASK = re.compile(r"(?s)^(?P<premise>.*?)\s*What is the date (?P<when>.*?) in MM/DD/YYYY\?\s*$")


def _date_parts(r: Record) -> tuple[str, str]:
    m = _ASK.match(r.question)
    assert m, r.question  # every BIG-bench Date question asks "What is the date ... in MM/DD/YYYY?"
    return m["premise"], m["when"]


def _letter(i: int) -> str:
    return chr(65 + i)


def _wrong(r: Record, rng: random.Random) -> int:
    return rng.choice([i for i in range(len(r.choices)) if _letter(i) != r.answer])


def _gold(r: Record) -> int:
    return ord(r.answer) - 65


def _long(date_text: str) -> str:
    d = dt.datetime.strptime(date_text, "%m/%d/%Y").date()
    return f"{d:%B} {d.day}, {d.year}"


def _date_cot(r: Record, i: int, rng: random.Random) -> str:
    """A BBH-style zero-shot chain of thought that settles on option i."""
    premise, when = _date_parts(r)
    text = r.choices[i]
    body = rng.choice([
        f"{premise} So the date {when} is {_long(text)}, that is {text} in MM/DD/YYYY.",
        f"{premise}\nThe question asks for the date {when}.\nCounting on the calendar from there gives {text}.",
        f"We know: {premise} The date {when} is then {text}.",
    ])
    return f"{body} So the answer is ({_letter(i)})."


def _date_main(r: Record, k: int) -> Row:
    rng = random.Random(f"lmeval-parity:date:{r.id}:{k}")
    # Per question: one right, one wrong, one either way.
    right = k == 0 or (k == 2 and rng.random() < 0.5)
    i = _gold(r) if right else _wrong(r, rng)
    return Row(f"date:{r.id}:{k}", "date", "bbh_cot", r, _date_cot(r, i, rng), _bbh_doc(r))


def _bbh_doc(r: Record) -> dict[str, Any]:
    # As qrdistill.lmeval writes the project's Date questions for lm_eval: its prompt, target "(X)".
    return {"input": get_task("date").prompt(r), "target": f"({r.answer})"}


def _premise_names_an_option(r: Record, but_gold: bool = False) -> bool:
    premise, _ = _date_parts(r)
    return any(c in premise for i, c in enumerate(r.choices) if not (but_gold and i == _gold(r)))


def _has_padded_gold(r: Record) -> bool:
    return r.meta["answer_text"][0] == "0" or r.meta["answer_text"][3] == "0"


def _unpadded(text: str) -> str:
    m, d, y = text.split("/")
    return f"{int(m)}/{int(d)}/{y}"


STRICT_EXACT = ("lm-eval's strict-match compares the rest of the answer line with the target '(X)' character for "
                "character; the project's strict pass reads {what} as that option")

DATE_STRESS: dict[str, Stress] = {
    # -- the answer line in other shapes
    "letter_only": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} The date asked for is {r.choices[g]}. So the answer is {_letter(g)}.",
        {STRICT: STRICT_EXACT.format(what="a bare letter 'B'")}),
    "letter_only_wrong": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} The date asked for is {r.choices[w]}. So the answer is {_letter(w)}.",
        n=2),
    "text_only": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} So the answer is {r.choices[g]}.",
        {STRICT: STRICT_EXACT.format(what="an option's text '05/02/2021'")}),
    "text_only_wrong": Stress(lambda r, g, w: f"{_date_parts(r)[0]} So the answer is {r.choices[w]}.", n=2),
    "letter_and_text": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} The answer is ({_letter(g)}) {r.choices[g]}.",
        {STRICT: STRICT_EXACT.format(what="'(B) 05/02/2021', the line it instructs,")}),
    "letter_and_text_wrong": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} The answer is ({_letter(w)}) {r.choices[w]}.", n=2),
    # -- letter and text naming different options
    "conflict_text_right": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} The answer is ({_letter(w)}) {r.choices[g]}.",
        {STRICT: "letter and text name different options: the project's text-wins rule (qrdistill.tasks.extract "
                 "docstring) credits the text; lm-eval's strict-match compares the whole line with '(X)'",
         FLEX: "letter and text name different options: the project credits the text, lm-eval's flexible-extract "
               "the last '(X)'"}),
    "conflict_letter_right": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} The answer is ({_letter(g)}) {r.choices[w]}.",
        {FLEX: "letter and text name different options: lm-eval's flexible-extract credits the letter, the "
               "project's text-wins rule the (wrong) text"}),
    # -- no answer line
    "walk_options_ending_right": Stress(
        lambda r, g, w: "Let's check the options one by one.\n" + "\n".join(
            f"({_letter(i)}) {r.choices[i]} " + ("fits the question." if i == g else "does not fit.")
            for i in [*(j for j in range(len(r.choices)) if j != g), g]),
        {FLEX: "several options named and no answer line: the project gives no answer (a response must commit, "
               "docs/method.md 'Evaluation budget and scoring'); lm-eval's flexible-extract takes the last '(X)'"}),
    "walk_options_ending_wrong": Stress(
        lambda r, g, w: "Let's check the options one by one.\n" + "\n".join(
            f"({_letter(i)}) {r.choices[i]} " + ("fits the question." if i == w else "does not fit.")
            for i in [*(j for j in range(len(r.choices)) if j != w), w]), n=2),
    "one_option_no_answer_line": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} So the date {_date_parts(r)[1]} is {r.choices[g]}, option ({_letter(g)}).",
        n=2),
    "truncated_at_the_date": Stress(
        lambda r, g, w: f"The date {_date_parts(r)[1]} would be {r.choices[g]}", n=3),
    "truncated_before_any_date": Stress(lambda r, g, w: f"{_date_parts(r)[0]} To find the date", n=2,
                                        when=lambda r: not _premise_names_an_option(r)),
    "truncated_premise_is_an_option": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} So the date {_date_parts(r)[1]} is {r.choices[g]}",
        {FLEX: "no answer line, and the premise repeats another option's date: the project sees two options "
               "named and gives no answer (must commit); lm-eval's flexible-extract takes the last option text"},
        when=lambda r: _premise_names_an_option(r, but_gold=True)),
    "unpadded_date_no_answer_line": Stress(
        lambda r, g, w: f"The date {_date_parts(r)[1]} is {_unpadded(r.choices[g])}",
        {FLEX: "the project matches an option's date with or without zero padding ('5/2/2021'); lm-eval's "
               "option-text fallback needs the option's characters ('05/02/2021')"},
        when=_has_padded_gold),
    # -- around the answer line
    "trailing_text_next_line": Stress(
        lambda r, g, w: _date_cot(r, g, random.Random(r.id)) + "\nI hope this helps!", n=2),
    "trailing_text_same_line": Stress(
        lambda r, g, w: _date_cot(r, g, random.Random(r.id)) + " I hope this helps!",
        {STRICT: "text after the answer on its line: lm-eval's strict-match keeps the line up to its last "
                 "character ('(B). I hope this helps')"}),
    "trailing_other_option": Stress(
        lambda r, g, w: _date_cot(r, g, random.Random(r.id)) + f"\nNote that ({_letter(w)}) {r.choices[w]} is a trap.",
        {FLEX: "an option mentioned after the answer line: lm-eval's flexible-extract takes the last '(X)' in the "
               "response, the project's accuracy the answer line"}),
    "self_correction": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} The answer is ({_letter(w)}).\nWait, that is not right. "
                        f"The date {_date_parts(r)[1]} is {r.choices[g]}. So the answer is ({_letter(g)}).",
        {STRICT: "two answer lines: lm-eval's strict-match takes the first, the project's strict pass the last "
                 "(a chain of thought may revise a tentative answer)"}),
    "no_final_period": Stress(
        lambda r, g, w: _date_cot(r, g, random.Random(r.id)).removesuffix("."),
        {STRICT: "the answer line ends without a period: lm-eval's strict regex `(.*)(?=.)` drops the line's last "
                 "character, leaving '(B'"}),
    "bold_answer_line": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]}\n**The answer is ({_letter(g)}).**",
        {STRICT: "a markdown-bold answer line: lm-eval's strict-match keeps '(B).*'; the project drops the markup"}),
    # Both were gaps in the project's strict pass (it read "Answer:" only at a line start, and upper-case letters
    # only); fixed, they agree with lm-eval's strict-match.
    "the_answer_colon": Stress(lambda r, g, w: f"{_date_parts(r)[0]} The answer: ({_letter(g)})."),
    "lower_case_letter": Stress(
        lambda r, g, w: f"{_date_parts(r)[0]} So the answer is ({_letter(g).lower()}).",
        {FLEX: "lm-eval's flexible-extract matches upper-case '(X)' only, so it finds no option in '(b)'; the "
               "project's flexible pass starts from the answer line, which reads it as B (as strict-match does)"}),
}


def _stress_rows(records: list[Record], table: dict[str, Stress], make: Callable[[Record, Stress, str], Row]) -> list[Row]:
    """Each stress kind applied to its next `n` records, walking the records with a fixed stride."""
    rows = []
    pos = 0
    for kind, stress in table.items():
        got = 0
        while got < stress.n:
            r = records[pos % len(records)]
            pos += 7
            if stress.when is None or stress.when(r):
                rows.append(make(r, stress, kind))
                got += 1
    return rows


def date_rows(records: list[Record]) -> list[Row]:
    rows = [_date_main(r, k) for r in records for k in range(3)]

    def make(r: Record, stress: Stress, kind: str) -> Row:
        g = _gold(r)
        w = _wrong(r, random.Random(f"lmeval-parity:wrong:{r.id}"))
        return Row(f"date:{r.id}:{kind}", "date", kind, r, stress.build(r, g, w), _bbh_doc(r), stress.expect)

    return rows + _stress_rows(records, DATE_STRESS, make)


# ---------------------------------------------------------------- gsm8k rows

_CALC = re.compile(r"<<[^>]*>>")


def _gsm_body(r: Record) -> str:
    """The human solution as a model would write it: no calculator notes, no '#### N' line."""
    return _CALC.sub("", r.meta["solution"].rsplit("####", 1)[0]).strip()


def _gsm_final(r: Record) -> str:
    """The gold answer as written after '####' (thousands separators kept)."""
    return r.meta["solution"].rsplit("####", 1)[1].strip()


def _gsm_wrong(r: Record, rng: random.Random) -> str:
    gold = int(r.answer)  # every GSM8K test answer is an integer
    return str(gold + rng.choice([1, 2, 10] if gold < 11 else [-10, -2, -1, 1, 2, 10]))


def _gsm_doc(r: Record) -> dict[str, Any]:
    return {"question": r.question, "answer": r.meta["solution"]}


def _gsm_main(r: Record) -> Row:
    rng = random.Random(f"lmeval-parity:gsm8k:{r.id}")
    answer = _gsm_final(r) if rng.random() < 0.65 else _gsm_wrong(r, rng)
    return Row(f"gsm8k:{r.id}", "gsm8k", "solution", r, f"{_gsm_body(r)}\nThe answer is {answer}.", _gsm_doc(r))


GSM8K_STRESS: dict[str, Stress] = {
    "hash_answer": Stress(
        lambda r: f"{_gsm_body(r)}\n#### {_gsm_final(r)}",
        {STRICT: "'#### N' is a final answer for the project (as for lm-eval's own 5-shot gsm8k task); "
                 "gsm8k_cot_zeroshot's strict-match reads only 'The answer is N.'"}),
    "hash_answer_wrong": Stress(lambda r: f"{_gsm_body(r)}\n#### {_gsm_wrong(r, random.Random(r.id))}", n=2),
    "dollar_sign": Stress(
        lambda r: f"{_gsm_body(r)}\nThe answer is ${_gsm_final(r)}.",
        {STRICT: "'The answer is $18.': lm-eval's strict regex `(\\-?[0-9\\.\\,]+)` has no '$'; the project drops it"}),
    "thousands_separator": Stress(lambda r: f"{_gsm_body(r)}\nThe answer is {int(r.answer):,}.", n=2,
                                  when=lambda r: int(r.answer) >= 1000),
    "trailing_zeros": Stress(
        lambda r: f"{_gsm_body(r)}\nThe answer is {r.answer}.00.",
        {STRICT: "'18.00': lm-eval's exact_match compares strings, the project numbers",
         FLEX: "'18.00': lm-eval's exact_match compares strings, the project numbers"}),
    "units": Stress(lambda r: f"{_gsm_body(r)}\nThe answer is {_gsm_final(r)} dollars.", n=2),
    "expression_in_answer_line": Stress(
        lambda r: f"{_gsm_body(r)}\nThe answer is 1 + {int(r.answer) - 1} = {r.answer}.",
        {STRICT: "'The answer is 1 + 17 = 18.': lm-eval's strict-match takes the first number; the project the "
                 "result after the last '='"},
        when=lambda r: int(r.answer) > 1),
    "trailing_text": Stress(
        lambda r: f"{_gsm_body(r)}\nThe answer is {_gsm_final(r)}.\nI checked each step twice in 3 passes.",
        {FLEX: "a number after the answer line: lm-eval's flexible-extract takes the last number, the project's "
               "accuracy the answer line"}),
    "trailing_text_no_number": Stress(
        lambda r: f"{_gsm_body(r)}\nThe answer is {_gsm_final(r)}.\nI hope this helps!", n=2),
    "no_final_period": Stress(
        lambda r: f"{_gsm_body(r)}\nThe answer is {_gsm_final(r)}",
        {STRICT: "'The answer is 18' at the very end: lm-eval's strict regex needs one character after the number "
                 "and backtracks to '1'"},
        when=lambda r: len(_gsm_final(r)) > 1),
    "final_answer_is": Stress(
        lambda r: f"{_gsm_body(r)}\nThe final answer is {_gsm_final(r)}.",
        {STRICT: "'The final answer is 18.': lm-eval's strict regex needs 'The answer is'; the project reads "
                 "any 'answer is'"}),
    "lower_case_so_the_answer": Stress(
        lambda r: f"{_gsm_body(r)} So the answer is {_gsm_final(r)}.",
        {STRICT: "'So the answer is 18.': lm-eval's gsm8k strict regex is case-sensitive 'The answer is'"}),
    "answer_colon_line": Stress(
        lambda r: f"{_gsm_body(r)}\nAnswer: {_gsm_final(r)}",
        {STRICT: "'Answer: 18' at a line start is a final answer for the project; gsm8k_cot_zeroshot's strict-match "
                 "reads only 'The answer is N.'"}),
    "answer_is_colon": Stress(
        lambda r: f"{_gsm_body(r)}\nThe answer is: {_gsm_final(r)}.",
        {STRICT: "'The answer is: 18.': lm-eval's strict regex needs the number right after 'is '"}),
    "boxed": Stress(
        lambda r: f"{_gsm_body(r)}\nSo we get $\\boxed{{{r.answer}}}$",
        {STRICT: "\\boxed{18} is a final answer for the project (as for lm-eval's MATH tasks), not for "
                 "gsm8k_cot_zeroshot's strict-match"}),
    "truncated": Stress(lambda r: _gsm_body(r).rsplit("\n", 1)[0], n=4,
                        when=lambda r: "\n" in _gsm_body(r)),
    "wrong_then_no_answer_line": Stress(lambda r: f"{_gsm_body(r)}\nSo it comes to {_gsm_wrong(r, random.Random(r.id))}",
                                        n=2),
}


def _simulated(task_name: str, n: int) -> list[tuple[Record, str]]:
    """`n` simulated-teacher paths of a procedural task, the six styles in turn, 20 % planted wrong answers."""
    task = get_task(task_name)
    backend = get_backend(SimulatedBackendConfig(wrong_answer_rate=0.2, spurious_step_rate=0.2))
    styles = list(STYLES)
    out = []
    for i, r in enumerate(task.load("test", limit=n)):
        style = styles[i % len(styles)]
        req = Request(messages=[{"role": "user", "content": render(STYLES[style], task.prompt(r), task.answer_instruction)}],
                      context={"record": r, "style": style, "task": task_name})
        out.append((r, backend.complete(req).text))
    return out


def gsm8k_rows(records: list[Record]) -> list[Row]:
    rows = [_gsm_main(r) for r in records]
    for r, text in _simulated("procedural_arith", 120):
        doc = {"question": r.question, "answer": f"#### {r.answer}"}
        rows.append(Row(f"procedural_arith:{r.id}", "procedural_arith", "simulated", r, text, doc))

    def make(r: Record, stress: Stress, kind: str) -> Row:
        return Row(f"gsm8k:{r.id}:{kind}", "gsm8k", kind, r, stress.build(r), _gsm_doc(r), stress.expect)

    return rows + _stress_rows(records, GSM8K_STRESS, make)


# ---------------------------------------------------------------- comparing


def _letter_of(answer: str | None) -> str | None:
    m = re.fullmatch(r"\(([a-z])\)", answer or "")
    return m[1].upper() if m else None


def _number_of(answer: str | None) -> Decimal | None:
    return Decimal(answer) if answer and re.fullmatch(r"-?\d+(?:\.\d+)?", answer) else None


@dataclass
class Outcome:
    #: filter -> rows whose verdicts agree
    agreed: dict[str, int]
    n: int
    #: (row id, filter) -> (row, project (answer, correct), lm-eval (answer, correct))
    disagreements: dict[tuple[str, str], tuple[Row, tuple[Any, bool], tuple[Any, bool]]]

    @property
    def agreement(self) -> dict[str, float]:
        return {name: k / self.n for name, k in self.agreed.items()}


def compare(rows: list[Row], scoring: LmEvalScoring) -> Outcome:
    """Verdicts and answers of both sides, row by row (multiple choice: letters; numbers: decimals)."""
    lm = scoring.run([r.doc for r in rows], [r.response for r in rows])
    choice = bool(rows[0].record.choices)
    canon = _letter_of if choice else _number_of
    mine = (lambda a: a) if choice else (lambda a: Decimal(a) if a is not None else None)
    disagreements = {}
    agree = {STRICT: 0, FLEX: 0}
    for i, row in enumerate(rows):
        score = get_task(row.task).score(row.response, row.record)
        project = {STRICT: (mine(score.strict_pred), score.strict_correct), FLEX: (mine(score.pred), score.correct)}
        for name in (STRICT, FLEX):
            answer, correct = lm[name][i]
            theirs = (canon(scoring.normalized(answer)), correct)
            agree[name] += project[name][1] == correct
            answers_differ = None not in (project[name][0], theirs[0]) and project[name][0] != theirs[0]
            if project[name][1] != correct or answers_differ:
                disagreements[(row.id, name)] = (row, project[name], (answer, correct))
    return Outcome(agree, len(rows), disagreements)


def _check(rows: list[Row], outcome: Outcome) -> None:
    ids = [r.id for r in rows]
    assert len(set(ids)) == len(ids)
    expected = {(r.id, name): reason for r in rows for name, reason in r.expect.items()}
    unexplained = sorted(set(outcome.disagreements) - set(expected))
    vanished = sorted(set(expected) - set(outcome.disagreements))

    def show(key: tuple[str, str]) -> str:
        row = next(r for r in rows if r.id == key[0])
        got = outcome.disagreements.get(key)
        return (f"{key[1]} {row.id} ({row.kind}): project {got[1] if got else '?'}, lm-eval {got[2] if got else '?'}"
                f"\n    gold {row.record.answer}; response {row.response[-160:]!r}")

    assert not unexplained, "disagreements nobody explained:\n" + "\n".join(map(show, unexplained))
    assert not vanished, "expected disagreements that no longer happen (update the reason):\n" + "\n".join(
        f"{k[1]} {k[0]}: {expected[k]}" for k in vanished)
    for name, share in outcome.agreement.items():
        assert share >= MIN_AGREEMENT, f"{name}: agreement {share:.2%} < {MIN_AGREEMENT:.0%}"


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def date_records(shared_data) -> list[Record]:
    task, path = get_task("date"), str(shared_data / "bigbench_date" / "task.json")
    return task.load("train", path) + task.load("test", path)


@pytest.fixture(scope="module")
def gsm8k_records(shared_data) -> list[Record]:
    return get_task("gsm8k").load("test", str(shared_data / "gsm8k" / "test.jsonl"))


def test_lm_eval_task_files_are_the_ones_this_test_reads(bbh, gsm):
    assert bbh.config["task"] == "bbh_cot_zeroshot_date_understanding"
    assert gsm.config["task"] == "gsm8k_cot_zeroshot"
    for scoring in (bbh, gsm):
        assert sorted(f.name for f in scoring.filters) == [FLEX, STRICT]
    # flexible-extract is BBH's own MultiChoiceRegexFilter (bbh/cot_zeroshot/utils.py), the last "(X)".
    (flex,) = [f for f in bbh.config["filter_list"] if f["name"] == FLEX]
    assert flex["filter"][0]["function"].__module__.endswith("bbh.cot_zeroshot.utils")
    assert flex["filter"][0]["group_select"] == -1
    # gsm8k_cot (8-shot) scores exactly as gsm8k_cot_zeroshot does, so the GSM8K figures hold for both.
    cot = load_yaml(LM_TASKS / "gsm8k" / "gsm8k-cot.yaml")
    assert cot["task"] == "gsm8k_cot"
    assert cot["filter_list"] == gsm.config["filter_list"] and cot["metric_list"] == gsm.config["metric_list"]
    assert apply_template(cot["doc_to_target"], {"answer": "x\n#### 1,000"}) == "1,000"


def test_date_parity(date_records, bbh):
    assert len(date_records) == 369
    rows = date_rows(date_records)
    outcome = compare(rows, bbh)
    _check(rows, outcome)
    assert (len(rows), outcome.agreed[STRICT], outcome.agreed[FLEX]) == (1139, 1131, 1132)  # 99.30 %, 99.39 %
    # The fixture holds right and wrong answers alike, so agreement is not the trivial "both say wrong".
    assert 0.35 < sum(get_task("date").is_correct(r.response, r.record) for r in rows) / len(rows) < 0.75


def test_gsm8k_parity(gsm8k_records, gsm):
    rows = gsm8k_rows(gsm8k_records)
    outcome = compare(rows, gsm)
    _check(rows, outcome)
    assert (len(rows), outcome.agreed[STRICT], outcome.agreed[FLEX]) == (1464, 1454, 1462)  # 99.32 %, 99.86 %
    assert 0.5 < sum(get_task("gsm8k").is_correct(r.response, r.record) for r in rows) / len(rows) < 0.8


def test_project_answer_format_gets_no_lm_eval_strict_credit(date_records, bbh):
    """The answer line the project instructs ("The answer is (X) <option text>.", `MultipleChoiceTask`) and its
    simulated teacher writes, on the real Date questions (one response each, about 65 % right) and on 120
    simulated `procedural_date` paths: lm-eval's flexible-extract agrees with the project on every row; its
    strict-match credits none (it compares "(x) 05/02/2021" with "(x)"), so it disagrees on every row the
    project's strict pass credits."""
    rows = []
    for r in date_records:
        rng = random.Random(f"lmeval-parity:project:{r.id}")
        i = _gold(r) if rng.random() < 0.65 else _wrong(r, rng)
        reasoning = _date_cot(r, i, rng).rsplit(" So the answer is", 1)[0]
        rows.append(Row(f"date:{r.id}:project", "date", "project_format", r,
                        f"{reasoning}\nThe answer is ({_letter(i)}) {r.choices[i]}.", _bbh_doc(r)))
    for r, text in _simulated("procedural_date", 120):
        rows.append(Row(f"procedural_date:{r.id}", "procedural_date", "simulated", r, text, _bbh_doc(r)))
    outcome = compare(rows, bbh)
    assert not [k for k in outcome.disagreements if k[1] == FLEX]
    lm = bbh.run([r.doc for r in rows], [r.response for r in rows])[STRICT]
    credited = 0
    for row, (answer, correct) in zip(rows, lm, strict=True):
        line = row.response.rsplit("\n", 1)[-1]
        assert answer == line.removeprefix("The answer is ").removesuffix(".") and not correct
        score = get_task(row.task).score(row.response, row.record)
        assert score.strict_correct == score.correct
        credited += score.strict_correct
    assert outcome.n - outcome.agreed[STRICT] == credited
    assert (len(rows), credited) == (489, 335)  # lm-eval strict-match 0 %, the project's strict 68.5 %


def test_direct_scoring_is_lm_eval_task_scoring(tmp_path, date_records, gsm8k_records, bbh, gsm):
    """The filters and metric applied above give what lm_eval's own task objects give (TaskManager, the task's
    `apply_filters` and `process_results`), on every stress row and every 8th other row of both fixtures
    (all rows take 9 s, mostly lm_eval compiling `doc_to_target` anew for every row)."""
    import json

    import yaml
    from lm_eval.tasks import TaskManager

    def sample(rows: list[Row]) -> list[Row]:
        return [r for i, r in enumerate(rows) if r.kind not in ("bbh_cot", "solution", "simulated") or i % 8 == 0]

    fixtures = {"date": (DATE_YAML, bbh, sample(date_rows(date_records))),
                "gsm8k": (GSM8K_YAML, gsm, sample(gsm8k_rows(gsm8k_records)))}
    for key, (base, _, rows) in fixtures.items():
        data = tmp_path / f"{key}.jsonl"
        data.write_text("".join(json.dumps(r.doc) + "\n" for r in rows), encoding="utf-8")
        (tmp_path / f"parity_{key}.yaml").write_text(yaml.safe_dump({
            "include": str(LM_TASKS / base), "task": f"parity_{key}", "tag": ["parity"], "dataset_path": "json",
            # gsm8k_cot_zeroshot names a train split (its unused few-shot source): the same file serves.
            "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(data), "train": str(data)}}}),
            encoding="utf-8")
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False).load(
        [f"parity_{k}" for k in fixtures])["tasks"]
    for key, (_, scoring, rows) in fixtures.items():
        task = tasks[f"parity_{key}"]
        task.build_all_requests(limit=len(rows), rank=0, world_size=1)
        assert len(task.instances) == len(rows)
        for inst in task.instances:
            inst.resps = [rows[inst.doc_id].response]
        task.apply_filters()
        direct = scoring.run([r.doc for r in rows], [r.response for r in rows])
        for inst in task.instances:
            for name, out in inst.filtered_resps.items():
                got = (out, bool(task.process_results(inst.doc, [out])["exact_match"]))
                assert got == direct[name][inst.doc_id], (key, name, rows[inst.doc_id].id)
