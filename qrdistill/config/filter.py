"""Config of the filter stage (answer check + judge)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

    @field_validator("prompt")
    @classmethod
    def _known_placeholders(cls, v: str | None) -> str | None:
        from qrdistill.styles import unknown_placeholders

        unknown = unknown_placeholders(v, ("question", "path")) if v else []
        if unknown:
            raise ValueError(f"unknown placeholder {', '.join(unknown)} (it would be sent to the judge literally; "
                             f"the placeholders are {{question}} and {{path}})")
        return v


class NoJudgeConfig(BaseModel):
    """Keep every path with a correct answer (step 1 only)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["none"] = "none"


JudgeConfig = Annotated[StepsJudgeConfig | LLMJudgeConfig | NoJudgeConfig, Field(discriminator="kind")]


class ExecuteProgramsConfig(BaseModel):
    """Run the code of program-style paths in a sandbox (qrdistill/sandbox.py) and keep only those whose
    program prints the gold answer."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(
        False, description="Run program-style paths' code; a path whose program fails is not kept."
    )
    time_limit_s: float = Field(
        5.0, gt=0, le=600, description="CPU seconds per program (the wall-clock limit is 2 s more)."
    )
    memory_mb: int = Field(1024, ge=128, le=1 << 20, description="Address-space limit per program, in MB.")


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    judge: JudgeConfig = Field(default_factory=StepsJudgeConfig)
    enabled: bool = Field(True, description="False = the 'without quality filter' ablation: keep every path.")
    execute_programs: ExecuteProgramsConfig = Field(default_factory=ExecuteProgramsConfig)
    budget_usd: float | None = Field(
        None, gt=0, strict=True, allow_inf_nan=False,
        description="Most the llm judge may spend in this run dir, in USD, counting every judge call stored by "
        "earlier runs (priced with `prices`, which must list filter.judge.backend.model); as generate.budget_usd. "
        "The steps and none judges make no calls.",
    )
