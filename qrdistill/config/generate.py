"""Config of the tasks and the generate stage (teacher backends, styles)."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: An int that refuses booleans: YAML reads `samples_per_style: true` as True, which a lax int takes as 1.
StrictPositiveInt = Annotated[int, Field(strict=True, gt=0)]
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def looks_like_key(value: str) -> bool:
    """Whether `value` reads as a credential rather than an environment variable name.

    Variable names are words joined by `_`; keys are long runs of mixed characters (`sk-...`,
    `hf_` + 34 random letters and digits, 32+ hex digits).
    """
    if not _ENV_NAME.fullmatch(value):
        return True
    for part in value.split("_"):
        digits = sum(c.isdigit() for c in part)
        mixed_case = any(c.islower() for c in part) and any(c.isupper() for c in part)
        if len(part) >= 16 and digits >= 2 and digits < len(part):
            return True
        if len(part) >= 24 and mixed_case:
            return True
    return False


class TaskSpec(BaseModel):
    """One task and the split/file to read it from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Registered task name (see `qrdistill.tasks.TASKS`).")
    split: str = Field("train", description="Split to load.")
    path: str | None = Field(None, description="Local file (JSON/JSONL/Parquet); None = hub id or built-in.")
    limit: StrictPositiveInt | None = Field(None, description="Keep the first N questions.")
    difficulty: list[Annotated[int, Field(strict=True)]] | None = Field(
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
    max_tokens: StrictPositiveInt = Field(512, description="Completion token limit.")
    stop: list[str] = Field(default_factory=list)
    tokenizer: str | None = Field(
        None, description="Local tokenizer directory of this model, used only to count prompt tokens for "
        "`--dry-run` estimates and `budget_usd` reservations; unset: the hf/vllm backend's model directory, "
        "else tiktoken for an OpenAI model when installed, else characters / 4 (the dry run says which).",
    )


class OpenAIBackendConfig(_BackendBase):
    """Any OpenAI-compatible endpoint: OpenAI, Gemini's compatible endpoint, vLLM, llama.cpp, Ollama."""

    kind: Literal["openai"] = "openai"
    base_url: str | None = Field(None, description="Endpoint, e.g. http://127.0.0.1:8000/v1; None = OpenAI.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the key (never the key)."
    )

    @field_validator("api_key_env")
    @classmethod
    def _env_name_not_key(cls, v: str | None) -> str | None:
        # The message never repeats the value: it may be the key itself, and errors reach terminals and logs.
        if v and looks_like_key(v):
            raise ValueError(
                "expects the NAME of the environment variable that holds the API key (letters, digits and _), "
                "and the value given is not one (it looks like a key itself; it is not repeated here): "
                "export MY_API_KEY=<the key> and set api_key_env: MY_API_KEY"
            )
        return v
    mode: Literal["chat", "completions"] = Field(
        "chat", description="chat: /v1/chat/completions; completions: /v1/completions (base models)."
    )
    max_concurrency: StrictPositiveInt = Field(8, description="Requests in flight at once.")
    timeout: float = Field(
        120.0, gt=0, description="Seconds per attempt (from sending the request to the parsed body)."
    )
    max_retries: int = Field(5, ge=0, le=50, strict=True, description="Retries on 429/5xx/timeouts/bad JSON.")
    backoff_base: float = Field(1.0, gt=0, description="First backoff in seconds; doubles per retry.")
    backoff_max: float = Field(60.0, gt=0)
    requests_per_minute: StrictPositiveInt | None = Field(None, description="Optional client-side rate limit.")
    max_response_bytes: StrictPositiveInt = Field(
        4 * 1024 * 1024,
        description="Largest response body read (bytes); a larger one is an error, not stored, and is not read "
        "past the limit. A completion of max_tokens tokens is a few kB per thousand tokens.",
    )


class HFBackendConfig(_BackendBase):
    """A local transformers causal LM (batched generation)."""

    kind: Literal["hf"] = "hf"
    model: str = Field("gemma3-270m", description="HF id, local path, or `gemma3-270m` (bundled GGUF).")
    batch_size: StrictPositiveInt = 8
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: bool = Field(False, description="Wrap prompts with the tokenizer's chat template.")


class VLLMBackendConfig(_BackendBase):
    """vLLM offline batch generation (optional extra `qrdistill[vllm]`)."""

    kind: Literal["vllm"] = "vllm"
    tensor_parallel_size: StrictPositiveInt = 1
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


FileFormat = Literal["paths", "generic", "distilabel", "openr1", "messages", "strategyqa_human", "gsm8k_human"]
FILE_FORMATS: tuple[str, ...] = get_args(FileFormat)
#: Formats whose rows carry human annotations of a benchmark, matched to their question by its text.
HUMAN_FORMATS = ("strategyqa_human", "gsm8k_human")


class FileColumns(BaseModel):
    """Where a `generic` row keeps each field (a column name; "a.b" reaches into a nested object)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field("id", description="Question id (the task's record id, or `<task>/<id>` as in "
                           "paths.jsonl's qid); None: match by question text only.")
    question: str | None = Field("question", description="Question text, matched after normalisation "
                                 "(Unicode NFKC, case and whitespace folded); None: match by id only.")
    response: str = Field("response", description="The reasoning path's text.")
    style: str | None = Field(None, description="Style label (a name of qrdistill.styles.STYLES, a custom "
                              "style, or a title such as Chain-of-Thought); None: generate.teacher.style.")
    sample: str | None = Field(None, description="Sample index (an integer >= 0); None: the rows of one "
                               "question and style are numbered 0, 1, ... in file order.")
    task: str | None = Field(None, description="Task name; None: generate.teacher.task, else the config's "
                             "only task, else found from the id or text.")
    model: str | None = Field(None, description="Name of the model that wrote the path (kept in meta.imported).")


class FileBackendConfig(_BackendBase):
    """Reasoning paths imported from a file or dataset instead of asked of a model."""

    kind: Literal["file"] = "file"
    model: str = Field("imported", description="Name the imported calls are stored under (their token counts "
                       "are 0, so they cost nothing at any price); no model is called.")
    path: str | list[str] = Field(
        description="A JSONL, JSON or Parquet file, a run dir (its paths.jsonl), a `datasets` save_to_disk "
        "folder, or a hub dataset id; or a list of them, read in order as one pool (all in `format`).",
    )
    format: FileFormat = Field(
        description="paths: qrdistill's own paths.jsonl; generic: any columns (see `columns`); distilabel: "
        "instruction / generation / model_name; openr1: problem / generations (one sample each); messages: "
        "a conversation under `messages` (role/content) or `conversations` (ShareGPT from/value); "
        "strategyqa_human: StrategyQA rows' facts (style fact) and decomposition (style cot), BIG-bench "
        "strategyqa rows' target explanation (style vanilla); gsm8k_human: GSM8K rows' human solution with "
        "its calculator annotations made readable (style `style`). See qrdistill.backends.human_pools.",
    )
    split: str = Field("train", description="Split of a dataset folder or hub dataset that holds several.")
    columns: FileColumns = Field(default_factory=FileColumns, description="format generic: the column names.")
    style: str = Field("cot", description="Style of the paths whose format or row gives no style label.")
    task: str | None = Field(None, description="Task of every row (a name in `tasks`), where the rows do not "
                             "say; unset: the config's only task, else found from each row's id or text.")
    match: Literal["auto", "id", "question"] = Field(
        "auto", description="How rows find their question: by id, by normalised question text, or auto (the "
        "id where the row has one, else the text; a row with both is checked to agree).",
    )
    unmatched: Literal["error", "skip"] = Field(
        "error", description="A row that answers nothing this run asks for (a question not loaded, a style "
        "not in generate.styles, a sample >= generate.samples_per_style): error, or skip it (counted).",
    )
    missing: Literal["skip", "error"] = Field(
        "skip", description="A planned question x style x sample with no row: skip it (counted in the "
        "summary as missing_paths), or error.",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _sources(cls, v: object) -> object:
        # Before the union, so a bad value gets one message, not one per branch of str | list[str].
        paths = v if isinstance(v, list) else [v]
        if not paths:
            raise ValueError("give a source: a file, folder or hub dataset id, or a non-empty list of them")
        for p in paths:
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"expects a file, folder or hub dataset id (a non-empty text), or a list of them; "
                                 f"got {p!r}")
        return v

    @model_validator(mode="after")
    def _columns_for_generic(self) -> FileBackendConfig:
        if self.format != "generic" and "columns" in self.model_fields_set:
            raise ValueError(f"columns applies to format generic only (format is {self.format}); the "
                             f"{self.format} format has fixed field names")
        if self.format == "strategyqa_human" and "style" in self.model_fields_set:
            raise ValueError("style does not apply to format strategyqa_human: its paths have the style of the "
                             "field they come from (facts: fact, decomposition: cot, target: vanilla); choose "
                             "among them with generate.styles")
        if self.format in HUMAN_FORMATS and self.match == "id":
            raise ValueError(f"format {self.format} matches rows to questions by their text (the benchmark's "
                             f"files and the task number questions differently); set match: auto or question")
        return self


BackendConfig = Annotated[
    OpenAIBackendConfig | HFBackendConfig | VLLMBackendConfig | SimulatedBackendConfig | FileBackendConfig,
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
    samples_per_style: StrictPositiveInt = 1
    system_prompt: str | None = None
    budget_usd: float | None = Field(
        None, gt=0, strict=True, allow_inf_nan=False,
        description="Most this stage may spend on teacher calls in this run dir, in USD, counting every call "
        "stored by earlier runs (priced with `prices`, which must list generate.teacher.model). Generate stops "
        "before a call could pass it (each call is reserved at its max_tokens cost before it is sent) and "
        "exits non-zero; what was answered stays stored, and a rerun with a larger budget asks only the rest.",
    )

    @field_validator("styles")
    @classmethod
    def _styles_once(cls, v: list[str]) -> list[str]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"{', '.join(dup)} listed twice; list each style once "
                             f"(samples_per_style asks for several paths per style)")
        return v

    @field_validator("custom_styles")
    @classmethod
    def _known_placeholders(cls, v: dict[str, str]) -> dict[str, str]:
        from qrdistill.styles import unknown_placeholders

        for name, tmpl in v.items():
            unknown = unknown_placeholders(tmpl)
            if unknown:
                raise ValueError(f"{name}: unknown placeholder {', '.join(unknown)} (it would be sent to the "
                                 f"teacher literally; the only placeholder is {{question}})")
        return v

    @model_validator(mode="after")
    def _check_styles(self) -> GenerateConfig:
        if not self.styles:
            raise ValueError("styles: at least one reasoning style is required")
        for name, tmpl in self.custom_styles.items():
            if "{question}" not in tmpl:
                raise ValueError(f"custom_styles.{name}: template must contain {{question}}")
        return self
