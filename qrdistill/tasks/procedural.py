"""Procedural task family for the offline demo: seeded questions with known solutions.

Every question is generated from a seed together with its structured solution
(`meta["solution"]`, a list of steps), so the simulated teacher can write
reasoning paths from the truth and plant known defects, and the filter's
precision and recall can be measured.

- `procedural_date`: BIG-bench-Date-style date arithmetic, 6 lettered options.
- `procedural_date_free`: the same questions, answered as a free MM/DD/YYYY date.
- `procedural_arith`: multi-step arithmetic word problems (1-4 operations).

Splits are disjoint by construction: a question belongs to `test` iff a hash
of its text falls in the test bucket, so no text can appear in both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from qrdistill.errors import ConfigError
from qrdistill.tasks import extract
from qrdistill.tasks.base import TASKS, Record, Task

SPLIT_SIZES = {"train": 2000, "test": 500}
#: the family is one fixed set of questions (ids are stable across runs); a new seed makes a new family.
FAMILY_SEED = 0
#: one question in TEST_BUCKETS goes to test; the rest to train (by hash of the text).
TEST_BUCKETS = 5

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
UNIT_DAYS = {"day": 1, "week": 7}


# ---------------------------------------------------------------- dates


def fmt_date(d: dt.date) -> str:
    return f"{d.month:02d}/{d.day:02d}/{d.year:04d}"


def parse_date(s: str) -> dt.date:
    m, d, y = (int(x) for x in s.split("/"))
    return dt.date(y, m, d)


def long_date(d: dt.date) -> str:
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def add_months(d: dt.date, n: int) -> dt.date:
    """Calendar month shift; the generator only calls it with day <= 28, so it is unambiguous."""
    k = d.year * 12 + d.month - 1 + n
    y, m = divmod(k, 12)
    return dt.date(y, m + 1, d.day)


def shift_date(d: dt.date, delta: int, unit: str) -> dt.date:
    """`d` moved by `delta` units (day, week, month, year)."""
    if unit in UNIT_DAYS:
        return d + dt.timedelta(days=delta * UNIT_DAYS[unit])
    if unit == "month":
        return add_months(d, delta)
    if unit == "year":
        return add_months(d, 12 * delta)
    raise ValueError(f"unknown date unit {unit!r}")


def count_phrase(n: int, unit: str, rng: random.Random) -> str:
    """'10 days', 'one week', 'a month'."""
    n = abs(n)
    word = unit if n == 1 else unit + "s"
    if n == 1:
        return f"{rng.choice(['one', 'a', '1'])} {word}"
    if n <= 10 and rng.random() < 0.4:
        return f"{NUMBER_WORDS[n]} {word}"
    return f"{n} {word}"


def _show_date(d: dt.date, rng: random.Random) -> str:
    return fmt_date(d) if rng.random() < 0.5 else long_date(d)


# (phrase template, today = stated + delta days)
ANCHORS = [
    ("Yesterday was {d}.", 1),
    ("Tomorrow is {d}.", -1),
    ("The day before yesterday was {d}.", 2),
    ("The day after tomorrow is {d}.", -2),
    ("It was {d} one week ago.", 7),
    ("Jane's appointment was on {d}, three days ago.", 3),
    ("The concert is on {d}, which is 5 days from today.", -5),
]
TODAY_ANCHORS = ["Today is {d}.", "Today's date is {d}.", "Jane realized that today is {d}."]


def _draw_offset(rng: random.Random) -> tuple[int, str]:
    unit = rng.choices(["day", "week", "month", "year"], weights=[4, 3, 2, 1])[0]
    hi = {"day": 30, "week": 6, "month": 11, "year": 5}[unit]
    return rng.randint(1, hi), unit


def _offset_words(n: int, unit: str, sign: int, rng: random.Random) -> str:
    """A single offset relative to today: 'yesterday', '10 days ago', 'one week from today'."""
    if unit == "day" and n == 1 and rng.random() < 0.6:
        return "yesterday" if sign < 0 else "tomorrow"
    p = count_phrase(n, unit, rng)
    return f"{p} ago" if sign < 0 else f"{p} {rng.choice(['from today', 'after today'])}"


def _date_question(rng: random.Random) -> tuple[str, list[dict[str, Any]], dt.date, int]:
    """One date question: (text, solution steps, stated date, difficulty)."""
    difficulty = rng.randint(1, 4)
    n_offsets = 3 if difficulty == 4 else (1 if difficulty == 1 else rng.choice([difficulty - 1, difficulty]))
    has_anchor = difficulty - n_offsets == 1
    stated = dt.date(1990, 1, 1) + dt.timedelta(days=rng.randint(0, 40 * 365))
    steps: list[dict[str, Any]] = []
    if has_anchor:
        tmpl, delta = rng.choice(ANCHORS)
        today = stated + dt.timedelta(days=delta)
        intro = tmpl.format(d=_show_date(stated, rng))
        steps.append(
            {"kind": "date_offset", "from": fmt_date(stated), "delta": delta, "unit": "day",
             "result": fmt_date(today), "what": "today"}
        )  # fmt: skip
    else:
        today = stated
        intro = rng.choice(TODAY_ANCHORS).format(d=_show_date(stated, rng))

    offsets = [_draw_offset(rng) for _ in range(n_offsets)]
    if n_offsets == 1:
        n, unit = offsets[0]
        sign = rng.choice([-1, 1])
        if rng.random() < 0.25:  # yesterday/tomorrow are the easy single offsets of BIG-bench Date
            n, unit = 1, "day"
        signed = [(sign * n, unit)]
        target = _offset_words(n, unit, sign, rng)
    elif rng.random() < 0.5:
        # "2 weeks and 3 days ago": one direction, largest unit first
        order = ["year", "month", "week", "day"]
        units = []
        for n, unit in offsets:
            if unit not in [u for _, u in units]:
                units.append((n, unit))
        if len(units) < n_offsets:
            raise _Retry
        units.sort(key=lambda x: order.index(x[1]))
        sign = rng.choice([-1, 1])
        signed = [(sign * n, u) for n, u in units]
        parts = [count_phrase(n, u, rng) for n, u in units]
        joined = " and ".join(parts) if len(parts) == 2 else f"{parts[0]}, {parts[1]} and {parts[2]}"
        target = f"{joined} ago" if sign < 0 else f"{joined} from today"
    else:
        # "3 days after the day 2 weeks ago": offsets applied in the order told
        signs = [rng.choice([-1, 1]) for _ in offsets]
        signed = [(s * n, u) for s, (n, u) in zip(signs, offsets, strict=True)]
        first = _offset_words(offsets[0][0], offsets[0][1], signs[0], rng)
        target = f"the day {first}"
        for s, (n, u) in zip(signs[1:], offsets[1:], strict=True):
            target = f"{count_phrase(n, u, rng)} {'before' if s < 0 else 'after'} {target}"

    cur = today
    for i, (delta, unit) in enumerate(signed):
        if unit in ("month", "year") and cur.day > 28:
            raise _Retry  # month ends make "a month after Jan 31" ambiguous
        nxt = shift_date(cur, delta, unit)
        steps.append(
            {"kind": "date_offset", "from": fmt_date(cur), "delta": delta, "unit": unit, "result": fmt_date(nxt),
             "what": "the answer" if i == len(signed) - 1 else "an intermediate date"}
        )  # fmt: skip
        cur = nxt
    if not (1900 <= cur.year <= 2099):
        raise _Retry
    ask = rng.choice(["What is the date {t} in MM/DD/YYYY?", "What is the date {t}? Answer in MM/DD/YYYY."])
    question = f"{intro} {ask.format(t=target)}"
    return question, steps, stated, difficulty


class _Retry(Exception):
    """Raised by a generator when a draw is unusable; the caller draws again from the same stream."""


#: small slips a solver makes, as (signed amount, unit); each also links two options.
SLIPS = [(1, "day"), (-1, "day"), (2, "day"), (-2, "day"), (7, "day"), (-7, "day"),
         (1, "month"), (-1, "month"), (1, "year"), (-1, "year")]  # fmt: skip


def _replay_with_mistake(steps: list[dict[str, Any]], index: int, how: str) -> dt.date | None:
    """The result of a solution with step `index` skipped, sign-flipped or in the wrong unit."""
    cur = parse_date(steps[0]["from"])
    for i, s in enumerate(steps):
        delta, unit = s["delta"], s["unit"]
        if i == index:
            if how == "skip":
                continue
            if how == "flip":
                delta = -delta
            if how == "unit":
                unit = {"day": "week", "week": "day", "month": "week", "year": "month"}[unit]
        if unit in ("month", "year") and cur.day > 28:
            return None
        cur = shift_date(cur, delta, unit)
    return cur


def _slip(d: dt.date, rng: random.Random) -> dt.date | None:
    delta, unit = rng.choice(SLIPS)
    if unit in ("month", "year") and d.day > 28:
        return None
    out = shift_date(d, delta, unit)
    return out if 1900 <= out.year <= 2099 else None


def _cluster(steps: list[dict[str, Any]], answer: dt.date, rng: random.Random) -> list[dt.date]:
    """Five wrong options: results of whole-step mistakes (skipped, sign-flipped, wrong unit) and
    small slips (a day, a week, a month, a year) off other options.

    Slips form a cluster of options sharing month, day or year. If the answer were always the
    cluster's centre, "pick the option most like the others" would find it, and if options sat
    around the answer in time, "pick the middle date" would. So the slips grow from a hidden
    centre a random walk away from the answer, and mostly from options other than the answer.
    """
    options = [answer]
    cur: dt.date | None = answer
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        cur = _slip(cur, rng) if cur else None
        if cur is not None and cur not in options:
            options.append(cur)
    mistakes = {
        d for i in range(len(steps)) for how in ("skip", "flip", "unit")
        if (d := _replay_with_mistake(steps, i, how)) is not None and d not in options
    }  # fmt: skip
    mistakes = sorted(mistakes)
    rng.shuffle(mistakes)
    options += mistakes[: rng.randint(0, min(2, 6 - len(options)))]
    while len(options) < 6:
        pool = options[1:] if len(options) > 1 and rng.random() < 0.85 else options
        d = _slip(rng.choice(pool), rng)
        if d is not None and d not in options:
            options.append(d)
    return options[1:]


def _date_distractors(steps: list[dict[str, Any]], answer: dt.date, rng: random.Random) -> list[dt.date]:
    """Five wrong options (see `_cluster`), drawn until the number of options nearer than the
    answer to the question's date hits a rank picked uniformly: for an answer a few days from
    the question's date the slips would otherwise mostly lie farther out, and "pick the option
    nearest the question's date" would beat chance."""
    question_date = parse_date(steps[0]["from"])
    target = rng.randrange(6)
    best: tuple[int, list[dt.date]] | None = None
    for _ in range(12):
        wrong = _cluster(steps, answer, rng)
        gap = abs((answer - question_date).days)
        rank = sum(abs((d - question_date).days) < gap for d in wrong)
        if best is None or abs(rank - target) < best[0]:
            best = (abs(rank - target), wrong)
        if rank == target:
            break
    assert best is not None
    return best[1]


# ---------------------------------------------------------------- arithmetic

NAMES = {
    "she": ["Maya", "Aisha", "Sofia", "Nina", "Priya", "Elena", "Grace", "Mei"],
    "he": ["Liam", "Chen", "Omar", "Tom", "Lucas", "Kofi", "Ravi", "Jonas"],
}

# One story per item; the running total is always "what {n} has". "/" keeps one equal share.
STORIES: list[dict[str, Any]] = [
    {
        "start": ["{n} has {a} stickers.", "{n} starts the week with {a} stickers."],
        "start_mul": ["{n} buys {a} packs of stickers with {b} stickers in each pack."],
        "+": ["{P} wins {b} more stickers.", "A friend gives {o} {b} stickers."],
        "-": ["{P} gives {b} stickers to {pp} brother.", "{P} uses {b} stickers on a card."],
        "*": ["{P} trades them all for a collection {b} times as large."],
        "/": ["{P} splits the stickers equally into {b} albums and gives away all but one album."],
        "q": "How many stickers does {n} have at the end?",
    },
    {
        "start": ["{n} has ${a} in a savings jar.", "{n} earns ${a} washing cars."],
        "start_mul": ["{n} works {a} hours at ${b} per hour."],
        "+": ["{P} gets ${b} more for {pp} birthday.", "{P} earns another ${b} on the weekend."],
        "-": ["{P} spends ${b} on a book.", "{P} pays ${b} for lunch."],
        "*": ["An aunt adds money so that {p} now has {b} times as much as before."],
        "/": ["{P} shares all the money equally among {b} people, {o}self included, and keeps {pp} share."],
        "q": "How many dollars does {n} have now?",
    },
    {
        "start": ["{n} scores {a} points in the first round of a game.", "{n} has {a} points."],
        "start_mul": ["{n} wins {a} rounds worth {b} points each."],
        "+": ["{P} scores {b} more points.", "A bonus card gives {o} {b} points."],
        "-": ["{P} loses {b} points for a penalty.", "{b} points are taken away for a foul."],
        "*": ["A bonus round multiplies {pp} score by {b}."],
        "/": ["The points are split equally among {b} team members, and {n} keeps one share."],
        "q": "How many points does {n} have at the end?",
    },
    {
        "start": ["{n} bakes {a} cookies.", "{n} has a jar with {a} cookies."],
        "start_mul": ["{n} bakes {a} trays of cookies with {b} cookies on each tray."],
        "+": ["{P} bakes {b} more cookies.", "A neighbour brings {o} {b} more cookies."],
        "-": ["{P} eats {b} of the cookies with friends.", "{b} cookies burn and are thrown away."],
        "*": ["For a fair, {p} bakes more until {p} has {b} times as many cookies as before."],
        "/": ["{P} packs the cookies equally into {b} boxes and gives away all boxes but one."],
        "q": "How many cookies does {n} have now?",
    },
    {
        "start": ["{n} owns {a} books.", "{n}'s shelf holds {a} books."],
        "start_mul": ["{n} buys {a} boxes of books with {b} books in each box."],
        "+": ["{P} receives {b} more books.", "{P} buys {b} new books."],
        "-": ["{P} donates {b} books.", "{P} lends out {b} books that are never returned."],
        "*": ["After inheriting a library, {p} has {b} times as many books."],
        "/": ["{P} divides the books equally among {b} shelves and gives away every shelf but one."],
        "q": "How many books does {n} have now?",
    },
]

OP_NAMES = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}


def apply_op(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{a} / {b} is not an integer")
        return a // b
    raise ValueError(f"unknown op {op!r}")


def _arith_question(rng: random.Random) -> tuple[str, list[dict[str, Any]], int]:
    difficulty = rng.randint(1, 4)
    story = rng.choice(STORIES)
    she = rng.random() < 0.5
    name = rng.choice(NAMES["she" if she else "he"])
    fill = {"n": name, "p": "she" if she else "he", "P": "She" if she else "He",
            "o": "her" if she else "him", "pp": "her" if she else "his"}  # fmt: skip
    steps: list[dict[str, Any]] = []
    sentences: list[str] = []
    n_ops = difficulty
    used: set[str] = set()
    if rng.random() < 0.4:
        a, b = rng.randint(2, 12), rng.randint(3, 25)
        cur = a * b
        sentences.append(rng.choice(story["start_mul"]).format(a=a, b=b, **fill))
        steps.append({"op": "*", "a": a, "b": b, "result": cur, "text": f"{a} times {b}"})
        n_ops -= 1
    else:
        cur = rng.randint(10, 200)
        sentences.append(rng.choice(story["start"]).format(a=cur, **fill))
    for _ in range(n_ops):
        choices = ["+", "-"]
        if cur <= 300:
            choices.append("*")
        divisors = [d for d in range(2, 13) if cur % d == 0 and cur // d >= 2]
        if divisors:
            choices.append("/")
        op = rng.choice(choices)
        if op == "+":
            b = rng.randint(2, 150)
        elif op == "-":
            if cur < 4:
                raise _Retry
            b = rng.randint(1, cur - 2)
        elif op == "*":
            b = rng.randint(2, 6)
        else:
            b = rng.choice(divisors)
        res = apply_op(op, cur, b)
        fresh = [t for t in story[op] if t not in used] or story[op]
        tmpl = rng.choice(fresh)
        used.add(tmpl)
        sentences.append(tmpl.format(b=b, **fill))
        steps.append({"op": op, "a": cur, "b": b, "result": res, "text": f"{cur} {OP_NAMES[op]} {b}"})
        cur = res
    sentences.append(story["q"].format(**fill))
    return " ".join(sentences), steps, difficulty


# ---------------------------------------------------------------- generation


def _bucket(question: str) -> str:
    h = int(hashlib.sha256(question.encode("utf-8")).hexdigest()[:8], 16)
    return "test" if h % TEST_BUCKETS == 0 else "train"


def _generate(family: str, split: str, n: int) -> list[tuple[str, list[dict[str, Any]], Any, int]]:
    """The first `n` questions of `split`; the stream is fixed, so a smaller `n` is a prefix."""
    rng = random.Random(f"qrdistill-procedural-{family}-{split}-{FAMILY_SEED}")
    out: list[tuple[str, list[dict[str, Any]], Any, int]] = []
    seen: set[str] = set()
    while len(out) < n:
        try:
            if family == "date":
                question, steps, stated, difficulty = _date_question(rng)
                extra: Any = stated
            else:
                question, steps, difficulty = _arith_question(rng)
                extra = None
        except _Retry:
            continue
        if _bucket(question) != split or question in seen:
            continue
        seen.add(question)
        out.append((question, steps, extra, difficulty))
    return out


def date_records(split: str, limit: int | None, multiple_choice: bool) -> list[Record]:
    n = min(SPLIT_SIZES[split], limit) if limit else SPLIT_SIZES[split]
    prefix = "pdate" if multiple_choice else "pdatefree"
    records = []
    for i, (question, steps, stated, difficulty) in enumerate(_generate("date", split, n)):
        answer = steps[-1]["result"]
        meta: dict[str, Any] = {
            "difficulty": difficulty,
            "solution": steps,
            "question_date": fmt_date(stated),
            "family": "date",
        }
        if multiple_choice:
            # Options get their own stream, so the free form asks exactly the same questions.
            orng = random.Random(f"qrdistill-options-{split}-{FAMILY_SEED}-{question}")
            options = _date_distractors(steps, parse_date(answer), orng) + [parse_date(answer)]
            orng.shuffle(options)
            choices = [fmt_date(d) for d in options]
            gold = chr(65 + choices.index(answer))
            records.append(
                Record(id=f"{prefix}-{split}-{i:06d}", question=question, answer=gold, choices=choices,
                       meta={**meta, "answer_text": answer})
            )  # fmt: skip
        else:
            records.append(
                Record(id=f"{prefix}-{split}-{i:06d}", question=question, answer=answer, meta=meta)
            )
    return records


def arith_records(split: str, limit: int | None) -> list[Record]:
    n = min(SPLIT_SIZES[split], limit) if limit else SPLIT_SIZES[split]
    return [
        Record(
            id=f"parith-{split}-{i:06d}",
            question=question,
            answer=str(steps[-1]["result"]),
            meta={"difficulty": difficulty, "solution": steps, "family": "arith"},
        )
        for i, (question, steps, _, difficulty) in enumerate(_generate("arith", split, n))
    ]


def recompute(steps: Sequence[dict[str, Any]]) -> str:
    """Replay a solution from its first input (each step from the previous result): the answer it gives."""
    if steps and steps[0].get("kind") == "date_offset":
        cur = parse_date(steps[0]["from"])
        for s in steps:
            cur = shift_date(cur, s["delta"], s["unit"])
        return fmt_date(cur)
    cur = steps[0]["a"]
    for s in steps:
        cur = apply_op(s["op"], cur, s["b"])
    return str(cur)


# ---------------------------------------------------------------- shortcut baselines


def shortcut_baselines(records: Sequence[Record]) -> dict[str, float]:
    """Accuracy of answer-free shortcuts on multiple-choice date records; all should sit near 1/6.

    - nearest_date: the option closest in time to the date stated in the question;
    - middle_date: the third-earliest option;
    - first_option: always (A);
    - most_common_letter: the letter that is gold most often (an upper bound on any fixed letter);
    - most_shared_parts: the option sharing most month/day/year fields with the other options.
    """
    mc = [r for r in records if r.choices]
    if not mc:
        return {}
    hits: Counter[str] = Counter()
    for r in mc:
        dates = [parse_date(c) for c in r.choices]
        q = parse_date(r.meta["question_date"])
        gold = ord(r.answer) - 65
        nearest = min(range(len(dates)), key=lambda i: (abs((dates[i] - q).days), i))
        middle = sorted(range(len(dates)), key=lambda i: dates[i])[2]
        shared = max(
            range(len(dates)),
            key=lambda i: (
                sum(
                    (d.month == dates[i].month) + (d.day == dates[i].day) + (d.year == dates[i].year)
                    for j, d in enumerate(dates)
                    if j != i
                ),  # fmt: skip
                -i,
            ),
        )
        hits["nearest_date"] += nearest == gold
        hits["middle_date"] += middle == gold
        hits["first_option"] += gold == 0
        hits["most_shared_parts"] += shared == gold
    letters = Counter(r.answer for r in mc)
    out = {k: hits[k] / len(mc) for k in ("nearest_date", "middle_date", "first_option", "most_shared_parts")}
    out["most_common_letter"] = letters.most_common(1)[0][1] / len(mc)
    return out


# ---------------------------------------------------------------- tasks


class _Procedural(Task):
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    family: ClassVar[str] = ""

    def load(self, split: str = "train", path: str | None = None, limit: int | None = None) -> list[Record]:
        if path is not None:
            raise ConfigError(f"tasks: {self.name} is generated from a seed; remove `path` (got {path!r})")
        if split not in SPLIT_SIZES:
            raise ConfigError(
                f"tasks: unknown split {split!r} for {self.name} (known: {', '.join(SPLIT_SIZES)})"
            )
        return self._records(split, limit)

    def _records(self, split: str, limit: int | None) -> list[Record]:
        raise NotImplementedError


@TASKS.register("procedural_date")
class ProceduralDate(_Procedural, extract.MultipleChoiceTask):
    """Date arithmetic with six lettered MM/DD/YYYY options (BIG-bench Date style)."""

    name: ClassVar[str] = "procedural_date"
    family: ClassVar[str] = "date"
    answer_instruction: ClassVar[str] = (
        'End your response with "The answer is (X) MM/DD/YYYY." where X is the letter of the correct option.'
    )

    def _records(self, split: str, limit: int | None) -> list[Record]:
        return date_records(split, limit, multiple_choice=True)


@TASKS.register("procedural_date_free")
class ProceduralDateFree(_Procedural, extract.DateTask):
    """The questions of `procedural_date` without options: the answer is the date itself."""

    name: ClassVar[str] = "procedural_date_free"
    family: ClassVar[str] = "date"

    def _records(self, split: str, limit: int | None) -> list[Record]:
        return date_records(split, limit, multiple_choice=False)


@TASKS.register("procedural_arith")
class ProceduralArith(_Procedural, extract.NumberTask):
    """Arithmetic word problems with 1-4 integer operations."""

    name: ClassVar[str] = "procedural_arith"
    family: ClassVar[str] = "arith"

    def _records(self, split: str, limit: int | None) -> list[Record]:
        return arith_records(split, limit)


PROCEDURAL_TASKS = ("procedural_date", "procedural_date_free", "procedural_arith")
