"""Simulated teacher: all styles, planted defects at the configured rates, determinism, errors."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from qrdistill.backends import Completion, Request, get_backend
from qrdistill.config.generate import SimulatedBackendConfig
from qrdistill.errors import ConfigError
from qrdistill.styles import STYLES, render
from qrdistill.tasks import Record, get_task
from qrdistill.tasks.procedural import PROCEDURAL_TASKS


def _requests(
    task_name: str, n: int, styles=tuple(STYLES), samples: int = 1, split: str = "train"
) -> list[Request]:
    task = get_task(task_name)
    out = []
    for r in task.load(split, limit=n):
        for style in styles:
            user = render(STYLES[style], task.prompt(r), task.answer_instruction)
            for k in range(samples):
                out.append(
                    Request(
                        messages=[{"role": "user", "content": user}],
                        sample=k,
                        context={"record": r, "style": style, "task": task_name},
                    )
                )
    return out


def _run(backend, requests: list[Request]) -> list[tuple[Request, Completion]]:
    got: list[tuple[Request, Completion]] = []
    backend.generate(requests, lambda req, comp: got.append((req, comp)))
    return got


@pytest.mark.parametrize("task_name", PROCEDURAL_TASKS)
def test_every_style_ends_in_an_answer_that_matches_what_was_planted(task_name: str) -> None:
    backend = get_backend(SimulatedBackendConfig(wrong_answer_rate=0.3, spurious_step_rate=0.4))
    task = get_task(task_name)
    got = _run(backend, _requests(task_name, 40))
    assert len(got) == 40 * 6
    seen: Counter[tuple[str, str | None]] = Counter()
    for req, comp in got:
        record, style = req.context["record"], req.context["style"]
        planted = comp.meta["planted"]
        assert planted in (None, "wrong_answer", "spurious_step")
        assert comp.ok and comp.text.strip().splitlines()[-1].startswith("The answer is ")
        correct = task.is_correct(comp.text, record)
        assert correct == (planted != "wrong_answer"), (style, planted, comp.text)
        if planted != "wrong_answer":
            assert task.extract_answer(comp.text, record) == record.answer
        seen[(style, planted)] += 1
    for style in STYLES:
        for planted in (None, "wrong_answer", "spurious_step"):
            assert seen[(style, planted)] > 0, (style, planted)


def test_styles_look_like_their_templates() -> None:
    backend = get_backend(SimulatedBackendConfig(wrong_answer_rate=0, spurious_step_rate=0))
    for task_name in ("procedural_date", "procedural_arith"):
        by_style = {req.context["style"]: comp.text for req, comp in _run(backend, _requests(task_name, 1))}
        assert "```python" in by_style["program"] and "print(" in by_style["program"]
        assert "Output:" in by_style["program"]
        assert "Approach 1" in by_style["tot"] and "Approach 2" in by_style["tot"]
        assert "Fact" in by_style["fact"] or "- " in by_style["fact"]
        assert "Candidate answer" in by_style["backward"] and "verified" in by_style["backward"]
        assert len(set(by_style.values())) == 6


def test_a_path_does_not_repeat_the_cue_the_student_prompt_ends_with() -> None:
    """Students trained on "Answer: Let's think step by step.\nLet's think step by step." learned to repeat
    the sentence until the token budget (the default run, before this was removed)."""
    from qrdistill.prompting import STUDENT_TEMPLATE

    cue = STUDENT_TEMPLATE.rstrip().rsplit("Answer: ", 1)[1].lower()
    backend = get_backend(SimulatedBackendConfig())
    for task_name in PROCEDURAL_TASKS:
        for _req, comp in _run(backend, _requests(task_name, 30)):
            assert cue not in comp.text.lower(), comp.text


def test_date_steps_show_their_calendar_working_and_the_judge_checks_it() -> None:
    """Students copied one-shot claims ("03/22/2024 + 6 weeks = 03/16/2024") and got 80-90 % of them wrong
    (default run at 5810011); the working splits a shift into small sums the judge recomputes."""
    import datetime as dt

    from qrdistill.backends.simulated import calendar_work
    from qrdistill.judges.steps import arithmetic_claims, verdict_for

    assert calendar_work(dt.date(2014, 7, 18), -25, "day") == (
        "day 18 − 25: borrow the 30 days of June 2014, 18 + 30 = 48; 48 − 25 = 23")
    assert calendar_work(dt.date(2014, 7, 18), -5, "day") == "day 18 − 5 = 13"
    assert calendar_work(dt.date(2024, 1, 30), 6, "week") == (
        "6 weeks = 6 × 7 = 42 days; day 30 + 42 = 72; January 2024 has 31 days: 72 − 31 = 41; "
        "February 2024 has 29 days: 41 − 29 = 12")
    assert calendar_work(dt.date(2021, 2, 5), -4, "month") == "month 2 − 4: borrow a year, 2 + 12 − 4 = 10, in 2020"
    assert calendar_work(dt.date(2021, 1, 31), 1, "month") == ""  # ambiguous: no working
    backend = get_backend(SimulatedBackendConfig(wrong_answer_rate=0.0, spurious_step_rate=0.0))
    got = _run(backend, _requests("procedural_date", 40, styles=("cot", "vanilla", "backward")))
    worked = 0
    for _req, comp in got:
        claims = arithmetic_claims(comp.text, 1e-6)
        worked += bool(claims)
        assert all(c.ok for c in claims) and verdict_for(comp.text).valid, comp.text
    assert worked >= 0.9 * len(got)
    # A slipped sum in the working fails the path.
    slipped = got[0][1].text
    claim = arithmetic_claims(slipped, 1e-6)[0].text
    a, b = claim.rsplit("= ", 1)
    assert not verdict_for(slipped.replace(claim, f"{a}= {int(b) + 1}", 1)).valid


def test_planting_rates_match_the_config() -> None:
    backend = get_backend(SimulatedBackendConfig(wrong_answer_rate=0.2, spurious_step_rate=0.2))
    reqs = _requests("procedural_arith", 170, styles=("cot", "program")) + _requests(
        "procedural_date", 170, styles=("vanilla", "backward", "tot", "fact")
    )
    got = _run(backend, reqs[:1000])
    counts = Counter(comp.meta["planted"] for _, comp in got)
    n = len(got)
    assert n == 1000
    wrong = counts["wrong_answer"] / n
    spurious_given_right = counts["spurious_step"] / (n - counts["wrong_answer"])
    assert abs(wrong - 0.2) <= 0.05, counts
    assert abs(spurious_given_right - 0.2) <= 0.05, counts


def test_per_style_rates_override() -> None:
    cfg = SimulatedBackendConfig(
        wrong_answer_rate=0.1,
        spurious_step_rate=0.0,
        style_rates={"program": {"wrong_answer_rate": 0.6}, "cot": {"spurious_step_rate": 1.0}},
    )
    got = _run(get_backend(cfg), _requests("procedural_arith", 300, styles=("program", "cot", "vanilla")))
    by_style: dict[str, Counter] = {}
    for req, comp in got:
        by_style.setdefault(req.context["style"], Counter())[comp.meta["planted"]] += 1
    assert abs(by_style["program"]["wrong_answer"] / 300 - 0.6) < 0.07
    assert by_style["program"]["spurious_step"] == 0
    assert by_style["cot"]["spurious_step"] == 300 - by_style["cot"]["wrong_answer"]
    assert abs(by_style["vanilla"]["wrong_answer"] / 300 - 0.1) < 0.05
    assert by_style["vanilla"]["spurious_step"] == 0


def test_zero_rates_give_clean_paths() -> None:
    cfg = SimulatedBackendConfig(wrong_answer_rate=0.0, spurious_step_rate=0.0)
    got = _run(get_backend(cfg), _requests("procedural_date", 30))
    assert {comp.meta["planted"] for _, comp in got} == {None}


def test_deterministic_per_request_and_varied_across_samples() -> None:
    reqs = _requests("procedural_date_free", 10, samples=3)
    a = _run(get_backend(SimulatedBackendConfig()), reqs)
    b = _run(get_backend(SimulatedBackendConfig()), list(reversed(reqs)))
    text_b = {id(req): comp for req, comp in b}
    for req, comp in a:
        assert comp.text == text_b[id(req)].text
        assert comp.meta == text_b[id(req)].meta
    # same question and style, different sample index: different wording
    by_q: dict[tuple[str, str], set[str]] = {}
    for req, comp in a:
        by_q.setdefault((req.context["record"].id, req.context["style"]), set()).add(comp.text)
    assert sum(len(v) for v in by_q.values()) >= 0.8 * 3 * len(by_q)


def test_wording_varies_across_questions() -> None:
    cfg = SimulatedBackendConfig(wrong_answer_rate=0, spurious_step_rate=0)
    got = _run(get_backend(cfg), _requests("procedural_arith", 60, styles=("cot",)))
    openings = {comp.text.splitlines()[1].split(":")[0].split(",")[0] for _, comp in got}
    assert len(openings) >= 6, openings


def test_label_tokens_and_callback_thread() -> None:
    backend = get_backend(SimulatedBackendConfig())
    assert backend.label.startswith("simulated:") and "simulated" in backend.label
    caller = threading.get_ident()
    order = []

    def on_result(req: Request, comp: Completion) -> None:
        assert threading.get_ident() == caller
        order.append(req)
        assert comp.completion_tokens == len(comp.text.split())
        assert comp.prompt_tokens == len(req.messages[0]["content"].split())
        assert comp.latency is not None and comp.status == "ok"

    ticks = []
    reqs = _requests("procedural_arith", 3)
    backend.generate(reqs, on_result, progress=ticks.append)
    assert order == reqs and sum(ticks) == len(reqs)


def test_latency_is_honoured() -> None:
    backend = get_backend(SimulatedBackendConfig(latency=0.05))
    reqs = _requests("procedural_arith", 1, styles=("cot", "tot", "fact", "program"))
    t0 = time.perf_counter()
    _run(backend, reqs)
    assert time.perf_counter() - t0 >= 0.2


def test_non_procedural_task_is_a_clear_error_before_any_call() -> None:
    backend = get_backend(SimulatedBackendConfig())
    good = _requests("procedural_arith", 1, styles=("cot",))
    other = Request(
        messages=[{"role": "user", "content": "Q"}],
        context={"record": Record(id="1", question="Q", answer="1"), "style": "cot", "task": "gsm8k"},
    )
    got = []
    with pytest.raises(ConfigError, match=r"only for the procedural tasks.*'gsm8k'.*real backend"):
        backend.generate(good + [other], lambda req, comp: got.append(comp))
    assert got == []


def test_unknown_style_rate_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"generate\.teacher\.style_rates\.cot\.wrong_rate"):
        get_backend(SimulatedBackendConfig(style_rates={"cot": {"wrong_rate": 0.5}}))
