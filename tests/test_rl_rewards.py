"""RL rewards (issue 11): structure alignment (RLKD's rule), strict verdict and step parsing, extractor
failures with reasons, cached reward-model calls, correctness/format on real procedural records."""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from qrdistill.backends import Backend, Completion, Request, get_backend
from qrdistill.config.generate import SimulatedBackendConfig
from qrdistill.config.rl import RewardConfig
from qrdistill.judges.steps import check_text
from qrdistill.rl.caller import CachedCaller
from qrdistill.rl.rewards import REWARDS, RewardContext, TaskRecord
from qrdistill.rl.rewards.structure import Step, StepMatch, step_values, structure_result, structure_score
from qrdistill.rl.steps_claims import ClaimsExtractor, claim_steps
from qrdistill.rl.steps_llm import LLMExtractor, parse_steps, parse_verdict
from qrdistill.rl.total import total_reward
from qrdistill.store import Store
from qrdistill.styles import STYLES, render
from qrdistill.tasks import get_task


def exact(a: Step, b: Step) -> StepMatch:
    return StepMatch(a.sub_think == b.sub_think, a.query == b.query, a.answer == b.answer)


def _step(i: int, tag: str = "") -> Step:
    return Step(f"think {i}{tag}", f"query {i}{tag}", f"answer {i}{tag}")


refs = st.integers(1, 12).map(lambda n: [_step(i) for i in range(n)])


# ---------------------------------------------------------------- structure score


@settings(max_examples=60, deadline=None)
@given(refs)
def test_identical_steps_score_one(ref: list[Step]) -> None:
    assert structure_score(list(ref), ref, exact) == 1.0


@settings(max_examples=60, deadline=None)
@given(refs, st.integers(0, 12))
def test_disjoint_steps_score_zero(ref: list[Step], m: int) -> None:
    student = [_step(i, "-other") for i in range(m)]
    assert structure_score(student, ref, exact) == 0.0


@settings(max_examples=60, deadline=None)
@given(refs)
def test_score_is_monotone_in_leading_matched_steps(ref: list[Step]) -> None:
    n = len(ref)
    scores = [structure_score(ref[:k] + [_step(i, "-x") for i in range(k, n)], ref, exact) for k in range(n + 1)]
    assert scores == sorted(scores)
    assert scores == pytest.approx([k / n for k in range(n + 1)])


@settings(max_examples=60, deadline=None)
@given(refs, st.data())
def test_a_mismatched_query_or_answer_halves_that_step(ref: list[Step], data: st.DataObject) -> None:
    n = len(ref)
    i = data.draw(st.integers(0, n - 1))
    part = data.draw(st.sampled_from(["query", "answer", "both"]))
    s = ref[i]
    changed = Step(
        s.sub_think,
        s.query + "?" if part in ("query", "both") else s.query,
        s.answer + "?" if part in ("answer", "both") else s.answer,
    )
    student = ref[:i] + [changed] + ref[i + 1 :]
    lost = 0.75 if part == "both" else 0.5
    assert structure_score(student, ref, exact) == pytest.approx((n - lost) / n)


@settings(max_examples=60, deadline=None)
@given(refs, st.data())
def test_a_failed_sub_think_ends_the_sum(ref: list[Step], data: st.DataObject) -> None:
    n = len(ref)
    i = data.draw(st.integers(0, n - 1))
    student = list(ref)
    student[i] = Step("a different plan", ref[i].query, ref[i].answer)  # later steps all match
    calls: list[int] = []

    def counting(a: Step, b: Step) -> StepMatch:
        calls.append(1)
        return exact(a, b)

    values, _ = step_values(student, ref, counting)
    assert values == [1.0] * i + [0.0] * (n - i)
    assert len(calls) == i + 1  # nothing is asked once the sum has ended
    assert structure_score(student, ref, exact) == pytest.approx(i / n)


def test_extra_student_steps_are_ignored_and_missing_ones_score_zero() -> None:
    ref = [_step(i) for i in range(4)]
    assert structure_score(ref + [_step(9, "-extra")], ref, exact) == 1.0
    assert structure_score(ref[:3], ref, exact) == 0.75
    assert structure_score(ref, [], exact) == 0.0


# ---------------------------------------------------------------- verdicts and step replies


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("yes", True), ("Yes.", True), ("YES", True), ("Yes, because both find today's date.", True),
        ("**Yes**", True), ("Answer: yes", True), ('"No"', False), ("no", False), ("No.", False),
        ("No, the second one adds.", False), ("  no\n", False),
        # RLKD's `'no' in reply.lower()` reads every one of these as "no"
        ("not", None), ("not sure", None), ("know", None), ("I don't know", None), ("nothing", None),
        ("I cannot tell", None),
        # not one of the two words the prompt asks for
        ("nope", None), ("yeah", None), ("yep", None), ("no-one can say", None),
        ("", None), (None, None), ("yes or no", None), ("Yes/No", None), ("Yes and no", None),
        ("The answer is yes", None),
        # both words: the reply takes both sides
        ("Yes, no.", None), ("No. Yes.", None), ("yes no", None), ("Yes - no", None), ("Yes \u2014 no.", None),
        ("Yes\u2026no", None), ("Yes|No", None), ("yes\\no", None), ("Yes (or no)", None), ("Yes, but no.", None),
        ("Answer: Yes\nVerdict: No", None), ("Yes\nNo\nThe steps differ.", None), ("Yes, yes, no.", None),
        # one side, with "no" opening a phrase or the word repeated
        ("Yes, nothing differs.", True), ("No, nobody would say so.", False), ("Yes, because no step differs.", True),
        ("Yes, no doubt.", True), ("Yes, no difference.", True), ("Yes. No differences.", True),
        ("Yes (no difference)", True), ("Yes.\nNo further comment", True), ("Yes, no one would disagree.", True),
        ("Yes, yes.", True), ("No, no.", False), ("No, no match.", False), ("**Answer**: Yes", True),
        ("Yes, **no** doubt.", True), ("Yes, no *doubt*", True), ("Yes, no-one would disagree.", True),
        ("Yes \u2014 no\u2010brainer.", True), ("Yes, but not entirely.", True),
        # echoes of the options, and a repeat that hides the other side
        ("Yes or No or Maybe", None), ("yes & no", None), ("Yes and/or no", None), ("Yes vs no", None),
        ("Yes \u2192 no", None), ("yes yes no.", None), ("Yes, **no**.", None),
        # quotes are not part of the word; a hyphen (ASCII or Unicode) joins it into a longer one
        ("'Yes'", True), ("'No'.", False), ("\u201cYes\u201d", True), ("\u2018No\u2019", False), ("\ufeffYes", True),
        ("No\u2011one", None), ("No\u2011brainer: yes", None), ("no's", None), ("no\u2019s", None),
        ("Yes, 'no' doubt.", True), ("Yes 'No'", None), ("__Yes__", True), ("Answer: _No_", False), ("Yes, __no__.", None),
        # other word, then the first again; headings, arrows and symbols between them
        ("yes no yes.", None), ("Answer: Yes\n\n## Verdict: No", None), ("Yes\n> No", None), ("Yes -> no", None),
        ("Yes = no", None), ("Yes + no", None), ("Yes nor no", None), ("Yes OR NO", None), ("Yes? No.", None),
    ],
)  # fmt: skip
def test_parse_verdict_is_strict(reply: str | None, verdict: bool | None) -> None:
    assert parse_verdict(reply) is verdict


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["yes", "no", "Yes", "NO"]), st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1),
       st.text())  # fmt: skip
def test_a_verdict_word_that_runs_on_is_not_a_verdict(word: str, tail: str, rest: str) -> None:
    assert parse_verdict(word + tail + rest) is None  # "not", "nope", "yesterday", "no1"


SEPARATORS = [" ", ", ", ". ", "! ", "\n", " - ", " \u2014 ", "\u2013", "\u2026", "/", "|", "\\", "; ", " (", ": "]
CONNECTORS = ["", "or ", "and ", "but ", "Verdict: ", "Answer: "]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["yes", "no", "Yes", "NO"]), st.sampled_from(SEPARATORS), st.sampled_from(CONNECTORS),
       st.sampled_from(["yes", "no", "Yes", "No"]), st.sampled_from(["", ".", "!", ")", ",", "\n", " .", "\nBecause x"]))  # fmt: skip
def test_a_second_whole_verdict_word_takes_both_sides_unless_it_repeats_the_first(
    first: str, sep: str, connector: str, second: str, end: str
) -> None:
    got = parse_verdict(first + sep + connector + second + end)
    if first.lower() == second.lower():
        assert got is (first.lower() == "yes"), "the same word twice only insists"
    else:
        assert got is None, "a reply that says both yes and no says neither"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["yes", "no", "Yes", "NO"]), st.sampled_from(SEPARATORS), st.sampled_from(["yes", "no", "No"]),
       st.sampled_from(["doubt", "difference", "one", "further comment", "step differs", "Matter"]), st.text())  # fmt: skip
def test_a_verdict_word_that_opens_a_phrase_does_not_take_the_other_side(
    first: str, sep: str, second: str, phrase: str, rest: str
) -> None:
    assert parse_verdict(first + sep + second + " " + phrase + rest) is (first.lower() == "yes")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["yes", "no"]), st.sampled_from([".", ",", "!", " ", ".\n", ""]),
       st.text(alphabet=st.characters(exclude_categories=["L", "N"]), max_size=40))  # fmt: skip
def test_a_verdict_word_followed_by_no_words_decides(word: str, sep: str, rest: str) -> None:
    assert parse_verdict(word + sep + (rest if sep else "")) is (word == "yes")


@pytest.mark.parametrize("reply", ["yes" + " .-" * 200_000 + "x", "yes" + " or" * 200_000 + " x", "yes, " * 200_000,
                                   "No" + " **" * 200_000 + "no difference"])  # fmt: skip
def test_a_long_reply_is_read_in_linear_time(reply: str) -> None:
    # 0.2-0.3 s here; slicing the rest at each repeated word (quadratic, 5759aaf) took 4.0 s on "yes, " * 200k
    start = time.perf_counter()
    assert parse_verdict(reply) is reply.startswith("y")
    assert time.perf_counter() - start < 2.0


GOOD_STEPS = {"steps": [{"sub_think": "find today", "query": "07/21 - 5 days?", "answer": "07/16/2017"}]}


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("[sub-think 1] find today [Query 1] what is ... [Answer 1] 07/16", "not JSON"),
        ('Here are the steps: {"steps": []}', "not JSON"),
        ("", "not JSON"),
        ('{"step": []}', "only a 'steps' list"),
        ('{"steps": [], "note": "x"}', "only a 'steps' list"),
        ('[{"sub_think": "a", "query": "b", "answer": "c"}]', "only a 'steps' list"),
        ('{"steps": [{"sub_think": "a", "answer": "c"}]}', "step 1: missing 'query'"),
        ('{"steps": [{"sub_think": "a", "query": "b", "answer": 3}]}', "step 1: 'answer' is not a string"),
        ('{"steps": [{"sub_think": "a", "query": "b", "answer": "c", "why": ""}]}', "unknown field 'why'"),
        ('{"steps": ["a"]}', "step 1 is not an object"),
    ],
)
def test_parse_steps_records_why_a_reply_is_unparseable(reply: str, reason: str) -> None:
    got = parse_steps(reply)
    assert not got.ok and got.steps is None
    assert reason in got.error and "unparseable" in got.error


def test_parse_steps_reads_json_and_one_fence() -> None:
    for reply in (json.dumps(GOOD_STEPS), "```json\n" + json.dumps(GOOD_STEPS, indent=1) + "\n```"):
        got = parse_steps(reply)
        assert got.ok and got.steps == (Step("find today", "07/21 - 5 days?", "07/16/2017"),)


# ---------------------------------------------------------------- fake judge backend + real store


class FakeJudge(Backend):
    """Answers extraction prompts with the claims of the path (as JSON steps), match prompts with
    "Yes." when both contents are equal; `reply` overrides. Counts every call it answers."""

    name = "fake"

    def __init__(self, reply: Callable[[str], str] | None = None) -> None:
        super().__init__(SimulatedBackendConfig(model="fake-judge", temperature=0.0))
        self.reply = reply
        self.calls = 0
        self.prompts: list[str] = []

    def answer(self, prompt: str) -> str:
        if self.reply is not None:
            return self.reply(prompt)
        if "REASONING:\n" in prompt:
            path = prompt.split("REASONING:\n", 1)[1]
            return json.dumps({"steps": [{"sub_think": s.operation, "query": s.quantity, "answer": s.result}
                                         for s in claim_steps(path)]})  # fmt: skip
        first, second = re.findall(r"^(?:Step|Question|Answer) [12]: (.*)$", prompt, re.MULTILINE)
        return "Yes." if first == second else "No, they differ."

    def generate(self, requests: Sequence[Request], on_result, progress=None) -> None:
        for req in requests:
            self.calls += 1
            self.prompts.append(req.messages[0]["content"])
            on_result(req, Completion(text=self.answer(req.messages[0]["content"]), prompt_tokens=1,
                                      completion_tokens=1))  # fmt: skip


# ---------------------------------------------------------------- real records, simulated teacher


def _paths(task_name: str, n: int, wrong: float = 0.0, styles: Sequence[str] = tuple(STYLES), offset: int = 0):
    """(record, style, text, planted) for the first n training questions (after `offset`)."""
    task = get_task(task_name)
    backend = get_backend(SimulatedBackendConfig(wrong_answer_rate=wrong, spurious_step_rate=0.0))
    out = []
    for r in task.load("train", limit=n + offset)[offset:]:
        for style in styles:
            user = render(STYLES[style], task.prompt(r), task.answer_instruction)
            comp = backend.complete(Request(messages=[{"role": "user", "content": user}],
                                            context={"record": r, "style": style, "task": task_name}))  # fmt: skip
            out.append((r, style, comp.text, comp.meta["planted"]))
    return out


@pytest.mark.parametrize("task_name", ["procedural_date", "procedural_arith"])
def test_correctness_and_format_on_real_records(task_name: str) -> None:
    correct, fmt = REWARDS.get("correctness"), REWARDS.get("format")
    for r, _, text, _ in _paths(task_name, 4, styles=("cot", "program")):
        rec = TaskRecord(task_name, r)
        assert correct("p", text, rec, None) == 1.0 and fmt("p", text, rec, None) == 1.0
        body = "\n".join(text.splitlines()[:-1])  # the answer line dropped
        assert fmt("p", body, rec, None) == 0.0
    planted = [(r, t) for r, _, t, p in _paths(task_name, 6, wrong=1.0, styles=("cot",)) if p == "wrong_answer"]
    assert planted
    for r, text in planted:
        rec = TaskRecord(task_name, r)
        assert correct("p", text, rec, None) == 0.0
        assert fmt("p", text, rec, None) == 1.0  # a wrong answer, stated on a proper answer line


def test_task_record_from_a_dataset_row() -> None:
    r = get_task("procedural_arith").load("train", limit=1)[0]
    rec = TaskRecord.from_row({"task": "procedural_arith", "record": r.to_dict()})
    assert rec.record == r and REWARDS.get("correctness")("p", f"The answer is {r.answer}.", rec, None) == 1.0


# ---------------------------------------------------------------- claims extractor


@pytest.mark.parametrize("task_name", ["procedural_date", "procedural_arith"])
def test_claims_steps_are_the_judges_claims_in_text_order(task_name: str) -> None:
    for _, _, text, _ in _paths(task_name, 6, wrong=0.3):
        steps = claim_steps(text)
        assert sorted(s.claim for s in steps) == sorted(c.text for c in check_text(text))
        positions = [s.position for s in steps]
        assert positions == sorted(positions)
        for s in steps:  # each step starts where its claim is written
            assert text[s.position :].startswith(s.query.split()[0])


def test_claims_steps_follow_the_text_and_merge_a_restated_computation() -> None:
    text = ("First find today: day 27 − 2 = 25; 11/27/2008 − 2 days = 11/25/2008.\n"
            "She sold 48/2 = <<48/2=24>>24 clips, then 3 weeks after 11/25/2008 is 12/16/2008.")  # fmt: skip
    got = [(s.kind, s.quantity, s.result) for s in claim_steps(text)]
    assert got == [
        ("arith", "(27 - 2)", "25"),
        ("date", "11/27/2008 -2 day", "11/25/2008"),
        ("arith", "(48 / 2)", "24"),
        ("date", "11/25/2008 +21 day", "12/16/2008"),
    ]


@pytest.mark.parametrize(
    "student, reference, score",
    [
        ("8 × 25 = 200", "8 × 25 = 200", 1.0),  # the reference itself
        ("25 x 8 = 200", "8 × 25 = 200", 1.0),  # commutativity
        ("<<25*8=200>>", "8 × 25 = 200", 1.0),  # a GSM8K annotation is a claim like any other
        ("3 weeks after 03/05/2021 is 03/26/2021", "03/05/2021 + 21 days = 03/26/2021", 1.0),
        ("8 × 25 = 201", "8 × 25 = 200", 0.5),  # same quantity, false result: the answer halves
        ("8 × 25 = 201", "8 × 25 = 201", 0.5),  # the same false result is no right answer
        ("8 × 26 = 208", "8 × 25 = 200", 0.25),  # same operation, other operands: query and answer halve
        ("8 + 25 = 33", "8 × 25 = 200", 0.0),  # another operation: the sum ends
        ("2 weeks before 03/05/2021 is 02/19/2021", "03/05/2021 + 14 days = 03/19/2021", 0.0),
        ("no arithmetic here", "8 × 25 = 200", 0.0),
    ],
)
def test_claims_matching(student: str, reference: str, score: float) -> None:
    ex = ClaimsExtractor()
    ref = ex.extract(reference).steps
    assert structure_score(ex.extract(student).steps, ref, ex.match) == score


@pytest.mark.parametrize("task_name", ["procedural_date", "procedural_arith"])
def test_claims_structure_on_simulated_paths(task_name: str) -> None:
    rec_paths = _paths(task_name, 12, styles=("cot", "vanilla", "backward"))
    by_q: dict[str, dict[str, str]] = {}
    for r, style, text, _ in rec_paths:
        by_q.setdefault(r.id, {})[style] = text
    ids = list(by_q)
    for qid in ids:
        for text in by_q[qid].values():
            assert structure_result(text, "", text).value == 1.0
    other = [structure_result(by_q[a]["cot"], "", by_q[b]["cot"]).value for a, b in zip(ids, ids[1:] + ids[:1], strict=True)]
    assert statistics.mean(other) < 0.1 and max(other) <= 0.5, other


def test_a_planted_wrong_step_lowers_the_structure_score() -> None:
    clean = {r.id: t for r, _, t, _ in _paths("procedural_arith", 10, styles=("cot",))}
    wrong = [(r.id, t) for r, _, t, p in _paths("procedural_arith", 10, wrong=1.0, styles=("cot",))]
    scores = [structure_result(t, "", clean[qid]).value for qid, t in wrong]
    assert all(s < 1.0 for s in scores) and all(s > 0.0 for s in scores), scores


# ---------------------------------------------------------------- failures with reasons


def test_an_extractor_failure_is_recorded_with_its_reason(tmp_path, caplog) -> None:
    r, _, text, _ = _paths("procedural_arith", 1, styles=("cot",))[0]
    rec = TaskRecord("procedural_arith", r)
    with Store(tmp_path / "store.sqlite") as store:
        ex = LLMExtractor(CachedCaller(FakeJudge(lambda p: "[sub-think 1] add [Query 1] 32+39 [Answer 1] 71"), store))
        with caplog.at_level(logging.WARNING, logger="qrdistill.rl.rewards.structure"):
            res = structure_result(text, "q", text, ex)
        assert res.value == 0.0 and res.failed
        assert "reference path unreadable" in res.reason and "not JSON" in res.reason
        assert res.reason in caplog.text
        got = REWARDS.get("structure").detail("p", text, rec, text, RewardContext(extractor=ex))
        assert got.value == 0.0 and got.failed and "not JSON" in got.reason
        total = total_reward("p", text, rec, text, RewardConfig(), RewardContext(extractor=ex))
        assert total.failed == ("structure",) and "not JSON" in total.reasons["structure"]
        assert total.total == 15.0 + 10.0  # correctness and format still count


def test_no_reference_and_no_steps_are_reasons_not_silent_zeros() -> None:
    res = structure_result("8 × 25 = 200", "", None)
    assert res.value == 0.0 and res.failed and "no reference" in res.reason
    res = structure_result("8 × 25 = 200", "", "no claims in this reference")
    assert res.value == 0.0 and res.failed and "no steps" in res.reason
    res = structure_result("I just know it.", "", "8 × 25 = 200")
    assert res.value == 0.0 and not res.failed and "student path has no steps" in res.reason


def test_an_unparseable_verdict_is_no_match_with_a_note(tmp_path) -> None:
    def reply(prompt: str) -> str:
        return json.dumps(GOOD_STEPS) if "REASONING:" in prompt else "I don't know"

    with Store(tmp_path / "s.sqlite") as store:
        res = structure_result("a path", "q", "a path", LLMExtractor(CachedCaller(FakeJudge(reply), store)))
    assert res.value == 0.0 and "think: unparseable verdict" in res.reason


class CutJudge(FakeJudge):
    """Stops every extraction reply at a token limit, as a server with too small a max_tokens does:
    the JSON ends mid-string and the backend says finish_reason "length"."""

    def generate(self, requests: Sequence[Request], on_result, progress=None) -> None:
        for req in requests:
            self.calls += 1
            full = self.answer(req.messages[0]["content"])
            on_result(req, Completion(text=full[:40], prompt_tokens=1, completion_tokens=8, finish_reason="length"))


def test_an_extraction_cut_at_the_token_limit_says_so_also_from_the_store(tmp_path) -> None:
    _, _, text, _ = _paths("procedural_date", 1, styles=("cot",))[0]
    for attempt in range(2):  # the second run reads the stored reply and must give the same reason
        judge = CutJudge()
        with Store(tmp_path / "s.sqlite") as store:
            got = LLMExtractor(CachedCaller(judge, store)).extract(text, "q")
        assert judge.calls == (1 if attempt == 0 else 0)
        assert not got.ok and "not JSON" in got.error
        assert "finish_reason 'length'" in got.error and "rl.rewards.backend.max_tokens" in got.error
    with Store(tmp_path / "t.sqlite") as store:  # a reply that is simply not JSON does not blame the limit
        got = LLMExtractor(CachedCaller(FakeJudge(lambda p: "no json here"), store)).extract(text, "q")
    assert "not JSON" in got.error and "length" not in got.error


class MatchOutage(FakeJudge):
    """Extracts steps, but every match call fails (HTTP 503), as a judge server that goes down mid-run."""

    def generate(self, requests: Sequence[Request], on_result, progress=None) -> None:
        for req in requests:
            if "REASONING:\n" in req.messages[0]["content"]:
                super().generate([req], on_result, progress)
            else:
                self.calls += 1
                on_result(req, Completion(text=None, status="error", error="HTTP 503: upstream unavailable"))


def test_a_failed_match_call_is_a_recorded_failure_not_a_mismatch(tmp_path, caplog) -> None:
    r, _, text, _ = _paths("procedural_arith", 1, styles=("cot",))[0]
    rec = TaskRecord("procedural_arith", r)
    with Store(tmp_path / "s.sqlite") as store:
        ex = LLMExtractor(CachedCaller(MatchOutage(), store))
        with caplog.at_level(logging.WARNING, logger="qrdistill.rl.rewards.structure"):
            res = structure_result(text, "q", text, ex)
        assert res.value == 0.0 and res.failed
        assert "step match call failed" in res.reason and "HTTP 503" in res.reason and res.reason in caplog.text
        total = total_reward("p", text, rec, text, RewardConfig(), RewardContext(extractor=ex))
        assert total.failed == ("structure",) and "HTTP 503" in total.reasons["structure"]
    # an unparseable verdict is a judged mismatch with a note, not a failure (the reply exists and is stored)
    with Store(tmp_path / "t.sqlite") as store:
        res = structure_result(text, "q", text, LLMExtractor(CachedCaller(
            FakeJudge(lambda p: json.dumps(GOOD_STEPS) if "REASONING:" in p else "I don't know"), store)))
    assert not res.failed and "unparseable verdict" in res.reason


# ---------------------------------------------------------------- every reward-model call is cached


def test_a_rerun_issues_no_reward_model_call(tmp_path) -> None:
    items = [(TaskRecord("procedural_date", r), t) for r, _, t, _ in _paths("procedural_date", 3, styles=("cot",))]
    refs_by_q = {r.id: t for r, _, t, _ in _paths("procedural_date", 3, styles=("backward",))}

    def run() -> tuple[list[float], int, dict]:
        judge = FakeJudge()
        with Store(tmp_path / "store.sqlite") as store:
            ctx = RewardContext(extractor=LLMExtractor(CachedCaller(judge, store)))
            values = [total_reward("p", t, rec, refs_by_q[rec.record.id], RewardConfig(), ctx).terms["structure"]
                      for rec, t in items]  # fmt: skip
            return values, judge.calls, store.usage("judge")

    first, calls1, usage1 = run()
    assert calls1 > 0 and usage1["calls"] == calls1
    assert all(v > 0 for v in first)
    again, calls2, usage2 = run()
    assert calls2 == 0 and again == first
    assert usage2["calls"] == calls1  # the store recorded each call once


def test_a_path_against_itself_scores_one_with_the_llm_extractor(tmp_path) -> None:
    _, _, text, _ = _paths("procedural_date", 1, styles=("cot",))[0]
    with Store(tmp_path / "s.sqlite") as store:
        judge = FakeJudge()
        res = structure_result(text, "q", text, LLMExtractor(CachedCaller(judge, store)))
    assert res.value == 1.0 and res.reason is None
    n = len(res.reference.steps)
    # one extraction (the same text twice is one key) and at most 3 verdicts a step; a question asked
    # before (steps of one operation share their sub-think) is answered from the store
    assert 1 + n <= judge.calls < 1 + 3 * n
    assert len(set(judge.prompts)) == judge.calls


# ---------------------------------------------------------------- weights and config


def test_total_reward_is_the_weighted_sum_and_skips_zero_weights() -> None:
    r, _, text, _ = _paths("procedural_arith", 1, styles=("cot",))[0]
    rec = TaskRecord("procedural_arith", r)
    got = total_reward("p", text, rec, text, RewardConfig())
    assert got.terms == {"correctness": 1.0, "format": 1.0, "structure": 1.0} and got.total == 40.0

    class Exploding:
        name = "boom"

        def extract(self, text, question):
            raise AssertionError("a term of weight 0 must not be computed")

    cfg = RewardConfig(weights={"structure": 0})
    got = total_reward("p", text, rec, text, cfg, RewardContext(extractor=Exploding()))
    assert got.total == 25.0 and "structure" not in got.terms


def test_reward_config_defaults_and_field_errors() -> None:
    cfg = RewardConfig()
    assert cfg.weights.model_dump() == {"correctness": 15.0, "format": 10.0, "structure": 15.0}
    assert cfg.extractor == "claims" and cfg.reference == "routed"
    assert set(cfg.weights.model_dump()) == set(REWARDS.names())
    cases = [
        ({"weights": {"structure": -1}}, ("weights", "structure"), "greater than or equal to 0"),
        ({"weights": {"format": True}}, ("weights", "format"), "valid number"),
        ({"weights": {"correctness": 0, "format": 0, "structure": 0}}, ("weights",), "every reward weight is 0"),
        ({"weights": {"accuracy": 1}}, ("weights", "accuracy"), "Extra inputs"),
        ({"extractor": "gsrm"}, ("extractor",), "'claims' or 'llm'"),
        ({"reference": "best"}, ("reference",), "'routed' or 'any'"),
        ({"extractor": "llm"}, ("backend",), "needs a judge backend"),
        ({"backend": {"kind": "simulated"}}, ("backend",), "read only by extractor llm"),
    ]
    for data, loc, msg in cases:
        with pytest.raises(ValidationError) as e:
            RewardConfig.model_validate(data)
        errs = e.value.errors()
        assert [x["loc"] for x in errs] == [loc] and msg in errs[0]["msg"], errs
    assert RewardConfig(extractor="llm", backend={"kind": "simulated"}).backend.kind == "simulated"
