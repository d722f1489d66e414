"""The `llm` judge: reply parsing (only an explicit VALID keeps a path) and an end-to-end run
through the real `openai` backend and the run store against a local OpenAI-compatible stub."""

from __future__ import annotations

import pytest
from openai_stub import OpenAIStub

from qrdistill.config.filter import LLMJudgeConfig
from qrdistill.errors import ConfigError
from qrdistill.judges import get_judge
from qrdistill.judges.llm import JUDGE_PROMPT, build_judge_prompt, parse_verdict
from qrdistill.store import Store


@pytest.mark.parametrize(
    "reply, valid",
    [
        ("VERDICT: VALID\nREASON: every step holds.", True),
        ("verdict: valid", True),
        ("**VERDICT:** **VALID**\n**REASON:** fine", True),
        ("VERDICT: `VALID`", True),
        (" VALID\nREASON: each step follows.", True),  # a base model continuing the prompt's "VERDICT:"
        ("VALID", True),
        ("VERDICT: INVALID\nREASON: 7 * 8 is not 54.", False),
        ("**Verdict**: Invalid", False),
        (" INVALID\nREASON: the date is wrong", False),
        ("Let me restate: VERDICT: VALID means fine.\nAfter checking, VERDICT: INVALID\nREASON: x", False),
        ("First look: VERDICT: INVALID? no.\nVERDICT: VALID\nREASON: ok", True),
    ],
)
def test_parse_explicit_verdicts_last_one_wins(reply, valid):
    v = parse_verdict(reply)
    assert v.parsed and v.valid is valid


@pytest.mark.parametrize(
    "reply",
    [
        "",
        None,
        "The reasoning looks correct to me.",
        "VERDICT: probably fine",
        "VERDICT: VALIDATED",
        " <VALID or INVALID>\nREASON: <one sentence>",  # an echo of the format line
        " VALID or INVALID",
        "VERDICT: VALID or",  # echo cut off by the token limit
        "I would say the path is valid.",
    ],
)
def test_unparseable_replies_are_invalid_and_flagged(reply):
    v = parse_verdict(reply)
    assert v.valid is False and v.parsed is False
    assert v.reason.startswith("unparseable judge reply: ")


def test_unparseable_reason_quotes_the_first_200_chars():
    reply = "blah " * 100
    v = parse_verdict(reply)
    assert v.reason == "unparseable judge reply: " + " ".join(reply.split())[:200]


def test_base_model_babble_after_the_verdict_is_ignored():
    # a base model runs on into a new made-up example that carries its own verdict
    reply = " INVALID\nREASON: 3 + 4 is 7, not 8.\n\nQUESTION:\nWhat is 1 + 1?\n\nREASONING PATH:\n2\n\nVERDICT: VALID"
    v = parse_verdict(reply)
    assert v.parsed and not v.valid and v.reason == "3 + 4 is 7, not 8."


def test_prompt_shows_question_and_path_and_ends_with_verdict():
    p = build_judge_prompt("What is {x}?", "Step {1}: x = 2. The answer is 2.")
    assert "What is {x}?" in p and "Step {1}: x = 2." in p
    assert p.endswith("VERDICT:")
    assert "hallucinated or spurious" in JUDGE_PROMPT
    custom = build_judge_prompt("Q", "P", "Check {path} for {question}. Verdict VALID/INVALID:")
    assert custom == "Check P for Q. Verdict VALID/INVALID:"


def test_prompt_override_must_name_both_fields():
    cfg = LLMJudgeConfig.model_validate(
        {"backend": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}, "prompt": "Is {path} ok?"}
    )
    with pytest.raises(ConfigError, match=r"filter.judge.prompt.*\{question\}"):
        get_judge(cfg)


def _reply(prompt: str) -> str:
    if "2 + 2 = 5" in prompt:
        return "VERDICT: INVALID\nREASON: 2 + 2 is 4, not 5."
    if "garbled" in prompt:
        return "I cannot tell."
    if "base-model" in prompt:
        return " VALID\nREASON: each step holds.\n\nQUESTION:\nMore babble VERDICT: INVALID"
    return "**VERDICT:** VALID\nREASON: every step holds."


ROWS = [
    {"qid": "t/1", "task": "t", "style": "cot", "sample": 0, "question": "What is 2 + 2 + 1?",
     "prompt": "styled prompt 1", "response": "2 + 2 = 5. 5 + 1 = 6... The answer is 5."},
    {"qid": "t/2", "task": "t", "style": "cot", "sample": 0, "question": "What is 3 + 4?",
     "prompt": "styled prompt 2", "response": "3 + 4 = 7. The answer is 7."},
    {"qid": "t/3", "task": "t", "style": "fact", "sample": 0, "question": "What is 1 + 1?",
     "prompt": "styled prompt 3", "response": "garbled"},
    {"qid": "t/4", "task": "t", "style": "tot", "sample": 0, "question": "What is 5 - 2?",
     "prompt": "styled prompt 4", "response": "base-model path: 5 - 2 = 3. The answer is 3."},
]


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_judge_end_to_end_through_openai_backend_and_store(tmp_path, mode):
    with OpenAIStub(reply=_reply) as stub:
        cfg = LLMJudgeConfig.model_validate({"backend": {
            "kind": "openai", "base_url": stub.base_url, "model": "judge-model", "mode": mode,
            "temperature": 0.0, "max_tokens": 64, "max_retries": 0, "timeout": 20,
        }})
        with Store(tmp_path / "store.sqlite") as store:
            verdicts = get_judge(cfg, store).judge(ROWS)
            assert [(v.valid, v.parsed) for v in verdicts] == [(False, True), (True, True), (False, False), (True, True)]
            assert verdicts[0].reason == "2 + 2 is 4, not 5."
            assert verdicts[2].reason == "unparseable judge reply: I cannot tell."
            assert len(stub.requests) == 4
            usage = store.usage("judge")
            assert usage["calls"] == 4 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
            assert store.usage("teacher")["calls"] == 0

            # the judge saw the question (not the styled teacher prompt) and the path
            sent = [r["body"] for r in stub.requests]
            texts = [b["prompt"] if mode == "completions" else b["messages"][-1]["content"] for b in sent]
            assert all(t.endswith("VERDICT:") for t in texts)
            assert any("What is 3 + 4?" in t and "3 + 4 = 7." in t for t in texts)
            assert not any("styled prompt" in t for t in texts)
            assert all(b["temperature"] == 0.0 for b in sent)

            # resumable: a second judge over the same rows asks nothing and gives the same verdicts
            again = get_judge(cfg, store).judge(ROWS)
            assert len(stub.requests) == 4
            assert [v.to_dict() for v in again] == [v.to_dict() for v in verdicts]


def test_failed_judge_call_is_invalid_and_retried_next_time(tmp_path):
    broken = {"on": True}

    def status(prompt: str) -> int:
        return 503 if broken["on"] and "3 + 4" in prompt else 200

    with OpenAIStub(reply=_reply, status=status) as stub:
        cfg = LLMJudgeConfig.model_validate({"backend": {
            "kind": "openai", "base_url": stub.base_url, "model": "judge-model", "mode": "chat",
            "temperature": 0.0, "max_retries": 1, "backoff_base": 0.01, "timeout": 20,
        }})
        with Store(tmp_path / "store.sqlite") as store:
            v = get_judge(cfg, store).judge(ROWS[:2])
            assert not v[1].valid and not v[1].parsed and "HTTP 503" in v[1].reason
            assert len(stub.requests) == 1 + 2  # row 0 once, row 1 twice (max_retries 1)
            broken["on"] = False
            v2 = get_judge(cfg, store).judge(ROWS[:2])
            assert v2[1].valid and v2[1].parsed
            assert len(stub.requests) == 4  # only the failed one was asked again
