"""Simulated teacher for the procedural tasks, with known planted defects.

It writes a reasoning path in the requested style from the question's true
solution (`record.meta["solution"]`), in varied wording, and plants defects at
configured rates so that the filter's precision and recall can be measured:

- `wrong_answer`: one step's result is miscomputed (a visibly false claim such
  as "200 - 80 = 119") and the error is carried to a wrong final answer;
- `spurious_step`: a false intermediate claim (a slip the path silently
  recovers from, or a false "check") while the final answer stays correct.

`Completion.meta["planted"]` records the truth (None for a clean path); the
filter and judges never read it, only the report that scores them does.
Everything is drawn from RNGs seeded by the request key, so the same request
always gets the same text. Token counts are whitespace-separated words.
It is a teacher backend like the others and says so in its label
("simulated:<model>"); real tasks need a real backend.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from qrdistill.backends.base import BACKENDS, Backend, Completion, Request, request_key
from qrdistill.errors import ConfigError
from qrdistill.styles import STYLES
from qrdistill.tasks.base import Record
from qrdistill.tasks.procedural import PROCEDURAL_TASKS, shift_date
from qrdistill.tasks.procedural import fmt_date as _fmt_date
from qrdistill.tasks.procedural import parse_date as _parse_date

RATE_FIELDS = ("wrong_answer_rate", "spurious_step_rate")
#: Part of every request key: a store filled by an older writer is not reused (or mistaken for this one's text).
#: 2: date steps show their calendar working.
WRITER_VERSION = 2
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}
OP_SYMBOLS = {"+": ["+"], "-": ["-", "−"], "*": ["×", "*", "x"], "/": ["÷", "/"]}
INVERSE_OP = {"+": "-", "-": "+", "*": "/", "/": "*"}


def _shift(d: dt.date, delta: int, unit: str) -> dt.date | None:
    """`d` moved by `delta` units, or None where a month shift would be ambiguous (day > 28)."""
    if unit in ("month", "year") and d.day > 28:
        return None
    try:
        return shift_date(d, delta, unit)
    except (ValueError, OverflowError):
        return None


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]


def _num(x: Fraction | int) -> str:
    x = Fraction(x)
    if x.denominator != 1:
        return f"{float(x):.2f}"
    return f"{int(x):,}" if abs(x) >= 10000 else str(int(x))


@dataclass
class _Claim:
    """One computation as the path states it: `a op b = shown` (`true` is what a op b really is)."""

    a: Any
    b: Any  # arith: the operand; date: (delta, unit)
    op: str
    shown: Any
    true: Any
    what: str = ""

    @property
    def false(self) -> bool:
        return self.shown != self.true


# ---------------------------------------------------------------- wording


def _count(n: int, unit: str, rng: random.Random) -> str:
    n = abs(n)
    word = unit if n == 1 else unit + "s"
    if n in NUMBER_WORDS and rng.random() < 0.3:
        return f"{NUMBER_WORDS[n]} {word}"
    return f"{n} {word}"


def _date_claim(c: _Claim, rng: random.Random, inverse: bool = False) -> str:
    """'03/05/2021 - 10 days = 02/23/2021' or '10 days before 03/05/2021 is 02/23/2021'."""
    delta, unit = c.b
    start, end = (c.shown, c.a) if inverse else (c.a, c.shown)
    if inverse:
        delta = -delta
    span = _count(delta, unit, rng)
    if rng.random() < 0.55:
        sign = "+" if delta > 0 else rng.choice(["-", "−"])
        return f"{_fmt_date(start)} {sign} {span} = {_fmt_date(end)}"
    rel = (
        ("after" if delta > 0 else "before")
        if rng.random() < 0.7
        else ("later than" if delta > 0 else "earlier than")
    )
    verb = rng.choice(["is", "is", "gives", "would be"])
    return f"{span} {rel} {_fmt_date(start)} {verb} {_fmt_date(end)}"


def _month_days(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _month_name(year: int, month: int) -> str:
    return f"{calendar.month_name[month]} {year}"


def calendar_work(start: dt.date, delta: int, unit: str) -> str:
    """The calendar arithmetic behind one date shift, in small integer steps a student can copy.

    "day 18 − 25: borrow the 30 days of June 2014, 18 + 30 = 48; 48 − 25 = 23" for 07/18/2014 - 25
    days. Both directions open the same way ("day 18 −", "day 18 +"), so the sign is the one token
    that follows the direction the step names. Every sum is an `a op b = c` claim that the `steps`
    judge recomputes, so a slipped sum fails the path; a wrong month length ("June 2014 has 31
    days") is not checked itself, only through the step's date claim that follows.
    Shifts that the calendar makes ambiguous (a month shift from day > 28) get no working.
    """
    parts: list[str] = []
    n = abs(delta)
    sign = "+" if delta > 0 else "−"
    if unit == "week":
        parts.append(f"{n} {'week' if n == 1 else 'weeks'} = {n} × 7 = {7 * n} days")
        unit, n = "day", 7 * n
    if unit == "day":
        y, m, day = start.year, start.month, start.day
        if delta > 0:
            total = day + n
            parts.append(f"day {day} + {n} = {total}")
            while total > _month_days(y, m):
                days = _month_days(y, m)
                parts.append(f"{_month_name(y, m)} has {days} days: {total} − {days} = {total - days}")
                total -= days
                y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        elif day > n:
            parts.append(f"day {day} − {n} = {day - n}")
        else:
            borrows = []
            while day <= n:
                y, m = (y - 1, 12) if m == 1 else (y, m - 1)
                days = _month_days(y, m)
                borrows.append(f"borrow the {days} days of {_month_name(y, m)}, {day} + {days} = {day + days}")
                day += days
            parts.append(f"day {start.day} − {n}: " + "; ".join(borrows))
            parts.append(f"{day} − {n} = {day - n}")
    elif unit == "month" and start.day <= 28:
        m = start.month + (n if delta > 0 else -n)
        if 1 <= m <= 12:
            parts.append(f"month {start.month} {sign} {n} = {m}")
        elif m > 12:
            parts.append(f"month {start.month} + {n} = {m}; {m} − 12 = {m - 12}, in {start.year + 1}")
        else:
            parts.append(f"month {start.month} − {n}: borrow a year, {start.month} + 12 − {n} = {m + 12}, "
                         f"in {start.year - 1}")  # fmt: skip
    elif unit == "year":
        parts.append(f"year {start.year} {sign} {n} = {start.year + (n if delta > 0 else -n)}")
    return "; ".join(parts)


def _arith_claim(c: _Claim, rng: random.Random, inverse: bool = False) -> str:
    if inverse:
        op, a, b, res = INVERSE_OP[c.op], c.shown, c.b, c.a
    else:
        op, a, b, res = c.op, c.a, c.b, c.shown
    return f"{_num(a)} {rng.choice(OP_SYMBOLS[op])} {_num(b)} = {_num(res)}"


DATE_STEP = {
    "today": [
        "First find today's date: {claim}.",
        "Today: {claim}.",
        "To get today's date, {claim}.",
    ],
    "step": [
        "Moving {dir} {span}: {claim}.",
        "Next, {claim}.",
        "Then {claim}.",
        "Counting {span} {dir}, {claim}.",
        "Shifting the date by {span} ({dir}): {claim}.",
    ],
}
ARITH_STEP = {
    "+": ["Adding {b}: {claim}.", "After {b} more, {claim}.", "Together that is {claim}."],
    "-": ["Taking away {b}: {claim}.", "Subtracting {b} leaves {claim}.", "After removing {b}, {claim}."],
    "*": [
        "Multiplying by {b}: {claim}.",
        "That is {b} groups, so {claim}.",
        "{b} times as many gives {claim}.",
    ],
    "/": [
        "Splitting into {b} equal parts: {claim}.",
        "One of {b} equal shares is {claim}.",
        "Dividing by {b}: {claim}.",
    ],
}
FALSE_CHECK = [
    "As a quick check, {claim}.",
    "(Double-checking this step: {claim}.)",
    "Note that {claim}.",
]


class _Writer:
    """Renders one path; `rng` chooses the wording."""

    def __init__(self, record: Record, task: str, rng: random.Random) -> None:
        self.record = record
        self.task = task
        self.rng = rng
        self.is_date = task != "procedural_arith"

    # -- pieces
    def claim(self, c: _Claim, inverse: bool = False) -> str:
        return (_date_claim if self.is_date else _arith_claim)(c, self.rng, inverse)

    def step_sentence(self, c: _Claim) -> str:
        rng = self.rng
        if self.is_date:
            delta, unit = c.b
            tmpl = rng.choice(DATE_STEP["today"] if c.what == "today" else DATE_STEP["step"])
            # The working follows the true shift of this step's input; a planted slip shows only in the
            # claimed result, as when a teacher miscopies its own working.
            work = calendar_work(c.a, delta, unit)
            claim = f"{work}; {self.claim(c)}" if work else self.claim(c)
            return tmpl.format(claim=claim, span=_count(delta, unit, rng),
                               dir="forward" if delta > 0 else "back")  # fmt: skip
        return rng.choice(ARITH_STEP[c.op]).format(b=_num(c.b), claim=self.claim(c))

    def value(self, v: Any) -> str:
        return _fmt_date(v) if self.is_date else _num(v)

    def final_line(self, final: Any) -> str:
        r = self.record
        if self.task == "procedural_date":
            text = _fmt_date(final)
            if text in r.choices:
                return f"The answer is ({chr(65 + r.choices.index(text))}) {text}."
            # A miscomputed date that is no option: the teacher settles for the nearest wrong option.
            others = [i for i, ch in enumerate(r.choices) if chr(65 + i) != r.answer]
            i = min(others, key=lambda i: (abs((_parse_date(r.choices[i]) - final).days), i))
            return (f"{text} is not among the options; the closest is ({chr(65 + i)}).\n"
                    f"The answer is ({chr(65 + i)}) {r.choices[i]}.")  # fmt: skip
        return f"The answer is {self.value(final)}."

    def facts(self, claims: list[_Claim]) -> list[str]:
        out: list[str] = []
        if self.is_date:
            units = {c.b[1] for c in claims}
            if "week" in units:
                out.append("A week has 7 days.")
            if "month" in units or "year" in units:
                out.append("Moving by whole months keeps the day of the month and changes the month.")
            if "year" in units:
                out.append("A year has 12 months, so moving by a year keeps the month and day.")
            months = {(c.a.year, c.a.month) for c in claims} | {(c.shown.year, c.shown.month) for c in claims}
            for y, m in sorted(months)[:2]:
                nxt = dt.date(y + m // 12, m % 12 + 1, 1)
                days = (nxt - dt.date(y, m, 1)).days
                out.append(f"{dt.date(y, m, 1):%B} {y} has {days} days.")
            out.append("Dates are written as MM/DD/YYYY: month, then day, then year.")
        else:
            ops = {c.op for c in claims}
            wording = {
                "+": "Getting more of something means adding.",
                "-": "Giving away, spending or losing means subtracting.",
                "*": "'Times as many' and 'groups of' mean multiplying.",
                "/": "Sharing equally and keeping one share means dividing.",
            }
            out += [wording[o] for o in "+-*/" if o in ops]
        self.rng.shuffle(out)
        return [f"Fact: {f}" if self.rng.random() < 0.5 else f"- {f}" for f in out]

    def code(self, claims: list[_Claim]) -> list[str]:
        rng = self.rng
        var = rng.choice(["d", "day", "current"] if self.is_date else ["total", "x", "amount", "n"])
        lines = []
        if self.is_date:
            lines += [
                "from datetime import date, timedelta",
                "from dateutil.relativedelta import relativedelta",
                "",
            ]
            start = claims[0].a
            lines.append(f"{var} = date({start.year}, {start.month}, {start.day})")
            for c in claims:
                delta, unit = c.b
                fn = (
                    f"timedelta({unit}s={abs(delta)})"
                    if unit in ("day", "week")
                    else f"relativedelta({unit}s={abs(delta)})"
                )
                lines.append(f"{var} = {var} {'+' if delta > 0 else '-'} {fn}  # {self.claim(c)}")
            lines.append(f'print({var}.strftime("%m/%d/%Y"))')
        else:
            sym = {"+": "+", "-": "-", "*": "*", "/": "//"}
            first = claims[0]
            lines.append(f"{var} = {_num(first.a)}")
            for c in claims:
                lines.append(f"{var} = {var} {sym[c.op]} {_num(c.b)}  # {self.claim(c)}")
            lines.append(f"print({var})")
        return lines

    # -- styles
    def render(self, style: str, claims: list[_Claim], extra: tuple[int, str] | None, final: Any) -> str:
        """`extra` = (after which claim, a false check sentence) for a planted spurious check."""
        rng = self.rng
        sentences = [self.step_sentence(c) for c in claims]
        if extra is not None:
            i, sentence = extra
            sentences.insert(i + 1, sentence)
        result = self.value(final)
        if style == "vanilla":
            lead = rng.choice(["", "Let me work it out. ", "Working through the problem: "])
            body = lead + " ".join(sentences) + f" So the result is {result}."
        elif style == "tot":
            body = self._tot(sentences, result)
        elif style == "program":
            code = self.code(claims)
            if extra is not None:
                first_step = 4 if self.is_date else 1  # imports and the start value come first
                code.insert(first_step + extra[0] + 1, f"# {extra[1]}")
            intro = rng.choice(
                ["Here is a program that computes it:", "Let me write code for this.", "Code:"]
            )
            body = f"{intro}\n```python\n" + "\n".join(code) + f"\n```\nOutput: {result}"
        elif style == "fact":
            head = rng.choice(["Relevant facts:", "First, some facts I need:", "Facts:"])
            body = head + "\n" + "\n".join(self.facts(claims)) + "\n\nReasoning:\n" + " ".join(sentences)
            body += f"\nUsing these facts, the result is {result}."
        elif style == "backward":
            body = self._backward(sentences, claims, result)
        else:  # cot, and any custom style
            body = self._cot(sentences, result)
        return body.strip() + "\n" + self.final_line(final)

    def _cot(self, sentences: list[str], result: str) -> str:
        rng = self.rng
        mode = rng.choice(["steps", "numbers", "words"])
        # No opener ("Let's think step by step."): the student prompt already ends with that sentence, and
        # students trained on a response that repeats it learned to repeat it until the budget.
        lines: list[str] = []
        connectives = ["First,", "Then,", "Next,", "After that,"]
        for i, s in enumerate(sentences):
            if mode == "steps":
                lines.append(f"Step {i + 1}: {s}")
            elif mode == "numbers":
                lines.append(f"{i + 1}. {s}")
            elif s.split(" ", 1)[0].rstrip(",:") in (
                "First",
                "Then",
                "Next",
                "To",
                "Today",
                "(Double-checking",
            ):
                lines.append(s)  # already opens with a connective
            else:
                lead = (
                    connectives[min(i, len(connectives) - 1)]
                    if i < len(sentences) - 1 or i == 0
                    else "Finally,"
                )
                lines.append(f"{lead} {s[0].lower()}{s[1:]}")
        lines.append(rng.choice([f"Therefore the result is {result}.", f"So we get {result}."]))
        return "\n".join(lines)

    def _tot(self, sentences: list[str], result: str) -> str:
        rng = self.rng
        if self.is_date:
            branches = [
                "apply each shift to the date in the order the question gives them",
                "convert the whole shift to a number of days and count on a calendar",
                "check each option against the question one by one"
                if self.record.choices
                else "count month by month and then adjust the days",
            ]
        else:
            branches = [
                "follow the story and update the running amount after each event",
                "write one expression for the whole story and evaluate it",
                "estimate the size of the answer first and then compute exactly",
            ]
        k = rng.randint(2, 3)
        chosen = rng.randrange(k)
        lines = [rng.choice(["Let me consider several approaches.", "Possible ways to solve this:"])]
        lines += [f"Approach {i + 1}: {branches[i]}." for i in range(k)]
        why = rng.choice(
            ["it is the most direct", "it has the fewest chances for error", "it is easy to verify"]
        )
        lines.append(f"Approach {chosen + 1} looks most promising because {why}. Following it:")
        lines += sentences
        others = [i + 1 for i in range(k) if i != chosen]
        lines.append(f"This gives {result}; approach {others[0]} would reach the same place with more work.")
        return "\n".join(lines)

    def _backward(self, sentences: list[str], claims: list[_Claim], result: str) -> str:
        rng = self.rng
        lines = [rng.choice(["Forward reasoning:", "Forward pass:"])] + sentences
        lines.append(f"Candidate answer: {result}.")
        lines.append(rng.choice(["Backward check: undo each step starting from the candidate.",
                                 "Now verify by working backwards from the candidate."]))  # fmt: skip
        for c in reversed(claims):
            x = self.claim(c, inverse=True)
            lines.append(rng.choice([f"Undoing it: {x}.", f"Reversing: {x}.", f"{x[0].upper()}{x[1:]}."]))
        start = self.value(claims[0].a)
        lines.append(f"Working backwards returns to the starting value {start}, so {result} is verified.")
        return "\n".join(lines)


# ---------------------------------------------------------------- planting


def _true_claims(record: Record, is_date: bool) -> list[_Claim]:
    steps = record.meta.get("solution")
    if not steps:
        raise ConfigError(
            f"generate.teacher: record {record.id!r} has no meta.solution for the simulated teacher"
        )
    claims = []
    for s in steps:
        if is_date:
            a, res = _parse_date(s["from"]), _parse_date(s["result"])
            claims.append(_Claim(a, (int(s["delta"]), s["unit"]), "date", res, res, s.get("what", "")))
        else:
            a, b, res = Fraction(s["a"]), Fraction(s["b"]), Fraction(s["result"])
            claims.append(_Claim(a, b, s["op"], res, res))
    return claims


def _corrupt(c: _Claim, value: Any, is_date: bool, rng: random.Random) -> Any:
    """A plausible miscomputation of `value` (the true result of claim `c`)."""
    if is_date:
        delta, unit = rng.choice([(1, "day"), (-1, "day"), (2, "day"), (-2, "day"), (7, "day"), (-7, "day"),
                                  (1, "month"), (-1, "month"), (1, "year"), (-1, "year")])  # fmt: skip
        return _shift(value, delta, unit)
    e = rng.choice([-10, -2, -1, 1, 2, 10])
    out = value + e
    return out if out > 0 and out != value else value + abs(e)


def _redo(claims: list[_Claim], start: int, value: Any, is_date: bool) -> list[_Claim] | None:
    """Claims from `start` on, recomputed from a new input `value` (None if a step becomes impossible)."""
    out = []
    cur = value
    for c in claims[start:]:
        if is_date:
            nxt = _shift(cur, c.b[0], c.b[1])
            if nxt is None:
                return None
        else:
            if c.op == "/" and (cur % c.b != 0):
                return None
            nxt = _apply(c.op, cur, c.b)
            if nxt <= 0:
                return None
        out.append(_Claim(cur, c.b, c.op, nxt, nxt, c.what))
        cur = nxt
    return out


def plant_wrong_answer(claims: list[_Claim], is_date: bool, rng: random.Random) -> list[_Claim]:
    """Miscompute one step and carry the error to the end; the final value differs from the truth."""
    gold = claims[-1].true
    for _ in range(30):
        j = rng.randrange(len(claims))
        bad = _corrupt(claims[j], claims[j].true, is_date, rng)
        if bad is None or bad == claims[j].true:
            continue
        rest = _redo(claims, j + 1, bad, is_date)
        if rest is None or (rest and rest[-1].shown == gold) or (not rest and bad == gold):
            continue
        wrong = _Claim(claims[j].a, claims[j].b, claims[j].op, bad, claims[j].true, claims[j].what)
        return claims[:j] + [wrong] + rest
    last = claims[-1]
    bad = last.true + (dt.timedelta(days=1) if is_date else 1)
    return claims[:-1] + [_Claim(last.a, last.b, last.op, bad, last.true, last.what)]


def plant_spurious(claims: list[_Claim], writer: _Writer, rng: random.Random) -> tuple[list[_Claim], Any]:
    """A false intermediate claim with the final answer intact: either a slipped result the path
    silently recovers from, or a false 'check' sentence. Returns (claims, extra sentence or None)."""
    is_date = writer.is_date
    if len(claims) > 1 and rng.random() < 0.5:
        j = rng.randrange(len(claims) - 1)
        for _ in range(10):
            bad = _corrupt(claims[j], claims[j].true, is_date, rng)
            if bad is not None and bad != claims[j].true:
                c = claims[j]
                return claims[:j] + [_Claim(c.a, c.b, c.op, bad, c.true, c.what)] + claims[j + 1 :], None
    j = rng.randrange(len(claims))
    c = claims[j]
    for _ in range(10):
        bad = _corrupt(c, c.true, is_date, rng)
        if bad is not None and bad != c.true:
            break
    else:
        bad = c.true + (dt.timedelta(days=1) if is_date else 1)
    false = _Claim(c.a, c.b, c.op, bad, c.true, c.what)
    sentence = rng.choice(FALSE_CHECK).format(claim=writer.claim(false))
    return claims, (j, sentence)


# ---------------------------------------------------------------- backend


@BACKENDS.register("simulated")
class SimulatedBackend(Backend):
    """Writes procedural-task paths in any of the six styles, with planted defects at known rates."""

    name = "simulated"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        for style, rates in config.style_rates.items():
            for key, value in rates.items():
                where = f"generate.teacher.style_rates.{style}.{key}"
                if key not in RATE_FIELDS:
                    raise ConfigError(f"config field {where}: unknown rate (known: {', '.join(RATE_FIELDS)})")
                if not 0 <= float(value) <= 1:
                    raise ConfigError(f"config field {where}: a rate must be between 0 and 1 (got {value})")

    @property
    def label(self) -> str:
        return f"simulated:{self.model}"

    def key(self, req: Request) -> str:
        return request_key(self.name, f"{self.model}@writer{WRITER_VERSION}", req.messages,
                           {**self.sampling_params(), **req.params}, req.sample)  # fmt: skip

    def rates(self, style: str) -> tuple[float, float]:
        over = self.config.style_rates.get(style, {})
        return (
            float(over.get("wrong_answer_rate", self.config.wrong_answer_rate)),
            float(over.get("spurious_step_rate", self.config.spurious_step_rate)),
        )

    def _context(self, req: Request) -> tuple[Record, str, str]:
        ctx = req.context or {}
        task = ctx.get("task")
        if task not in PROCEDURAL_TASKS:
            raise ConfigError(
                f"generate.teacher: the simulated teacher writes paths only for the procedural tasks "
                f"({', '.join(PROCEDURAL_TASKS)}), not {task!r}; use a real backend (kind: openai, hf or vllm) "
                f"for it"
            )
        record = ctx.get("record")
        if isinstance(record, dict):
            record = Record.from_dict(record)
        if not isinstance(record, Record):
            raise ConfigError(
                "generate.teacher: the simulated teacher needs the question record in the request"
            )
        return record, str(ctx.get("style", "cot")), task

    def complete(self, req: Request) -> Completion:
        start = time.perf_counter()
        record, style, task = self._context(req)
        key = self.key(req)
        plant_rng = random.Random(f"plant:{key}")
        writer = _Writer(record, task, random.Random(f"text:{key}"))
        wrong_rate, spurious_rate = self.rates(style)
        claims = _true_claims(record, writer.is_date)
        extra = None
        if plant_rng.random() < wrong_rate:
            planted = "wrong_answer"
            claims = plant_wrong_answer(claims, writer.is_date, plant_rng)
        elif plant_rng.random() < spurious_rate:
            planted = "spurious_step"
            claims, extra = plant_spurious(claims, writer, plant_rng)
        else:
            planted = None
        final = claims[-1].shown if planted == "wrong_answer" else claims[-1].true
        text = writer.render(style, claims, extra, final)
        if self.config.latency:
            time.sleep(self.config.latency)
        prompt = " ".join(m.get("content", "") for m in req.messages)
        return Completion(
            text=text,
            prompt_tokens=len(prompt.split()),
            completion_tokens=len(text.split()),
            latency=time.perf_counter() - start,
            finish_reason="stop",
            meta={"planted": planted, "style_written": style if style in STYLES else "cot"},
        )

    def generate(
        self,
        requests: Sequence[Request],
        on_result: Callable[[Request, Completion], None],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        for req in requests:  # fail on a non-procedural task before answering anything
            self._context(req)
        for req in requests:
            on_result(req, self.complete(req))
            if progress is not None:
                progress(1)
