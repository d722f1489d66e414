"""LLM-as-judge (paper §2.3, step 2): does a reasoning path contain
hallucinated or spurious intermediate steps, even when its answer is right?

Any generate backend can judge (`filter.judge.backend`). Calls go through the
run's completion store (`run_cached`, kind ``judge``), so verdicts survive a
killed run, are never paid twice, and their token usage is recorded.

The prompt states the criterion, shows two worked verdicts (a valid path and
one with a right answer but a wrong step, each followed by ``VERDICT:`` and
``REASON:`` lines), then the path to judge, and ends with ``VERDICT:``. So one
text serves both kinds of model: a base model served in plain-completions mode
continues the pattern with the verdict word and a reason (without the examples
Gemma-3-270M just echoed the format description), and a chat model answers the
same two lines. The parser reads the
reply as if it followed that ``VERDICT:`` and takes the last explicit
``VERDICT: VALID|INVALID``; only an explicit VALID keeps a path, and anything
else is an invalid, unparsed verdict (the paper keeps only paths marked valid).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from qrdistill.backends import get_backend
from qrdistill.backends.base import Request
from qrdistill.errors import ConfigError
from qrdistill.judges.base import JUDGES, Judge, Verdict

JUDGE_PROMPT = """You check worked solutions for hallucinated or spurious intermediate steps: a false fact, \
wrong arithmetic, or a leap that the earlier steps do not justify. A path can reach the right final answer \
and still contain such a step; then it is INVALID. It is VALID only if every step is true and follows from \
what came before. Answer with the verdict, VALID or INVALID, then one line starting with REASON: that \
names the first bad step or says why every step holds.

QUESTION:
Tom has 3 boxes of 4 pens and gives away 5 pens. How many pens does he have left?

REASONING PATH:
3 boxes of 4 pens make 3 * 4 = 12 pens. Giving away 5 leaves 12 - 5 = 7. The answer is 7.

VERDICT: VALID
REASON: Both calculations are right and each step follows from the question.

QUESTION:
A shirt costs $20 and is discounted by 25%. What is the new price?

REASONING PATH:
25% of $20 is $4, so the discount takes $5 off. $20 - $5 = $15. The answer is 15.

VERDICT: INVALID
REASON: 25% of $20 is $5, not $4, and the next step does not follow from it.

QUESTION:
{question}

REASONING PATH:
{path}

VERDICT:"""

#: Headers of the judge prompt: a base model that runs on past its verdict starts a new
#: made-up example with them, and nothing after that belongs to the verdict.
_CONTINUATION_MARKERS = re.compile(r"^\s*(QUESTION|REASONING PATH)\s*:", re.IGNORECASE | re.MULTILINE)
_MARKDOWN = re.compile(r"[*_`#]+")
#: The format line itself ("VALID or INVALID"), which base models like to echo: an echo is not a verdict.
_OPTIONS_ECHO = re.compile(
    r"<?\s*\bVALID\s*(?:or|/|\|)(?:\s*VERDICT\s*:?)?\s*(?:INVALID\b\s*>?|$)", re.IGNORECASE
)
_VERDICT = re.compile(r"\bVERDICT\s*:\s*[\"'\[(]*\s*(VALID|INVALID)\b", re.IGNORECASE)
_REASON = re.compile(r"\bREASON\s*:\s*(.+)", re.IGNORECASE)


def build_judge_prompt(question: str, path: str, template: str | None = None) -> str:
    # replace, not str.format: questions and paths (and user templates) may contain braces
    return (template or JUDGE_PROMPT).replace("{question}", question.strip()).replace("{path}", path.strip())


def parse_verdict(reply: str | None) -> Verdict:
    """Read a judge reply; only an explicit ``VERDICT: VALID`` is valid.

    Case and markdown emphasis are ignored; when several verdicts appear the
    last one counts (a chat model may restate the format before answering).
    A bare ``VALID``/``INVALID`` at the very start counts as continuing the
    prompt's trailing ``VERDICT:``. An echo of the format line ("VALID or
    INVALID") is not a verdict.
    """
    text = reply or ""
    m = _CONTINUATION_MARKERS.search(text)
    body = text[: m.start()] if m else text
    clean = _OPTIONS_ECHO.sub(" ", _MARKDOWN.sub("", body))
    found = _VERDICT.findall("VERDICT:" + clean)
    if not found:
        snippet = " ".join(text.split())[:200]
        return Verdict(valid=False, reason=f"unparseable judge reply: {snippet}", parsed=False)
    reasons = _REASON.findall(clean)
    reason = reasons[-1].strip() if reasons else ""
    return Verdict(valid=found[-1].upper() == "VALID", reason=reason, parsed=True)


@JUDGES.register("llm")
class LLMJudge(Judge):
    name = "llm"

    def __init__(self, config: Any, store: Any = None) -> None:
        super().__init__(config, store)
        if config.prompt is not None:
            missing = [f for f in ("{question}", "{path}") if f not in config.prompt]
            if missing:
                raise ConfigError(f"config field filter.judge.prompt: must contain {' and '.join(missing)}")
        self.backend = get_backend(config.backend, field="filter.judge.backend")

    def request_for(self, item: dict[str, Any]) -> Request:
        question = item.get("question") or item.get("prompt") or ""
        prompt = build_judge_prompt(question, item.get("response") or "", self.config.prompt)
        ctx = {k: item[k] for k in ("qid", "task", "style", "sample") if k in item}
        return Request(messages=[{"role": "user", "content": prompt}], context={"judge": True, **ctx})

    def judge(self, items: Sequence[dict[str, Any]], progress: Any = None) -> list[Verdict]:
        from qrdistill.store import Store, run_cached

        store = self.store if self.store is not None else Store(":memory:")
        requests = [self.request_for(it) for it in items]
        try:
            results = run_cached(self.backend, store, requests, kind="judge", desc="judge")
            verdicts = []
            for req in requests:
                key = self.backend.key(req)
                comp = results.get(key)
                if comp is not None:
                    verdicts.append(parse_verdict(comp.text))
                    continue
                stored = store.get(key)
                if stored is None:
                    # Nothing stored: the call was never made (today only filter.budget_usd stops the queue so).
                    reason = "not judged: the call was not issued; asked on the next run"
                else:
                    reason = f"judge call failed (retried on the next run): {stored.error}"
                verdicts.append(Verdict(valid=False, reason=reason, parsed=False))
            return verdicts
        finally:
            # free a local judge model as soon as judging is done; a later call reloads it
            self.backend.close()
            if store is not self.store:
                store.close()

    def close(self) -> None:
        self.backend.close()


__all__ = ["JUDGE_PROMPT", "LLMJudge", "build_judge_prompt", "parse_verdict"]
