"""Batched greedy generation for evaluation, with per-sequence answer stops and log-probabilities.

Prompts are sorted by length and left-padded so a batch wastes little work;
each sequence stops on EOS, once its final-answer line is complete, or when
it starts a new "Question:" (base models keep writing exam papers), and
records which of these ended it (`Generation.stop`: eos, answer_line,
new_question, or budget when max_new_tokens ran out first). The
log-probability of the kept text under the same model is recorded for the
ensemble pick, at no extra forward pass: greedy decoding picks the argmax, so
its log-probability is the row maximum of the step's log-softmax.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_ANSWER_LINE = re.compile(r"the answer is\b[^\n]*?(?:\.(?=\s)|\n)", re.IGNORECASE)
_NEW_QUESTION = re.compile(r"\n\s*(?:Question|Q)\s*:")


STOP_REASONS = ("eos", "answer_line", "new_question", "budget")


def stop_reason(text: str) -> tuple[int, str] | None:
    """(character index, reason) where a generated answer is complete, or None if it is not yet.

    Complete = the first "The answer is ..." sentence has ended (a period
    followed by whitespace, or a newline): `answer_line`; or a new "Question:"
    begins (cut before it): `new_question`. "The answer is 2.5." at the very end
    is not complete yet: the next token may continue the number.
    """
    cuts = []
    m = _ANSWER_LINE.search(text)
    if m:
        cuts.append((m.end(), "answer_line"))
    q = _NEW_QUESTION.search(text)
    if q:
        cuts.append((q.start(), "new_question"))
    return min(cuts) if cuts else None


def stop_point(text: str) -> int | None:
    """Character index where a generated answer is complete, or None (see `stop_reason`)."""
    found = stop_reason(text)
    return found[0] if found else None


def cut_output(text: str, stop_at_answer: bool = True) -> str:
    """The part of a generation that counts as the answer."""
    if stop_at_answer:
        cut = stop_point(text)
        if cut is not None:
            text = text[:cut]
    return text.strip()


@dataclass
class Generation:
    output: str
    n_tokens: int
    logprob_sum: float
    logprob_mean: float | None
    stop: str = "budget"  # one of STOP_REASONS


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, device: str = "cpu", dtype: Any = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(device)
    model.eval()
    return model


def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    batch_size: int = 8,
    max_new_tokens: int = 256,
    stop_at_answer: bool = True,
    on_batch: Callable[[list[int], list[Generation]], None] | None = None,
    progress: bool = True,
    desc: str = "evaluate",
) -> list[Generation]:
    """Greedy continuations of `prompts`, in their order.

    `on_batch(indices, generations)` is called after each batch so callers
    can save predictions as they come (resume after a kill).
    """
    from tqdm.auto import tqdm

    if not prompts:
        return []
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    # Longest first: similar lengths share a batch, and an out-of-memory shows at once.
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    results: list[Generation | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="q", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            gens = _generate_batch(model, tokenizer, [prompts[i] for i in idx], max_new_tokens, stop_at_answer)
            for i, g in zip(idx, gens, strict=True):
                results[i] = g
            if on_batch is not None:
                on_batch(idx, gens)
            bar.update(len(idx))
            bar.set_postfix(tokens=sum(g.n_tokens for g in gens))
    return [r for r in results if r is not None]


def _generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, stop_at_answer: bool):
    import torch
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    prompt_len = enc["input_ids"].shape[1]
    eos = tokenizer.eos_token_id
    step_logprobs: list[torch.Tensor] = []
    stopped_at = [None] * len(prompts)
    why: list[str | None] = [None] * len(prompts)

    class RecordLogprob(LogitsProcessor):
        # The only processor in a plain greedy config, so `scores` are the raw logits.
        def __call__(self, input_ids, scores):
            step_logprobs.append(torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values.cpu())
            return scores

    class AnswerComplete(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if not stop_at_answer:
                return done
            n_gen = input_ids.shape[1] - prompt_len
            for b in range(input_ids.shape[0]):
                if stopped_at[b] is not None:
                    done[b] = True
                    continue
                text = tokenizer.decode(input_ids[b, prompt_len:], skip_special_tokens=True)
                found = stop_reason(text)
                if found is not None:
                    stopped_at[b] = n_gen
                    why[b] = found[1]
                    done[b] = True
            return done

    gen_cfg = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        bos_token_id=tokenizer.bos_token_id,
    )
    with torch.no_grad():
        out = model.generate(
            **enc,
            generation_config=gen_cfg,
            logits_processor=LogitsProcessorList([RecordLogprob()]),
            stopping_criteria=[AnswerComplete()],
        )
    gen = out[:, prompt_len:].cpu()
    lp = torch.stack(step_logprobs, dim=1) if step_logprobs else torch.zeros(len(prompts), 0)
    results = []
    for b in range(len(prompts)):
        ids = gen[b].tolist()
        n = len(ids)
        stop = "budget"
        if eos is not None and eos in ids:
            n, stop = ids.index(eos), "eos"
        if stopped_at[b] is not None and stopped_at[b] <= n:
            n, stop = stopped_at[b], why[b]
        elif stop == "budget" and stop_at_answer:
            # The criterion is checked after each step; the last token may complete an answer too.
            found = stop_reason(tokenizer.decode(ids[:n], skip_special_tokens=True))
            if found is not None:
                stop = found[1]
        raw = tokenizer.decode(ids[:n], skip_special_tokens=True)
        kept = cut_output(raw, stop_at_answer)
        n_kept = _tokens_covering(tokenizer, ids[:n], raw, kept)
        total = float(lp[b, :n_kept].sum()) if n_kept else 0.0
        results.append(Generation(kept, n_kept, total, total / n_kept if n_kept else None, stop))
    return results


def _tokens_covering(tokenizer, ids: list[int], raw: str, kept: str) -> int:
    """Fewest leading tokens whose text contains `kept` (a prefix of `raw` up to whitespace)."""
    if len(kept) >= len(raw.rstrip()):
        return len(ids)
    target = raw.find(kept) + len(kept) if kept else 0
    for k in range(len(ids) + 1):
        if len(tokenizer.decode(ids[:k], skip_special_tokens=True)) >= target:
            return k
    return len(ids)
