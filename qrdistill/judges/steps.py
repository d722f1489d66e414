"""`steps` judge: a deterministic verifier of the arithmetic and date claims in a path.

It finds every checkable claim in free text and recomputes it:
- arithmetic `a op b = c` with + - − × x * ÷ /, chains (`a + b - c = d`),
  parentheses, numbers written with `$`, thousands commas, decimals and `%`;
  GSM8K calculator annotations `<<a*b=c>>`;
- date arithmetic: "03/05/2021 + 10 days = 03/15/2021",
  "10 days before 03/05/2021 is 02/23/2021", "one week after March 5, 2021 is
  March 12, 2021" (days, weeks, months, years).

A path with any false claim is invalid; the reason quotes the first one and
the true value. Text that only looks like arithmetic is ignored: the left side
of `=` must contain an operator between numbers (so `x = a * b`, `Step 1 = ...`
and `60 minutes = 1 hour` are not claims), the whole run of arithmetic left of
`=` is the expression (a run cut by a word, "9 hours * 2/3 = 6", is skipped rather
than read as "2/3 = 6"), and the right side must be a number or an expression
(chains "30 - 8 * 3 = 30 - 24 = 6"). Rounded decimals ("10 / 3 = 3.33") pass when
the true value rounds or truncates to the decimals written; a whole-number result
must be exact ("10 / 4 = 2" is false). Month shifts from a day that the target
month lacks ("01/31 + 1 month") are ambiguous and not judged.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from qrdistill.judges.base import JUDGES, Judge, Verdict

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]  # fmt: skip
_MONTH_ALT = "|".join(
    sorted({m.capitalize() for m in MONTHS} | {m.capitalize()[:3] for m in MONTHS}, key=len, reverse=True)
)
DATE_RE = (
    r"(?:(?<![\d/])\d{1,2}/\d{1,2}/\d{4}(?![\d/])"
    rf"|(?<![A-Za-z])(?:{_MONTH_ALT})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}(?!\d))"
)
_DATE_ONLY = re.compile(DATE_RE, re.IGNORECASE)
WORD_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}  # fmt: skip
_COUNT = rf"(?P<n>\d+|{'|'.join(WORD_NUMBERS)})\s+(?P<unit>day|week|month|year)s?"
_VERB = r"(?:=|is|was|gives|would\s+be|will\s+be|becomes|falls\s+on|lands\s+on|->|→)"
# "03/05/2021 + 10 days = 03/15/2021"
_DATE_PLUS = re.compile(
    rf"(?P<d1>{DATE_RE})\s*(?P<sign>\+|-|−|–|plus|minus)\s*{_COUNT}\s*,?\s*{_VERB}\s*(?P<d2>{DATE_RE})",
    re.IGNORECASE,
)
# "10 days before 03/05/2021 is 02/23/2021"
_DATE_REL = re.compile(
    rf"(?<![\w/]){_COUNT}\s+(?P<rel>after|before|later\s+than|earlier\s+than|from|prior\s+to)\s+"
    rf"(?P<d1>{DATE_RE})\s*,?\s*{_VERB}\s*(?P<d2>{DATE_RE})",
    re.IGNORECASE,
)
_CLOCK = re.compile(r"(?<![\d:])\d{1,2}:\d{2}(?![\d:])")  # "6:00 + 48 = 6:48" is clock time
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_TOKEN = re.compile(
    r"(?P<space>\s+)"
    # a number may touch an "x" ("$2000x 10"), never another letter ("2nd", "5km")
    r"|(?P<num>(?<![\w.)])(?:-(?=\d))?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?(?![^\WxX]|\.\d)"
    r"|(?<![\w.])\$?\.\d+%?(?![^\WxX]|\.\d))"
    r"|(?P<word>[A-Za-z_][A-Za-z_']*)"
    r"|(?P<op>[+\-−–×*÷/])"
    r"|(?P<lp>\()|(?P<rp>\))|(?P<eq>=)"
    r"|(?P<other>.)"
)
#: a word right before an expression that makes it the tail of a longer one ("15 pages x 1/3 = 5")
CUT_WORDS = {"x", "times", "of", "by", "multiplied", "divided", "plus", "minus"}
Tok = tuple[str, str, str]  # (kind, normalised text, text as written)
OP_NORMAL = {
    "+": "+",
    "-": "-",
    "−": "-",
    "–": "-",
    "×": "*",
    "*": "*",
    "x": "*",
    "X": "*",
    "÷": "/",
    "/": "/",
}


@dataclass
class Claim:
    text: str
    ok: bool
    truth: str  # the claim with the true value, for the reason


# ---------------------------------------------------------------- numbers


def parse_number(s: str) -> Fraction:
    s = s.replace("$", "").replace(",", "")
    pct = s.endswith("%")
    value = Fraction(s.rstrip("%"))
    return value / 100 if pct else value


def _fmt(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    return f"{float(x):.6g}"


class _Parser:
    """Recursive-descent evaluator of + - * / and parentheses over tokens (kind, text)."""

    def __init__(self, toks: list[Tok]) -> None:
        self.toks = toks
        self.i = 0

    def parse(self) -> Fraction | None:
        try:
            v = self.expr()
        except (ZeroDivisionError, ValueError, IndexError):
            return None
        return v if self.i == len(self.toks) else None

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def expr(self) -> Fraction:
        v = self.term()
        while (t := self.peek()) and t[0] == "op" and t[1] in "+-":
            self.i += 1
            v = v + self.term() if t[1] == "+" else v - self.term()
        return v

    def term(self) -> Fraction:
        v = self.atom()
        while (t := self.peek()) and t[0] == "op" and t[1] in "*/":
            self.i += 1
            rhs = self.atom()
            v = v * rhs if t[1] == "*" else v / rhs
        return v

    def atom(self) -> Fraction:
        t = self.peek()
        if t is None:
            raise ValueError("end of expression")
        self.i += 1
        if t[0] == "num":
            return parse_number(t[1])
        if t[0] == "lp":
            v = self.expr()
            if (self.peek() or ("",))[0] != "rp":
                raise ValueError("unbalanced parenthesis")
            self.i += 1
            return v
        raise ValueError(f"unexpected {t[1]!r}")


def evaluate(expression: str) -> Fraction | None:
    toks = _tokens(expression)
    if toks is None:
        return None
    return _Parser(toks).parse()


def _tokens(text: str) -> list[Tok] | None:
    """Arithmetic tokens of `text`, or None if it holds anything else."""
    out = []
    for t in _lex(text):
        if t[0] not in ("num", "op", "lp", "rp"):
            return None
        out.append(t)
    return out


def _lex(line: str) -> list[Tok]:
    raw = [(m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(line) if m.lastgroup != "space"]
    out: list[Tok] = []
    for i, (kind, tok) in enumerate(raw):
        written = tok
        if kind == "word" and tok in ("x", "X"):
            # "3 x 4" multiplies; "2x + 3" and "x = 5" are algebra
            between = (
                0 < i < len(raw) - 1 and raw[i - 1][0] in ("num", "rp") and raw[i + 1][0] in ("num", "lp")
            )
            kind = "op" if between else kind
        if kind == "op":
            tok = OP_NORMAL[tok]
        out.append((kind, tok, written))
    return out


def _is_code_number(tok: str) -> bool:
    """'0900', '0130': clock times and codes, not quantities."""
    return bool(re.match(r"\$?0\d", tok))


def _implicit_products(toks: list[Tok]) -> list[Tok]:
    """'2(40+9)' and '(1/2) 278' multiply; two bare numbers in a row ('1 1/2', '350 000') do not."""
    out: list[Tok] = []
    for t in toks:
        if out and ((out[-1][0] in ("num", "rp") and t[0] == "lp") or (out[-1][0] == "rp" and t[0] == "num")):
            out.append(("op", "*", ""))
        out.append(t)
    return out


def matches(truth: Fraction, claimed: Fraction, written: str, tolerance: float) -> bool:
    """Equal within `tolerance` (relative), or a rounded/truncated decimal of a non-integer truth."""
    if truth == claimed or abs(truth - claimed) <= tolerance * max(abs(truth), 1):
        return True
    if truth.denominator == 1:
        return False
    digits = written.replace("$", "").replace(",", "").rstrip("%")
    places = len(digits.split(".")[1]) if "." in digits else 0
    if written.endswith("%"):
        places += 2
    scale = Fraction(10) ** places
    if places == 0:
        return False  # "10 / 4 = 2" is false; only written decimals are read as rounded
    rounded = Fraction(round(truth * scale), scale)
    truncated = Fraction(int(truth * scale), scale)
    return claimed in (rounded, truncated) or abs(truth - claimed) <= Fraction(1, 2) / scale


def _pretty(toks: list[Tok]) -> str:
    """The expression as written (with its own operator symbols), evenly spaced."""
    out = ""
    for kind, _, written in toks:
        out += f" {written} " if kind == "op" and written else written
    return " ".join(out.split()).replace("( ", "(").replace(" )", ")")


def arithmetic_claims(text: str, tolerance: float) -> list[Claim]:
    """Claims `expr = number` per line, where `expr` has at least one operator between numbers."""
    claims: list[Claim] = []
    for line in text.replace("**", "").splitlines():
        toks = _lex(line)
        for i, (kind, _, _) in enumerate(toks):
            if kind != "eq":
                continue
            if i + 1 >= len(toks) or toks[i + 1][0] not in ("num", "lp"):
                continue
            j = i
            while j > 0 and toks[j - 1][0] in ("num", "op", "lp", "rp"):
                j -= 1
            # The whole run left of "=" must be the expression: a run opening with an operator was cut by a
            # word ("9 hours * 2/3 = 6"), and a tail of it would be a different, false, claim.
            run = _implicit_products(toks[j:i])
            if j > 0 and toks[j - 1][0] == "word" and toks[j - 1][1].lower() in CUT_WORDS:
                continue
            if not run or run[0][0] not in ("num", "lp") or not any(t[0] == "op" for t in run):
                continue
            value = _Parser(run).parse()
            if value is None:
                continue
            expr = _pretty(run)
            readings = _right_sides(toks, i + 1)
            if not readings or any(_is_code_number(t[1]) for t in run + toks[i + 1 : i + 2] if t[0] == "num"):
                continue
            ok = any(
                matches(value, claimed, right, tolerance)
                # "18 / 450 x 100 = 4%": percent points
                or (
                    right.endswith("%")
                    and "%" not in expr
                    and matches(value, claimed * 100, right[:-1], tolerance)
                )
                for right, claimed in readings
            )
            claims.append(Claim(f"{expr} = {readings[0][0]}", ok, f"{expr} = {_fmt(value)}"))
    return claims


def _right_sides(toks: list[Tok], k: int) -> list[tuple[str, Fraction]]:
    """Readings of the value right of "=": the whole expression ("= 30 - 24 = 6") and its first
    number (a running total "= $1.50 + $3.00 = $4.50", or a dash as punctuation "= 7 - so ...")."""
    e = k
    while e < len(toks) and toks[e][0] in ("num", "op", "lp", "rp"):
        e += 1
    run = _implicit_products(toks[k:e])
    out = []
    value = _Parser(run).parse() if run else None
    if value is not None:
        out.append((_pretty(run), value))
    if toks[k][0] == "num" and len(run) > 1:
        mixed = [t[1] for t in toks[k : k + 4]]
        if (
            len(mixed) == 4
            and [t[0] for t in toks[k : k + 4]] == ["num", "num", "op", "num"]
            and mixed[2] == "/"
            and all(x.isdigit() for x in (mixed[0], mixed[1], mixed[3]))
            and int(mixed[3])
        ):
            # a mixed number "3 1/2"
            out.append(
                (
                    " ".join(t[2] for t in toks[k : k + 4]),
                    int(mixed[0]) + Fraction(int(mixed[1]), int(mixed[3])),
                )
            )
        out.append((toks[k][1], parse_number(toks[k][1])))
    return out


def annotation_claims(text: str, tolerance: float) -> list[Claim]:
    """GSM8K calculator annotations `<<48/2=24>>`."""
    claims = []
    for m in _ANNOTATION.finditer(text):
        inner = m.group(1)
        if inner.count("=") != 1:
            continue
        lhs, rhs = inner.split("=")
        value = evaluate(lhs)
        rt = _tokens(rhs)
        if value is None or not rt or len(rt) != 1 or rt[0][0] != "num":
            continue
        claimed = parse_number(rt[0][1])
        claims.append(
            Claim(f"<<{inner}>>", matches(value, claimed, rt[0][1], tolerance), f"{lhs} = {_fmt(value)}")
        )
    return claims


# ---------------------------------------------------------------- dates


def parse_any_date(s: str) -> dt.date | None:
    s = s.strip()
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", s)
    try:
        if m:
            return dt.date(int(m.group(3)), int(m.group(1)), int(m.group(2)))
        m = re.fullmatch(r"([A-Za-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", s)
        if m:
            name = m.group(1).lower()
            month = next(i for i, full in enumerate(MONTHS) if full.startswith(name[:3]))
            return dt.date(int(m.group(3)), month + 1, int(m.group(2)))
    except (ValueError, StopIteration):
        return None
    return None


def shift(d: dt.date, n: int, unit: str) -> dt.date | None:
    """`d` moved by n units; None when a month shift lands on a day the month lacks (ambiguous)."""
    if unit in ("day", "week"):
        return d + dt.timedelta(days=n * (7 if unit == "week" else 1))
    k = d.year * 12 + d.month - 1 + n * (12 if unit == "year" else 1)
    y, m = divmod(k, 12)
    try:
        return dt.date(y, m + 1, d.day)
    except ValueError:
        return None


def date_claims(text: str) -> list[Claim]:
    claims: list[Claim] = []
    for rx, kind in ((_DATE_PLUS, "plus"), (_DATE_REL, "rel")):
        for m in rx.finditer(text):
            d1, d2 = parse_any_date(m.group("d1")), parse_any_date(m.group("d2"))
            if d1 is None or d2 is None:
                continue
            n_text = m.group("n").lower()
            n = WORD_NUMBERS[n_text] if n_text in WORD_NUMBERS else int(n_text)
            unit = m.group("unit").lower()
            if kind == "plus":
                sign = 1 if m.group("sign").lower() in ("+", "plus") else -1
            else:
                sign = -1 if m.group("rel").lower().split()[0] in ("before", "earlier", "prior") else 1
            try:
                truth = shift(d1, sign * n, unit)
            except (OverflowError, ValueError):
                continue
            if truth is None:
                continue
            said = " ".join(m.group().split())
            true_text = said[: m.start("d2") - m.start()].rstrip() + " " + f"{truth:%m/%d/%Y}"
            claims.append(Claim(said, truth == d2, " ".join(true_text.split())))
    return claims


# ---------------------------------------------------------------- judge


def check_text(text: str, tolerance: float = 1e-6) -> list[Claim]:
    """Every checkable claim in `text`, in the order: annotations, dates, arithmetic."""
    claims = annotation_claims(text, tolerance)
    text = _ANNOTATION.sub("", text)
    claims += date_claims(text)
    masked = _CLOCK.sub(" TIME ", _DATE_ONLY.sub(" DATE ", text))
    claims += arithmetic_claims(masked, tolerance)
    return claims


def verdict_for(text: str, tolerance: float = 1e-6) -> Verdict:
    claims = check_text(text, tolerance)
    for c in claims:
        if not c.ok:
            return Verdict(valid=False, reason=f"false claim: '{c.text}' ({c.truth})")
    if not claims:
        return Verdict(valid=True, reason="no checkable claims")
    return Verdict(valid=True, reason=f"{len(claims)} claim{'s' if len(claims) != 1 else ''} checked")


@JUDGES.register("steps")
class StepsJudge(Judge):
    """Marks a path invalid when any arithmetic or date claim in it is false."""

    name = "steps"

    def judge(self, items: Sequence[dict[str, Any]], progress: Any = None) -> list[Verdict]:
        out = []
        for item in items:
            out.append(verdict_for(item.get("response") or "", self.config.tolerance))
            if progress is not None:
                progress(1)
        return out
