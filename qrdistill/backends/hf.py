"""A local transformers causal LM as teacher or judge (batched generation).

Prompts are the request's messages through the tokenizer's chat template
(``chat_template: true``) or rendered to plain text exactly as the openai
backend's completions mode does (:func:`render_plain_prompt`), so a base model
sees the same prompt locally and behind a server.

Batches are padded on the left and formed from requests with equal sampling
parameters, sorted by prompt length to waste little compute on padding.
``temperature == 0`` is greedy. Otherwise each request samples from its own
``torch.Generator`` seeded from its request key (which holds the sample
index), inside a logits processor that draws one token per row and step; so a
request's text does not depend on which other requests share its batch or on
the batch size, and a re-run reproduces it.

The model loads on the first ``generate`` and ``close()`` frees it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

from qrdistill.backends.base import BACKENDS, Backend, Completion, Request
from qrdistill.backends.openai_backend import render_plain_prompt
from qrdistill.errors import ConfigError


def seed_from_key(key: str) -> int:
    """A 63-bit seed from a request key (hex sha256)."""
    return int(key[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string (OpenAI semantics: the stop string is not returned)."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # bf16 is 25-90 % slower than fp32 on the CPUs we measured; on GPUs it halves memory.
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


class _PerRowSampler:
    """Logits processor that samples each row with its own generator and leaves only that token.

    transformers then runs in greedy mode and picks exactly the sampled token,
    so per-row reproducibility does not depend on transformers' own RNG use.
    """

    def __init__(self, generators: list[Any], temperature: float, top_p: float) -> None:
        self.generators = generators
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logits = scores.float() / self.temperature
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            probs = probs.masked_fill(drop, 0.0)
            probs = probs / probs.sum(-1, keepdim=True)
        out = torch.full_like(scores, float("-inf"))
        for row, gen in enumerate(self.generators):
            tok = torch.multinomial(probs[row], 1, generator=gen)
            out[row, tok] = 0.0
        return out


@BACKENDS.register("hf")
class HFBackend(Backend):
    name = "hf"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._model: Any = None
        self._tok: Any = None
        self._device = "cpu"

    # -- loading -------------------------------------------------------------------------------

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from qrdistill.models import resolve_model

        c = self.config
        path = resolve_model(c.model)
        self._device = _resolve_device(c.device)
        try:
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=_resolve_dtype(c.dtype, self._device))
        except OSError as e:
            raise ConfigError(f"config field model: cannot load {c.model!r} ({e})") from None
        if c.chat_template and not getattr(tok, "chat_template", None):
            raise ConfigError(
                f"config field chat_template: the tokenizer of {c.model!r} has no chat template; "
                "set chat_template: false to send plain prompts"
            )
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model.to(self._device).eval()
        self._model, self._tok = model, tok

    def close(self) -> None:
        if self._model is None:
            return
        self._model = self._tok = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # -- prompts -------------------------------------------------------------------------------

    def render(self, req: Request) -> str:
        if self.config.chat_template:
            return self._tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        return render_plain_prompt(req.messages)

    def _eos_ids(self) -> set[int]:
        eos = self._model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tok.eos_token_id is not None:
            ids.add(self._tok.eos_token_id)
        return ids

    # -- generation ----------------------------------------------------------------------------

    def generate(
        self,
        requests: Sequence[Request],
        on_result: Callable[[Request, Completion], None],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        requests = list(requests)
        if not requests:
            return
        self._load()
        prompts = [self.render(r) for r in requests]
        # chat templates write their own BOS; plain prompts get the tokenizer's special tokens
        add_special = not self.config.chat_template
        lengths = [len(self._tok(p, add_special_tokens=add_special)["input_ids"]) for p in prompts]
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            params = {**self.sampling_params(), **r.params}
            groups.setdefault(repr(sorted(params.items())), []).append(i)
        bs = self.config.batch_size
        for idx in groups.values():
            idx.sort(key=lambda i: lengths[i])
            for start in range(0, len(idx), bs):
                chunk = idx[start : start + bs]
                comps = self._generate_batch([requests[i] for i in chunk], [prompts[i] for i in chunk], add_special)
                for i, comp in zip(chunk, comps, strict=True):
                    on_result(requests[i], comp)
                if progress is not None:
                    progress(len(chunk))

    def _generate_batch(self, reqs: list[Request], prompts: list[str], add_special: bool) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        params = {**self.sampling_params(), **reqs[0].params}
        temperature = float(params.get("temperature", 0.0))
        stop = [s for s in (params.get("stop") or []) if s]
        tok, model = self._tok, self._model
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(self._device)
        eos_ids = self._eos_ids()
        gen_cfg = GenerationConfig(
            max_new_tokens=int(params.get("max_tokens", 256)),
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(eos_ids) or None,
            stop_strings=stop or None,
        )
        processors = LogitsProcessorList()
        if temperature > 0:
            gens = []
            for r in reqs:
                g = torch.Generator(device=self._device)
                g.manual_seed(seed_from_key(self.key(r)))
                gens.append(g)
            processors.append(_PerRowSampler(gens, temperature, float(params.get("top_p", 1.0))))
        t0 = time.monotonic()
        with torch.inference_mode():
            out = model.generate(
                **enc,
                generation_config=gen_cfg,
                logits_processor=processors,
                tokenizer=tok if stop else None,
            )
        latency = time.monotonic() - t0
        prompt_len = enc["input_ids"].shape[1]
        comps = []
        for row in range(len(reqs)):
            gen = out[row, prompt_len:].tolist()
            n, hit_eos = len(gen), False
            for j, t in enumerate(gen):
                if t in eos_ids:
                    n, hit_eos = j + 1, True
                    break
                if t == tok.pad_token_id:
                    n = j
                    break
            text = tok.decode(gen[:n], skip_special_tokens=True)
            text, hit_stop = truncate_at_stop(text, stop)
            finish = "stop" if (hit_eos or hit_stop) else "length"
            comps.append(
                Completion(
                    text=text,
                    prompt_tokens=int(enc["attention_mask"][row].sum()),
                    completion_tokens=n,
                    latency=latency,
                    finish_reason=finish,
                    meta={"batch_size": len(reqs)},
                )
            )
        return comps


__all__ = ["HFBackend", "seed_from_key", "truncate_at_stop"]
