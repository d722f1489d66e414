"""Final-answer extraction and checking, shared by every task.

Follows the lm-evaluation-harness convention: a *strict* pass looks for the
answer the response commits to ("The answer is ...", "The final answer is
...", "#### N", "\\boxed{...}"), and only when there is none a *flexible* pass
takes the last plausible answer anywhere in the text (last lettered option,
last number, last date, last yes/no).

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

import re
from decimal import Decimal, InvalidOperation
from typing import ClassVar

from qrdistill.tasks.base import Record, Task

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
_YES_NO_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
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


def _choice_from_span(span: str, choices: list[str]) -> str | None:
    valid = letters(len(choices))
    # An option whose text itself looks like a letter phrase ("A cell wall") is matched whole first.
    ns = normalize_text(span)
    exact = [i for i, c in enumerate(choices) if normalize_text(c) == ns]
    if ns and exact:
        return valid[exact[0]]
    m = _LETTER_SPAN_RE.match(span)
    letter = m.group(1) if m and m.group(1) in valid else None
    if letter is not None:
        # "(B) 05/01/2021": the stated option text wins over the letter when they disagree,
        # since the text is what the response computed and the letter only a lookup.
        after = span[m.end() :]
        idx = _option_in_span(after, choices) if after.strip(_MARKUP + ".") else None
        return valid[idx] if idx is not None else letter
    idx = _option_in_span(span, choices)
    if idx is not None:
        return valid[idx]
    # "The answer is option C" / "The answer is therefore (C)".
    found = [x for x in _PAREN_LETTER_RE.findall(span) if x in valid]
    return found[0] if found else None


def extract_choice(text: str, choices: list[str]) -> str | None:
    """The option letter a response commits to, or None.

    Strict: the span after the last "The answer is" -- a letter ("B", "(B)", "**B**",
    "B."), a letter plus option text, or the option text alone. Flexible (no strict
    span): the last of a parenthesised letter "(B)", a bold letter "**B**", a line
    holding only a letter, or an option's text in the response.
    """
    if not choices:
        return None
    span = strict_span(text)
    if span:
        got = _choice_from_span(span, choices)
        if got is not None:
            return got
    valid = letters(len(choices))
    cands: list[tuple[int, str]] = []
    for rx in (_PAREN_LETTER_RE, _BOLD_LETTER_RE):
        cands += [(m.end(), m.group(1)) for m in rx.finditer(text) if m.group(1) in valid]
    cands += [
        (m.end(), m.group(1).upper()) for m in _LINE_LETTER_RE.finditer(text) if m.group(1).upper() in valid
    ]
    for i, c in enumerate(choices):
        pat = _option_pattern(c)
        if pat is not None:
            cands += [(m.end(), valid[i]) for m in pat.finditer(text)]
    if not cands:
        return None
    return max(cands, key=lambda c: c[0])[1]


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


def extract_yes_no(text: str) -> str | None:
    """ "Yes" / "No" from the strict span's first word, else the last yes/no in the text."""
    span = strict_span(text)
    if span:
        first = re.split(r"[\s,.;:!()]+", span.strip(_MARKUP + "(["), maxsplit=1)[0]
        got = normalize_yes_no(first)
        if got:
            return got
    found = _YES_NO_RE.findall(text)
    return normalize_yes_no(found[-1]) if found else None


def check_yes_no(text: str, gold: str) -> bool:
    pred = extract_yes_no(text)
    return pred is not None and pred == normalize_yes_no(gold)


# ---------------------------------------------------------------- numbers


def extract_number(text: str) -> str | None:
    """The final number as a normalised string ("1,000.00" -> "1000"), or None.

    Strict: \\boxed{N}, "#### N" or "The answer is N" (the first number of that span,
    or the first after its last "="); flexible: the last number in the text.
    """
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
    nums = _NUMBER_RE.findall(text)
    return normalize_number(nums[-1]) if nums else None


def check_number(text: str, gold: str) -> bool:
    pred = extract_number(text)
    return pred is not None and pred == normalize_number(gold)


# ---------------------------------------------------------------- dates


def extract_date(text: str) -> str | None:
    """MM/DD/YYYY from the strict span, else the last date in the text (zero-padded)."""
    span = strict_span(text)
    if span:
        got = normalize_date(span)
        if got:
            return got
    found = list(_DATE_RE.finditer(text))
    return _pad_date(found[-1]) if found else None


def check_date(text: str, gold: str) -> bool:
    """Exact string comparison after zero-padding -- never math-verify (it equates 01/02 and 01/09)."""
    pred = extract_date(text)
    return pred is not None and pred == normalize_date(gold)


# ---------------------------------------------------------------- math expressions


def extract_math(text: str) -> str | None:
    r"""The final mathematical answer as written (LaTeX), or None.

    Strict: the last \boxed{...}, then "The (final) answer is ..." (inline `$...$`
    stripped); flexible: the last inline `$...$`, then the last number.
    """
    boxed = last_boxed(text)
    if boxed:
        return boxed
    span = strict_span(text)
    if span:
        # "$\frac{1}{2}$. I hope it is correct." -> "\frac{1}{2}"
        m = _INLINE_MATH_RE.search(span)
        got = m.group(1) if m else re.split(r"\.\s|\.$", span.strip(), maxsplit=1)[0]
        got = got.strip().rstrip(".")
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

    def gold_text(self, record: Record) -> str:
        return f"({record.answer}) {record.meta.get('answer_text', '')}".strip()


class YesNoTask(Task):
    answer_instruction: ClassVar[str] = 'End your response with "The answer is Yes." or "The answer is No."'

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        return extract_yes_no(text)

    def is_correct(self, text: str, record: Record) -> bool:
        return check_yes_no(text, record.answer)

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

    def gold_text(self, record: Record) -> str:
        return normalize_number(record.answer) or record.answer


class MathTask(Task):
    answer_instruction: ClassVar[str] = (
        'End your response with "The answer is N." where N is the final answer in simplest form '
        "(LaTeX allowed, e.g. \\frac{3}{4})."
    )

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        return extract_math(text)

    def is_correct(self, text: str, record: Record) -> bool:
        return check_math(text, record.answer)

    def gold_text(self, record: Record) -> str:
        return record.answer


class DateTask(Task):
    """Free-answer dates (MM/DD/YYYY)."""

    answer_instruction: ClassVar[str] = 'End your response with "The answer is MM/DD/YYYY."'

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        return extract_date(text)

    def is_correct(self, text: str, record: Record) -> bool:
        return check_date(text, record.answer)

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
    "last_boxed",
    "letters",
    "math_equal",
    "normalize_date",
    "normalize_number",
    "normalize_text",
    "normalize_yes_no",
    "strict_span",
]
