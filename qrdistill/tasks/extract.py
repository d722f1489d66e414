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
- mathematical expressions (MATH) go through math-verify's parse + verify, in a
  child process with a deadline (`qrdistill.tasks.mathcheck`): a comparison that
  would not finish (`9^{9^{9^{9}}}` against 5) is `Verdict.UNVERIFIABLE`.

Every extractor here runs in time linear (or n log n) in the response, and a
response longer than `MAX_RESPONSE_CHARS` is not read at all: its answer is None
and its check unverifiable. So a check ends in bounded time on any input.

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

from qrdistill.tasks import mathcheck
from qrdistill.tasks.base import AnswerScore, Record, Task, Verdict

#: Responses longer than this are not read (no final answer needs this much text before it, and a
#: backend may return megabytes); about 50k tokens, far above any max_tokens this project sets.
MAX_RESPONSE_CHARS = 200_000
#: A "number" longer than this is not a plain number to compare (and `int()` of `1e999999999` never ends).
MAX_NUMBER_DIGITS = 1000

# "The answer is", "the final answer is", "the correct answer is", "Answer:" at a line start.
_STRICT_RE = re.compile(
    r"(?:\banswer\s+is\b|\banswer\s+would\s+be\b|(?:^|(?<=[.!?] ))[ \t*#>_-]*(?:the\s+)?(?:final\s+)?answer\s*:)[ \t]*:?",
    re.IGNORECASE | re.MULTILINE,
)
_GSM_HASH_RE = re.compile(r"####[ \t]*(.+)")
_LETTER_SPAN_RE = re.compile(r"^\(?([A-Z])(?:\)|(?=[\s.,:;!]|$))")
#: "(b)" alone on an answer line is the letter B (lm-eval ignores case); a bare lower-case "a" is a word, and
#: "(a) one day after ..." opens a list, so a lower-case letter counts only when nothing but an option's text follows.
_LOWER_LETTER_SPAN_RE = re.compile(r"^\(([a-z])\)")
_PAREN_LETTER_RE = re.compile(r"\(([A-Z])\)")
_BOLD_LETTER_RE = re.compile(r"\*\*\(?([A-Z])\)?[.:]?\*\*")
# The tail is `[ \t*]*(?:\.[ \t]*)?$`, not `[ \t*]*\.?[ \t]*$`: two adjacent runs that can both take the
# same spaces backtrack quadratically on a letter followed by a long run of spaces.
_LINE_LETTER_RE = re.compile(
    r"^[ \t*]*(?:option[ \t]+)?\(?([A-Z])\)?[.:]?[ \t*]*(?:\.[ \t]*)?$", re.MULTILINE | re.IGNORECASE
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
    # One rstrip, not a loop dropping one character at a time (quadratic on a long run of dots).
    return s.rstrip(".!;:," + _MARKUP).strip(_MARKUP)


def _pad_date(m: re.Match[str]) -> str:
    return f"{int(m.group(1)):02d}/{int(m.group(2)):02d}/{m.group(3)}"


def normalize_date(s: str) -> str | None:
    """The first M/D/YYYY date in `s` as zero-padded MM/DD/YYYY, or None."""
    m = _DATE_RE.search(s)
    return _pad_date(m) if m else None


def normalize_number(s: str) -> str | None:
    """ "$1,000.00" -> "1000", "-3.50" -> "-3.5"; None if `s` is not a plain number."""
    s = s.strip().strip(_MARKUP).rstrip(".").replace("$", "").replace(",", "").replace(" ", "")
    if len(s) > MAX_NUMBER_DIGITS:
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite() or abs(d.adjusted()) > MAX_NUMBER_DIGITS:
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
    # From the last match back, reading only the lines after each: copying the rest of the text
    # per match is quadratic in a response that repeats "The answer is" thousands of times.
    for m in reversed(list(_STRICT_RE.finditer(text))):
        line = _answer_line(text, m.end())
        if line is not None:
            best = (m.start(), line)
            break
    last_hash = None
    for m in _GSM_HASH_RE.finditer(text):
        last_hash = m
    if last_hash is not None and (best is None or last_hash.start() > best[0]):
        best = (last_hash.start(), last_hash.group(1))
    return _strip_span(best[1]) if best else None


def _line_at(text: str, start: int) -> tuple[str, int]:
    """The text from `start` to the end of its line, and where the next line starts (-1: none)."""
    end = text.find("\n", start)
    return (text[start:], -1) if end < 0 else (text[start:end], end + 1)


def _answer_line(text: str, start: int) -> str | None:
    """What an "answer is" ending at `start` states: the rest of its line, or the next non-empty
    line when that is empty; None when neither holds anything."""
    line, nxt = _line_at(text, start)
    if not line.strip(_MARKUP + ".:"):
        # "The answer is:\n(B)" -- the answer sits on the next non-empty line.
        line = ""
        while nxt >= 0:
            cand, nxt = _line_at(text, nxt)
            if cand.strip(_MARKUP):
                line = cand
                break
    return line if line.strip(_MARKUP + ".:") else None


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
    letter, end = _span_letter(span, choices)
    letter = letter if letter is not None and letter in valid else None
    if letter is not None:
        after = span[end:]
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


def _span_letter(span: str, choices: list[str] | None = None) -> tuple[str | None, int]:
    """The letter an answer span opens with (upper case), and where the letter ends in the span."""
    m = _LETTER_SPAN_RE.match(span)
    if m:
        return m.group(1), m.end()
    m = _LOWER_LETTER_SPAN_RE.match(span)
    if m:
        rest = normalize_text(span[m.end():].strip(_MARKUP + ". "))
        if not rest or any(normalize_text(c) == rest for c in choices or ()):
            return m.group(1).upper(), m.end()
    return None, 0


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
    named |= {valid[i] for i in _uncontained(spans)}
    return named.pop() if len(named) == 1 else None


def _uncontained(spans: list[tuple[int, int, int]]) -> set[int]:
    """Options with a match that no longer match contains: "salt water" names the option
    "salt water", not also the option "water".

    One sweep in start order (longest first at a start), not a comparison of every pair, which
    is quadratic when a response repeats an option thousands of times.
    """
    out: set[int] = set()
    spans = sorted(spans, key=lambda t: (t[0], -t[1]))
    reach = -1  # the furthest end of a match starting before the current start
    k = 0
    while k < len(spans):
        start, longest = spans[k][0], spans[k][1]
        while k < len(spans) and spans[k][0] == start:
            _, end, i = spans[k]
            # Contained: an earlier start reaching as far, or a longer match at this start.
            if reach < end and end == longest:
                out.add(i)
            k += 1
        reach = max(reach, longest)
    return out


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


def math_verdict(pred: str, gold: str) -> Verdict:
    """math-verify equivalence of two LaTeX answers, decided within `mathcheck.DEADLINE_S` on
    any thread; UNVERIFIABLE when it is not (see `qrdistill.tasks.mathcheck`)."""
    # A pair of plain numbers needs no symbolic comparison.
    pn, gn = normalize_number(pred), normalize_number(gold)
    if pn is not None and gn is not None:
        return _verdict(pn == gn)
    got = mathcheck.compare(pred, gold)
    if got is None:
        return Verdict.UNVERIFIABLE
    if got == mathcheck.UNPARSED:
        return _verdict(normalize_text(pred) == normalize_text(gold))
    return _verdict(got == mathcheck.EQUAL)


def math_equal(pred: str, gold: str) -> bool:
    """`math_verdict` is CORRECT (an unverifiable pair is not equal)."""
    return math_verdict(pred, gold) is Verdict.CORRECT


def math_check(text: str, gold: str) -> Verdict:
    """The verdict on the math answer in `text` (`extract_math`): WRONG when it has none."""
    pred = extract_math(text)
    return Verdict.WRONG if pred is None else math_verdict(pred, gold)


def check_math(text: str, gold: str) -> bool:
    """`math_check` is CORRECT."""
    return math_check(text, gold) is Verdict.CORRECT


# ---------------------------------------------------------------- answer-kind task bases


def _verdict(ok: bool) -> Verdict:
    return Verdict.CORRECT if ok else Verdict.WRONG


def _answer_score(
    strict_pred: str | None, pred: str | None, verdict: Callable[[str], Verdict], conflict: bool = False
) -> AnswerScore:
    # The flexible pass runs only without a strict answer, so a strict answer is `pred`
    # itself and its check need not run twice (math-verify is slow).
    v = verdict(pred) if pred is not None else Verdict.WRONG
    correct = v is Verdict.CORRECT
    return AnswerScore(
        pred=pred,
        correct=correct,
        strict_pred=strict_pred,
        strict_correct=strict_pred is not None and correct,
        conflict=conflict,
        unverifiable=v is Verdict.UNVERIFIABLE,
    )


class AnswerTask(Task):
    """What the answer-kind bases share: a response over `MAX_RESPONSE_CHARS` is not read
    (no answer, unverifiable), and `is_correct` is `check` being CORRECT. Subclasses implement
    `_extract`, `_check` and `_score` on responses within the bound."""

    def extract_answer(self, text: str, record: Record | None = None) -> str | None:
        return None if len(text) > MAX_RESPONSE_CHARS else self._extract(text, record)

    def check(self, text: str, record: Record) -> Verdict:
        return Verdict.UNVERIFIABLE if len(text) > MAX_RESPONSE_CHARS else self._check(text, record)

    def is_correct(self, text: str, record: Record) -> bool:
        return self.check(text, record) is Verdict.CORRECT

    def score(self, text: str, record: Record) -> AnswerScore:
        if len(text) > MAX_RESPONSE_CHARS:
            return AnswerScore(
                pred=None,
                correct=False,
                strict_pred=None,
                strict_correct=False,
                conflict=False,
                unverifiable=True,
            )
        return self._score(text, record)

    def _extract(self, text: str, record: Record | None) -> str | None:
        raise NotImplementedError

    def _check(self, text: str, record: Record) -> Verdict:
        raise NotImplementedError

    def _score(self, text: str, record: Record) -> AnswerScore:
        raise NotImplementedError


class MultipleChoiceTask(AnswerTask):
    """Lettered options; `answer` is the gold letter, `meta["answer_text"]` its text."""

    answer_instruction: ClassVar[str] = (
        'End your response with "The answer is (X) <option text>." where X is the letter of the correct option.'
    )

    def _extract(self, text: str, record: Record | None) -> str | None:
        if record is None:
            raise ValueError(f"{self.name}: extracting a multiple-choice answer needs the record's options")
        return extract_choice(text, record.choices)

    def _check(self, text: str, record: Record) -> Verdict:
        return _verdict(check_choice(text, record))

    def _score(self, text: str, record: Record) -> AnswerScore:
        strict, conflict = _strict_choice(text, record.choices)
        pred = extract_choice(text, record.choices)
        score = _answer_score(strict, pred, lambda p: _verdict(p == record.answer), conflict)
        letter_correct = score.correct
        if conflict:
            letter_correct = _span_letter(strict_span(text) or "", record.choices)[0] == record.answer
        return dataclasses.replace(score, letter_correct=letter_correct)

    def gold_text(self, record: Record) -> str:
        return f"({record.answer}) {record.meta.get('answer_text', '')}".strip()


class YesNoTask(AnswerTask):
    answer_instruction: ClassVar[str] = 'End your response with "The answer is Yes." or "The answer is No."'

    def _extract(self, text: str, record: Record | None) -> str | None:
        return extract_yes_no(text)

    def _check(self, text: str, record: Record) -> Verdict:
        return _verdict(check_yes_no(text, record.answer))

    def _score(self, text: str, record: Record) -> AnswerScore:
        gold = normalize_yes_no(record.answer)
        return _answer_score(strict_yes_no(text), extract_yes_no(text), lambda p: _verdict(p == gold))

    def gold_text(self, record: Record) -> str:
        return normalize_yes_no(record.answer) or record.answer

    def shortcut_baselines(self, records: list[Record]) -> dict[str, float]:
        """Accuracy of answering the same word to every question: the larger of the two is the majority-class
        baseline that a yes/no accuracy must beat (StrategyQA is not balanced)."""
        golds = [normalize_yes_no(r.answer) for r in records]
        if not golds:
            return {}
        return {"always_yes": golds.count("Yes") / len(golds), "always_no": golds.count("No") / len(golds)}


class NumberTask(AnswerTask):
    answer_instruction: ClassVar[str] = (
        'End your response with "The answer is N." where N is the final number, without units.'
    )

    def _extract(self, text: str, record: Record | None) -> str | None:
        return extract_number(text)

    def _check(self, text: str, record: Record) -> Verdict:
        return _verdict(check_number(text, record.answer))

    def _score(self, text: str, record: Record) -> AnswerScore:
        gold = normalize_number(record.answer)
        return _answer_score(strict_number(text), extract_number(text), lambda p: _verdict(p == gold))

    def gold_text(self, record: Record) -> str:
        return normalize_number(record.answer) or record.answer


class MathTask(AnswerTask):
    max_new_tokens: ClassVar[int] = 512
    answer_instruction: ClassVar[str] = (
        'End your response with "The answer is N." where N is the final answer in simplest form '
        "(LaTeX allowed, e.g. \\frac{3}{4})."
    )

    def _extract(self, text: str, record: Record | None) -> str | None:
        return extract_math(text)

    def _check(self, text: str, record: Record) -> Verdict:
        return math_check(text, record.answer)

    def _score(self, text: str, record: Record) -> AnswerScore:
        return _answer_score(strict_math(text), extract_math(text), lambda p: math_verdict(p, record.answer))

    def gold_text(self, record: Record) -> str:
        return record.answer


class DateTask(AnswerTask):
    """Free-answer dates (MM/DD/YYYY)."""

    answer_instruction: ClassVar[str] = 'End your response with "The answer is MM/DD/YYYY."'

    def _extract(self, text: str, record: Record | None) -> str | None:
        return extract_date(text)

    def _check(self, text: str, record: Record) -> Verdict:
        return _verdict(check_date(text, record.answer))

    def _score(self, text: str, record: Record) -> AnswerScore:
        gold = normalize_date(record.answer)
        return _answer_score(strict_date(text), extract_date(text), lambda p: _verdict(p == gold))

    def gold_text(self, record: Record) -> str:
        return normalize_date(record.answer) or record.answer


__all__ = [
    "MAX_NUMBER_DIGITS",
    "MAX_RESPONSE_CHARS",
    "AnswerTask",
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
    "math_check",
    "math_equal",
    "math_verdict",
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
