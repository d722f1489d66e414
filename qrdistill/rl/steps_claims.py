"""`claims` step extractor: the checkable claims of a path, in text order, as the steps of the
structure reward. Deterministic and offline; for the procedural tasks and GSM8K.

It is built on the `steps` judge's claim parser (`qrdistill.judges.steps`): every arithmetic claim
(`a op b = c`, chains, GSM8K `<<a*b=c>>` annotations) and every date claim ("03/05/2021 + 10 days =
03/15/2021", "2 days before 11/27/2008 is 11/25/2008") is one step, with the judge's own verdict on
whether it is true. The judge lists claims grouped by kind; here each is placed where it stands in the
text (annotations and masks are blanked to equal length, so every position is one in the path), and two
neighbouring claims of the same computation ("48/2 = <<48/2=24>>24" states it twice) are one step.

A step and its parts:
- sub_think -- what the step does: its operation. Arithmetic: the expression's shape with the numbers
  left out, up to commutativity and associativity of + and × ("(# * #)", "((# * #) - #)"); date: the
  shift's unit and direction ("date day -"). Weeks count as 7 days and years as 12 months, so "3 weeks
  after" and "21 days after" are the same operation.
- query -- the quantity it computes: the operation with its operands, up to the same commutativity
  ("(25 * 8)" for both "8 × 25" and "25 x 8"); date: the start date and the signed shift.
- answer -- the claimed result.

Matching a student step s to the reference step r at the same position (RLKD's three verdicts):
- think_ok  = same kind (arithmetic / date) and same operation: the step sets out to do the same thing;
- query_ok  = same quantity (same operands and operation): it computes what the reference computes;
- answer_ok = s's claimed result equals r's, and both claims are true.
So a step that multiplies the wrong numbers is halved, a right computation with a miscomputed result is
halved, and a step of another operation ends the sum. Steps are compared by position only: a student
that inserts an extra computation shifts every later step and, as in RLKD, loses the rest of the sum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from qrdistill.judges.steps import (  # the judge's own grammar, so both read the same claims
    _ANNOTATION,
    _CLOCK,
    _DATE_ONLY,
    _DATE_PLUS,
    _DATE_REL,
    WORD_NUMBERS,
    Claim,
    annotation_claims,
    arithmetic_claims,
    date_claims,
    parse_any_date,
    parse_number,
)
from qrdistill.rl.rewards.structure import Step, StepMatch, StepsResult


@dataclass(frozen=True)
class ClaimStep(Step):
    """A step read from one claim. `operation`/`quantity`/`result` are canonical (see the module)."""

    kind: str  # "arith" or "date"
    operation: str
    quantity: str
    result: str
    true: bool
    position: int  # where the claim starts in the path
    claim: str = ""  # the claim as the `steps` judge quotes it


# ---------------------------------------------------------------- arithmetic canon

_PRETTY_TOKEN = re.compile(
    r"(?P<num>\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|\$?\.\d+%?)|(?P<op>[+\-−–×*÷/xX])|(?P<lp>\()|(?P<rp>\))"
    r"|(?P<sp>\s+)|(?P<bad>.)"
)
_OPS = {"+": "+", "-": "-", "−": "-", "–": "-", "×": "*", "*": "*", "x": "*", "X": "*", "÷": "/", "/": "/"}
Node = tuple  # ("n", Fraction) | ("neg", Node) | (op, Node, Node)


def _pretty_tokens(text: str) -> list[tuple[str, str]] | None:
    out: list[tuple[str, str]] = []
    for m in _PRETTY_TOKEN.finditer(text):
        kind = m.lastgroup or "bad"
        if kind == "bad":
            return None
        if kind == "sp":
            continue
        tok = _OPS[m.group()] if kind == "op" else m.group()
        # "2(40 + 9)", "(1/2) 278": the judge reads these as products
        if out and ((out[-1][0] in ("num", "rp") and kind == "lp") or (out[-1][0] == "rp" and kind == "num")):
            out.append(("op", "*"))
        out.append((kind, tok))
    return out


class _Tree:
    """Recursive descent over + - * / and parentheses, building a tree instead of a value."""

    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.toks, self.i = toks, 0

    def parse(self) -> Node | None:
        try:
            node = self.expr()
        except (ValueError, IndexError, ZeroDivisionError):
            return None
        return node if self.i == len(self.toks) else None

    def _peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def expr(self) -> Node:
        node = self.term()
        while (t := self._peek()) and t[0] == "op" and t[1] in "+-":
            self.i += 1
            node = (t[1], node, self.term())
        return node

    def term(self) -> Node:
        node = self.atom()
        while (t := self._peek()) and t[0] == "op" and t[1] in "*/":
            self.i += 1
            node = (t[1], node, self.atom())
        return node

    def atom(self) -> Node:
        t = self._peek()
        if t is None:
            raise ValueError("end of expression")
        self.i += 1
        if t[0] == "num":
            return ("n", parse_number(t[1]))
        if t == ("op", "-"):
            return ("neg", self.atom())
        if t[0] == "lp":
            node = self.expr()
            if (self._peek() or ("",))[0] != "rp":
                raise ValueError("unbalanced parenthesis")
            self.i += 1
            return node
        raise ValueError(f"unexpected {t[1]!r}")


def _tree(text: str) -> Node | None:
    toks = _pretty_tokens(text)
    return _Tree(toks).parse() if toks else None


def _value(node: Node) -> Fraction:
    if node[0] == "n":
        return node[1]
    if node[0] == "neg":
        return -_value(node[1])
    a, b = _value(node[1]), _value(node[2])
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[node[0]]


def _flat(node: Node, op: str) -> list[Node]:
    if node[0] == op:
        return _flat(node[1], op) + _flat(node[2], op)
    return [node]


def canon(node: Node, numbers: bool = True) -> str:
    """`node` written canonically: + and * flattened and their operands sorted (commutative and
    associative), - and / kept in order; `numbers=False` writes every number as `#` (the shape)."""
    if node[0] == "n":
        return str(node[1]) if numbers else "#"
    if node[0] == "neg":
        return "-" + canon(node[1], numbers)
    op = node[0]
    if op in "+*":
        parts = sorted(canon(k, numbers) for k in _flat(node, op))
        return "(" + f" {op} ".join(parts) + ")"
    return f"({canon(node[1], numbers)} {op} {canon(node[2], numbers)})"


def _arith_step(claim: Claim, position: int) -> ClaimStep | None:
    if claim.text.startswith("<<"):  # an annotation, quoted as written: "<<48/2=24>>"
        left, _, right = claim.text[2:-2].partition("=")
    else:
        left, _, right = claim.text.partition(" = ")
    tree = _tree(left)
    if tree is None:
        return None
    rtree = _tree(right)
    try:
        result = str(_value(rtree)) if rtree is not None else " ".join(right.split())
    except ZeroDivisionError:
        result = " ".join(right.split())
    return ClaimStep(
        sub_think=f"compute {canon(tree, numbers=False)}", query=left, answer=right, kind="arith",
        operation=canon(tree, numbers=False), quantity=canon(tree), result=result, true=claim.ok,
        position=position, claim=claim.text,
    )  # fmt: skip


# ---------------------------------------------------------------- dates


def _date_step(m: re.Match[str], claim: Claim, plus: bool) -> ClaimStep | None:
    start, end = parse_any_date(m.group("d1")), parse_any_date(m.group("d2"))
    if start is None or end is None:
        return None
    n_text = m.group("n").lower()
    n = WORD_NUMBERS[n_text] if n_text in WORD_NUMBERS else int(n_text)
    if plus:
        sign = 1 if m.group("sign").lower() in ("+", "plus") else -1
    else:
        sign = -1 if m.group("rel").lower().split()[0] in ("before", "earlier", "prior") else 1
    unit = m.group("unit").lower()
    amount = sign * n * {"week": 7, "year": 12}.get(unit, 1)
    unit = {"week": "day", "year": "month"}.get(unit, unit)
    direction = "+" if amount > 0 else "-"
    said = " ".join(m.group().split())
    return ClaimStep(
        sub_think=f"shift a date by {unit}s ({'forward' if amount > 0 else 'back'})",
        query=said[: m.start("d2") - m.start()].strip(), answer=m.group("d2"), kind="date",
        operation=f"date {unit} {direction}", quantity=f"{start:%m/%d/%Y} {amount:+d} {unit}",
        result=f"{end:%m/%d/%Y}", true=claim.ok, position=m.start(), claim=claim.text,
    )  # fmt: skip


# ---------------------------------------------------------------- extraction


def _blank(text: str, rx: re.Pattern[str], word: str | None = None) -> str:
    """`text` with every match of `rx` replaced by text of the same length (spaces, or ` WW..W `)."""

    def sub(m: re.Match[str]) -> str:
        n = len(m.group())
        return " " * n if word is None or n < 3 else " " + word * (n - 2) + " "

    return rx.sub(sub, text)


def _locate(line: str, expr: str, start: int) -> int | None:
    """Where the pretty-printed `expr` (the judge's rendering of a claim's left side) is written in
    `line`, at or after `start`; spacing is free."""
    pieces = re.findall(r"[()]|[^\s()]+", expr)
    m = re.compile(r"\s*".join(re.escape(p) for p in pieces)).search(line, start)
    return m.start() if m else None


def claim_steps(text: str, tolerance: float = 1e-6) -> list[ClaimStep]:
    """The path's claims as steps, in the order they are written."""
    found: list[ClaimStep] = []
    for m in _ANNOTATION.finditer(text):
        for c in annotation_claims(m.group(), tolerance):
            if (s := _arith_step(c, m.start())) is not None:
                found.append(s)
    base = _blank(text, _ANNOTATION)
    for rx, plus in ((_DATE_PLUS, True), (_DATE_REL, False)):
        for m in rx.finditer(base):
            claims = date_claims(m.group())
            if claims and (s := _date_step(m, claims[0], plus)) is not None:
                found.append(s)
    # as check_text masks them, so that a date's or a clock time's numbers are no arithmetic
    masked = _blank(_blank(base, _DATE_ONLY, "D"), _CLOCK, "T").replace("**", "  ")
    offset = 0
    for line in masked.splitlines(keepends=True):
        cursor = 0
        for c in arithmetic_claims(line, tolerance):
            at = _locate(line, c.text.partition(" = ")[0], cursor)
            at = cursor if at is None else at
            cursor = at + 1
            if (s := _arith_step(c, offset + at)) is not None:
                found.append(s)
        offset += len(line)
    found.sort(key=lambda s: s.position)
    steps: list[ClaimStep] = []
    for s in found:
        prev = steps[-1] if steps else None
        if prev and (prev.kind, prev.quantity, prev.result) == (s.kind, s.quantity, s.result):
            continue  # one computation stated twice in a row ("48/2 = <<48/2=24>>24")
        steps.append(s)
    return steps


def match_claims(student: Step, reference: Step) -> StepMatch:
    """The verdicts of the module docstring; a step that is not a claim matches nothing."""
    if not isinstance(student, ClaimStep) or not isinstance(reference, ClaimStep):
        return StepMatch(False, False, False, ("not a claim step",))
    think = student.kind == reference.kind and student.operation == reference.operation
    query = think and student.quantity == reference.quantity
    answer = student.true and reference.true and student.result == reference.result
    return StepMatch(think, query, answer)


class ClaimsExtractor:
    """The offline extractor: `claim_steps` and `match_claims`. Never fails: a path without claims
    has no steps (the structure reward says so)."""

    name = "claims"

    def __init__(self, tolerance: float = 1e-6) -> None:
        self.tolerance = tolerance

    def extract(self, text: str, question: str = "") -> StepsResult:
        return StepsResult(tuple(claim_steps(text, self.tolerance)))

    def match(self, student: Step, reference: Step) -> StepMatch:
        return match_claims(student, reference)


__all__ = ["ClaimStep", "ClaimsExtractor", "canon", "claim_steps", "match_claims"]
