"""Teacher/judge backend registry. Backends import their heavy clients lazily."""

from __future__ import annotations

from typing import Any

from qrdistill.backends import file_backend, hf, openai_backend, simulated, vllm_backend  # noqa: F401  (registration)
from qrdistill.backends.base import BACKENDS, Backend, Completion, Request, request_key


def get_backend(config: Any, field: str = "generate.teacher") -> Backend:
    return BACKENDS.get(config.kind, f"{field}.kind")(config)


__all__ = ["BACKENDS", "Backend", "Completion", "Request", "get_backend", "request_key"]
