"""vLLM offline batch generation (optional extra ``qrdistill[vllm]``).

The engine is built on the first ``generate`` (``vllm.LLM``) and batches
internally; we hand it chunks of ``CHUNK`` requests so completions are stored
as each chunk finishes rather than only at the very end. Each request carries
its own ``SamplingParams`` with a seed from its request key, so sampled texts
are reproducible per request. With ``chat_template`` the messages go through
``LLM.chat`` (the model's template); otherwise they are rendered to plain text
as in the openai backend's completions mode and sent to ``LLM.generate``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from typing import Any

from qrdistill.backends.base import BACKENDS, Backend, Completion, Request
from qrdistill.backends.hf import seed_from_key
from qrdistill.backends.openai_backend import render_plain_prompt
from qrdistill.errors import ConfigError

#: Requests per `LLM.generate` call: large enough for vLLM's scheduler, small enough to store progress often.
CHUNK = 256
MISSING_MESSAGE = "backend vllm needs the optional extra: pip install 'qrdistill[vllm]'"


@BACKENDS.register("vllm")
class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        # Fail when the config is read, not after hours of earlier stages; find_spec does not import vllm.
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(MISSING_MESSAGE)
        if not config.model:
            raise ConfigError("config field model: the vllm backend needs a model name or path")
        self._llm: Any = None

    def _load(self) -> Any:
        if self._llm is None:
            try:
                import vllm
            except ImportError as e:
                raise ConfigError(f"{MISSING_MESSAGE} ({e})") from None
            from qrdistill.models import resolve_model

            c = self.config
            self._llm = vllm.LLM(
                model=resolve_model(c.model),
                tensor_parallel_size=c.tensor_parallel_size,
                gpu_memory_utilization=c.gpu_memory_utilization,
            )
        return self._llm

    def close(self) -> None:
        self._llm = None

    def _sampling(self, req: Request) -> Any:
        from vllm import SamplingParams

        p = {**self.sampling_params(), **req.params}
        return SamplingParams(
            n=1,
            temperature=float(p.get("temperature", 0.0)),
            top_p=float(p.get("top_p", 1.0)),
            max_tokens=int(p.get("max_tokens", 256)),
            stop=list(p.get("stop") or []) or None,
            seed=seed_from_key(self.key(req)) % (2**31),
        )

    def generate(
        self,
        requests: Sequence[Request],
        on_result: Callable[[Request, Completion], None],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        requests = list(requests)
        if not requests:
            return
        llm = self._load()
        for start in range(0, len(requests), CHUNK):
            chunk = requests[start : start + CHUNK]
            params = [self._sampling(r) for r in chunk]
            t0 = time.monotonic()
            if self.config.chat_template:
                outputs = llm.chat([r.messages for r in chunk], sampling_params=params, use_tqdm=False)
            else:
                prompts = [render_plain_prompt(r.messages) for r in chunk]
                outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
            latency = (time.monotonic() - t0) / max(1, len(chunk))
            for req, out in zip(chunk, outputs, strict=True):
                o = out.outputs[0]
                on_result(
                    req,
                    Completion(
                        text=o.text,
                        prompt_tokens=len(out.prompt_token_ids or []),
                        completion_tokens=len(o.token_ids or []),
                        latency=latency,
                        finish_reason=o.finish_reason,
                    ),
                )
            if progress is not None:
                progress(len(chunk))


__all__ = ["VLLMBackend"]
