"""Config of the evaluate stage (zero-shot CoT evaluation of base and trained students)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from qrdistill.config.generate import StrictPositiveInt, TaskSpec, looks_like_key

#: Request fields the evaluate client sets itself; `server.extra_params` may not override them.
RESERVED_PARAMS = ("model", "prompt", "temperature", "top_p", "max_tokens", "stream", "logprobs", "stop", "n",
                   "echo", "best_of")


class EvalTaskSpec(TaskSpec):
    """A task to evaluate on; the split defaults to `test`."""

    split: str = Field("test", description="Split to evaluate on.")


class EvalServerConfig(BaseModel):
    """An OpenAI-compatible server that serves the students (evaluate.backend: openai)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(
        description="The server's OpenAI API root, e.g. http://127.0.0.1:8000/v1 (vLLM) or "
        "http://127.0.0.1:8080/v1 (llama.cpp).",
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the server's API key (never the key); "
        "None: a local server needs none, any other needs one.",
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="The name the server serves each evaluated model under: `<student>` (its trained adapter: "
        "the vLLM --lora-modules name, or the llama.cpp alias of its exported GGUF) or `base:<model>` (the "
        "zero-shot base, as train.students names it). Base models without an entry are not evaluated.",
    )
    max_concurrency: StrictPositiveInt = Field(
        4, description="Requests in flight at once (vLLM and llama.cpp's llama-server batch them). "
        "llama-cpp-python's server answers one at a time and, unless started with --interrupt_requests False, "
        "abandons a running answer when the next request arrives: start it so, or set 1.",
    )
    timeout: float = Field(
        600.0, gt=0, description="Seconds per attempt, queueing on the server included (a server that answers "
        "one request at a time makes the others wait).",
    )
    max_retries: int = Field(3, ge=0, le=50, strict=True, description="Retries on 429/5xx/timeouts/cut streams.")
    backoff_base: float = Field(1.0, gt=0, description="First backoff in seconds; doubles per retry.")
    backoff_max: float = Field(30.0, gt=0, description="Longest wait between two attempts, in seconds.")
    logprobs: bool = Field(
        True, description="Ask for each generated token's log-probability (the ensemble pick uses them); "
        "llama-cpp-python's server computes them slowly for large vocabularies.",
    )
    extra_params: dict[str, Any] = Field(
        default_factory=lambda: {"repeat_penalty": 1.0},
        description="Extra request fields sent as they are. The default turns off llama.cpp's repeat penalty "
        "(llama-cpp-python's server applies 1.1 unless told otherwise, so greedy decoding would differ from "
        "backend hf); vLLM ignores the field.",
    )

    @field_validator("api_key_env")
    @classmethod
    def _env_name_not_key(cls, v: str | None) -> str | None:
        # The message never repeats the value: it may be the key itself.
        if v and looks_like_key(v):
            raise PydanticCustomError(
                "evaluate_config", "expects the NAME of the environment variable that holds the API key, and the "
                "value given looks like a key itself (not repeated here): export MY_API_KEY=<the key> and set "
                "api_key_env: MY_API_KEY")
        return v

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        empty = sorted(k for k, name in v.items() if not name.strip())
        if empty:
            raise PydanticCustomError("evaluate_config", "{keys}: empty served model name",
                                      {"keys": ", ".join(empty)})
        return v

    @field_validator("extra_params")
    @classmethod
    def _not_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(k for k in v if k in RESERVED_PARAMS)
        if clash:
            raise PydanticCustomError(
                "evaluate_config", "{fields}: set by evaluate itself (greedy decoding with the evaluation's "
                "budget); remove them", {"fields": ", ".join(clash)})
        return v


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["hf", "openai"] = Field(
        "hf",
        description="hf: load each student in this process (transformers + PEFT); openai: ask the OpenAI-compatible "
        "server of evaluate.server, which serves the students (vLLM with --enable-lora, llama.cpp with an "
        "exported GGUF). Same prompts, budgets, answer stops, checks and artifacts.",
    )
    server: EvalServerConfig | None = Field(None, description="The server for backend: openai.")

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
        "own training responses on that task (from train/summary.json; a task it did not train on: over all its "
        "responses), a base model its task's default (`base_max_new_tokens` "
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

    @model_validator(mode="after")
    def _server_for_openai(self) -> EvaluateConfig:
        if self.backend == "openai" and self.server is None:
            raise PydanticCustomError(
                "evaluate_config", "backend openai needs evaluate.server: give at least server.base_url (e.g. "
                "http://127.0.0.1:8000/v1) and server.models (each student's served model name)")
        return self
