"""Config of the tasks and the generate stage (teacher backends, styles)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator


class TaskSpec(BaseModel):
    """One task and the split/file to read it from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Registered task name (see `qrdistill.tasks.TASKS`).")
    split: str = Field("train", description="Split to load.")
    path: str | None = Field(None, description="Local file (JSON/JSONL/Parquet); None = hub id or built-in.")
    limit: PositiveInt | None = Field(None, description="Keep the first N questions.")
    difficulty: list[int] | None = Field(
        None, description="Keep only questions of these difficulty levels (tasks whose records carry "
        "meta.difficulty, e.g. the procedural family: 1-4); the limit applies after this filter.",
    )

    @field_validator("difficulty")
    @classmethod
    def _levels(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not v:
            raise ValueError("give at least one difficulty level, or leave difficulty unset for all")
        return v


class _BackendBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("", description="Model name or path as the backend knows it.")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: PositiveInt = Field(512, description="Completion token limit.")
    stop: list[str] = Field(default_factory=list)


class OpenAIBackendConfig(_BackendBase):
    """Any OpenAI-compatible endpoint: OpenAI, Gemini's compatible endpoint, vLLM, llama.cpp, Ollama."""

    kind: Literal["openai"] = "openai"
    base_url: str | None = Field(None, description="Endpoint, e.g. http://127.0.0.1:8000/v1; None = OpenAI.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the key (never the key)."
    )
    mode: Literal["chat", "completions"] = Field(
        "chat", description="chat: /v1/chat/completions; completions: /v1/completions (base models)."
    )
    max_concurrency: PositiveInt = Field(8, description="Requests in flight at once.")
    timeout: float = Field(120.0, gt=0, description="Seconds per request before it counts as failed.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries on 429/5xx/timeouts/bad JSON.")
    backoff_base: float = Field(1.0, gt=0, description="First backoff in seconds; doubles per retry.")
    backoff_max: float = Field(60.0, gt=0)
    requests_per_minute: PositiveInt | None = Field(None, description="Optional client-side rate limit.")


class HFBackendConfig(_BackendBase):
    """A local transformers causal LM (batched generation)."""

    kind: Literal["hf"] = "hf"
    model: str = Field("gemma3-270m", description="HF id, local path, or `gemma3-270m` (bundled GGUF).")
    batch_size: PositiveInt = 8
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: bool = Field(False, description="Wrap prompts with the tokenizer's chat template.")


class VLLMBackendConfig(_BackendBase):
    """vLLM offline batch generation (optional extra `qrdistill[vllm]`)."""

    kind: Literal["vllm"] = "vllm"
    tensor_parallel_size: PositiveInt = 1
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    chat_template: bool = True


class SimulatedBackendConfig(_BackendBase):
    """Simulated teacher for the procedural tasks, with known planted defects."""

    kind: Literal["simulated"] = "simulated"
    model: str = "simulated-teacher"
    wrong_answer_rate: float = Field(0.2, ge=0, le=1, description="Chance a path ends in a wrong answer.")
    spurious_step_rate: float = Field(
        0.2, ge=0, le=1, description="Chance a path with a correct answer carries a false intermediate claim."
    )
    style_rates: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per-style overrides, e.g. {program: {wrong_answer_rate: 0.4}}.",
    )
    latency: float = Field(0.0, ge=0, description="Seconds each simulated call takes (for tests of resume).")


BackendConfig = Annotated[
    OpenAIBackendConfig | HFBackendConfig | VLLMBackendConfig | SimulatedBackendConfig,
    Field(discriminator="kind"),
]


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: BackendConfig = Field(default_factory=SimulatedBackendConfig)
    styles: list[str] = Field(
        default_factory=lambda: ["vanilla", "cot", "tot", "program", "fact", "backward"],
        description="Reasoning styles (registered names or keys of custom_styles).",
    )
    custom_styles: dict[str, str] = Field(
        default_factory=dict, description="Extra styles: name -> template containing {question}."
    )
    samples_per_style: PositiveInt = 1
    system_prompt: str | None = None

    @model_validator(mode="after")
    def _check_styles(self) -> GenerateConfig:
        if not self.styles:
            raise ValueError("styles: at least one reasoning style is required")
        for name, tmpl in self.custom_styles.items():
            if "{question}" not in tmpl:
                raise ValueError(f"custom_styles.{name}: template must contain {{question}}")
        return self
