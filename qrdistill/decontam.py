"""Decontamination: find training questions that are (near) copies of a test question.

A training question is *contaminated* when one of three surface methods ties it to a test question,
tried in this order:

- `exact`: the same token sequence after normalisation (case, accents, punctuation, whitespace,
  date formats, thousands separators and the number words zero..twenty do not count);
- `ngram`: the test question's word n-grams (`ngram` words, default 8; a test question shorter than
  that counts as one n-gram, the whole question) that also occur in the training question cover at
  least `ngram_coverage` of the test question's words (default 0.8). This catches a test question
  quoted inside a longer text, or copied with a few words changed far apart. The share is what keeps
  template questions apart: two procedural date questions share "what is the date 10 days after today
  answer in mm dd yyyy" but not the date they start from, and two StrategyQA questions may share
  "be unable to run for president of the" and nothing else;
- `fuzzy`: word-level similarity (difflib's ratio 2M/T over the token lists) of at least
  `fuzzy_threshold` (default 0.85: one word changed in a 7-word question, three in a 20-word one).

With `numbers_must_match` (the default), `ngram` and `fuzzy` also require every number of the test
question (dates included) to occur in the training question: a template question with other numbers
has another answer, so training on it teaches the method and leaks nothing; a copy or a reworded copy
keeps its numbers. `exact` needs no such rule.

Surface methods do not catch a question rewritten in other words (Yang et al. 2023, "Rethinking
Benchmark and Contamination for Language Models with Rephrased Samples"); they catch copies, re-cased,
re-punctuated and lightly edited ones, which is what merging datasets from several sources produces.

Fast by construction: the test questions are indexed once (token tuples, n-grams, and an inverted
index of tokens for the fuzzy pass), and a training question is compared by similarity only with the
test questions that share one of its rarest tokens (prefix filtering, Bayardo et al. 2007: a pair
above the threshold must share one of them), so 7,000 training questions against 1,300 test questions
take seconds.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher

METHODS = ("exact", "ngram", "fuzzy")
DEFAULT_NGRAM = 8
DEFAULT_NGRAM_COVERAGE = 0.8
DEFAULT_FUZZY_THRESHOLD = 0.85

_MONTHS = {
    name: i + 1
    for i, names in enumerate([
        ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
        ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"),
        ("november", "nov"), ("december", "dec"),
    ])
    for name in names
}  # fmt: skip
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_NUMERIC_DATE = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?![\d/])")
_MONTH_FIRST = re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b")
_DAY_FIRST = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\.?,?\s+(\d{{4}})\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_APOSTROPHE = re.compile(r"['\u2019\u2018`]")
_TOKEN = re.compile(r"\d\d/\d\d/\d{4}|\d+(?:\.\d+)?|[^\W\d_]+")
_NUMBER_WORDS = {
    w: str(i) for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split())
} | {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90"}


def _date(month: int, day: int, year: str) -> str:
    return f"{month:02d}/{day:02d}/{year}"


def normalize(text: str) -> str:
    """The text as the methods compare it: its tokens joined by single spaces."""
    return " ".join(tokenize(text))


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers; accents, punctuation and apostrophes dropped; "May 5, 2010",
    "5 May 2010" and "5/5/2010" all become the one token "05/05/2010"; "1,000" becomes "1000",
    "3.50" "3.5", and the number words zero..twenty (and the tens) their digits."""
    s = text
    if not s.isascii():
        s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = s.casefold()
    s = _MONTH_FIRST.sub(lambda m: _date(_MONTHS[m.group(1)], int(m.group(2)), m.group(3)), s)
    s = _DAY_FIRST.sub(lambda m: _date(_MONTHS[m.group(2)], int(m.group(1)), m.group(3)), s)
    s = _NUMERIC_DATE.sub(lambda m: _date(int(m.group(1)), int(m.group(2)), m.group(3)), s)
    s = _APOSTROPHE.sub("", _THOUSANDS.sub("", s))
    out = []
    for tok in _TOKEN.findall(s):
        if "." in tok:
            tok = tok.rstrip("0").rstrip(".")
        out.append(_NUMBER_WORDS.get(tok, tok))
    return out


def numbers(tokens: Iterable[str]) -> Counter[str]:
    """The numbers (and dates) among `tokens`, with their counts."""
    return Counter(t for t in tokens if t[0].isdigit())


@dataclass(frozen=True)
class EvalQuestion:
    """A test question to protect: `task` names its evaluation set, `qid` the question in it."""

    task: str
    qid: str
    text: str


@dataclass(frozen=True)
class Match:
    """Why a training question counts as contaminated: the test question it copies and how."""

    task: str
    qid: str
    method: str
    score: float

    def to_dict(self) -> dict[str, str | float]:
        return {"task": self.task, "qid": self.qid, "method": self.method, "score": round(self.score, 4)}


class ContaminationIndex:
    """The test questions, indexed for `find_contamination`."""

    def __init__(
        self,
        questions: Iterable[EvalQuestion],
        *,
        methods: Iterable[str] = METHODS,
        ngram: int = DEFAULT_NGRAM,
        ngram_coverage: float = DEFAULT_NGRAM_COVERAGE,
        fuzzy_threshold: float = DEFAULT_FUZZY_THRESHOLD,
        numbers_must_match: bool = True,
    ) -> None:
        methods = tuple(methods)
        self.methods = tuple(m for m in METHODS if m in methods)
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown decontamination method(s) {', '.join(sorted(unknown))}")
        if ngram < 1 or not 0 < ngram_coverage <= 1 or not 0.5 <= fuzzy_threshold <= 1:
            raise ValueError("need ngram >= 1, 0 < ngram_coverage <= 1 and 0.5 <= fuzzy_threshold <= 1")
        self.n, self.coverage, self.threshold = ngram, ngram_coverage, fuzzy_threshold
        self.numbers_must_match = numbers_must_match
        self.questions = list(questions)
        self._tokens = [tokenize(q.text) for q in self.questions]
        self._numbers = [numbers(t) for t in self._tokens]
        self._whole: dict[tuple[str, ...], int] = {}
        self._grams: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
        self._short: dict[int, dict[tuple[str, ...], list[int]]] = defaultdict(lambda: defaultdict(list))
        self._postings: dict[str, list[int]] = defaultdict(list)
        for j, toks in enumerate(self._tokens):
            if not toks:
                continue  # nothing to compare (a question of punctuation only)
            self._whole.setdefault(tuple(toks), j)
            if len(toks) < self.n:
                self._short[len(toks)][tuple(toks)].append(j)
            else:
                for s in range(len(toks) - self.n + 1):
                    self._grams[tuple(toks[s:s + self.n])].append((j, s))
            for item in _occurrences(toks):
                self._postings[item].append(j)
        # One number per test question, its rarest: a partner under the numbers rule must hold it, a
        # set lookup that discards most template questions before any comparison.
        df = Counter(x for nums in self._numbers for x in nums)
        self._anchor = [min(nums, key=lambda x: (df[x], x)) if nums else None for nums in self._numbers]

    def __len__(self) -> int:
        return len(self.questions)

    def find_contamination(self, question: str) -> Match | None:
        """The first method (exact, ngram, fuzzy) that ties `question` to a test question, with its
        best-scoring test question (the first indexed on a tie); None for a clean question."""
        toks = tokenize(question)
        if not toks or not self.questions:
            return None
        nums = numbers(toks)
        for method in self.methods:
            found = {"exact": self._exact, "ngram": self._ngram, "fuzzy": self._fuzzy}[method](toks, nums)
            if found is not None:
                j, score = found
                q = self.questions[j]
                return Match(q.task, q.qid, method, score)
        return None

    def _numbers_ok(self, j: int, nums: Counter[str]) -> bool:
        return not self.numbers_must_match or all(nums[k] >= v for k, v in self._numbers[j].items())

    def _exact(self, toks: list[str], nums: Counter[str]) -> tuple[int, float] | None:
        j = self._whole.get(tuple(toks))
        return None if j is None else (j, 1.0)

    def _ngram(self, toks: list[str], nums: Counter[str]) -> tuple[int, float] | None:
        hits: list[tuple[float, int]] = []
        for length, table in self._short.items():
            # A test question shorter than n is one n-gram: all of it must occur in the training question.
            for s in range(len(toks) - length + 1):
                hits += [(1.0, j) for j in table.get(tuple(toks[s:s + length]), ())]
        starts: dict[int, set[int]] = defaultdict(set)
        for s in range(len(toks) - self.n + 1):
            for j, pos in self._grams.get(tuple(toks[s:s + self.n]), ()):
                starts[j].add(pos)
        for j, pos in starts.items():
            share = _covered(pos, self.n) / len(self._tokens[j])
            if share + 1e-9 >= self.coverage:
                hits.append((share, j))
        return _best(h for h in hits if self._numbers_ok(h[1], nums))

    def _fuzzy(self, toks: list[str], nums: Counter[str]) -> tuple[int, float] | None:
        t = self.threshold
        la = len(toks)
        # ratio = 2M/(la+lb) >= t with M <= min(la, lb): lb >= t*la/(2-t), so M >= t*la/(2-t) = alpha,
        # and a partner must share one of the query's la - alpha + 1 rarest tokens.
        alpha = max(1, math.ceil(t * la / (2 - t) - 1e-9))
        items = sorted(_occurrences(toks), key=lambda x: (len(self._postings.get(x, ())), x))
        candidates: set[int] = set()
        for item in items[: la - alpha + 1]:
            candidates.update(self._postings.get(item, ()))
        if self.numbers_must_match:
            candidates = {j for j in candidates if self._anchor[j] is None or self._anchor[j] in nums}
        hits: list[tuple[float, int]] = []
        matcher = SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(toks)
        for j in sorted(candidates):
            other = self._tokens[j]
            lb = len(other)
            if 2 * min(la, lb) < t * (la + lb) - 1e-9 or not self._numbers_ok(j, nums):
                continue
            matcher.set_seq1(other)
            if matcher.real_quick_ratio() < t or matcher.quick_ratio() < t:
                continue
            r = matcher.ratio()
            if r + 1e-9 >= t:
                hits.append((r, j))
        return _best(hits)


def _best(hits: Iterable[tuple[float, int]]) -> tuple[int, float] | None:
    """(index, score) of the highest score, the lowest index on a tie."""
    best = max(hits, key=lambda h: (h[0], -h[1]), default=None)
    return None if best is None else (best[1], best[0])


def _occurrences(tokens: list[str]) -> list[str]:
    """Each token tagged with its occurrence number ("the", "the\\x002", ...), so that the sets of two
    questions intersect in as many items as their token multisets."""
    seen: Counter[str] = Counter()
    out = []
    for tok in tokens:
        seen[tok] += 1
        out.append(tok if seen[tok] == 1 else f"{tok}\x00{seen[tok]}")
    return out


def _covered(starts: set[int], n: int) -> int:
    """Positions covered by the n-grams starting at `starts`."""
    total, end = 0, -1
    for s in sorted(starts):
        total += s + n - max(s, end)
        end = s + n
    return total


_OPTIONS = "\nOptions:\n"


def question_stem(question: str, choices: list[str] | None) -> str:
    """The question without its lettered options (paths.jsonl stores the question as shown, options
    included, `Task.prompt`; test records hold the bare question)."""
    if choices and _OPTIONS in question:
        return question.rsplit(_OPTIONS, 1)[0]
    return question


__all__ = [
    "METHODS", "ContaminationIndex", "EvalQuestion", "Match", "normalize", "numbers", "question_stem", "tokenize",
]
