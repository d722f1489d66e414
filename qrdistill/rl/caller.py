"""Reward-model calls through the run's completion store.

`CachedCaller` sends prompts to any backend via `qrdistill.store.run_cached`, the same content-keyed
store teacher and judge calls use: a prompt whose completion is stored `ok` is never sent again (a
killed RL run re-pays nothing on resume), every call's usage is recorded, and a failed call is stored
with its error and retried on the next run. The key is the backend's request key (model, messages,
sampling parameters), so the same question asked by two rewards, or twice in one run, costs one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qrdistill.backends.base import Backend, Request


@dataclass(frozen=True)
class Reply:
    """A completion's text, or why there is none (`error`); `finish_reason` as the backend gave it
    ("length": cut at its token limit)."""

    text: str | None
    error: str | None = None
    finish_reason: str | None = None


class CachedCaller:
    """`ask(prompts)` -> one `Reply` per prompt, each asked of `backend` at most once per store.

    `kind` is the store's call kind; the store accepts `teacher` and `judge`, and reward-model calls
    are judge calls (RLKD's matcher is a judge; its extractor a judge that answers in JSON)."""

    def __init__(self, backend: Backend, store: Any, kind: str = "judge", desc: str = "rl reward") -> None:
        self.backend = backend
        self.store = store
        self.kind = kind
        self.desc = desc
        #: calls handed to the backend by this caller (the store counts them across runs)
        self.issued = 0

    def ask(self, prompts: Sequence[str], context: dict[str, Any] | None = None) -> list[Reply]:
        from qrdistill.store import run_cached

        requests = [Request(messages=[{"role": "user", "content": p}], context=dict(context or {})) for p in prompts]
        results = run_cached(self.backend, self.store, requests, kind=self.kind, desc=self.desc)
        self.issued += results.stats["issued"]
        out = []
        for req in requests:
            key = self.backend.key(req)
            comp = results.get(key)
            if comp is not None:
                out.append(Reply(comp.text, finish_reason=comp.finish_reason))
                continue
            stored = self.store.get(key)
            error = stored.error if stored is not None and stored.error else "the call was not answered"
            out.append(Reply(None, f"reward-model call failed (asked again on the next run): {error}"))
        return out


__all__ = ["CachedCaller", "Reply"]
