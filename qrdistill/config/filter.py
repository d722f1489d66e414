"""Config of the filter stage (answer check + judge)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from qrdistill.config.generate import BackendConfig, OpenAIBackendConfig


class StepsJudgeConfig(BaseModel):
    """Deterministic verifier of arithmetic and date-arithmetic claims."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["steps"] = "steps"
    tolerance: float = Field(1e-6, ge=0, description="Relative tolerance for numeric claims.")


class LLMJudgeConfig(BaseModel):
    """LLM-as-judge through any generate backend."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["llm"] = "llm"
    backend: BackendConfig = Field(default_factory=lambda: OpenAIBackendConfig(temperature=0.0, max_tokens=256))
    prompt: str | None = Field(None, description="Override the judge prompt; must contain {question} and {path}.")


class NoJudgeConfig(BaseModel):
    """Keep every path with a correct answer (step 1 only)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["none"] = "none"


JudgeConfig = Annotated[StepsJudgeConfig | LLMJudgeConfig | NoJudgeConfig, Field(discriminator="kind")]


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    judge: JudgeConfig = Field(default_factory=StepsJudgeConfig)
    enabled: bool = Field(True, description="False = the 'without quality filter' ablation: keep every path.")
