"""Config of the filter stage (answer check + judge)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class ExtraEvalFile(BaseModel):
    """A file of test questions to protect besides the evaluated splits: JSONL (one object a line), a JSON
    list, or Parquet; a plain string is taken as `path`."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="The file, relative to the working directory.")
    question_field: str = Field("question", min_length=1, description="The field holding each question's text.")
    id_field: str | None = Field(
        "id", description="The field holding each question's id; where a row lacks it, its line number is used.",
    )
    name: str | None = Field(None, description="How reports name this set (`contaminated.task`); default: path.")

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("path")
    @classmethod
    def _non_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give the file's path")
        return v


DecontaminationMethod = Literal["exact", "ngram", "fuzzy"]


class DecontaminateConfig(BaseModel):
    """Drop training paths whose question copies a test question (qrdistill/decontam.py), and exact
    duplicate paths. Checked against every split `evaluate.tasks` evaluates, loaded as evaluate loads
    them, and `extra_eval_files`."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="False: keep contaminated and duplicate paths (no check runs).")
    methods: list[DecontaminationMethod] = Field(
        default_factory=lambda: ["exact", "ngram", "fuzzy"],
        description="Methods tried, in the order exact, ngram, fuzzy (the first that matches is reported).",
    )
    ngram: int = Field(
        8, ge=1, le=64, strict=True,
        description="Words per n-gram; a test question shorter than this counts as one n-gram (all of it).",
    )
    ngram_coverage: float = Field(
        0.8, gt=0, le=1, allow_inf_nan=False,
        description="Share of the test question's words that n-grams shared with a training question must "
        "cover for `ngram` to match.",
    )
    fuzzy_threshold: float = Field(
        0.85, ge=0.5, le=1, allow_inf_nan=False,
        description="Least word-level similarity (difflib ratio, 2 x matching words / all words) for `fuzzy` "
        "to match; 0.85 catches one word changed in a 7-word question.",
    )
    numbers_must_match: bool = Field(
        True, description="`ngram` and `fuzzy` match only when every number (and date) of the test question "
        "occurs in the training question: a template question with other numbers has another answer.",
    )
    deduplicate: bool = Field(
        True, description="Keep one of the paths with the same task, question and response text.",
    )
    extra_eval_files: list[ExtraEvalFile] = Field(
        default_factory=list,
        description="More test questions to check against: files (JSONL, JSON, Parquet) with a `question` field "
        "(and optionally `id`), e.g. [held_out.jsonl] or [{path: x.jsonl, question_field: problem}].",
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("list each method once, e.g. [exact, ngram, fuzzy]; to check nothing, set "
                             "enabled: false")
        return v


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
    decontaminate: DecontaminateConfig = Field(
        default_factory=DecontaminateConfig,
        description="Drop paths whose question copies a test question, and duplicate paths; runs also when "
        "`enabled` is false (the quality-filter ablation is not an ablation of decontamination).",
    )
