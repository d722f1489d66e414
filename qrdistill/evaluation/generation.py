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
# An answer sentence that is the very last thing the budget allowed ("... The answer is (A).").
_ANSWER_AT_END = re.compile(r"the answer is\b[^\n]*\.\s*$", re.IGNORECASE)


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


#: A batch stops early once this share of its rows or fewer are still writing; those rows carry on in a
#: later batch of their own (their tokens so far are the new prompt), so one long answer no longer keeps
#: a whole batch of finished rows decoding until the budget.
DEFER_SHARE = 0.25


@dataclass
class _Row:
    prompt_ids: list[int]
    gen: list[int]
    logprobs: list[float]
    budget: int


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

    Rows are batched longest first (similar lengths share a batch, and an out-of-memory shows
    at once). When at most `DEFER_SHARE` of a batch is still writing, the batch stops and
    those rows are deferred: they continue later from their prompt and generated token ids
    (the same ids, so greedy decoding continues the same text), batched together.
    `on_batch(indices, generations)` is called as rows finish, so callers can save
    predictions as they come (resume after a kill).
    """
    from tqdm.auto import tqdm

    if not prompts:
        return []
    rows = {i: _Row(list(tokenizer(p)["input_ids"]), [], [], max_new_tokens) for i, p in enumerate(prompts)}
    results: list[Generation | None] = [None] * len(prompts)
    queue = sorted(rows, key=lambda i: -len(rows[i].prompt_ids))
    with tqdm(total=len(prompts), desc=desc, unit="q", disable=not progress) as bar:
        while queue:
            deferred: list[int] = []
            for start in range(0, len(queue), batch_size):
                idx = queue[start : start + batch_size]
                done = _decode_round(model, tokenizer, [rows[i] for i in idx], stop_at_answer)
                finished = [(i, g) for i, g in zip(idx, done, strict=True) if g is not None]
                deferred += [i for i, g in zip(idx, done, strict=True) if g is None]
                for i, g in finished:
                    results[i] = g
                if finished and on_batch is not None:
                    on_batch([i for i, _ in finished], [g for _, g in finished])
                bar.update(len(finished))
                if finished:
                    bar.set_postfix(tokens=sum(g.n_tokens for _, g in finished))
            queue = sorted(deferred, key=lambda i: -(len(rows[i].prompt_ids) + len(rows[i].gen)))
    return [r for r in results if r is not None]


def _decode_round(model, tokenizer, rows: list[_Row], stop_at_answer: bool) -> list[Generation | None]:
    """Decode a batch until each row ends or the batch defers its tail -> a Generation per ended row, else None.

    Each row's input is its prompt ids followed by the ids it has generated so far (left-padded);
    its new tokens and their log-probabilities are appended to the row.
    """
    import torch
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    inputs = [r.prompt_ids + r.gen for r in rows]
    width = max(len(x) for x in inputs)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for b, x in enumerate(inputs):
        input_ids[b, width - len(x):] = torch.tensor(x, dtype=torch.long)
        attention[b, width - len(x):] = 1
    eos = tokenizer.eos_token_id
    budget = max(r.budget - len(r.gen) for r in rows)
    step_logprobs: list[torch.Tensor] = []
    stopped_at: list[int | None] = [None] * len(rows)
    why: list[str | None] = [None] * len(rows)
    deferred = [False] * len(rows)

    class RecordLogprob(LogitsProcessor):
        # The only processor in a plain greedy config, so `scores` are the raw logits.
        def __call__(self, input_ids, scores):
            step_logprobs.append(torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values.cpu())
            return scores

    class RowEnds(StoppingCriteria):
        """Per row: answer complete, EOS or its own budget; for the batch: defer a small tail."""

        def __call__(self, input_ids, scores, **kwargs):
            n_gen = input_ids.shape[1] - width
            active = []
            for b, row in enumerate(rows):
                if stopped_at[b] is not None:
                    continue
                new = input_ids[b, width:].tolist()
                if eos is not None and eos in new:
                    stopped_at[b], why[b] = new.index(eos), "eos"
                    continue
                if stop_at_answer:
                    found = stop_reason(tokenizer.decode(row.gen + new, skip_special_tokens=True))
                    if found is not None:
                        stopped_at[b], why[b] = n_gen, found[1]
                        continue
                if len(row.gen) + n_gen >= row.budget:
                    stopped_at[b], why[b] = n_gen, "budget"
                    continue
                active.append(b)
            if active and len(rows) > 1 and len(active) <= DEFER_SHARE * len(rows):
                for b in active:
                    deferred[b] = True
                    stopped_at[b] = n_gen
                active = []
            done = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for b in active:
                done[b] = False
            return done

    gen_cfg = GenerationConfig(
        do_sample=False,
        max_new_tokens=budget,
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=tokenizer.bos_token_id,
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=gen_cfg,
            logits_processor=LogitsProcessorList([RecordLogprob()]),
            stopping_criteria=[RowEnds()],
        )
    new_ids = out[:, width:].cpu()
    lp = torch.stack(step_logprobs, dim=1) if step_logprobs else torch.zeros(len(rows), 0)
    results: list[Generation | None] = []
    for b, row in enumerate(rows):
        ids = new_ids[b].tolist()
        n = len(ids) if stopped_at[b] is None else min(stopped_at[b], len(ids))
        stop = why[b] or "budget"
        if eos is not None and eos in ids[:n]:
            n, stop = ids.index(eos), "eos"
        row.gen += ids[:n]
        row.logprobs += lp[b, :n].tolist()
        if deferred[b] and stop != "eos":
            results.append(None)
            continue
        if stop == "budget" and stop_at_answer:
            # The criterion runs after each step; the last token may complete an answer too, and an
            # answer sentence that ends exactly at the budget has no whitespace after its period yet.
            text = tokenizer.decode(row.gen, skip_special_tokens=True)
            found = stop_reason(text)
            if found is not None:
                stop = found[1]
            elif _ANSWER_AT_END.search(text):
                stop = "answer_line"
        raw = tokenizer.decode(row.gen, skip_special_tokens=True)
        kept = cut_output(raw, stop_at_answer)
        n_kept = _tokens_covering(tokenizer, row.gen, raw, kept)
        total = float(sum(row.logprobs[:n_kept])) if n_kept else 0.0
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
