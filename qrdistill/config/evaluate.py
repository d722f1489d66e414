"""Config of the evaluate stage. Owned by the evaluate stage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
