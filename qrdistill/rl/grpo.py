"""GRPO on one distilled student, on TRL's `GRPOTrainer` (the `trl` package, extra `rl`).

The policy is the student's base model with its distilled LoRA adapter loaded trainable (PEFT adapter
`default`); with `rl.beta > 0` TRL copies that adapter into a frozen `ref` adapter, so the KL term pulls
towards the distilled student, not towards the base. Each reward term of `rl.rewards.weights` with a
positive weight is one TRL reward function (TRL sums them with `reward_weights`, and logs each term's
mean as `rewards/<term>/mean`); each calls the pure reward of `qrdistill.rl.rewards` on every completion,
with the question's record and reference path from the dataset's columns (TRL passes every column to a
reward function as a keyword argument, one value per completion).

Every reward-model call goes through the run's completion store (`qrdistill.rl.caller`): before the
structure term scores a batch, all of its extractions are asked in one store batch, so the completions
of a step already scored (before a kill, say) are read back, not asked again.

Artifacts (rank 0), under `work` = D/rl/<student>/:
- checkpoints/checkpoint-<step>/: TRL checkpoints (adapter, optimizer, scheduler, RNG state), every
  `rl.checkpoint_every` steps, the newest `rl.keep_checkpoints` kept; a rerun resumes from the newest
  complete one, and resumes the same sampling (TRL restores the RNG state), so on CPU the steps redone
  after a kill produce the same completions and their reward-model calls come from the store (CUDA
  kernels need not be deterministic: new completions there cost new calls, none is asked twice);
- log.jsonl: one row per step: mean of each reward term, total reward, KL, loss, wall time of the step
  and the seconds of it spent in reward functions (extraction, matching and their model calls);
- tb/: the same as TensorBoard scalars (when tensorboard is installed).
The adapter is saved with PEFT to `out` (D/rl/adapters/<student>/), with the tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdistill.errors import ConfigError, DataError
from qrdistill.rl.data import Reference, RLQuestion

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
#: what a TRL checkpoint holds once complete (trainer_state.json is written last)
CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")
#: a reward function's failure reasons kept in the summary (most frequent first)
TOP_REASONS = 5


def require_trl() -> Any:
    """The trl package, or a ConfigError saying how to install it."""
    try:
        import trl
    except ImportError:
        raise ConfigError("rl: the rl stage runs on TRL's GRPOTrainer, which is not installed: "
                          "pip install 'qrdistill[rl]'") from None  # fmt: skip
    return trl


# ---------------------------------------------------------------- rewards as TRL calls them


@dataclass
class RewardLedger:
    """What the reward functions did in this process: their time, values and failures, per term."""

    seconds: float = 0.0
    values: dict[str, list[float]] = field(default_factory=dict)
    failed: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, term: str, value: float, reason: str | None, failed: bool) -> None:
        self.values.setdefault(term, []).append(value)
        if failed:
            self.failed[term] += 1
        if reason:
            self.reasons.setdefault(term, Counter())[reason[:200]] += 1

    def gathered(self, state: Any) -> RewardLedger:
        """The failures of every process (in one process: this ledger); seconds and values stay this process's."""
        if state.num_processes == 1:
            return self
        from accelerate.utils import gather_object

        out = RewardLedger(self.seconds, self.values)
        for failed, reasons in gather_object([(dict(self.failed), {t: dict(c) for t, c in self.reasons.items()})]):
            out.failed.update(failed)
            for t, c in reasons.items():
                out.reasons.setdefault(t, Counter()).update(c)
        return out


class BatchedExtractor:
    """A step extractor whose `prefetch` asks one batch's extractions together (an `llm` extractor: one store
    batch, so what is stored is read back and the rest asked in parallel); `extract` then reads them back.
    An extractor without `extract_many` (`claims`) is only passed through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self._memo: dict[tuple[str, str], Any] = {}

    def prefetch(self, pairs: Sequence[tuple[str, str]]) -> None:
        many = getattr(self.inner, "extract_many", None)
        if many is None:
            return
        todo = list(dict.fromkeys(pairs))
        # one batch's worth: a long run must not keep every completion it ever scored
        self._memo = dict(zip(todo, many(todo), strict=True)) if todo else {}

    def extract(self, text: str, question: str) -> Any:
        got = self._memo.get((text, question))
        return got if got is not None else self.inner.extract(text, question)

    def match(self, student: Any, reference: Any) -> Any:
        return self.inner.match(student, reference)


class TermReward:
    """One reward term as TRL calls it: `(prompts, completions, **dataset columns) -> one float each`."""

    def __init__(self, term: str, ctx: Any, ledger: RewardLedger, stop_at_answer: bool = True) -> None:
        from qrdistill.rl.rewards import REWARDS

        self.__name__ = term  # TRL names the term's logs after it (rewards/<term>/mean)
        self.term = term
        self.reward = REWARDS.get(term, f"rl.rewards.weights.{term}")
        self.ctx = ctx
        self.ledger = ledger
        self.stop_at_answer = stop_at_answer
        self._records: dict[str, Any] = {}

    def _record(self, task: str, record_json: str) -> Any:
        from qrdistill.rl.rewards import TaskRecord

        key = task + "\x1f" + record_json
        if key not in self._records:
            self._records[key] = TaskRecord.from_row({"task": task, "record": json.loads(record_json)})
        return self._records[key]

    def __call__(self, prompts: list[str], completions: list[str], task: list[str], record: list[str],
                 reference: list[str], **_: Any) -> list[float]:  # fmt: skip
        from qrdistill.evaluation.generation import cut_output

        start = time.perf_counter()
        try:
            # Rewarded on what evaluate scores: the completion up to its first finished answer line, so a second
            # answer line after it ("Wait, the answer is (B).") earns nothing.
            completions = [cut_output(c, self.stop_at_answer) for c in completions]
            records = [self._record(t, r) for t, r in zip(task, record, strict=True)]
            refs = [r or None for r in reference]
            extractor = self.ctx.extractor if self.ctx is not None else None
            if self.term == "structure" and isinstance(extractor, BatchedExtractor):
                from qrdistill.rl.rewards.base import task_for

                questions = [task_for(rec.task).prompt(rec.record) for rec in records]
                pairs = [(r, q) for r, q in zip(refs, questions, strict=True) if r is not None]
                extractor.prefetch(pairs + [(c, q) for c, q in zip(completions, questions, strict=True)])
            out = []
            for p, c, rec, ref in zip(prompts, completions, records, refs, strict=True):
                v = self.reward.detail(p, c, rec, ref, self.ctx)
                self.ledger.add(self.term, v.value, v.reason, v.failed)
                out.append(float(v.value))
            return out
        finally:
            self.ledger.seconds += time.perf_counter() - start


# ---------------------------------------------------------------- data


def dataset_rows(questions: Sequence[RLQuestion], refs: dict[str, Reference]) -> list[dict[str, str]]:
    """TRL's dataset: the prompt (TRL's required column), and what the rewards read, as plain strings."""
    return [
        {"prompt": q.prompt, "qid": q.qid, "task": q.task, "record": json.dumps(q.record.to_dict(), sort_keys=True),
         "reference": refs[q.qid].path.response, "reference_source": refs[q.qid].source}
        for q in questions
    ]


# ---------------------------------------------------------------- checkpoints


def _step_of(p: Path) -> int | None:
    tail = p.name[len(CHECKPOINT_PREFIX):]
    return int(tail) if p.name.startswith(CHECKPOINT_PREFIX) and tail.isdigit() else None


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete TRL checkpoint under `folder` (a kill during a save leaves one incomplete)."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.iterdir() if p.is_dir() and _step_of(p) is not None), key=_step_of,
                   reverse=True)  # fmt: skip
    for p in found:
        if all((p / f).exists() for f in CHECKPOINT_FILES) and any(p.glob("rng_state*.pth")):
            return p
        log.warning("rl: %s is incomplete (a save cut short); not resumed from", p)
    return None


def clear_work(work: Path) -> None:
    """Remove what a GRPO run writes under `work` (checkpoints, log, TensorBoard), nothing else."""
    for name in (CHECKPOINTS, "tb"):
        if (work / name).is_dir():
            shutil.rmtree(work / name)
    (work / LOG_FILE).unlink(missing_ok=True)


def _trim_log(path: Path, upto: int) -> None:
    """Keep the rows of steps <= `upto`: the steps after the checkpoint are trained again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row torn by the kill
        if isinstance(row, dict) and int(row.get("step", 0)) <= upto:
            keep.append(json.dumps(row))
    from qrdistill.io import atomic_write_text

    atomic_write_text(path, "".join(x + "\n" for x in keep))


def read_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


# ---------------------------------------------------------------- progress, log, TensorBoard


def _trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def make_progress_callback(name: str, work: Path, terms: Sequence[str], ledger: RewardLedger,
                           calls: Callable[[], int], on_begin: Callable[[], None]) -> Any:  # fmt: skip
    """A TrainerCallback: a progress bar with the mean reward of each term, log.jsonl rows and TensorBoard
    scalars, and the wall time of each step with its share spent in reward functions."""
    base = _trainer_callback_base()

    class RLProgress(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.bar = None
            self.tb = None
            self.t0 = self.r0 = 0.0
            self.wall = self.reward_s = None

        def on_train_begin(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            on_begin()
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"rl {name}", unit="step",
                            dynamic_ncols=True)  # fmt: skip
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(work / "tb"))
            except ImportError:
                self.tb = None

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.r0 = time.perf_counter(), ledger.seconds

        def on_step_end(self, args, state, control, **kw):
            self.wall = time.perf_counter() - self.t0
            self.reward_s = ledger.seconds - self.r0

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if not state.is_world_process_zero or "loss" not in logs:
                return  # the end-of-training log (train_runtime ...) is not a step
            rewards = {t: logs.get(f"rewards/{t}/mean") for t in terms}
            row = {"step": state.global_step, "rewards": rewards, "reward": logs.get("reward"),
                   "reward_std": logs.get("reward_std"), "kl": logs.get("kl"), "loss": logs.get("loss"),
                   "completion_length": logs.get("completions/mean_length"),
                   "wall_s": self.wall, "reward_s": self.reward_s, "reward_calls": calls()}  # fmt: skip
            with (work / LOG_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for k, v in logs.items():
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        self.tb.add_scalar(f"rl/{k}", v, state.global_step)
                for k in ("wall_s", "reward_s"):
                    if row[k] is not None:
                        self.tb.add_scalar(f"rl/time/{k}", row[k], state.global_step)
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)
                self.bar.set_postfix_str(" ".join(
                    f"{t}={v:.3f}" for t, v in rewards.items() if v is not None) + (
                    f" kl={row['kl']:.3g}" if row["kl"] is not None else ""))

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
            if self.tb is not None:
                self.tb.close()

    return RLProgress()


# ---------------------------------------------------------------- the student


def _dtype(spec: Any, cuda: bool) -> Any:
    import torch

    from qrdistill.train.students import _torch_dtype

    want = _torch_dtype(getattr(spec, "dtype", None), "train.students.dtype")
    if want is None:
        want = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return want


def load_policy(spec: Any, adapter: Path, cuda: bool) -> tuple[Any, Any]:
    """(PeftModel with the distilled adapter trainable as `default`, left-padding tokenizer)."""
    from peft import PeftModel

    from qrdistill.evaluation.generation import load_tokenizer
    from qrdistill.models import quiet_peft_wrap, resolve_model

    path = resolve_model(str(spec.model))
    try:
        from transformers import AutoModelForCausalLM

        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(spec, cuda))
    except (OSError, ValueError) as e:
        raise ConfigError(f"train.students: cannot load model {spec.model!r} ({str(e).splitlines()[0][:160]})"
                          ) from None  # fmt: skip
    try:
        with quiet_peft_wrap():
            policy = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    except Exception as e:  # noqa: BLE001 -- whatever PEFT or safetensors raise, the cause is this folder
        raise DataError(f"{adapter}: cannot load the distilled adapter of {spec.name} "
                        f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None
    model.config.use_cache = True  # generation; the students' loader turns it off for training
    return policy, tokenizer


def save_adapter(policy: Any, tokenizer: Any, out: Path) -> None:
    """The trained `default` adapter only (not TRL's frozen `ref` copy), replacing `out` atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp) / "adapter"
        policy.save_pretrained(str(staged), selected_adapters=["default"])
        tokenizer.save_pretrained(str(staged))
        old = Path(tmp) / "old"
        if out.exists():
            os.replace(out, old)
        os.replace(staged, out)


@dataclass
class StudentRun:
    """Everything one student's GRPO needs."""

    spec: Any  # train.students entry
    adapter_in: Path
    adapter_out: Path
    work: Path
    questions: Sequence[RLQuestion]
    refs: dict[str, Reference]
    rl: Any  # RLConfig
    seed: int
    max_completion_length: int
    fingerprint: str
    ctx: Any  # RewardContext
    calls: Callable[[], int] = lambda: 0
    #: evaluate.stop_at_answer: rewards read the completion as evaluate cuts it
    stop_at_answer: bool = True
    #: train/summary.json's digests of the distilled adapter RL starts from (evaluate checks them)
    distilled_adapter: Any = None


@contextlib.contextmanager
def _quiet_checkpointing_renames() -> Iterator[None]:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing; TRL 1.16 still sets and reads the
    old names (at every generation), and the FutureWarnings are upstream noise a user cannot act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`(is_)?gradient_checkpointing` is deprecated.*",
                                category=FutureWarning)
        yield


def process_state(cuda: bool) -> Any:
    """accelerate's state of this process (under torchrun / accelerate launch: one of several, in one process
    group with gloo on CPU); TRL's trainer later joins the same state."""
    from accelerate import PartialState

    return PartialState(cpu=not cuda)


def grpo_args(run: StudentRun, cuda: bool, bf16: bool) -> Any:
    from trl import GRPOConfig

    rc = run.rl
    return GRPOConfig(
        output_dir=str(run.work / CHECKPOINTS),
        num_generations=rc.num_generations,
        per_device_train_batch_size=rc.questions_per_step * rc.num_generations,
        gradient_accumulation_steps=1,
        max_completion_length=run.max_completion_length,
        max_steps=rc.max_steps,
        learning_rate=rc.lr,
        beta=rc.beta,
        temperature=rc.temperature,
        reward_weights=[float(getattr(rc.rewards.weights, t)) for t in terms_of(rc)],
        seed=run.seed,
        data_seed=run.seed,
        logging_steps=1,
        save_strategy="steps",
        save_steps=rc.checkpoint_every,
        save_total_limit=rc.keep_checkpoints,
        save_only_model=False,  # optimizer, scheduler and RNG: a resumed run continues the same run
        report_to=[],  # TensorBoard scalars come from our callback, into D/rl/<student>/tb
        disable_tqdm=True,  # our bar shows the reward terms
        use_cpu=not cuda,
        bf16=bf16,  # TRL's default is bf16 whenever fp16 is off, on CPU too
        gradient_checkpointing=rc.gradient_checkpointing,  # TRL's default is on
        disable_dropout=rc.disable_dropout,
        remove_unused_columns=False,  # the rewards read qid, task, record and reference
        dataloader_num_workers=0,
        log_completions=False,
    )


def terms_of(rc: Any) -> list[str]:
    """The reward terms with a positive weight, in RewardWeights' order."""
    return [t for t, w in rc.rewards.weights.model_dump().items() if w > 0]


def train_student(run: StudentRun) -> dict[str, Any]:
    """GRPO on one student (resuming its newest checkpoint, if any); saves the adapter; -> its summary."""
    import torch

    require_trl()
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    cuda = torch.cuda.is_available()
    state = process_state(cuda)
    fp_file = run.work / "fingerprint"
    same = fp_file.exists() and fp_file.read_text(encoding="utf-8").strip() == run.fingerprint
    resume = last_checkpoint(run.work / CHECKPOINTS) if same else None
    # Every process decides from the same files: none may read them after rank 0 has cleared them.
    state.wait_for_everyone()
    if state.is_main_process:
        run.work.mkdir(parents=True, exist_ok=True)
        if not same:
            if (run.work / CHECKPOINTS).exists():
                log.info("rl %s: the config, seed or distilled adapter changed since %s; starting over",
                         run.spec.name, run.work / CHECKPOINTS)
            clear_work(run.work)
        elif resume is None:
            clear_work(run.work)
    terms = terms_of(run.rl)
    ledger = RewardLedger()
    policy, tokenizer = load_policy(run.spec, run.adapter_in, cuda)
    bf16 = next(policy.parameters()).dtype == torch.bfloat16
    rewards = [TermReward(t, run.ctx, ledger, run.stop_at_answer) for t in terms]

    def begin() -> None:
        if resume is not None:
            _trim_log(run.work / LOG_FILE, int(_step_of(resume) or 0))
        from qrdistill.io import atomic_write_text

        atomic_write_text(fp_file, run.fingerprint + "\n")

    callback = make_progress_callback(run.spec.name, run.work, terms, ledger, run.calls, begin)
    with _quiet_checkpointing_renames():
        args = grpo_args(run, cuda, bf16)
        trainer = GRPOTrainer(model=policy, reward_funcs=rewards, args=args,
                              train_dataset=Dataset.from_list(dataset_rows(run.questions, run.refs)),
                              processing_class=tokenizer, callbacks=[callback])  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; the bar shows what matters
        if resume is not None:
            log.info("rl %s: resuming from %s", run.spec.name, resume)
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        elapsed = time.perf_counter() - started
    if trainer.state.global_step < run.rl.max_steps:
        # a short run must not pass for a finished one (its adapter would be shown as RL's)
        raise DataError(f"rl {run.spec.name}: GRPO stopped after {trainer.state.global_step} of "
                        f"{run.rl.max_steps} steps (rl.max_steps): TRL's sampler ran out of questions")
    summary: dict[str, Any] = {}
    everyone = ledger.gathered(state)
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, tokenizer, run.adapter_out)
        summary = student_summary(run, terms, everyone, resume, elapsed, args)
    trainer.accelerator.wait_for_everyone()
    del trainer, policy
    return summary


def student_summary(run: StudentRun, terms: Sequence[str], ledger: RewardLedger, resume: Path | None,
                    elapsed: float, args: Any) -> dict[str, Any]:  # fmt: skip
    from qrdistill.train.artifacts import adapter_digest

    rows = read_log(run.work / LOG_FILE)

    def mean(xs: Sequence[float | None]) -> float | None:
        vals = [x for x in xs if x is not None and math.isfinite(x)]
        return sum(vals) / len(vals) if vals else None

    walls = [r.get("wall_s") for r in rows]
    reward_s = [r.get("reward_s") for r in rows]
    timed = [(w, s) for w, s in zip(walls, reward_s, strict=True) if w is not None and s is not None]
    return {
        "name": run.spec.name,
        "model": run.spec.model,
        "adapter_in": str(run.adapter_in),
        "distilled_adapter": run.distilled_adapter,
        "adapter": str(run.adapter_out),
        "adapter_digest": adapter_digest(run.adapter_out),
        "fingerprint": run.fingerprint,
        "seed": run.seed,
        "steps": len(rows),
        "questions": len(run.questions),
        "processes": args.world_size,  # each step: questions_per_step x num_generations completions per process
        "resumed_from": str(resume) if resume is not None else None,
        "max_completion_length": run.max_completion_length,
        "terms": list(terms),
        "mean_rewards": {t: mean([(r.get("rewards") or {}).get(t) for r in rows]) for t in terms},
        "mean_reward": mean([r.get("reward") for r in rows]),
        "mean_kl": mean([r.get("kl") for r in rows]),
        "last_rewards": (rows[-1].get("rewards") if rows else None),
        "wall_per_step_s": mean(walls),
        "reward_share": (sum(s for _, s in timed) / sum(w for w, _ in timed)) if timed and sum(
            w for w, _ in timed) > 0 else None,
        "train_seconds_this_run": elapsed,
        # every process's, of this run only (a resumed run does not know the killed one's)
        "reward_failures": dict(ledger.failed),
        "reward_failure_reasons": {t: dict(c.most_common(TOP_REASONS)) for t, c in ledger.reasons.items()},
        "references": dict(Counter(run.refs[q.qid].source for q in run.questions)),
        "grpo": {k: getattr(args, k) for k in (
            "num_generations", "per_device_train_batch_size", "generation_batch_size", "max_completion_length",
            "max_steps", "learning_rate", "lr_scheduler_type", "beta", "temperature", "loss_type",
            "scale_rewards", "reward_weights", "num_iterations", "epsilon", "seed", "bf16",
            "gradient_checkpointing", "save_steps", "save_total_limit")},
    }


__all__ = ["BatchedExtractor", "RewardLedger", "StudentRun", "TermReward", "dataset_rows", "last_checkpoint",
           "require_trl", "train_student"]  # fmt: skip
