"""Config of the evaluate stage (zero-shot CoT evaluation of base and trained students)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qrdistill.config.generate import StrictPositiveInt, TaskSpec


class EvalTaskSpec(TaskSpec):
    """A task to evaluate on; the split defaults to `test`."""

    split: str = Field("test", description="Split to evaluate on.")


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[EvalTaskSpec] | None = Field(
        None,
        description="Tasks and splits to evaluate on; None = the `test` split of every task in `tasks`.",
    )
    students: Literal["auto", "base", "trained", "all"] = Field(
        "auto",
        description=(
            "Which models to evaluate. base: each unique base model of train.students (the zero-shot "
            "baseline); trained: the adapters the train stage saved (error if it has not run); all: both "
            "(error if untrained); auto: base models, plus the adapters when the train stage has run."
        ),
    )
    limit: StrictPositiveInt | None = Field(None, description="Evaluate the first N test questions of each task.")
    batch_size: StrictPositiveInt = Field(8, description="Questions generated at once (left-padded greedy decoding).")
    max_new_tokens: Literal["auto"] | StrictPositiveInt = Field(
        "auto",
        description="Generation limit per answer. auto: a trained student gets 1.25 x the p99 token length of its "
        "own training responses (from train/summary.json), a base model its task's default (`base_max_new_tokens` "
        "overrides it). Answers stop at EOS or once their answer line is complete, so a long budget costs "
        "nothing when answers are short.",
    )
    base_max_new_tokens: StrictPositiveInt | None = Field(
        None, description="max_new_tokens: auto for base (zero-shot) models; None = each task's default."
    )
    stop_at_answer: bool = Field(
        True,
        description=(
            "Stop a sequence once its final-answer line (`The answer is ...`) is complete or it starts a "
            "new `Question:`; base models otherwise ramble until max_new_tokens."
        ),
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = float32 on CPU (bf16 is slower there), bfloat16 on CUDA."
    )
    bootstrap_resamples: StrictPositiveInt = Field(1000, description="Resamples for the accuracy confidence interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the bootstrap interval.")

    @field_validator("tasks")
    @classmethod
    def _non_empty(cls, v: list[EvalTaskSpec] | None) -> list[EvalTaskSpec] | None:
        if v is not None and not v:
            raise ValueError("give at least one task, or leave evaluate.tasks unset for the test splits of `tasks`")
        # The same task on other splits or subsets is fine (each gets its own label); the same entry twice
        # would only evaluate it twice under two labels.
        seen: dict[str, int] = {}
        for i, spec in enumerate(v or []):
            key = spec.model_dump_json()
            if key in seen:
                raise ValueError(f"tasks.{seen[key]} and tasks.{i} are the same task entry; list it once")
            seen[key] = i
        return v
