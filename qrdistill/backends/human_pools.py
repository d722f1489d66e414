"""Human-written reasoning paths from benchmark files, as paths of the `file` teacher.

Formats `strategyqa_human` and `gsm8k_human` of `generate.teacher: {kind: file}` read these rows; this
module turns one row into its paths' texts (pure: a row in, texts out). Every path ends in the line
the task's answer instruction asks for ("The answer is Yes.", "The answer is 72."), so the task's
own check reads it.

StrategyQA, one row, one path per style its human text supports:

- `fact` (fact retrieval), from a StrategyQA row's `facts` (eladsegal/strategyqa, e.g. dev.json):
  "Relevant facts:" and one fact a line ("- Albany, GA has around 75,000 people."), then the answer.
- `cot` (decomposition), from the same row's `decomposition`: "Break the question into steps:" and
  the numbered sub-questions; a reference "#2" to an earlier step's answer reads "the answer to
  step 2". The annotators wrote the questions, not their answers, so the path is the plan of the
  reasoning, then the answer.
- `vanilla`, from a BIG-bench strategyqa row's `target` ("No. Hydrogen is the first element ..."):
  the explanation after its leading Yes/No, then the answer.

Which kind a row is follows from its fields, as the `strategyqa` task reads them (`question` and a
boolean `answer`, or BIG-bench's `input` and `target_scores`); the answer is the row's own label.

GSM8K (`question`, `answer` = the solution ending in "#### N"), one path of the config's style
(`cot`): the solution's lines with each calculator annotation `<<48/2=24>>` made readable. Where
an arithmetic expression stands right before it ("48/2 = <<48/2=24>>24") the annotation is
dropped; where the text shows only the result ("Half of 318 is <<318/2=159>>159"), the
calculation in words ("150 divided by 5 equals") or with units in it ("5 snakes/jaguar * 6
jaguars = <<5*6=30>>30 snakes") the calculator's expression is written out before the result
("... 6 jaguars = 5*6 = 30 snakes"), so the `steps` judge recomputes the step. Annotations that
compute nothing (`<<12=12>>`) or continue the text's own expression (`S + <<+30+46=76>>`) are
dropped. "#### N" becomes the answer line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from qrdistill.tasks.loading import Row

#: The final line both tasks' `answer_instruction` asks for, and their strict extraction reads.
ANSWER_LINE = "The answer is {}."
FACTS_HEAD = "Relevant facts:"
STEPS_HEAD = "Break the question into steps:"
#: How a decomposition step's reference to an earlier step's answer ("#2") is written.
STEP_REF_TEXT = r"the answer to step \1"

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
#: The run of arithmetic at the end of a text: numbers, operators, parentheses, $ and %.
_MATH_RUN = re.compile(r"[\d\s.,$€£¢%()+\-*/x×÷−–]*$")
_OPERATOR_BETWEEN = re.compile(r"\d[\s%)]*[-+*/x×÷−–]\s*[$€£¢(]*\.?\d")
_STEP_REF = re.compile(r"#(\d+)")
_LEADING_YES_NO = re.compile(r"^\s*(yes|no)\b[.,:!]?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class HumanPath:
    """One human path a row gives: its style (None: the config's), question, text and source field."""

    style: str | None
    question: str
    response: str
    field: str
    source_id: str | None = None


def answer_line(answer: str) -> str:
    return ANSWER_LINE.format(answer)


def _sentence(text: str) -> str:
    """One line of prose: whitespace runs as one space, closed by a full stop if it has no end mark."""
    text = " ".join(text.split())
    return text if text[-1:] in ".!?\"')" else text + "."


def fact_text(facts: list[str], answer: str) -> str:
    return "\n".join([FACTS_HEAD, *(f"- {_sentence(f)}" for f in facts), answer_line(answer)])


def decomposition_text(steps: list[str], answer: str) -> str:
    lines = [f"{i}. {_STEP_REF.sub(STEP_REF_TEXT, ' '.join(s.split()))}" for i, s in enumerate(steps, 1)]
    return "\n".join([STEPS_HEAD, *lines, answer_line(answer)])


def explanation_text(explanation: str, answer: str) -> str:
    return f"{' '.join(explanation.split())}\n{answer_line(answer)}"


# ---------------------------------------------------------------- GSM8K


def _shows_calculation(before: str) -> bool:
    """Whether an arithmetic expression (numbers and operators only) stands right before the "=" that
    ends `before`: "48/2 =", "2 x 4 x 50% =", "15% * $1000=$". Not "6 jaguars =" (a unit cuts the
    expression) nor "150 divided by 5 equals"."""
    before = before.rstrip(" $€£¢")
    if not before.endswith("="):
        return False
    run = _MATH_RUN.search(before[:-1])
    return bool(run and _OPERATOR_BETWEEN.search(run.group()))


def readable_line(line: str) -> str:
    """A solution line with each calculator annotation dropped where the text shows its calculation,
    written out ("75*3 = 225") where the text shows only the result or a calculation in words or units."""
    out, start = [], 0
    for m in _ANNOTATION.finditer(line):
        before = line[start:m.start()]
        out.append(before)
        lhs = m.group(1).split("=", 1)[0].strip()
        # An annotation opening with an operator ("S + <<+30+46=76>>") continues an expression the text
        # wrote; one without an operator ("<<12=12>>") computes nothing.
        computes = bool(_OPERATOR_BETWEEN.search(lhs)) and not re.match(r"[-+*/]", lhs)
        if computes and not _shows_calculation("".join(out)):
            # The currency sign stays with the result: "= $<<60*8=480>>480" reads "= 60*8 = $480".
            text = "".join(out)
            sign = text[len(text.rstrip("$€£¢")):]
            out = [text[:len(text) - len(sign)], f"{lhs} = {sign}"]
        start = m.end()
    out.append(line[start:])
    return " ".join("".join(out).split())


def readable_solution(solution: str) -> tuple[str, str]:
    """(the steps as readable lines, the final answer as written after "####")."""
    body, sep, final = solution.rpartition("####")
    if not sep:
        raise ValueError("no '#### <answer>' line")
    lines = [readable_line(line) for line in body.splitlines()]
    return "\n".join(line for line in lines if line), final.strip()


def gsm8k_paths(row: Row) -> list[HumanPath]:
    from qrdistill.tasks.extract import normalize_number

    question = _question(row, "question")
    solution = row.get("answer")
    if not isinstance(solution, str) or "####" not in solution:
        raise row.error("field 'answer' must be a solution ending in '#### <number>'")
    steps, final = readable_solution(solution)
    number = normalize_number(final)
    if number is None:
        raise row.error(f"the answer after '####' is not a number: {final!r}")
    if not steps:
        raise row.error("the solution has no steps before its '####' line")
    rid = row.data.get("id")
    return [HumanPath(None, question, f"{steps}\n{answer_line(number)}", "answer",
                      None if rid is None else str(rid))]


# ---------------------------------------------------------------- StrategyQA


def _question(row: Row, name: str) -> str:
    text = row.get(name)
    if not isinstance(text, str) or not text.strip():
        raise row.error(f"field {name!r} must be a non-empty string")
    return text.strip()


def _texts(row: Row, name: str) -> list[str]:
    value: Any = row.data.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise row.error(f"field {name!r} must be a list of texts (got {type(value).__name__})")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise row.error(f"{name}[{i}] must be a non-empty text (got {item!r})")
    return value


def strategyqa_paths(row: Row) -> list[HumanPath]:
    """The `fact` and `cot` paths of a StrategyQA row, or the `vanilla` path of a BIG-bench one."""
    if "input" in row.data and "question" not in row.data:
        return [_bigbench_path(row)]
    question = _question(row, "question")
    answer = row.get("answer")
    if not isinstance(answer, bool):
        raise row.error(f"field 'answer' must be true or false, got {answer!r}")
    gold = "Yes" if answer else "No"
    qid = row.data.get("qid")
    qid = None if qid is None else str(qid)
    facts, steps = _texts(row, "facts"), _texts(row, "decomposition")
    if not facts and not steps:
        raise row.error("the row has neither 'facts' nor 'decomposition' (a StrategyQA row with its human "
                        "annotation, e.g. from dev.json or train.json, is expected)")
    out = []
    if facts:
        out.append(HumanPath("fact", question, fact_text(facts, gold), "facts", qid))
    if steps:
        out.append(HumanPath("cot", question, decomposition_text(steps, gold), "decomposition", qid))
    return out


def _bigbench_path(row: Row) -> HumanPath:
    from qrdistill.tasks.bigbench import _input, _scored_options

    # The question and gold as the strategyqa task reads them from the same row.
    question = _input(row)
    options, best = _scored_options(row)
    gold = options[best].strip()
    if gold not in ("Yes", "No"):
        raise row.error(f"expected the best option to be 'Yes' or 'No', got {gold!r}")
    target = row.get("target", "targets")
    if isinstance(target, list):
        target = target[0] if target else None
    if not isinstance(target, str):
        raise row.error("field 'target' must be the answer and its explanation, e.g. \"No. Hydrogen is ...\"")
    lead = _LEADING_YES_NO.match(target)
    if lead is None:
        raise row.error(f"field 'target' must open with Yes or No, got {target[:40]!r}")
    if lead.group(1).capitalize() != gold:
        raise row.error(f"field 'target' says {lead.group(1).capitalize()} but target_scores' best option is "
                        f"{gold}")
    explanation = target[lead.end():].strip()
    if not explanation:
        raise row.error("field 'target' has no explanation after its Yes/No")
    return HumanPath("vanilla", question, explanation_text(explanation, gold), "target")
