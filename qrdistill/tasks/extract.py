"""Final-answer extraction and checking, shared by every task.

Follows the lm-evaluation-harness convention: a *strict* pass looks for the
answer the response commits to ("The answer is ...", "The final answer is
...", "#### N", "\\boxed{...}"), and only when there is none a *flexible* pass
looks for an answer anywhere in the text. `Task.score` reports both: the
strict answer alone (`strict_pred`) and the flexible one that accuracy uses
(`pred`).

The flexible pass differs by kind:
- numbers and dates: the last one in the text, as lm-eval does; a chain of
  thought legitimately states intermediate values before the result;
- multiple choice and yes/no: an answer only if the response names exactly
  one of the possible answers, stricter than lm-eval's last match. Weak
  models walk through the options in order ("Step 1: 03/02/2011 ... Step 4:
  05/05/2011 is the") and would otherwise be credited with the last one
  listed without ever committing to it.

When a strict answer line states a letter and an option text that name
different options ("The answer is (E) 08/29/2028." where 08/29/2028 is
option (B)), the text wins: the text is what the response computed, the
letter only a lookup. `AnswerScore.conflict` marks these, so a report can
count how often the rule decided.

The kinds of answer are checked differently on purpose:
- letters, yes/no and MM/DD/YYYY dates are compared as normalised strings:
  math-verify reads `01/02/2021` and `01/09/2021` as equal numbers, so it must
  never see a date or a letter;
- plain numbers (GSM8K) are compared as exact decimals after dropping `$`,
  thousands separators and trailing zeros (exact, and no symbolic parse is
  needed for every GSM8K answer);
- mathematical expressions (MATH) go through math-verify's parse + verify.

The answer-kind base classes at the bottom (`MultipleChoiceTask`, `YesNoTask`,
`NumberTask`, `MathTask`, `DateTask`) give a task its instruction, extraction,
check and gold text; a concrete task adds only `load`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import ClassVar

from qrdistill.tasks.base import AnswerScore, Record, Task

# "The answer is", "the final answer is", "the correct answer is", "Answer:" at a line start.
_STRICT_RE = re.compile(
    r"(?:\banswer\s+is\b|\banswer\s+would\s+be\b|^[ \t*#>_-]*(?:final\s+)?answer\s*:)[ \t]*:?",
    re.IGNORECASE | re.MULTILINE,
)
_GSM_HASH_RE = re.compile(r"####[ \t]*(.+)")
_LETTER_SPAN_RE = re.compile(r"^\(?([A-Z])(?:\)|(?=[\s.,:;!]|$))")
_PAREN_LETTER_RE = re.compile(r"\(([A-Z])\)")
_BOLD_LETTER_RE = re.compile(r"\*\*\(?([A-Z])\)?[.:]?\*\*")
_LINE_LETTER_RE = re.compile(
    r"^[ \t*]*(?:option[ \t]+)?\(?([A-Z])\)?[.:]?[ \t*]*\.?[ \t]*$", re.MULTILINE | re.IGNORECASE
)
_DATE_RE = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?![\d/])")
# "no" before a word ("no meat", "No Exit") is a determiner, not an answer.
_YES_NO_RE = re.compile(r"\b(yes\b|no\b(?![ \t]+\w))", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.])-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\$?\.\d+")
_INLINE_MATH_RE = re.compile(r"\$([^$]+)\$")

_MARKUP = "*_`\"' \t\n"


# ---------------------------------------------------------------- normalisers


def normalize_text(s: str) -> str:
    """Lower-case, collapse whitespace, drop surrounding markup and a trailing period;
    MM/DD/YYYY dates are zero-padded so "5/1/2021" matches "05/01/2021"."""
    s = _DATE_RE.sub(_pad_date, s)
    s = " ".join(s.split()).strip(_MARKUP).lower()
    while s and s[-1] in ".!;:,":
        s = s[:-1].rstrip(_MARKUP)
    return s.strip(_MARKUP)


def _pad_date(m: re.Match[str]) -> str:
    return f"{int(m.group(1)):02d}/{int(m.group(2)):02d}/{m.group(3)}"


def normalize_date(s: str) -> str | None:
    """The first M/D/YYYY date in `s` as zero-padded MM/DD/YYYY, or None."""
    m = _DATE_RE.search(s)
    return _pad_date(m) if m else None


def normalize_number(s: str) -> str | None:
    """ "$1,000.00" -> "1000", "-3.50" -> "-3.5"; None if `s` is not a plain number."""
    s = s.strip().strip(_MARKUP).rstrip(".").replace("$", "").replace(",", "").replace(" ", "")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def normalize_yes_no(s: str) -> str | None:
    n = normalize_text(s)
    return {"yes": "Yes", "no": "No", "true": "Yes", "false": "No"}.get(n)


# ---------------------------------------------------------------- strict spans


def strict_span(text: str) -> str | None:
    """The text after the LAST "the answer is" / "answer:" / "####" on its line, or None.

    The last one wins because a chain of thought may mention a tentative answer
    ("I first thought (A) ...") before committing to the final one.
    """
    best: tuple[int, str] | None = None
    for m in _STRICT_RE.finditer(text):
        rest = text[m.end() :]
        line = rest.split("\n", 1)[0]
        if not line.strip(_MARKUP + ".:"):
            # "The answer is:\n(B)" -- the answer sits on the next non-empty line.
            nxt = [x for x in rest.split("\n")[1:] if x.strip(_MARKUP)]
            line = nxt[0] if nxt else ""
        if line.strip(_MARKUP + ".:"):
            best = (m.start(), line)
    for m in _GSM_HASH_RE.finditer(text):
        if best is None or m.start() > best[0]:
            best = (m.start(), m.group(1))
    return _strip_span(best[1]) if best else None


def _strip_span(s: str) -> str:
    s = s.strip()
    s = re.sub(r"^[:\s]+", "", s)
    # "**(B) 05/01/2021**." -> "(B) 05/01/2021"
    s = s.replace("**", "").replace("__", "")
    return s.strip(_MARKUP)


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} (or \fbox{...}) with balanced braces, or None."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    head = re.match(r"\\(?:boxed|fbox)\s*(\{)?", text[idx:])
    if head is None or head.group(1) is None:
        # "\boxed 5" (no braces) as lm-eval's MATH extractor accepts.
        m = re.match(r"\\boxed\s+([^\s$]+)", text[idx:])
        return m.group(1) if m else None
    i = idx + head.end(1) - 1
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


# ---------------------------------------------------------------- multiple choice


def letters(n: int) -> str:
    return "".join(chr(65 + i) for i in range(n))


def _option_in_span(span: str, choices: list[str]) -> int | None:
    """Index of the option whose text the span states (exactly, or as its leading words)."""
    ns = normalize_text(span)
    if not ns:
        return None
    norms = [normalize_text(c) for c in choices]
    for i, c in enumerate(norms):
        if c and ns == c:
            return i
    # "05/01/2021, because ..." -- the longest option that the span starts with.
    starts = [(len(c), i) for i, c in enumerate(norms) if c and ns.startswith(c) and not ns[len(c)].isalnum()]
    return max(starts)[1] if starts else None


def _choice_from_span(span: str, choices: list[str]) -> tuple[str | None, bool]:
    """The option letter a strict span names, and whether the span's letter and option
    text name different options (the text wins; see the module docstring)."""
    valid = letters(len(choices))
    # An option whose text itself looks like a letter phrase ("A cell wall") is matched whole first.
    ns = normalize_text(span)
    exact = [i for i, c in enumerate(choices) if normalize_text(c) == ns]
    if ns and exact:
        return valid[exact[0]], False
    m = _LETTER_SPAN_RE.match(span)
    letter = m.group(1) if m and m.group(1) in valid else None
    if letter is not None:
        after = span[m.end() :]
        idx = _option_in_span(after, choices) if after.strip(_MARKUP + ".") else None
        if idx is None:
            return letter, False
        return valid[idx], valid[idx] != letter
    idx = _option_in_span(span, choices)
    if idx is not None:
        return valid[idx], False
    # "The answer is option C" / "The answer is therefore (C)".
    found = [x for x in _PAREN_LETTER_RE.findall(span) if x in valid]
    return (found[0] if found else None), False


def _strict_choice(text: str, choices: list[str]) -> tuple[str | None, bool]:
    span = strict_span(text)
    return _choice_from_span(span, choices) if span else (None, False)


def strict_choice(text: str, choices: list[str]) -> str | None:
    """The option letter the last "The answer is" span names, or None: a letter ("B", "(B)",
    "**B**", "B."), a letter plus option text (the text wins), or the option text alone."""
    return _strict_choice(text, choices)[0]


def flexible_choice(text: str, choices: list[str]) -> str | None:
    """The one option a response names anywhere, or None if it names none or several.

    An option is named by a parenthesised letter "(B)", a bold letter "**B**", a line
    holding only a letter, or its text. lm-eval's MultiChoiceRegexFilter takes the last
    match instead, which credits a response that lists the options in turn with the last
    one listed; a response that names two options has not committed to either.
    """
    valid = letters(len(choices))
    named = {m.group(1) for rx in (_PAREN_LETTER_RE, _BOLD_LETTER_RE) for m in rx.finditer(text)}
    named |= {m.group(1).upper() for m in _LINE_LETTER_RE.finditer(text)}
    named = {x for x in named if x in valid}
    spans = [
        (m.start(), m.end(), i)
        for i, c in enumerate(choices)
        if (pat := _option_pattern(c)) is not None
        for m in pat.finditer(text)
    ]
    # "salt water" names the option "salt water", not also the option "water".
    named |= {
        valid[i]
        for s, e, i in spans
        if not any(s2 <= s and e <= e2 and e2 - s2 > e - s for s2, e2, _ in spans)
    }
    return named.pop() if len(named) == 1 else None


def extract_choice(text: str, choices: list[str]) -> str | None:
    """The option letter a response commits to: `strict_choice`, else `flexible_choice`."""
    return strict_choice(text, choices) or flexible_choice(text, choices)


def _option_pattern(option: str) -> re.Pattern[str] | None:
    """A regex finding an option's text in free text: any case and spacing, dates with or
    without zero padding, whole words only."""
    words = " ".join(option.split()).strip(_MARKUP).rstrip(".").strip(_MARKUP)
    if not words:
        return None
    parts, last = [], 0
    for m in _DATE_RE.finditer(words):
        parts.append(re.escape(words[last : m.start()]))
        parts.append(rf"0?{int(m.group(1))}/0?{int(m.group(2))}/{m.group(3)}")
        last = m.end()
    parts.append(re.escape(words[last:]))
    body = "".join(parts).replace(r"\ ", r"\s+")
    return re.compile(rf"(?<![\w/]){body}(?![\w/])", re.IGNORECASE)


def check_choice(text: str, record: Record) -> bool:
    """True if the response names the gold option, by letter or by its text. When a
    final answer states both and they disagree ("(A) <text of B>"), the text counts."""
    return extract_choice(text, record.choices) == record.answer


# ---------------------------------------------------------------- yes / no


def strict_yes_no(text: str) -> str | None:
    """ "Yes" / "No" from the first word of the strict span, or None."""
    span = strict_span(text)
    if not span:
        return None
    first = re.split(r"[\s,.;:!()]+", span.strip(_MARKUP + "(["), maxsplit=1)[0]
    return normalize_yes_no(first)


def flexible_yes_no(text: str) -> str | None:
    """The one of "Yes" / "No" a response says anywhere, or None if it says neither or both.

    Like `flexible_choice`, stricter than lm-eval's last match: "No ... yes" has not
    committed. "no" before a word ("no meat") is a determiner and does not count.
    """
    found = {normalize_yes_no(w) for w in _YES_NO_RE.findall(text)}
    return found.pop() if len(found) == 1 else None


def extract_yes_no(text: str) -> str | None:
    """ "Yes" / "No": `strict_yes_no`, else `flexible_yes_no`."""
    return strict_yes_no(text) or flexible_yes_no(text)


def check_yes_no(text: str, gold: str) -> bool:
    pred = extract_yes_no(text)
    return pred is not None and pred == normalize_yes_no(gold)


# ---------------------------------------------------------------- numbers


def strict_number(text: str) -> str | None:
    """The committed number as a normalised string ("1,000.00" -> "1000"), or None:
    \\boxed{N}, "#### N" or "The answer is N" (the first number of that span, or the
    first after its last "=")."""
    boxed = last_boxed(text)
    if boxed is not None:
        got = normalize_number(boxed)
        if got is None:
            nums = _NUMBER_RE.findall(boxed)
            got = normalize_number(nums[0]) if nums else None
        if got is not None:
            return got
    span = strict_span(text)
    if span:
        # "The answer is 5 + 3 = 8." states its result after the last "=".
        nums = _NUMBER_RE.findall(span.rsplit("=", 1)[-1]) or _NUMBER_RE.findall(span)
        if nums:
            return normalize_number(nums[0])
    return None


def extract_number(text: str) -> str | None:
    """`strict_number`, else the last number in the text."""
    got = strict_number(text)
    if got is not None:
        return got
    nums = _NUMBER_RE.findall(text)
    return normalize_number(nums[-1]) if nums else None


def check_number(text: str, gold: str) -> bool:
    pred = extract_number(text)
    return pred is not None and pred == normalize_number(gold)


# ---------------------------------------------------------------- dates


def strict_date(text: str) -> str | None:
    """The first date (zero-padded MM/DD/YYYY) of the strict span, or None."""
    span = strict_span(text)
    return normalize_date(span) if span else None


def extract_date(text: str) -> str | None:
    """`strict_date`, else the last date in the text (zero-padded)."""
    got = strict_date(text)
    if got:
        return got
    found = list(_DATE_RE.finditer(text))
    return _pad_date(found[-1]) if found else None


def check_date(text: str, gold: str) -> bool:
    """Exact string comparison after zero-padding -- never math-verify (it equates 01/02 and 01/09)."""
    pred = extract_date(text)
    return pred is not None and pred == normalize_date(gold)


# ---------------------------------------------------------------- math expressions


def strict_math(text: str) -> str | None:
    r"""The committed mathematical answer as written (LaTeX), or None: the last
    \boxed{...}, then "The (final) answer is ..." (inline `$...$` stripped)."""
    boxed = last_boxed(text)
    if boxed:
        return boxed
    span = strict_span(text)
    if not span:
        return None
    # "$\frac{1}{2}$. I hope it is correct." -> "\frac{1}{2}"
    m = _INLINE_MATH_RE.search(span)
    got = m.group(1) if m else re.split(r"\.\s|\.$", span.strip(), maxsplit=1)[0]
    return got.strip().rstrip(".") or None


def extract_math(text: str) -> str | None:
    """`strict_math`, else the last inline `$...$`, then the last number."""
    got = strict_math(text)
    if got:
        return got
    found = _INLINE_MATH_RE.findall(text)
    if found:
        return found[-1].strip()
    nums = _NUMBER_RE.findall(text)
    return nums[-1].replace("$", "").strip() if nums else None


def math_equal(pred: str, gold: str) -> bool:
    """math-verify equivalence of two LaTeX answers (gold first, as verify expects).

    Timeouts are off (`parsing_timeout=None`, `timeout_seconds=None`) because
    math-verify implements them with SIGALRM, which fails outside the main thread.
    """
    from math_verify import parse, verify

    # A pair of plain numbers needs no symbolic comparison.
    pn, gn = normalize_number(pred), normalize_number(gold)
    if pn is not None and gn is not None:
        return pn == gn
    gold_parsed = parse(_as_latex(gold), parsing_timeout=None)
    pred_parsed = parse(_as_latex(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return normalize_text(pred) == normalize_text(gold)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _as_latex(s: str) -> str:
    s = s.strip()
    return s if s.startswith("$") or s.startswith("\\boxed") else f"${s}$"


def check_math(text: str, gold: str) -> bool:
    pred = extract_math(text)
    return pred is not None and math_equal(pred, gold)


# ---------------------------------------------------------------- answer-kind task bases


def _answer_score(
    strict_pred: str | None, pred: str | None, is_gold: Callable[[str], bool], conflict: bool = False
) -> AnswerScore:
    # The flexible pass runs only without a strict answer, so a strict answer is `pred`
    # itself and its check need not run twice (math-verify is slow).
    correct = pred is not None and is_gold(pred)
    return AnswerScore(
        pred=pred,
        correct=correct,
        strict_pred=strict_pred,
        strict_correct=strict_pred is not None and correct,
        conflict=conflict,
    )


class MultipleChoiceTask(Task):
    """Lettered options; `answer` is the gold letter, `meta["answer_text"]` its text."""

    answer_instruction: ClassVar[str] = (
        'End your response with "The answer is (X) <option text>." where X is the letter of the correct option.'
    )

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        if record is None:
            raise ValueError(f"{self.name}: extracting a multiple-choice answer needs the record's options")
        return extract_choice(text, record.choices)

    def is_correct(self, text: str, record: Record) -> bool:
        return check_choice(text, record)

    def score(self, text: str, record: Record) -> AnswerScore:
        strict, conflict = _strict_choice(text, record.choices)
        pred = extract_choice(text, record.choices)
        score = _answer_score(strict, pred, lambda p: p == record.answer, conflict)
        letter_correct = score.correct
        if conflict:
            m = _LETTER_SPAN_RE.match(strict_span(text) or "")
            letter_correct = bool(m) and m.group(1) == record.answer
        return dataclasses.replace(score, letter_correct=letter_correct)

    def gold_text(self, record: Record) -> str:
        return f"({record.answer}) {record.meta.get('answer_text', '')}".strip()


class YesNoTask(Task):
    answer_instruction: ClassVar[str] = 'End your response with "The answer is Yes." or "The answer is No."'

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        return extract_yes_no(text)

    def is_correct(self, text: str, record: Record) -> bool:
        return check_yes_no(text, record.answer)

    def score(self, text: str, record: Record) -> AnswerScore:
        gold = normalize_yes_no(record.answer)
        return _answer_score(strict_yes_no(text), extract_yes_no(text), lambda p: p == gold)

    def gold_text(self, record: Record) -> str:
        return normalize_yes_no(record.answer) or record.answer


class NumberTask(Task):
    answer_instruction: ClassVar[str] = (
        'End your response with "The answer is N." where N is the final number, without units.'
    )

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        return extract_number(text)

    def is_correct(self, text: str, record: Record) -> bool:
        return check_number(text, record.answer)

    def score(self, text: str, record: Record) -> AnswerScore:
        gold = normalize_number(record.answer)
        return _answer_score(strict_number(text), extract_number(text), lambda p: p == gold)

    def gold_text(self, record: Record) -> str:
        return normalize_number(record.answer) or record.answer


class MathTask(Task):
    max_new_tokens: ClassVar[int] = 512
    answer_instruction: ClassVar[str] = (
        'End your response with "The answer is N." where N is the final answer in simplest form '
        "(LaTeX allowed, e.g. \\frac{3}{4})."
    )

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        return extract_math(text)

    def is_correct(self, text: str, record: Record) -> bool:
        return check_math(text, record.answer)

    def score(self, text: str, record: Record) -> AnswerScore:
        return _answer_score(strict_math(text), extract_math(text), lambda p: math_equal(p, record.answer))

    def gold_text(self, record: Record) -> str:
        return record.answer


class DateTask(Task):
    """Free-answer dates (MM/DD/YYYY)."""

    answer_instruction: ClassVar[str] = 'End your response with "The answer is MM/DD/YYYY."'

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        return extract_date(text)

    def is_correct(self, text: str, record: Record) -> bool:
        return check_date(text, record.answer)

    def score(self, text: str, record: Record) -> AnswerScore:
        gold = normalize_date(record.answer)
        return _answer_score(strict_date(text), extract_date(text), lambda p: p == gold)

    def gold_text(self, record: Record) -> str:
        return normalize_date(record.answer) or record.answer


__all__ = [
    "DateTask",
    "MathTask",
    "MultipleChoiceTask",
    "NumberTask",
    "YesNoTask",
    "check_choice",
    "check_date",
    "check_math",
    "check_number",
    "check_yes_no",
    "extract_choice",
    "extract_date",
    "extract_math",
    "extract_number",
    "extract_yes_no",
    "flexible_choice",
    "flexible_yes_no",
    "last_boxed",
    "letters",
    "math_equal",
    "normalize_date",
    "normalize_number",
    "normalize_text",
    "normalize_yes_no",
    "strict_choice",
    "strict_date",
    "strict_math",
    "strict_number",
    "strict_span",
    "strict_yes_no",
]
