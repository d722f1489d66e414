"""Config of the train stage: students, router, losses, loop. Owned by the train stage.

The baselines are configs of the same loop (`method`), and the paper's
ablations are switches (`router.mode`, `lambda_mutual: 0`, `frozen_peer`,
`single_student`). Fields left unset (`None`) take the method's default, e.g.
`method: sft` means no router and no collaboration; setting a value that
contradicts the method is an error naming the field.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from qrdistill.config.generate import StrictPositiveInt

Method = Literal["qrdistill", "sft", "answer_aug", "skd", "step_by_step"]
RouterMode = Literal["learned", "random", "off"]

#: Student names become directory names and PEFT adapter names (PEFT keeps
#: adapters in a ModuleDict, so no dots).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

#: λ far outside this range means a typo (the paper's values are O(0.1)).
LAMBDA_MAX = 100.0


class LoraConfig(BaseModel):
    """LoRA adapter of one student (QLoRA on CUDA when the student's `qlora` is true)."""

    model_config = ConfigDict(extra="forbid")

    r: StrictPositiveInt = Field(16, le=1024, description="LoRA rank (the paper uses 32).")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    # 0 as in PEFT: on CPU the dropout mask on every adapted layer's input took 15 % of a demo training step
    # (cProfile, 8 steps of the default run). A regulariser for long runs; the multi-epoch table configs have
    # not been measured with and without it.
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input (PEFT's lora_dropout).")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' or module names, e.g. [q_proj, v_proj]."
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and (not v or any(not isinstance(m, str) or not m for m in v)):
            raise ValueError("give 'all-linear' or a non-empty list of module names")
        return v


class StudentConfig(BaseModel):
    """One student: a causal LM plus its own LoRA adapter and learning rate."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name; adapters are saved under train/adapters/<name>/.")
    model: str = Field(description="HF id, local path, or `gemma3-270m` (bundled).")
    lr: float = Field(2.0e-4, gt=0, le=1.0, description="Learning rate of this student's LoRA parameters.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    qlora: bool | None = Field(
        None, description="Load the base in 4-bit (bitsandbytes): None = when CUDA is present; true needs CUDA."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid student name (letters, digits, '_' or '-', at most 64)")
        # eval/<folder> of the base model (base:<model>), the RL student (rl:<name>) and the label-prefix
        # evaluation (<name>@label) are these forms: a student named so would share their folder
        if v.startswith(("base_", "rl_")) or v.endswith("_label"):
            raise ValueError(f"{v!r}: a student name may not start with 'base_' or 'rl_' nor end with '_label' "
                             "(evaluation folders of base models, RL students and label-prefix runs are named so)")
        return v


class RouterConfig(BaseModel):
    """Conditional routing (eqs. 1-2): frozen path encoder + MLP + Gumbel-Softmax; see docs/method.md."""

    model_config = ConfigDict(extra="forbid")

    mode: RouterMode | None = Field(
        None,
        description="learned: the trainable router (eqs. 1-2); random: the same Gumbel noise with P(route) fixed at "
        "1/2 (a control); off: every path to every student. None = learned for qrdistill, off for the baselines. "
        "`enabled: false` is accepted for `mode: off` (`enabled: true` for learned).",
    )
    encoder: str = Field("minilm", description="Path encoder: `minilm` (bundled) or any HF encoder id/path.")
    hidden: StrictPositiveInt = Field(256, description="Hidden width of the router MLP.")
    lr: float = Field(3.0e-3, gt=0, le=1.0, description="AdamW learning rate of the router (its own param group).")
    schedule: Literal["constant", "students"] = Field(
        "constant", description="Router learning-rate schedule: constant, or the students' warmup and decay "
        "(which leaves the router almost no steps at full rate in a short run)."
    )
    signal: Literal["relative", "own_mean"] = Field(
        "relative",
        description="What the router learns from. relative: each student's loss on a path minus the other "
        "students' losses on the same path (difficulty shared by all students cancels), centred per student; "
        "own_mean: the loss minus the student's own mean over its routed paths (eq. 9's straight-through "
        "gradient as written).",
    )
    peer_forward: bool = Field(
        False, description="relative signal: run a no-grad forward of the students a path was not routed to, so "
        "every path gives a comparison (costs about half a training step per such pair); false = only paths "
        "routed to two or more students compare.",
    )
    tau: float = Field(1.0, gt=0, le=100, description="Gumbel-Softmax temperature (start of the anneal).")
    tau_end: float = Field(0.5, gt=0, le=100, description="Temperature at the last step when anneal is on.")
    anneal: bool = Field(True, description="Anneal tau (geometrically) from tau to tau_end over training.")
    entropy_scope: Literal["batch", "question"] = Field(
        "batch", description="Eq. 3's mean assignment over the batch's paths, or per question then averaged "
        "(see docs/method.md)."
    )

    @model_validator(mode="before")
    @classmethod
    def _enabled_alias(cls, data):
        if isinstance(data, dict) and data.get("mode") is False:
            # YAML 1.1 reads an unquoted `mode: off` as false.
            data = {**data, "mode": "off"}
        if isinstance(data, dict) and "enabled" in data:
            data = dict(data)
            enabled = data.pop("enabled")
            if enabled is not None:
                if not isinstance(enabled, bool):
                    raise ValueError("enabled must be true or false (or use mode: learned | random | off)")
                if data.get("mode") is not None and data["mode"] != ("learned" if enabled else "off"):
                    raise ValueError(f"enabled: {str(enabled).lower()} contradicts mode: {data['mode']}")
                data["mode"] = "learned" if enabled else "off"
        return data

    @property
    def enabled(self) -> bool:
        """Whether routing selects a subset of students per path (learned or random)."""
        return self.mode in ("learned", "random")

    @property
    def learned(self) -> bool:
        return self.mode == "learned"


class MutualConfig(BaseModel):
    """Mutual-student distillation (eqs. 5-8); see docs/method.md for the choices the paper leaves open."""

    model_config = ConfigDict(extra="forbid")

    shared_dim: StrictPositiveInt = Field(128, le=8192, description="Width of the shared projection space (eq. 5).")
    lr: float = Field(1.0e-3, gt=0, le=1.0, description="Learning rate of projections and competence regressors.")
    # Default true: with a non-detached target, eq. 8 is smallest at uniform γ, so γ would carry no
    # information about which student is better (docs/method.md, "What trains γ").
    detach_target: bool = Field(
        True, description="Stop gradient through the ensemble target z_ens; γ's regressors are then trained "
        "by the competence term (cross-entropy against which student has the lower distill loss on the path). "
        "false: γ and projections learn through eq. 8 itself (γ drifts to uniform)."
    )
    init: Literal["shared", "independent"] = Field(
        "shared", description="shared: students of the same hidden width start with the same projection (and "
        "all regressors alike), so identical students start with a zero mutual loss; independent: each "
        "projection drawn on its own (a same-base pair then starts the term with noise).",
    )
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Share of the run's optimizer steps (the first round(ratio x steps)) in "
        "which the mutual term trains only the mutual head: the students' hidden states enter it detached, so "
        "projections drawn at random (students of different widths) line up before the term shapes the "
        "students. 0 = off.",
    )
    peer_paths: Literal["co_routed", "all"] = Field(
        "co_routed",
        description="co_routed: a path's mutual term uses the students it was routed to (the distill forward "
        "serves both terms); all: every student runs on every path (costs routing's time saving).",
    )


def _fail(msg: str) -> PydanticCustomError:
    """A validation error whose message is shown as-is (pydantic would prefix ValueErrors)."""
    return PydanticCustomError("train_config", msg)


class TrainConfig(BaseModel):
    # Field order matters: each validator sees the fields declared above it, so
    # that every error is attached to (and its YAML line found for) the field at fault.
    model_config = ConfigDict(extra="forbid")

    method: Method = Field(
        "qrdistill",
        description="qrdistill (router + entropy + mutual) | sft (all kept paths of every style to every student: "
        "no router, no collaboration) | answer_aug (the k sampled paths of one style per question, "
        "answer_aug_style) | skd (one chain-of-thought path per question) | step_by_step (rationale and answer "
        "as two supervised outputs).",
    )
    single_student: bool = Field(False, description="Train exactly one student (no router, no collaboration).")
    students: list[StudentConfig] = Field(
        # Two different real models, as in the paper (Mistral-7B and Gemma-7B there): Gemma-3-270M base
        # (640 wide, 262k-token vocabulary) and SmolLM2-135M-Instruct (Llama, 576 wide, 49k tokens).
        default_factory=lambda: [
            StudentConfig(name="gemma", model="gemma3-270m", lr=1.0e-3,
                          lora=LoraConfig(r=16, alpha=32, target_modules="all-linear")),
            # 1e-3 for both: the demo at 2e-3 for SmolLM2 (8e73145) made it repeat "Forward pass:" lines until
            # the budget on 34 of 60 date questions (8.3 % against 26.7 % at 1e-3, 7135738).
            StudentConfig(name="smollm2", model="smollm2-135m", lr=1.0e-3,
                          lora=LoraConfig(r=16, alpha=32, target_modules="all-linear")),
        ],
        description="S >= 2 students (any causal LMs, possibly different architectures and tokenizers).",
    )
    router: RouterConfig = Field(default_factory=RouterConfig, validate_default=True)
    lambda_entropy: float | None = Field(
        None, validate_default=True,
        description="λ1 of eq. 9 (weight of the routing entropy, maximised). None = 0.1 with a router, else 0.",
    )
    lambda_load: float | None = Field(
        None, validate_default=True,
        description="Weight of the load term (maximised): the mean over students of the binary entropy of each "
        "student's own mean assignment, so no student can be starved or flooded. None = 0.5 with a learned "
        "router, else 0.",
    )
    lambda_mutual: float | None = Field(
        None, validate_default=True,
        description="λ2 of eq. 9 (mutual distillation). None = 0.1 for qrdistill, else 0; 0 = w/o collaboration.",
    )
    mutual: MutualConfig = Field(default_factory=MutualConfig)
    frozen_peer: str | None = Field(
        None, description="Name of a student whose parameters stay fixed (it still feeds the ensemble)."
    )
    answer_aug_style: str = Field(
        "cot", description="answer_aug: the one style whose sampled paths (generate.samples_per_style) are the data."
    )
    # 2 for the built-in demo: after one epoch (68 steps of 4) SmolLM2 was 13 points above its base (p = 0.12);
    # after two, 28 points (p = 5e-4) and Gemma 50 (README, "How the demo got here").
    epochs: StrictPositiveInt = Field(2, le=1000)
    step_budget: Literal["matched", "epochs"] = Field(
        "matched", description="matched: every method takes epochs x (kept paths / effective batch) optimizer "
        "steps, cycling its own items, so methods compared in one table train equally long; epochs: epochs "
        "passes over the method's own items (the paper's counts: 10 epochs, 3 for math).",
    )
    max_steps: StrictPositiveInt | None = Field(
        None, description="Optimizer steps to run; overrides epochs (the data is cycled as needed)."
    )
    batch_size: StrictPositiveInt = Field(4, le=4096, description="Paths per device per micro-batch.")
    grad_accum: StrictPositiveInt = Field(1, le=1024, description="Micro-batches per optimizer step.")
    max_length: Literal["auto"] | StrictPositiveInt = Field(
        "auto", description="Tokens per (prompt, response) pair. auto: the p99 of the data's pair lengths, per "
        "student tokenizer, capped by max_length_cap. A pair that does not fit is dropped and counted, never cut; "
        "more than 1% dropped is an error.",
    )
    max_length_cap: StrictPositiveInt = Field(2048, ge=16, description="Upper bound of max_length: auto.")
    answer_weight: float = Field(
        5.0, ge=0, le=1000, description="Loss weight of the final-answer line's tokens relative to the rest."
    )
    data_fraction: float = Field(
        1.0, gt=0, le=1, description="Fraction of training QUESTIONS kept (seeded), for the sample-efficiency sweep."
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay of students and mutual head.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (None = off).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Linear warmup share of the steps, then decay.")
    scheduler: Literal["linear", "constant_with_warmup", "cosine"] = Field(
        "linear", description="Learning-rate schedule of the students and the mutual head (the router has its own)."
    )
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="Autocast on GPU (accelerate).")
    checkpoint_every: StrictPositiveInt = Field(50, description="Optimizer steps between checkpoints (plus the last).")
    keep_checkpoints: StrictPositiveInt = Field(2, description="Most recent checkpoints kept on disk.")
    log_every: StrictPositiveInt = Field(1, description="Optimizer steps between log.jsonl rows.")
    trackers: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="tensorboard writes train/tb/; others go through accelerate's log_with.",
    )

    @staticmethod
    def _joint(info: ValidationInfo) -> tuple[bool, str]:
        single = info.data.get("single_student", False)
        method = info.data.get("method", "qrdistill")
        return method == "qrdistill" and not single, ("single_student" if single else f"method {method}")

    @field_validator("students")
    @classmethod
    def _students(cls, v: list[StudentConfig], info: ValidationInfo) -> list[StudentConfig]:
        n = len(v)
        if info.data.get("single_student"):
            if n != 1:
                raise _fail(f"single_student: true trains exactly one student, {n} given")
        elif n < 2:
            raise _fail(
                f"QR-Distill trains S >= 2 students jointly, {n} given (set train.single_student: true to train one)"
            )
        seen: dict[str, int] = {}
        for i, s in enumerate(v):
            if s.name in seen:
                raise _fail(f"students {seen[s.name]} and {i} are both named {s.name!r}; names must be unique")
            seen[s.name] = i
        return v

    @field_validator("router")
    @classmethod
    def _router(cls, v: RouterConfig, info: ValidationInfo) -> RouterConfig:
        joint, why = cls._joint(info)
        v = v.model_copy()
        if v.mode is None:
            v.mode = "learned" if joint else "off"
        elif v.mode != "off" and not joint:
            raise _fail(f"{why} trains without a router; remove router.mode or set it to off")
        if v.anneal and v.tau_end > v.tau:
            raise _fail(f"annealing lowers tau, but tau_end {v.tau_end} > tau {v.tau}")
        return v

    @field_validator("lambda_entropy", "lambda_load", "lambda_mutual")
    @classmethod
    def _lambda(cls, v: float | None, info: ValidationInfo) -> float:
        which = {"lambda_entropy": "λ1 (routing entropy)", "lambda_load": "the load term",
                 "lambda_mutual": "λ2 (mutual distillation)"}[info.field_name]
        if v is not None and (math.isnan(v) or v < 0 or v > LAMBDA_MAX):
            raise _fail(f"{which} must be in [0, {LAMBDA_MAX:g}], got {v}")
        if info.field_name in ("lambda_entropy", "lambda_load"):
            router = info.data.get("router")
            on = bool(router and router.learned)
            if v is None:
                return (0.1 if info.field_name == "lambda_entropy" else 0.5) if on else 0.0
            if v > 0 and not on:
                raise _fail(f"{which} regularises the learned router, which this run does not train; must be 0")
            return v
        joint, why = cls._joint(info)
        if v is None:
            return 0.1 if joint else 0.0
        if v > 0 and not joint:
            raise _fail(f"{why} trains without collaboration; must be 0")
        return v

    @field_validator("frozen_peer")
    @classmethod
    def _frozen(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or "students" not in info.data:  # a students error is already reported
            return v
        names = [s.name for s in info.data["students"]]
        if v not in names:
            raise _fail(f"{v!r} names no student (students: {', '.join(names)})")
        if len(names) < 2:
            raise _fail("freezing the only student leaves nothing to train")
        return v

    @property
    def student_names(self) -> list[str]:
        return [s.name for s in self.students]
