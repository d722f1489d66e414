"""Typed run configuration.

One YAML file fully describes a run: `RunConfig` has one section per stage,
each a pydantic model defined beside this file. Unspecified fields take the
built-in offline default (procedural tasks, simulated teacher, `steps` judge,
Gemma-3-270M students, MiniLM router). Validation errors name the field and,
when the value came from a file, its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qrdistill.config.evaluate import EvaluateConfig
from qrdistill.config.filter import FilterConfig
from qrdistill.config.generate import GenerateConfig, TaskSpec
from qrdistill.config.rl import RLConfig
from qrdistill.config.train import TrainConfig
from qrdistill.errors import ConfigError

#: The built-in offline demo's size (README's first command): training questions per task, and test
#: questions per task. Sized so that `qrdistill run` finishes in about half an hour on 2 CPU cores;
#: benchmarks/bench_demo.py measures it.
DEMO_TRAIN = {"procedural_date": 96, "procedural_arith": 48}
DEMO_EVAL = {"procedural_date": 60, "procedural_arith": 20}
#: Single-shift questions only, in training and test. With two shifts too (difficulty [1, 2]) each student
#: saw ~55 single-shift paths and got 80-90 % of its date claims wrong on both levels, at any style or wording
#: tried (README, "What the default run found"); configs/ tables train and test on levels 1-2.
DEMO_DIFFICULTY = [1]
#: The demo's styles: three of the six (step-by-step prose, one linear paragraph, a backward check), so that
#: the training budget buys twice as many distinct date questions; configs/ tables use all six. No program,
#: as a hypothesis (README, "What the default run found"): a student routed the program paths writes programs
#: at test time and states their output itself (nothing runs them); the runs with and without it differ
#: within their noise. 20 arithmetic test questions: arithmetic is not learned at this size, and the time
#: they took is the demo's margin under 30 minutes.
DEMO_STYLES = ["cot", "vanilla", "backward"]


def demo_evaluate() -> EvaluateConfig:
    """The demo's evaluation: a sample of each procedural test split at the training difficulty levels.

    Base models get a 128-token budget: the bundled base model (Gemma-3-270M) never ends an answer
    on its own and would otherwise decode every question to the budget (summary.json reports the
    share cut); trained students get 1.25 x their training responses' p99 (max_new_tokens: auto).
    """
    from qrdistill.config.evaluate import EvalTaskSpec

    return EvaluateConfig(
        tasks=[EvalTaskSpec(name=n, split="test", limit=k, difficulty=DEMO_DIFFICULTY) for n, k in DEMO_EVAL.items()],
        batch_size=64, base_max_new_tokens=128,
    )


#: A price in USD per million tokens; strict: YAML reads `input: true` as a boolean, which a lax float takes as 1.
Usd = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]


class ModelPrice(BaseModel):
    """What one model costs, as its provider bills it. qrdistill knows no prices: they come only from here."""

    model_config = ConfigDict(extra="forbid")

    input: Usd = Field(description="USD per million input (prompt) tokens.")
    output: Usd = Field(description="USD per million output (completion) tokens.")
    cached_input: Usd | None = Field(
        None, description="USD per million input tokens the provider reports as served from its prompt cache "
        "(stored with a completion as meta.cached_tokens); unset: charged at `input`.",
    )


def _budget_error(loc: tuple[str, ...], budget: float, model: str, model_field: str) -> ValidationError:
    from pydantic_core import InitErrorDetails, PydanticCustomError

    # Formatted here: the error's own template would read the braces of the example as placeholders.
    text = (f"a budget needs the price of the model it pays for, and `prices` has no entry for {model!r} "
            f"({model_field}); add prices: {{{model}: {{input: <USD per 1M input tokens>, output: <USD per 1M "
            f"output tokens>}}}}")
    msg = PydanticCustomError("budget_without_price", text)
    return ValidationError.from_exception_data("RunConfig", [InitErrorDetails(type=msg, loc=loc, input=budget)])


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_dir: str = Field("runs/default", description="Directory holding every artifact of this run.")
    # strict: YAML reads `seed: true` as a boolean, which a lax int would silently take as 1.
    seed: int = Field(0, strict=True, description="Global seed: data order, sampling, router noise, simulated teacher.")
    seeds: list[Annotated[int, Field(strict=True)]] | None = Field(
        None, description="`qrdistill run` trains and evaluates once per seed, each in <run_dir>/seed-<s>/ "
        "(teacher paths generated and filtered once); analyze reports mean and spread over seeds.",
    )
    tasks: list[TaskSpec] = Field(
        default_factory=lambda: [
            TaskSpec(name="procedural_date", split="train", limit=DEMO_TRAIN["procedural_date"], difficulty=DEMO_DIFFICULTY),
            TaskSpec(name="procedural_arith", split="train", limit=DEMO_TRAIN["procedural_arith"], difficulty=DEMO_DIFFICULTY),
        ],
        description="Tasks whose training questions the teacher answers.",
    )
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    rl: RLConfig = Field(default_factory=RLConfig, description="`qrdistill rl`: GRPO on the distilled students.")
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig,
        description="Evaluation; when the section is absent from a config, the test split of every task. The "
        "built-in demo (no config) evaluates a fixed sample of each procedural test split instead (DEMO_EVAL).",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Model name (as generate.teacher.model / filter.judge.backend.model spell it) -> its price "
        "in USD per million tokens, e.g. {gpt-4o-mini: {input: 0.15, output: 0.6, cached_input: 0.075}}. Empty "
        "by default and never guessed: without a price, dry runs and the report count tokens only.",
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
        # Paths are identified by task name and question id: two entries of one task would mix their questions.
        first: dict[str, int] = {}
        for i, spec in enumerate(v):
            if spec.name in first:
                raise ValueError(f"task {spec.name!r} is listed twice (tasks.{first[spec.name]} and tasks.{i}); "
                                 f"list each task once")
            first[spec.name] = i
        return v

    @field_validator("prices")
    @classmethod
    def _named(cls, v: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        if any(not name.strip() for name in v):
            raise ValueError("a price needs the model's name as its key")
        return v

    @model_validator(mode="after")
    def _budgets_priced(self) -> RunConfig:
        gen = self.generate
        if gen.budget_usd is not None and gen.teacher.model not in self.prices:
            raise _budget_error(("generate", "budget_usd"), gen.budget_usd, gen.teacher.model,
                                "generate.teacher.model")
        judge = self.filter.judge
        if self.filter.budget_usd is not None and judge.kind == "llm" and judge.backend.model not in self.prices:
            raise _budget_error(("filter", "budget_usd"), self.filter.budget_usd, judge.backend.model,
                                "filter.judge.backend.model")
        return self

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("give distinct seeds, e.g. [0, 1, 2], or leave seeds unset for one run")
        return v


def _yaml_loader() -> Any:
    """The safe loader, libyaml's when installed: PyYAML's pure-Python scanner is quadratic in nested
    flow collections (a few KB of `[` take seconds, more take minutes); libyaml is linear and caps
    the nesting depth."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def yaml_lines(text: str) -> dict[tuple[Any, ...], int]:
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
        root = yaml.compose(text, Loader=_yaml_loader())
        if root is not None:
            _check_node_graph(root)
            walk(root, ())
    except (yaml.YAMLError, _AliasError, RecursionError):
        return lines
    return lines


#: Values a config may expand to once YAML aliases are followed; real configs hold a few hundred.
MAX_CONFIG_NODES = 100_000


class _AliasError(Exception):
    def __init__(self, line: int, msg: str) -> None:
        super().__init__(msg)
        self.line, self.msg = line, msg


def _check_node_graph(root: Any) -> None:
    """Refuse a YAML document whose aliases refer to themselves or expand to a huge tree.

    PyYAML builds a self-referencing alias (`a: &x [*x]`) into a cyclic list, and nested aliases
    (the "billion laughs") into a tree of exponential size; validating either would recurse
    without end or run for hours.
    """
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _AliasError(node.start_mark.line + 1, "invalid YAML (an alias refers to the value it names)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            children = [c for pair in node.value for c in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_NODES:
                raise _AliasError(node.start_mark.line + 1, f"invalid YAML (the aliases expand to more than "
                                  f"{MAX_CONFIG_NODES} values)")
        active.discard(key)
        sizes[key] = total
        return total

    size(root)


#: Tags that discriminated unions insert into an error's location (the union members' `kind`s).
UNION_TAGS = frozenset({"openai", "hf", "vllm", "simulated", "file", "llm", "steps", "none"})


def format_validation_error(err: ValidationError, source: str | None = None, text: str | None = None) -> str:
    lines = yaml_lines(text) if text else {}
    msgs = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        # Discriminated unions insert the tag into the location; drop it for the user.
        loc_clean = tuple(x for x in loc if x not in UNION_TAGS)
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
    data: dict[str, Any] = {}
    text = None
    source = None
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        text = read_config_text(p)
        data = parse_yaml(p, text)
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
    except RecursionError:
        raise ConfigError(f"{source or 'config'}: values nested too deeply") from None


def read_config_text(p: Path) -> str:
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file ({e.strerror or e})") from None
    from qrdistill.io import decode_utf8

    return decode_utf8(p, raw, ConfigError, "config")


def parse_yaml(p: Path, text: str) -> dict[str, Any]:
    import yaml

    try:
        root = yaml.compose(text, Loader=_yaml_loader())
        if root is not None:
            _check_node_graph(root)
        data = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}{line}: invalid YAML ({problem})") from None
    except _AliasError as e:
        raise ConfigError(f"{p}:{e.line}: {e.msg}") from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML (nested too deeply)") from None
    except Exception as e:  # noqa: BLE001
        # PyYAML's constructors let other errors through on explicit tags and odd scalars (a date
        # 2024-13-45, a huge !!int, an empty !!timestamp); whatever they raise, the text is at fault.
        raise ConfigError(f"{p}: invalid YAML value ({type(e).__name__}: {e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a YAML mapping of sections")
    return data


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


__all__ = ["ModelPrice", "RunConfig", "UNION_TAGS", "format_validation_error", "load_config", "parse_yaml",
           "read_config_text", "yaml_lines"]
