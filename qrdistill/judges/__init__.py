"""Judge registry: `llm` (any backend) and `steps` (deterministic verifier)."""

from __future__ import annotations

from typing import Any

from qrdistill.judges import llm, steps  # noqa: F401  (registration)
from qrdistill.judges.base import JUDGES, Judge, Verdict


def get_judge(config: Any, store: Any = None) -> Judge:
    return JUDGES.get(config.kind, "filter.judge.kind")(config, store)


__all__ = ["JUDGES", "Judge", "Verdict", "get_judge"]
