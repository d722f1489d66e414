"""Typed run configuration.

One YAML file fully describes a run: `RunConfig` has one section per stage,
each a pydantic model defined beside this file. Unspecified fields take the
built-in offline default (procedural tasks, simulated teacher, `steps` judge,
Gemma-3-270M students, MiniLM router). Validation errors name the field and,
when the value came from a file, its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qrdistill.config.evaluate import EvaluateConfig
from qrdistill.config.filter import FilterConfig
from qrdistill.config.generate import GenerateConfig, TaskSpec
from qrdistill.config.train import TrainConfig
from qrdistill.errors import ConfigError

#: The built-in offline demo's size (README's first command): training questions per task (difficulty 1-2),
#: and test questions per task. Sized so that `qrdistill run` finishes in about half an hour on 2 CPU
#: cores; benchmarks/bench_demo.py measures it.
DEMO_TRAIN = {"procedural_date": 96, "procedural_arith": 24}
DEMO_EVAL = {"procedural_date": 60, "procedural_arith": 30}
#: The demo's styles: three of the six (prose chain of thought, a program, a backward check), so that the
#: training budget buys twice as many distinct date questions; configs/ tables use all six.
DEMO_STYLES = ["cot", "program", "backward"]


def demo_evaluate() -> EvaluateConfig:
    """The demo's evaluation: a sample of each procedural test split at the training difficulty levels.

    Base models get a 128-token budget: the bundled base model (Gemma-3-270M) never ends an answer
    on its own and would otherwise decode every question to the budget (summary.json reports the
    share cut); trained students get 1.25 x their training responses' p99 (max_new_tokens: auto).
    """
    from qrdistill.config.evaluate import EvalTaskSpec

    return EvaluateConfig(
        tasks=[EvalTaskSpec(name=n, split="test", limit=k, difficulty=[1, 2]) for n, k in DEMO_EVAL.items()],
        batch_size=64, base_max_new_tokens=128,
    )


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_dir: str = Field("runs/default", description="Directory holding every artifact of this run.")
    seed: int = Field(0, description="Global seed: data order, sampling, router noise, simulated teacher.")
    seeds: list[int] | None = Field(
        None, description="`qrdistill run` trains and evaluates once per seed, each in <run_dir>/seed-<s>/ "
        "(teacher paths generated and filtered once); analyze reports mean and spread over seeds.",
    )
    tasks: list[TaskSpec] = Field(
        default_factory=lambda: [
            TaskSpec(name="procedural_date", split="train", limit=DEMO_TRAIN["procedural_date"], difficulty=[1, 2]),
            TaskSpec(name="procedural_arith", split="train", limit=DEMO_TRAIN["procedural_arith"], difficulty=[1, 2]),
        ],
        description="Tasks whose training questions the teacher answers.",
    )
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig,
        description="Evaluation; when the section is absent from a config, the test split of every task. The "
        "built-in demo (no config) evaluates a fixed sample of each procedural test split instead (DEMO_EVAL).",
    )
    stages: list[Literal["generate", "filter", "train", "evaluate", "analyze"]] = Field(
        default_factory=lambda: ["generate", "filter", "train", "evaluate", "analyze"],
        description="Stages `qrdistill run` executes, in pipeline order (the zero-shot baseline: "
        "[evaluate, analyze]).",
    )

    @field_validator("tasks")
    @classmethod
    def _non_empty(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        if not v:
            raise ValueError("at least one task is required")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("give distinct seeds, e.g. [0, 1, 2], or leave seeds unset for one run")
        return v


def _yaml_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Map each key path of a YAML document to its 1-based line number."""
    import yaml

    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (k.value,)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                p = path + (i,)
                lines[p] = v.start_mark.line + 1
                walk(v, p)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def format_validation_error(err: ValidationError, source: str | None = None, text: str | None = None) -> str:
    lines = _yaml_lines(text) if text else {}
    msgs = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        # Discriminated unions insert the tag into the location; drop it for the user.
        loc_clean = tuple(x for x in loc if x not in {"openai", "hf", "vllm", "simulated", "llm", "steps", "none"})
        field = ".".join(str(x) for x in loc_clean) or "(top level)"
        where = source or "config"
        line = None
        for n in range(len(loc_clean), 0, -1):
            if loc_clean[:n] in lines:
                line = lines[loc_clean[:n]]
                break
        where = f"{where}:{line}" if line else where
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        msgs.append(f"{where}: config field {field}: {msg}")
    return "; ".join(msgs)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load and validate a run config; `None` gives the built-in offline default."""
    import yaml

    data: dict[str, Any] = {}
    text = None
    source = None
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        text = p.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a config must be a YAML mapping of sections")
    if path is None:
        # The built-in demo: its own evaluation sample, which --set evaluate.* fields refine.
        data["evaluate"] = demo_evaluate().model_dump(mode="json", exclude_unset=True)
        data["generate"] = {"styles": list(DEMO_STYLES)}
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, text)) from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


__all__ = ["RunConfig", "load_config", "format_validation_error"]
