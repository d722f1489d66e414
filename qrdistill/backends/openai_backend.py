"""Any OpenAI-compatible HTTP endpoint (OpenAI, Gemini's compatible endpoint,
vLLM serve, llama.cpp server, Ollama) through the maintained `openai` client.

Two modes:

- ``chat``: ``/v1/chat/completions`` with the request's messages as they are.
- ``completions``: ``/v1/completions`` with the messages rendered to one plain
  prompt by :func:`render_plain_prompt`. Base (non-instruction) models are
  served this way: under a chat template they often stop at once (llama.cpp
  serving Gemma-3-270M base returns empty chat content).

Retries are our own loop, not the client's (the client is built with
``max_retries=0``): the client does not retry a 200 response whose body is not
valid JSON, and one loop makes the count exact: a request is sent at most
``max_retries + 1`` times, whatever went wrong. Retried: HTTP 408/409/429/5xx,
timeouts (``timeout`` seconds for the whole attempt), connection errors and
unparseable bodies. The timeout is a deadline on the whole attempt, from
sending the request to the parsed body, so a server that drips a byte now
and then cannot hold a call open (httpx's own timeouts bound each wait for
bytes, not their sum); the client's lazy imports happen before the first
attempt starts, so under CPU load they do not time out requests that never
left. A response body over ``max_response_bytes`` fails at once, without
retry: it is never read past the limit (bodies are asked uncompressed; a
compressed one is decompressed as it arrives and its decoded bytes count too).
Every other status (400, 401, 403, 404, 422, ...) fails at
once. The wait before retry *n* (1-based) is the server's ``Retry-After`` (or
``retry-after-ms``; seconds or an HTTP date) when given, else an
exponential backoff ``backoff_base * 2**(n-1)`` with equal jitter (between half
and all of it); both are capped at ``backoff_max``.

At most ``max_concurrency`` requests are in flight, spread over HTTP clients of
``REQUESTS_PER_CLIENT`` each (a client's connection pool costs CPU per request
that grows with the square of its size; see ``REQUESTS_PER_CLIENT``). Each
completion is handed to ``on_result`` in the caller's thread as it arrives,
one at a time, so the store commits it before the next is looked at.

The API key is read from the environment variable named by ``api_key_env`` and
kept only in the client; it is scrubbed from every error message this module
produces and is never part of a request key or a stored request.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import queue
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from qrdistill.backends.base import BACKENDS, Backend, Completion, Request, request_key
from qrdistill.errors import ConfigError

#: Key sent to a local server when no key variable is set (llama.cpp, vLLM and Ollama ignore it).
LOCAL_PLACEHOLDER_KEY = "no-key-local-server"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "host.docker.internal"}
_RETRY_STATUS = {408, 409, 429}
#: Sampling parameters the OpenAI API names itself; any other request param goes in `extra_body`.
_STANDARD_PARAMS = ("temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty")

OnResult = Callable[[Request, Completion], None]

#: Requests in flight per HTTP client; `max_concurrency` is spread over as many clients as that takes.
#: httpcore's connection pool rescans all its connections for every request it adds or releases (and,
#: for each idle one, all of them again), so the cost per request grows with the square of the pool:
#: with one client at 64 in flight that scan took most of the client's CPU against a fast server,
#: and 8 pools of 8 cut generate's client CPU per request by a third (benchmarks/bench_generate_scale.py).
REQUESTS_PER_CLIENT = 8


def render_plain_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """Render chat messages to one plain-text prompt for a base model.

    The contents are joined in order by a blank line, without role labels or
    markup: a base model was trained on none, and the style templates and the
    judge prompt are written as plain text that reads on its own. A final
    ``assistant`` message is a prefix the model continues (nothing is appended
    after it); otherwise the prompt ends where the last message ends, so a
    prompt ending in ``"VERDICT:"`` is continued with the verdict.
    """
    return "\n\n".join(str(m.get("content") or "").strip("\n") for m in messages)


def is_local_url(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = (urlparse(base_url).hostname or "").lower()
    return host in _LOCAL_HOSTS or host.startswith("127.")


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date); None if absent/bad."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class TokenBucket:
    """Async client-side rate limit: `rate` acquisitions per `period` seconds, in bursts of at most one
    second's worth (providers often enforce a per-minute limit over shorter windows)."""

    def __init__(self, rate: float, period: float = 60.0) -> None:
        self.fill_per_s = rate / period
        self.capacity = max(1.0, self.fill_per_s)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.fill_per_s)
                self.updated = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.fill_per_s)


class _Unparseable(Exception):
    """A 2xx response whose body is not the JSON completion object we asked for."""


class ResponseTooLarge(Exception):
    """A response body over `max_response_bytes` (as sent, or once decompressed)."""


def capped_http_client(limit: int, verify: Any = True) -> Any:
    """openai's default async httpx client, reading at most `limit` bytes of any response body.

    `verify` is httpx's: True builds the default TLS context, an `ssl.SSLContext` is used as given
    (the clients of one `generate` call share one: each build reads the CA bundle, ~10 ms).

    A response hook runs after the headers and before the body is read (for a direct connection
    and a proxy alike): it refuses a declared length over the limit and wraps the body in a
    counter that raises as soon as the limit is passed, so an oversized body is never held.
    Bodies are asked uncompressed; a compressed one (a gateway may compress regardless) is
    decompressed here and its *decoded* bytes count against the limit too, so a few kB of gzip
    that would inflate to gigabytes stops at the limit. gzip is inflated at most up to the limit
    at a time; other encodings go through httpx's decoder, one network chunk at a time.
    """
    import zlib

    import httpx
    from openai import DefaultAsyncHttpxClient

    def too_large() -> ResponseTooLarge:
        return ResponseTooLarge(f"response larger than max_response_bytes ({limit} bytes)")

    class CappedStream(httpx.AsyncByteStream):
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        async def __aiter__(self) -> Any:
            seen = 0
            async for chunk in self._inner:
                seen += len(chunk)
                if seen > limit:
                    raise too_large()
                yield chunk

        async def aclose(self) -> None:
            await self._inner.aclose()

    class GunzipStream(CappedStream):
        # zlib's max_length: never more than one byte past the limit is inflated, however small the input.
        async def __aiter__(self) -> Any:
            d = zlib.decompressobj(zlib.MAX_WBITS | 16)
            seen = 0
            async for raw in self._inner:
                data = raw
                while data and not d.eof:
                    try:
                        out = d.decompress(data, limit - seen + 1)
                    except zlib.error as e:
                        raise httpx.DecodingError(f"invalid gzip response body ({e})") from None
                    seen += len(out)
                    if seen > limit:
                        raise too_large()
                    if out:
                        yield out
                    data = d.unconsumed_tail

    class DecodedStream(CappedStream):
        # httpx's own decoded iterator (deflate, br, zstd), through a bare response on the same body.
        def __init__(self, inner: Any, headers: Any) -> None:
            super().__init__(httpx.Response(200, headers=headers, stream=inner))

        async def __aiter__(self) -> Any:
            seen = 0
            async for chunk in self._inner.aiter_bytes():
                seen += len(chunk)
                if seen > limit:
                    raise too_large()
                yield chunk

    async def cap(response: Any) -> None:
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge(
                f"response of {declared} bytes is larger than max_response_bytes ({limit} bytes)"
            )
        raw = CappedStream(response.stream)
        encodings = [
            e.strip().lower()
            for e in response.headers.get_list("content-encoding", split_commas=True)
            if e.strip().lower() not in ("", "identity")
        ]
        if not encodings:
            response.stream = raw
            return
        encoding_headers = {"content-encoding": response.headers["content-encoding"]}
        gzipped = encodings in (["gzip"], ["x-gzip"])
        response.stream = GunzipStream(raw) if gzipped else DecodedStream(raw, encoding_headers)
        # Decoded here: httpx must not decode it again, and the length sent is not the length read.
        del response.headers["content-encoding"]
        if "content-length" in response.headers:
            del response.headers["content-length"]

    return DefaultAsyncHttpxClient(event_hooks={"response": [cap]}, headers={"Accept-Encoding": "identity"},
                                   verify=verify)


def shared_tls_context() -> Any:
    """httpx's default TLS context, built once for several clients (True, i.e. one each, before httpx 0.28)."""
    import httpx

    make = getattr(httpx, "create_ssl_context", None)  # public API from httpx 0.28
    return make() if make is not None else True


def drive_async(
    run: Callable[[OnResult], Awaitable[None]],
    on_result: OnResult,
) -> None:
    """Run `run(emit)` to completion from sync code, calling `on_result` in the caller's thread.

    Without a running event loop in this thread (scripts, the CLI, pytest) the
    loop runs right here and `emit` is `on_result` itself. Inside a running
    loop (Jupyter) a nested `asyncio.run` is impossible, so the loop runs in a
    worker thread and results come back through a queue to this thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(run(on_result))
        return
    results: queue.Queue[Any] = queue.Queue()
    done = object()
    stop = threading.Event()
    failure: list[BaseException] = []

    def emit(req: Request, comp: Completion) -> None:
        if stop.is_set():
            raise asyncio.CancelledError
        results.put((req, comp))

    def worker() -> None:
        try:
            asyncio.run(run(emit))
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            failure.append(e)
        finally:
            results.put(done)

    t = threading.Thread(target=worker, name="qrdistill-openai", daemon=True)
    t.start()
    try:
        while (item := results.get()) is not done:
            on_result(*item)
    finally:
        stop.set()
        t.join()
    if failure and not isinstance(failure[0], asyncio.CancelledError):
        raise failure[0]


@BACKENDS.register("openai")
class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if not config.model:
            raise ConfigError(
                "config field model (generate.teacher.model / filter.judge.backend.model): the openai backend "
                "needs the served model's name"
            )
        self._api_key = self._resolve_api_key()
        self._rng = random.Random()

    # -- configuration -------------------------------------------------------------------------

    def _resolve_api_key(self) -> str:
        c = self.config
        var = c.api_key_env
        key = os.environ.get(var) if var else None
        if key:
            return key
        if is_local_url(c.base_url):
            return LOCAL_PLACEHOLDER_KEY
        from qrdistill.config.generate import looks_like_key
        from qrdistill.io import redact_credentials

        where = redact_credentials(c.base_url) if c.base_url else "the OpenAI API"
        if var and looks_like_key(var):
            # Config validation refuses this; a config built in code skips it, and the value may be the key.
            raise ConfigError("config field api_key_env: expects the name of an environment variable, and the "
                              "value given looks like a key (not repeated here)")
        if not var:
            raise ConfigError(
                f"config field api_key_env is empty but {where} needs an API key: "
                "name the environment variable that holds it"
            )
        raise ConfigError(
            f"config field api_key_env: environment variable {var} is not set (the key for {where}); "
            f"export {var}=... (keys are read from the environment only)"
        )

    def scrub(self, text: str) -> str:
        """Remove the API key from text that may be logged, stored or shown."""
        key = self._api_key
        if key and key != LOCAL_PLACEHOLDER_KEY and key in text:
            text = text.replace(key, "***")
        return text

    @property
    def label(self) -> str:
        return f"openai[{self.config.mode}]:{self.model}"

    def key(self, req: Request) -> str:
        # The mode is part of what determines the text (chat template vs plain prompt); the
        # base_url is not, so a local server restarted on another port keeps its cache.
        params = {**self.sampling_params(), **req.params, "mode": self.config.mode}
        return request_key(self.name, self.model, req.messages, params, req.sample)

    def backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        """Wait before retry `attempt` (1-based): the server's Retry-After if any, else jittered backoff."""
        c = self.config
        if retry_after is not None:
            return min(retry_after, c.backoff_max)
        nominal = min(c.backoff_max, c.backoff_base * 2 ** (attempt - 1))
        return nominal / 2 + self._rng.uniform(0, nominal / 2)

    # -- generation ----------------------------------------------------------------------------

    def generate(
        self,
        requests: Sequence[Request],
        on_result: OnResult,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        requests = list(requests)
        if not requests:
            return

        async def run(emit: OnResult) -> None:
            await self._generate_async(requests, emit, progress)

        drive_async(run, on_result)

    async def _generate_async(
        self, requests: list[Request], emit: OnResult, progress: Callable[[int], None] | None
    ) -> None:
        from openai import AsyncOpenAI

        c = self.config
        # The clients live inside this loop (their connection pools are bound to it); retries are ours.
        # Several clients, not one: see REQUESTS_PER_CLIENT.
        n_clients = -(-c.max_concurrency // REQUESTS_PER_CLIENT)
        verify = shared_tls_context() if n_clients > 1 else True
        clients = [
            AsyncOpenAI(
                api_key=self._api_key,
                base_url=c.base_url,
                timeout=c.timeout,
                max_retries=0,
                http_client=capped_http_client(c.max_response_bytes, verify),
            )
            for _ in range(n_clients)
        ]
        for client in clients:
            # The resource is imported on first access; done here, that is not charged to any attempt's deadline.
            _ = client.chat.completions if c.mode == "chat" else client.completions
        # One slot per request allowed in flight, each bound to a client: at most max_concurrency in
        # flight in all and REQUESTS_PER_CLIENT per client. A request holds its slot through its retries.
        slots: asyncio.Queue[Any] = asyncio.Queue()
        for i in range(c.max_concurrency):
            slots.put_nowait(clients[i % n_clients])
        limiter = TokenBucket(c.requests_per_minute) if c.requests_per_minute else None

        async def one(req: Request) -> tuple[Request, Completion]:
            client = await slots.get()
            try:
                return req, await self._call_with_retries(client, req, limiter)
            finally:
                slots.put_nowait(client)

        tasks = [asyncio.ensure_future(one(r)) for r in requests]
        try:
            for fut in asyncio.as_completed(tasks):
                req, comp = await fut
                emit(req, comp)
                if progress is not None:
                    progress(1)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)

    async def _call_with_retries(self, client: Any, req: Request, limiter: TokenBucket | None) -> Completion:
        import openai

        c = self.config
        start = time.monotonic()
        attempt = 0
        retried: list[str] = []  # why each earlier attempt failed, kept with the completion
        while True:
            attempt += 1
            retry_after = None
            if limiter is not None:
                await limiter.acquire()
            t0 = time.monotonic()
            try:
                resp = await asyncio.wait_for(self._send(client, req), timeout=c.timeout)
                comp = self._to_completion(resp)
            except openai.APIStatusError as e:
                status = e.status_code
                error = f"HTTP {status}: {_short(e.message)}"
                if not (status in _RETRY_STATUS or status >= 500):
                    return self._failed(error, attempt, start)
                retry_after = parse_retry_after(e.response.headers)
            except (openai.APITimeoutError, asyncio.TimeoutError):
                error = f"timeout after {c.timeout:g}s"
            except openai.APIConnectionError as e:
                if isinstance(e.__cause__, ResponseTooLarge):
                    return self._failed(str(e.__cause__), attempt, start)
                error = f"connection error: {_short(str(e.__cause__ or e))}"
            except (_Unparseable, ValueError) as e:
                # json.JSONDecodeError is a ValueError: a 200 whose body is not JSON.
                error = f"unparseable response: {_short(str(e))}"
            else:
                comp.attempts = attempt
                comp.latency = time.monotonic() - t0
                comp.meta["elapsed"] = round(time.monotonic() - start, 4)
                if retried:
                    comp.meta["retried"] = retried
                return comp
            if attempt > c.max_retries:
                return self._failed(f"{error} (gave up after {attempt} attempts)", attempt, start)
            retried.append(self.scrub(error))
            await asyncio.sleep(self.backoff_delay(attempt, retry_after))

    def _failed(self, error: str, attempts: int, start: float) -> Completion:
        return Completion(
            text=None,
            status="error",
            error=self.scrub(error),
            attempts=attempts,
            latency=time.monotonic() - start,
        )

    def _params(self, req: Request) -> tuple[dict[str, Any], dict[str, Any]]:
        merged = {**self.sampling_params(), **req.params}
        std = {k: merged.pop(k) for k in _STANDARD_PARAMS if k in merged}
        if not std.get("stop"):
            std.pop("stop", None)
        return std, merged

    async def _send(self, client: Any, req: Request) -> Any:
        std, extra = self._params(req)
        kwargs: dict[str, Any] = {"model": self.model, **std}
        if extra:
            kwargs["extra_body"] = extra
        if self.config.mode == "chat":
            return await client.chat.completions.create(messages=req.messages, **kwargs)
        return await client.completions.create(prompt=render_plain_prompt(req.messages), **kwargs)

    def _to_completion(self, resp: Any) -> Completion:
        try:
            choice = resp.choices[0]
            if self.config.mode == "chat":
                message = choice.message
                text = message.content
                refusal = getattr(message, "refusal", None)
            else:
                text = choice.text
                refusal = None
            finish = choice.finish_reason
        except (AttributeError, IndexError, KeyError, TypeError):
            raise _Unparseable(f"no choices in body {_short(repr(resp))}") from None
        if text is not None and not isinstance(text, str):
            raise _Unparseable(f"text is {type(text).__name__}, not a string")
        usage = getattr(resp, "usage", None)
        meta: dict[str, Any] = {}
        if refusal:
            meta["refusal"] = refusal
        # Providers bill prompt-cache hits at a lower price (`prices.<model>.cached_input`).
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
        if isinstance(cached, int) and cached > 0:
            meta["cached_tokens"] = cached
        return Completion(
            # A chat reply may carry no content (a refusal, or a base model that stops at once):
            # that is an answer, stored as the empty text, not a transport failure to retry.
            text=text or "",
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            finish_reason=finish,
            meta=meta,
        )


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


__all__ = [
    "OpenAIBackend",
    "ResponseTooLarge",
    "TokenBucket",
    "capped_http_client",
    "drive_async",
    "is_local_url",
    "parse_retry_after",
    "render_plain_prompt",
    "shared_tls_context",
]
