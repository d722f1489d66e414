"""Config of the RL stage (issue 11): GRPO on the distilled students (`RLConfig`, the run config's `rl`
section), and its rewards (`RewardConfig`, `rl.rewards`): the weights of the reward terms and how the
structure term is computed."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from qrdistill.config.generate import BackendConfig, StrictPositiveInt

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


#: as train.students[].name: student names are directory names
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class RLConfig(BaseModel):
    """GRPO after distillation (`qrdistill rl`), on TRL's `GRPOTrainer`: each student starts from its distilled
    adapter (D/train/adapters/<name>), which is also the KL reference, and answers the training questions with
    its own prompt. Not one of `qrdistill run`'s stages: run `qrdistill rl` after `qrdistill train`."""

    model_config = ConfigDict(extra="forbid")

    students: list[str] | None = Field(
        None, description="Names of the train.students to train with RL; unset: every student."
    )
    num_generations: int = Field(
        4, ge=2, strict=True, description="Group size G: completions sampled per question (RLKD: 4). GRPO's "
        "advantage is a completion's reward relative to its group, so G >= 2.",
    )
    questions_per_step: StrictPositiveInt = Field(
        2, description="Questions per optimizer step and process: each step scores questions_per_step x "
        "num_generations completions (TRL's per_device_train_batch_size).",
    )
    max_steps: StrictPositiveInt = Field(50, description="Optimizer steps per student (the questions repeat "
                                                         "in a new shuffled order when they run out).")
    max_completion_length: StrictPositiveInt | Literal["auto"] = Field(
        "auto", description="Tokens a completion may have. auto: what evaluate's max_new_tokens: auto gives the "
        "student (1.25 x the p99 length of its training responses, train/summary.json), else 256.",
    )
    lr: float = Field(1e-5, gt=0, le=1.0, allow_inf_nan=False,
                      description="Learning rate of the LoRA weights (TRL's default schedule: linear decay to 0 "
                                  "over max_steps). Not tuned.")
    beta: float = Field(
        0.04, ge=0, allow_inf_nan=False, description="KL coefficient to the reference policy, the distilled "
        "student itself (a frozen copy of its adapter); 0 = no KL term and no reference forward.",
    )
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False, description="Sampling temperature of completions.")
    seed: int | None = Field(
        None, strict=True, description="Seed of sampling and question order; unset: the run's `seed`."
    )
    checkpoint_every: StrictPositiveInt = Field(
        10, description="Steps between TRL checkpoints (adapter, optimizer, scheduler, RNG); a killed run "
        "resumes from the last one.",
    )
    keep_checkpoints: StrictPositiveInt = Field(2, description="Newest checkpoints kept per student.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (less memory).")
    disable_dropout: bool = Field(
        True, description="Turn the student's (LoRA) dropout off during RL: with it on, the policy's and the "
        "reference's log-probabilities differ by dropout noise, so the KL term is noise from step 0.",
    )
    rewards: RewardConfig = Field(default_factory=RewardConfig, description="Reward terms, weights, extractor.")

    @field_validator("students")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("list at least one student, or leave rl.students unset for every student")
        bad = [n for n in v if not _NAME_RE.match(n)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a student name (letters, digits, _ and -)")
        if len(set(v)) != len(v):
            raise ValueError("a student is listed twice")
        return v


__all__ = ["RLConfig", "RewardConfig", "RewardWeights"]
