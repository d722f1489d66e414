"""`llm` step extractor: any judge backend splits a path into steps and judges step matches (RLKD's
GSRM and matcher, with the defects of its public code fixed).

Extraction: the model gets `EXTRACT_PROMPT` (the question and the path) and must reply with JSON only,
`{"steps": [{"sub_think": ..., "query": ..., "answer": ...}, ...]}`. `parse_steps` is strict: the
reply is that object (optionally inside one ```json fence, as chat models write it) or it is
unparseable, and the reason says what was wrong ("not JSON: ...", "step 2: missing 'query'"). An
unparseable reply is never 0 without its reason: the structure reward records and logs it.

Matching: three yes/no questions per step pair, as RLKD asks them: do the sub-thinks set out to solve
the same problem; do the queries ask the same; are the answers equal. The query and answer are asked
only when the sub-think matched (otherwise the sum has ended and they cannot change it).
`parse_verdict` reads a reply strictly: "yes" or "no" as the first word, in any case, after an optional
"Answer:"/"Verdict:" label and markdown, followed by nothing or punctuation or a space ("No.", "Yes,
because ..."). Anything else is unparseable (None): "not sure", "I don't know", "know", "nothing",
"nope", "no‑one" (a hyphen joins the word into another), "yeah", "", an echo of the options ("yes or
no", "Yes/No", "Yes or No or Maybe"), and both words in a row ("Yes, no.", "No. Yes.", "Yes — no",
"Answer: Yes\nVerdict: No", "yes yes no."). The second word counts only as a whole answer, ended by
punctuation, a line break, a connector or the end: "Yes, no doubt." and "Yes. No differences." are yes,
and the same word twice ("No, no.") only insists. Not caught: a reply that changes its mind in words
("Yes. Wait, no." is yes). RLKD's public code tested substrings:
`'no' in reply.lower()` for queries and answers, which reads "not", "know", "cannot" and "nothing" as
no, and `'yes' in reply.lower()` for sub-thinks, which reads "eyes" as yes. An
unparseable verdict counts as no match (only an explicit yes matches, as only an explicit VALID keeps
a path in the llm judge) and its reason is recorded in `StepMatch.notes`.

Every call goes through a `CachedCaller`, so a rerun re-pays nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from qrdistill.rl.caller import CachedCaller
from qrdistill.rl.rewards.structure import Step, StepMatch, StepsResult

EXTRACT_PROMPT = """Split the reasoning below into its steps. For each step give three parts:
- "sub_think": what the step sets out to do and why, without its result;
- "query": the one question the step answers;
- "answer": the step's result, briefly, without reasoning.
Reply with JSON only, in exactly this form, and nothing else:
{"steps": [{"sub_think": "...", "query": "...", "answer": "..."}]}

QUESTION:
{question}

REASONING:
{path}"""

MATCH_PROMPTS = {
    "think": "Do the following two reasoning steps set out to solve the same problem?\n"
    "Step 1: {reference}\nStep 2: {student}\nAnswer with one word, yes or no.\nAnswer:",
    "query": "Do the following two questions ask for the same thing?\n"
    "Question 1: {reference}\nQuestion 2: {student}\nAnswer with one word, yes or no.\nAnswer:",
    "answer": "Are the following two answers equal?\n"
    "Answer 1: {reference}\nAnswer 2: {student}\nAnswer with one word, yes or no.\nAnswer:",
}
FIELDS = ("sub_think", "query", "answer")
#: the maximum reply quoted in a reason
SNIPPET = 160

_FENCE = re.compile(r"\A```(?:json)?[ \t]*\n(?P<body>.*)\n```\Z", re.DOTALL | re.IGNORECASE)
# what may stand between and around verdict words: space, markdown, quotes (also curly), brackets,
# punctuation, headings and quote marks ("## ", "> "), the ASCII and Unicode dashes (U+2010-2015,
# U+2212), the ellipsis, arrows ("->", "=>", U+2190-21FF) and the slashes, bar, ampersand and plus of
# "Yes/No", "yes & no"
_SEP = r"[\s*_`\"'()\[\].,;:!?#>=<\-\u2010-\u2015\u2212\u2026\u2018\u2019\u201c\u201d\u2190-\u21ff|/\\&+]*"
_LABEL = r"(?:answer|verdict)[\s*_`]*:"  # "**Answer**:" too
# a verdict word runs on into a longer word through letters, digits, an apostrophe or a hyphen
# ("not", "no1", "no's", "no-one", "no\u2011brainer"); a closing quote, a dash before a space or an
# underscore (markdown: "__No__") does not
_WORD = r"(?P<word>yes|no)(?![^\W_]|[-\u2010\u2011'\u2019][^\W_])"
_CONNECTOR = r"(?:or|and|but|nor|vs)(?![^\W_])"
_VERDICT = re.compile(
    rf"\A[\s*_`\"'(\[\u2018\u201c\ufeff]*(?:{_LABEL}{_SEP})?{_WORD}",
    re.IGNORECASE,
)
# The next verdict word after one: separators, connectors ("Yes (or no)", "Yes and/or no") and a label
# ("Answer: Yes\nVerdict: No") may come between. No two starred runs of separators touch, so a long
# run of them cannot make matching backtrack.
_NEXT_WORD = re.compile(rf"{_SEP}(?:{_CONNECTOR}{_SEP})*(?:{_LABEL}{_SEP})?{_WORD}", re.IGNORECASE)
# A word stands as a whole answer when markdown or a closing quote, then the end, a line break,
# punctuation, a connector or a verdict word come after it ("no.", "**no**", "No or Maybe",
# "yes no yes"), not a further word ("no doubt", "**no** difference", "no *doubt*").
_CLOSE = "*_`'\"\u2019\u201d"
_WHOLE = re.compile(
    rf"[{_CLOSE}]*(?![{_CLOSE}])[^\S\n]*(?:\Z|\n|[^\w\s{_CLOSE}]|{_CONNECTOR}|(?:yes|no)(?![^\W_]))", re.IGNORECASE
)


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET else flat[:SNIPPET] + "..."


def parse_verdict(text: str | None) -> bool | None:
    """True for yes, False for no, None when the reply says neither plainly (see the module)."""
    m = _VERDICT.match(text or "")
    if m is None:
        return None
    word, text, pos = m.group("word").lower(), m.string, m.end()
    # the same word again ("Yes, yes.", "yes yes no") only insists; the other one, standing whole,
    # takes both sides
    while (other := _NEXT_WORD.match(text, pos)) is not None:
        if other.group("word").lower() != word:
            return None if _WHOLE.match(text, other.end()) else word == "yes"
        pos = other.end()
    return word == "yes"


def parse_steps(reply: str | None) -> StepsResult:
    """Strictly read an extraction reply (see the module); a failure says why."""
    if reply is None:
        return StepsResult(None, "no reply")
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group("body").strip()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        return StepsResult(None, f"unparseable extractor reply (not JSON: {reason}): {_snippet(reply)!r}")
    if not isinstance(data, dict) or set(data) != {"steps"} or not isinstance(data["steps"], list):
        return StepsResult(None, f"unparseable extractor reply (not an object with only a 'steps' list): "
                                 f"{_snippet(reply)!r}")  # fmt: skip
    steps = []
    for i, item in enumerate(data["steps"], 1):
        if not isinstance(item, dict):
            return StepsResult(None, f"unparseable extractor reply: step {i} is not an object")
        missing = [f for f in FIELDS if f not in item]
        extra = sorted(set(item) - set(FIELDS))
        if missing or extra:
            what = ", ".join([f"missing {f!r}" for f in missing] + [f"unknown field {f!r}" for f in extra])
            return StepsResult(None, f"unparseable extractor reply: step {i}: {what}")
        bad = [f for f in FIELDS if not isinstance(item[f], str)]
        if bad:
            return StepsResult(None, f"unparseable extractor reply: step {i}: {bad[0]!r} is not a string")
        steps.append(Step(item["sub_think"], item["query"], item["answer"]))
    return StepsResult(tuple(steps))


def build_extract_prompt(question: str, path: str, template: str | None = None) -> str:
    # replace, not str.format: questions and paths contain braces (and the template's JSON does)
    return (template or EXTRACT_PROMPT).replace("{question}", question.strip()).replace("{path}", path.strip())


def build_match_prompt(part: str, student: str, reference: str) -> str:
    return MATCH_PROMPTS[part].replace("{reference}", reference.strip()).replace("{student}", student.strip())


class LLMExtractor:
    """Steps and step matches from a judge backend, every call through `caller`'s store."""

    name = "llm"

    def __init__(self, caller: CachedCaller, prompt: str | None = None) -> None:
        self.caller = caller
        self.prompt = prompt

    def extract_many(self, items: Sequence[tuple[str, str]]) -> list[StepsResult]:
        """Steps of each (path, question), asked in one batch (the RL stage's way: all completions of
        a step at once)."""
        prompts = [build_extract_prompt(q, path, self.prompt) for path, q in items]
        out = []
        for reply in self.caller.ask(prompts, {"rl": "extract"}):
            if reply.error is not None:
                out.append(StepsResult(None, reply.error))
                continue
            got = parse_steps(reply.text)
            if not got.ok and reply.finish_reason == "length":
                # a JSON object cut short is the token limit's fault, not the extractor's: say which to raise
                got = StepsResult(None, f"{got.error} (the reply was cut at the backend's token limit, "
                                        f"finish_reason 'length': raise rl.rewards.backend.max_tokens)")  # fmt: skip
            out.append(got)
        return out

    def extract(self, text: str, question: str) -> StepsResult:
        return self.extract_many([(text, question)])[0]

    def _verdicts(self, pairs: Sequence[tuple[str, str, str]]) -> list[tuple[bool, str | None, bool]]:
        """(matched, note, the call failed) per (part, student text, reference text)."""
        prompts = [build_match_prompt(part, s, r) for part, s, r in pairs]
        out: list[tuple[bool, str | None, bool]] = []
        for (part, _, _), reply in zip(pairs, self.caller.ask(prompts, {"rl": "match"}), strict=True):
            if reply.error is not None:
                out.append((False, f"{part}: {reply.error}", True))
                continue
            v = parse_verdict(reply.text)
            out.append((bool(v), None if v is not None else f"{part}: unparseable verdict "
                                                             f"{_snippet(reply.text or '')!r}", False))  # fmt: skip
        return out

    def match(self, student: Step, reference: Step) -> StepMatch:
        verdicts = self._verdicts([("think", student.sub_think, reference.sub_think)])
        if verdicts[0][0]:
            verdicts += self._verdicts(
                [("query", student.query, reference.query), ("answer", student.answer, reference.answer)]
            )
        notes = tuple(n for _, n, _ in verdicts if n)
        errors = tuple(n for _, n, failed in verdicts if failed and n)
        if not verdicts[0][0]:
            return StepMatch(False, False, False, notes, errors)
        return StepMatch(True, verdicts[1][0], verdicts[2][0], notes, errors)


def llm_extractor(backend_config: Any, store: Any, prompt: str | None = None) -> LLMExtractor:
    """An `LLMExtractor` on the backend `backend_config` describes (`rl.rewards.backend`)."""
    from qrdistill.backends import get_backend

    backend = get_backend(backend_config, field="rl.rewards.backend")
    return LLMExtractor(CachedCaller(backend, store), prompt)


__all__ = ["EXTRACT_PROMPT", "MATCH_PROMPTS", "LLMExtractor", "build_extract_prompt", "llm_extractor",
           "parse_steps", "parse_verdict"]  # fmt: skip
