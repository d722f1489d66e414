"""The `hf` backend on the real Gemma-3-270M: batching, greedy determinism, sampling seeds, stop strings, usage."""

from __future__ import annotations

import pytest

from qrdistill.backends import Request, get_backend
from qrdistill.backends.hf import truncate_at_stop
from qrdistill.config.generate import HFBackendConfig

PROMPTS = [
    "Question: What is 12 + 7?\nAnswer:",
    "The capital of France is",
    "Question: If today is 03/15/2021, what is the date tomorrow in MM/DD/YYYY?\nAnswer: Let's think step by step.",
    "1, 2, 3, 4,",
]


def _requests(prompts: list[str], sample: int = 0) -> list[Request]:
    return [Request(messages=[{"role": "user", "content": p}], sample=sample) for p in prompts]


def _run(backend, reqs: list[Request]) -> dict[int, object]:
    out: dict[int, object] = {}
    ticks: list[int] = []
    backend.generate(reqs, lambda r, c: out.__setitem__(id(r), c), ticks.append)
    assert sum(ticks) == len(reqs)
    return {i: out[id(r)] for i, r in enumerate(reqs)}


def test_truncate_at_stop_cuts_before_earliest_stop():
    assert truncate_at_stop("a. The answer is 4.\n\nQuestion: b", ["\n\nQuestion:", "\n\n"]) == ("a. The answer is 4.", True)
    assert truncate_at_stop("no stop here", ["###"]) == ("no stop here", False)
    assert truncate_at_stop("x", []) == ("x", False)


@pytest.mark.slow
def test_hf_backend_gemma_batched_equals_single_and_sampling_is_seeded(gemma_path):
    cfg = HFBackendConfig(model="gemma3-270m", temperature=0.0, max_tokens=16, batch_size=4)
    batched = get_backend(cfg)
    try:
        reqs = _requests(PROMPTS)
        got = _run(batched, reqs)
        for c in got.values():
            assert c.ok and c.text, c
            assert c.prompt_tokens > 0 and 0 < c.completion_tokens <= 16
            assert c.finish_reason in ("stop", "length")
        # prompt_tokens is the unpadded length: it differs between prompts of different length
        assert len({c.prompt_tokens for c in got.values()}) > 1
        assert got[1].prompt_tokens < got[2].prompt_tokens

        # the same requests one at a time: greedy output must not depend on batching or left padding
        batched.config = cfg.model_copy(update={"batch_size": 1})
        single = _run(batched, reqs)
        assert [single[i].text for i in range(len(reqs))] == [got[i].text for i in range(len(reqs))]
        assert [single[i].completion_tokens for i in range(len(reqs))] == [
            got[i].completion_tokens for i in range(len(reqs))
        ]

        # sampling: seeded per request key, so the same request gives the same text in any batch,
        # and different sample indices give (generally) different texts
        batched.config = cfg.model_copy(update={"temperature": 1.0, "batch_size": 4, "max_tokens": 12})
        s_batch = _run(batched, _requests(PROMPTS, sample=0))
        batched.config = cfg.model_copy(update={"temperature": 1.0, "batch_size": 1, "max_tokens": 12})
        s_single = _run(batched, _requests(PROMPTS[:2], sample=0))
        assert s_single[0].text == s_batch[0].text and s_single[1].text == s_batch[1].text
        s_other = _run(batched, _requests(PROMPTS[:2], sample=1))
        assert (s_other[0].text, s_other[1].text) != (s_single[0].text, s_single[1].text)

        # stop strings are honoured and not returned
        batched.config = cfg.model_copy(update={"stop": [","], "max_tokens": 12, "batch_size": 4})
        stopped = _run(batched, _requests(["1, 2, 3, 4,"]))[0]
        assert "," not in stopped.text and stopped.finish_reason == "stop", stopped
    finally:
        batched.close()
    assert batched._model is None


def test_vllm_backend_without_vllm_names_the_extra():
    import importlib.util

    from qrdistill.config.generate import VLLMBackendConfig
    from qrdistill.errors import ConfigError

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here; this checks the message users without it see")
    with pytest.raises(ConfigError) as e:
        get_backend(VLLMBackendConfig(model="gemma3-270m"))
    assert str(e.value) == "backend vllm needs the optional extra: pip install 'qrdistill[vllm]'"
