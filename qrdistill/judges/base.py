"""The judge interface (paper §2.3 step 2): is a correct path free of
hallucinated or spurious steps? Only an explicit valid verdict keeps a path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qrdistill.registry import Registry


@dataclass
class Verdict:
    valid: bool
    reason: str
    parsed: bool = True  # False when the judge's reply could not be read (kept = False)

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "reason": self.reason, "parsed": self.parsed}


class Judge:
    name: str = ""

    def __init__(self, config: Any, store: Any = None) -> None:
        self.config = config
        self.store = store

    def judge(self, items: Sequence[dict[str, Any]], progress: Any = None) -> list[Verdict]:
        """`items` are rows of paths.jsonl (question in `prompt`, path in `response`)."""
        raise NotImplementedError


JUDGES: Registry[type[Judge]] = Registry("judge")
