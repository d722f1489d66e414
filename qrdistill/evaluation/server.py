"""Greedy generation through an OpenAI-compatible server (evaluate.backend: openai).

It gives the same `Generation`s as `generation.generate_greedy`, from a
server instead of an in-process model: vLLM serving the trained adapters
(`--enable-lora --lora-modules name=D/train/adapters/name`), or llama.cpp
serving a GGUF from `qrdistill export --what gguf`.

- The prompt is the exact text the hf path tokenizes, sent to the raw
  completion endpoint (`/v1/completions`): no chat template, no role labels.
  BOS is not written into the text: the hf path's tokenizer adds it
  (Gemma's does, SmolLM2's does not) and so does the server's tokenizer
  (llama.cpp follows the GGUF's `tokenizer.ggml.add_bos_token`, which the
  converter copies from the HF tokenizer; vLLM uses the HF tokenizer itself).
  Before the first question of each model, one 1-token request compares the
  server's prompt token count with the local tokenizer's, so a server that
  adds a second BOS, or none, is reported (a warning with both counts)
  instead of silently scoring a different input.
- Decoding is greedy (temperature 0, top_p 1) with the evaluation's budget as
  `max_tokens`. The answer stops of the hf path are regular expressions (an
  answer line is complete once its sentence ends; a new "Question:" begins),
  which no server stop string can express, so the completion is streamed
  and the client closes the stream at the same point the hf path stops
  (vLLM and llama.cpp abort a request whose client went away). How each
  answer ended: the client's cut -> `answer_line` / `new_question`; the
  server's finish_reason `stop` (an end-of-generation token) -> `eos`;
  `length` -> `budget`, unless the text already holds a complete answer.
  No stop strings are sent: a server's stop string hit would also report
  `stop` and be indistinguishable from EOS.
- With `logprobs`, each token's log-probability (of the raw logits, as the
  hf path records) gives the ensemble pick its confidence and `n_tokens`
  counts the tokens covering the kept answer exactly as the hf path does.
  Without it, `n_tokens` counts streamed chunks (one token each on llama.cpp)
  and the log-probabilities are None.

Retries, timeouts, the response size cap and the API key come from the
teacher's `OpenAIBackend` (a request is sent at most `max_retries + 1`
times); a stream that ends without a finish_reason (llama-cpp-python's server
cuts a streaming request when another one arrives, unless started with
`--interrupt_requests False`) is retried like a bad body. The first request
that still fails stops the rest at once: what was answered is kept by the
caller, and the error says how to continue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qrdistill.backends.base import Completion, Request
from qrdistill.backends.openai_backend import OpenAIBackend, ResponseTooLarge
from qrdistill.errors import ConfigError, QRDistillError
from qrdistill.evaluation.generation import _ANSWER_AT_END, Generation, cut_output, stop_reason

log = logging.getLogger(__name__)

CUT_STREAM_HINT = (
    "the server ended the stream before the completion finished (llama-cpp-python's server does this to a "
    "streaming request when another one arrives: start it with --interrupt_requests False, or set "
    "evaluate.server.max_concurrency: 1)"
)


class ServerError(QRDistillError):
    """The evaluation server failed a request even after retries."""


class StreamCut(ValueError):
    """A stream that ended, or reported an error, before its completion finished (retried)."""


@dataclass
class Streamed:
    """What one streamed completion sent, up to where it ended or the client closed it."""

    text: str
    #: the generated tokens' texts (with logprobs), else the streamed chunks' texts
    pieces: list[str]
    logprobs: list[float] | None
    #: the server's finish_reason; None when the client closed the stream at an answer stop
    finish: str | None
    #: the answer stop the client closed the stream at (answer_line, new_question)
    cut: str | None = None


class EvalServerBackend(OpenAIBackend):
    """The teacher's OpenAI backend, streaming raw completions with the evaluation's answer stops."""

    name = "openai-eval"

    def __init__(self, config: Any, stop_at_answer: bool = True, logprobs: bool = True,
                 extra_params: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.stop_at_answer = stop_at_answer
        self.logprobs = logprobs
        self.extra_params = dict(extra_params or {})

    def _resolve_api_key(self) -> str:
        try:
            return super()._resolve_api_key()
        except ConfigError as e:
            raise ConfigError(str(e).replace("config field api_key_env", "evaluate.server.api_key_env")) from None

    @property
    def label(self) -> str:
        return f"openai:{self.model}"

    def _params(self, req: Request) -> tuple[dict[str, Any], dict[str, Any]]:
        # extra_params may name standard fields (seed, presence_penalty): the base class sorts them out.
        return super()._params(Request(req.messages, req.sample, {**self.extra_params, **req.params}))

    async def _send(self, client: Any, req: Request) -> Any:
        std, extra = self._params(req)
        kwargs: dict[str, Any] = {"model": self.model, "prompt": req.context["prompt"], **std}
        if extra:
            kwargs["extra_body"] = extra
        if req.context.get("probe"):
            kwargs["max_tokens"] = 1
            return await client.completions.create(**kwargs)
        if self.logprobs:
            kwargs["logprobs"] = 1
        stream = await client.completions.create(stream=True, **kwargs)
        try:
            return await self._read(stream)
        finally:
            # Closing mid-answer is how the answer stop reaches the server: it aborts the request.
            await stream.close()

    async def _read(self, stream: Any) -> Streamed:
        import httpx
        import openai

        text, pieces, logprobs = "", [], []
        have_logprobs = self.logprobs
        try:
            async for chunk in stream:
                for choice in chunk.choices or []:
                    piece = choice.text or ""
                    text += piece
                    lp = getattr(choice, "logprobs", None)
                    values = getattr(lp, "token_logprobs", None) or []
                    if have_logprobs and lp is not None and lp.tokens is not None and None not in values:
                        pieces += list(lp.tokens)
                        logprobs += [float(x) for x in values]
                    elif piece:
                        have_logprobs = False
                        pieces.append(piece)
                    # The answer stop first: a server may send the last token and the finish_reason in one
                    # chunk, and the hf path checks the text after every token, before an EOS can follow.
                    if piece and self.stop_at_answer:
                        found = stop_reason(text)
                        if found is not None:
                            return Streamed(text, pieces, logprobs if have_logprobs else None, None, found[1])
                    if choice.finish_reason is not None:
                        return self._ended(text, pieces, logprobs if have_logprobs else None,
                                           choice.finish_reason)
        except ResponseTooLarge as e:
            raise openai.APIConnectionError(message=str(e), request=stream.response.request) from e
        except httpx.TimeoutException:
            raise openai.APITimeoutError(request=stream.response.request) from None
        except httpx.HTTPError as e:
            raise openai.APIConnectionError(message=str(e), request=stream.response.request) from e
        except openai.APIStatusError:
            raise
        except openai.APIError as e:
            # An error event inside the stream (the HTTP status was 200).
            raise StreamCut(f"the server reported an error mid-stream: {e.message}") from None
        raise StreamCut(CUT_STREAM_HINT)

    @staticmethod
    def _ended(text: str, pieces: list[str], logprobs: list[float] | None, finish: str) -> Streamed:
        if finish not in ("stop", "length"):
            # vLLM reports `abort` for a request it dropped: an answer that did not finish.
            raise StreamCut(f"finish_reason {finish!r}")
        if logprobs is not None and len(logprobs) != len(pieces):
            logprobs = None
        return Streamed(text, pieces, logprobs, finish)

    def _to_completion(self, resp: Any) -> Completion:
        if isinstance(resp, Streamed):
            return Completion(text=resp.text, finish_reason=resp.finish or resp.cut,
                              completion_tokens=len(resp.pieces), meta={"streamed": resp})
        usage = getattr(resp, "usage", None)
        return Completion(text="", prompt_tokens=getattr(usage, "prompt_tokens", None))


def make_backend(server: Any, served_model: str, stop_at_answer: bool = True) -> EvalServerBackend:
    """The client of evaluate.server for one served model (ConfigError for a missing key variable).
    Each request carries its own budget as max_tokens."""
    from qrdistill.config.generate import OpenAIBackendConfig

    cfg = OpenAIBackendConfig(
        model=served_model, base_url=server.base_url, api_key_env=server.api_key_env, mode="completions",
        temperature=0.0, top_p=1.0, max_concurrency=server.max_concurrency,
        timeout=server.timeout, max_retries=server.max_retries, backoff_base=server.backoff_base,
        backoff_max=server.backoff_max,
    )
    return EvalServerBackend(cfg, stop_at_answer=stop_at_answer, logprobs=server.logprobs,
                             extra_params=server.extra_params)


def to_generation(s: Streamed, stop_at_answer: bool = True) -> Generation:
    """A streamed completion as the hf path would have recorded it (see `generation._decode_round`)."""
    if s.cut is not None:
        stop = s.cut
    else:
        stop = "eos" if s.finish == "stop" else "budget"
    if stop == "budget" and stop_at_answer:
        found = stop_reason(s.text)
        if found is not None:
            stop = found[1]
        elif _ANSWER_AT_END.search(s.text):
            stop = "answer_line"
    kept = cut_output(s.text, stop_at_answer)
    n = _pieces_covering(s.pieces, s.text, kept)
    if s.logprobs is None:
        return Generation(kept, n, None, None, stop)  # type: ignore[arg-type]
    total = float(sum(s.logprobs[:n])) if n else 0.0
    return Generation(kept, n, total, total / n if n else None, stop)


def _pieces_covering(pieces: list[str], text: str, kept: str) -> int:
    """Fewest leading tokens whose text contains `kept` (as `generation._tokens_covering` counts them)."""
    if len(kept) >= len(text.rstrip()):
        return len(pieces)
    target = text.find(kept) + len(kept) if kept else 0
    seen = 0
    for k, piece in enumerate(pieces, start=1):
        if seen >= target:
            return k - 1
        seen += len(piece)
    return len(pieces)


def check_prompt_tokens(backend: EvalServerBackend, prompt: str, local: int | None) -> dict[str, Any] | None:
    """Compare the server's prompt token count for `prompt` with the local tokenizer's (`local`).

    Returns {"server": n, "local": m} (None when the server reports no usage); a mismatch is
    logged as a warning: most often a BOS the server adds and the hf path does not (or the reverse).
    """
    got: list[Completion] = []
    backend.generate([Request(messages=[], context={"prompt": prompt, "probe": True})],
                     lambda _r, c: got.append(c))
    comp = got[0]
    if not comp.ok:
        raise ServerError(f"evaluate.server: {backend.model} at {_where(backend)}: {comp.error}")
    if comp.prompt_tokens is None:
        return None
    out = {"server": int(comp.prompt_tokens), "local": local}
    if local is not None and comp.prompt_tokens != local:
        diff = comp.prompt_tokens - local
        why = (" (one more: the server adds a BOS the student's tokenizer does not, or a second one)" if diff == 1
               else " (one fewer: the server adds no BOS where the student's tokenizer does)" if diff == -1 else "")
        log.warning("%s at %s: the server counts %d prompt tokens, the student's tokenizer %d%s; its predictions "
                    "may differ from backend hf", backend.model, _where(backend), comp.prompt_tokens, local, why)
    return out


class _Abort(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def generate_remote(
    backend: EvalServerBackend,
    prompts: list[str],
    max_new_tokens: int,
    on_batch: Callable[[list[int], list[Generation]], None] | None = None,
    progress: bool = True,
    desc: str = "evaluate",
) -> list[Generation]:
    """Greedy continuations of `prompts` from the server, in their order (see `generate_greedy`).

    `on_batch([i], [generation])` is called as each answer arrives, so the caller saves it at once.
    The first request that fails after its retries stops the others and raises ServerError.
    """
    from tqdm.auto import tqdm

    if not prompts:
        return []
    results: list[Generation | None] = [None] * len(prompts)
    requests = [Request(messages=[], params={"max_tokens": max_new_tokens}, context={"prompt": p, "index": i})
                for i, p in enumerate(prompts)]

    with tqdm(total=len(prompts), desc=desc, unit="q", disable=not progress) as bar:
        def on_result(req: Request, comp: Completion) -> None:
            if not comp.ok:
                raise _Abort(comp.error or "no text")
            i = req.context["index"]
            results[i] = to_generation(comp.meta["streamed"], backend.stop_at_answer)
            if on_batch is not None:
                on_batch([i], [results[i]])
            bar.update(1)

        try:
            backend.generate(requests, on_result)
        except _Abort as e:
            done = sum(r is not None for r in results)
            raise ServerError(
                f"evaluate.server: {backend.model} at {_where(backend)}: {e.error}; {done} of {len(prompts)} "
                f"answers of this batch came back and are saved: run `qrdistill evaluate` again to continue"
            ) from None
    return [r for r in results if r is not None]


def _where(backend: EvalServerBackend) -> str:
    from qrdistill.io import redact_credentials

    return redact_credentials(backend.config.base_url or "")
