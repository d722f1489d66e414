"""The teacher/judge backend interface and the request key.

A backend turns `Request`s into `Completion`s. It owns concurrency,
retries and batching; the caller owns storage: `on_result` is called once per
request, in the caller's thread, the moment its completion is known, so the
caller can persist it before anything else happens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qrdistill.registry import Registry


@dataclass
class Request:
    """One call. `messages` are chat messages; in plain-completions mode the
    backend renders them to a single prompt. `context` carries data for
    simulated backends (the task record, the style) and is *not* part of the key."""

    messages: list[dict[str, str]]
    sample: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    text: str | None
    status: str = "ok"  # "ok" or "error"
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency: float | None = None
    attempts: int = 1
    finish_reason: str | None = None
    #: backend-specific facts stored with the completion (the simulated teacher's `planted`).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.text is not None


def request_key(backend: str, model: str, messages: Sequence[dict[str, str]], params: dict[str, Any], sample: int) -> str:
    """Stable hash of everything that determines a completion (never the API key)."""
    payload = json.dumps(
        {"backend": backend, "model": model, "messages": list(messages), "params": params, "sample": sample},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class Backend:
    """Subclasses set `name` and implement `generate`."""

    name: str = ""

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def label(self) -> str:
        """How outputs name this backend (the simulated teacher says so)."""
        return f"{self.name}:{self.model}"

    def sampling_params(self) -> dict[str, Any]:
        c = self.config
        return {"temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_tokens, "stop": list(c.stop)}

    def key(self, req: Request) -> str:
        return request_key(self.name, self.model, req.messages, {**self.sampling_params(), **req.params}, req.sample)

    def generate(
        self,
        requests: Sequence[Request],
        on_result: Callable[[Request, Completion], None],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release clients, servers or models."""


BACKENDS: Registry[type[Backend]] = Registry("backend")
