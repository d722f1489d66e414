"""Config of the RL stage's rewards (issue 11): the weights of the reward terms and how the structure
term is computed. Not yet part of `RunConfig`: the `rl` section will hold it as `rl.rewards`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from qrdistill.config.generate import BackendConfig

#: strict: YAML reads `structure: true` as a boolean, which a lax float takes as 1
Weight = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]


class RewardWeights(BaseModel):
    """Weight of each reward term in R = sum_k w_k r_k (each r_k in [0, 1]); 0 turns a term off.

    The defaults are RLKD's (`recipes/RLKD-based-on-DeepSeek-R1-Distill-Qwen-7B/config_demo_openr1-math.yaml`
    in its public code: accuracy 15, format 10, tag count 10, structure 15). qrdistill paths have no
    `<think>` tags, so there is no tag-count term; and RLKD's structure term is a raw sum over steps,
    where this one is normalised to [0, 1], so at equal weight it pulls less on long paths."""

    model_config = ConfigDict(extra="forbid")

    correctness: Weight = Field(15.0, description="The task's own answer check (RLKD's accuracy reward).")
    format: Weight = Field(10.0, description="A final answer line the task's strict extraction reads.")
    structure: Weight = Field(
        15.0, description="Alignment of the student's steps to a reference teacher path's (RLKD's rule)."
    )

    @model_validator(mode="after")
    def _some_weight(self) -> RewardWeights:
        if not any(self.model_dump().values()):
            raise ValueError("every reward weight is 0: give at least one term a positive weight")
        return self


class RewardConfig(BaseModel):
    """The reward terms, the structure term's step extractor, and which teacher path it aligns to."""

    model_config = ConfigDict(extra="forbid")

    weights: RewardWeights = Field(default_factory=RewardWeights, description="Weights of the terms.")
    extractor: Literal["claims", "llm"] = Field(
        "claims",
        description="How paths become steps. claims: each arithmetic or date claim the `steps` judge finds "
        "is a step (offline, deterministic; procedural tasks and GSM8K). llm: `backend` splits a path into "
        "JSON [sub-think, query, answer] steps and judges matches yes/no; every call is cached in the store.",
    )
    reference: Literal["routed", "any"] = Field(
        "routed",
        description="The reference path for a student: routed: a kept path that the router sent to that "
        "student for this question (training's routing log); any: any kept path of the question.",
    )
    backend: BackendConfig | None = Field(
        None, validate_default=True, description="extractor llm: the judge backend that extracts and matches steps (any generate "
        "backend kind); unused by the claims extractor.",
    )
    tolerance: float = Field(
        1e-6, ge=0, allow_inf_nan=False, description="extractor claims: relative tolerance of numeric claims."
    )

    @field_validator("backend")
    @classmethod
    def _backend_for_llm(cls, v: BackendConfig | None, info: ValidationInfo) -> BackendConfig | None:
        # reads `extractor`, declared above; absent when it failed its own validation
        extractor = info.data.get("extractor")
        if extractor == "llm" and v is None:
            raise ValueError("extractor llm needs a judge backend: set backend (e.g. {kind: openai, model: ...})")
        if extractor == "claims" and v is not None:
            raise ValueError("read only by extractor llm; remove it or set extractor: llm")
        return v


__all__ = ["RewardConfig", "RewardWeights"]
