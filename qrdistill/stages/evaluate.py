"""Evaluate stage: zero-shot chain-of-thought accuracy of base and trained students.

Every student answers each test question with the prompt training used
(`qrdistill.prompting.student_prompt`), by batched greedy decoding; the
task's own `is_correct` (the filter's check) scores it. Artifacts:

- D/eval/<student>/<task>.jsonl: one prediction per question (qid, prompt,
  output, pred, correct, strict_pred, strict_correct, conflict, stop, gold,
  logprob{sum, mean}, n_tokens, max_new_tokens, key). Rows are appended batch
  by batch; a rerun skips rows whose key (model, adapter, prompt, generation
  settings) still matches, so nothing is generated twice.
- D/eval/summary.json and summary.md: per student x task, flexible and strict
  accuracy side by side (as lm-evaluation-harness reports them) with bootstrap
  intervals, the share of answers cut by the budget and the share without a
  strict answer line, letter/text conflicts; each trained student against its
  zero-shot base on the same questions (paired bootstrap interval of the
  difference and exact McNemar p); the ensemble pick of the trained students
  (and of the base models), and the task's answer-free shortcut baselines.

Students are named `<name>` (a trained adapter from D/train/adapters/<name>)
and `base:<model>` (each unique base model of train.students once: the
zero-shot baseline). A Distill Step-by-Step student is evaluated twice: `<name>`
with the rationale prefix (it writes a path ending in the answer) and
`<name>@label` with the label prefix (it writes the answer line only).
Adapters on the same base share one loaded model. Trained adapters are
evaluated only when they are what the finished training recorded:
D/train/summary.json holds the sha256 of each adapter, and adapters that do
not match it, or whose training has not finished, are refused.

With `evaluate.backend: openai` the models are not loaded here: an
OpenAI-compatible server answers the same prompts with the same budgets
and answer stops (`qrdistill.evaluation.server`), under the names
`evaluate.server.models` gives each student (a zero-shot base model only when
it names one), into the same artifacts. A row's key then also holds the
served name, so switching backends answers the questions again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrdistill.errors import ConfigError, DataError, MissingArtifactError
from qrdistill.io import atomic_write_json, atomic_write_text, read_json, write_run_meta

log = logging.getLogger(__name__)

BASE_PREFIX = "base:"
#: a student after `qrdistill rl` (its adapter from D/rl/adapters/<name>)
RL_PREFIX = "rl:"
LABEL_SUFFIX = "@label"
#: max_new_tokens: auto gives a trained student this multiple of its training responses' p99 length.
AUTO_BUDGET_FACTOR = 1.25


@dataclass
class EvalTask:
    label: str
    task: Any
    records: list[Any]


@dataclass
class EvalTarget:
    """One model to evaluate: a base model, or a base plus a trained adapter."""

    key: str
    model: str
    adapter: Path | None = None
    members: list[str] = field(default_factory=list)
    #: the train method whose prompt this model answers (zero_shot for base models)
    method: str = "zero_shot"
    #: step_by_step students: "rationale" or "label", the prefix their prompt starts with
    prefix: str | None = None
    #: max_new_tokens: auto for a trained student (None = its task's default)
    budget: int | None = None
    #: the same per task it trained on (a task missing here takes `budget`)
    task_budgets: dict[str, int] = field(default_factory=dict)
    #: the trained student's name (targets of one student share it)
    student: str | None = None
    #: backend openai: the name the server serves this model under
    served: str | None = None

    @property
    def kind(self) -> str:
        return "trained" if self.adapter is not None else "base"


def run(cfg: Any, run_dir: str | Path, limit: int | None = None) -> dict[str, Any]:
    from qrdistill.stages.generate import run_dir_lock
    from qrdistill.train.artifacts import permission_errors

    run_dir = Path(run_dir)
    with permission_errors(run_dir, "evaluate"), run_dir_lock(run_dir, "evaluate"):
        return _run(cfg, run_dir, limit)


def _run(cfg: Any, run_dir: Path, limit: int | None) -> dict[str, Any]:
    from qrdistill.stages.train import STAGING_DIR, recover
    from qrdistill.train.artifacts import check_training

    ecfg = cfg.evaluate
    limit = limit if limit is not None else ecfg.limit
    tasks = load_eval_tasks(cfg, limit)
    recover(run_dir)
    staged = run_dir / STAGING_DIR
    if staged.is_dir():
        # Warn: the scores will be those of the earlier training, which may not be the current config's.
        state = ("a finished training not yet swapped in (`qrdistill train` again swaps it in)"
                 if check_training(staged)[0] is not None else "a training that has not finished")
        log.warning("%s holds %s; evaluating the earlier training in %s", staged, state, run_dir / "train")
    method = train_method(run_dir)
    targets, note = select_targets(cfg, run_dir, method)
    check_trained(cfg, run_dir, targets)
    _resolve_budgets(cfg, run_dir, targets)
    if ecfg.backend == "openai":
        targets, skipped = served_targets(cfg, targets)
        if not ecfg.server.logprobs and len(targets) > 1:
            skipped = "; ".join(x for x in (skipped, "no ensemble pick: it ranks answers by their log-probability, "
                                            "and evaluate.server.logprobs is off") if x)
        note = "; ".join(x for x in (note, skipped) if x) or None
    if note:
        log.info(note)
    write_run_meta(run_dir, "evaluate", cfg, {"students": [t.key for t in targets], "method": method})
    if ecfg.backend == "openai":
        predictions, checks = _predict_on_server(run_dir, tasks, targets, ecfg)
    else:
        predictions, checks = _predict_in_process(run_dir, tasks, targets, ecfg), None

    summary = summarize(cfg, run_dir, tasks, targets, predictions, method, note)
    if checks:
        summary["settings"]["prompt_tokens"] = checks
    atomic_write_json(run_dir / "eval" / "summary.json", summary)
    atomic_write_text(run_dir / "eval" / "summary.md", summary_markdown(summary))
    for key, st in list(summary["students"].items()) + list(summary["ensembles"].items()):
        log.info("%s: %s", key, ", ".join(
            f"{t} {_pct(a['accuracy'])}% [{_pct(a['ci_low'])}, {_pct(a['ci_high'])}]" for t, a in st["tasks"].items()))
    log.info("evaluation summary: %s", run_dir / "eval" / "summary.md")
    return summary


def _predict_in_process(run_dir: Path, tasks: list[EvalTask], targets: list[EvalTarget], ecfg: Any):
    """backend hf: each base model loaded once, its adapters activated in turn."""
    from qrdistill.evaluation.generation import (
        generate_greedy,
        load_causal_lm,
        load_tokenizer,
        resolve_device,
        resolve_dtype,
    )
    from qrdistill.models import resolve_model

    device = resolve_device(ecfg.device)
    dtype = resolve_dtype(ecfg.dtype, device)
    predictions: dict[str, dict[str, list[dict[str, Any]]]] = {}
    by_model: dict[str, list[EvalTarget]] = {}
    for t in targets:
        by_model.setdefault(t.model, []).append(t)
    for model_name, group in by_model.items():
        pending = [t for t in group if any(_missing(run_dir, t, et, ecfg) for et in tasks)]
        for t in group:
            if t not in pending:
                predictions[t.key] = {et.label: _load_predictions(run_dir, t, et, ecfg) for et in tasks}
        if not pending:
            continue
        path = resolve_model(model_name)
        try:
            tokenizer = load_tokenizer(path)
            model = load_causal_lm(path, device, dtype)
        except (OSError, ValueError) as e:
            raise ConfigError(f"train.students: cannot load model {model_name!r} ({e})") from None
        # The base goes first: wrapping it in PEFT injects LoRA layers into the same module tree.
        pending.sort(key=lambda t: t.adapter is not None)
        peft_model = None
        for t in pending:
            if t.adapter is not None:
                peft_model = _activate_adapter(model, peft_model, t)
            active = peft_model if t.adapter is not None else model

            def generate(prompts, budget, save, desc, active=active, tokenizer=tokenizer):
                generate_greedy(active, tokenizer, prompts, ecfg.batch_size, budget, ecfg.stop_at_answer,
                                on_batch=save, desc=desc)

            predictions[t.key] = {et.label: _evaluate(run_dir, t, et, ecfg, generate) for et in tasks}
        del model, peft_model
    return predictions


def _predict_on_server(run_dir: Path, tasks: list[EvalTask], targets: list[EvalTarget], ecfg: Any):
    """backend openai: every target from the server, under its served name -> (predictions, prompt checks)."""
    from qrdistill.evaluation.server import check_prompt_tokens, generate_remote, make_backend

    predictions: dict[str, dict[str, list[dict[str, Any]]]] = {}
    checks: dict[str, Any] = {}
    for t in targets:
        pending = [et for et in tasks if _missing(run_dir, t, et, ecfg)]
        predictions[t.key] = {et.label: _load_predictions(run_dir, t, et, ecfg) for et in tasks if et not in pending}
        if not pending:
            continue
        backend = make_backend(ecfg.server, t.served, ecfg.stop_at_answer)
        saved = _valid_saved(run_dir, t, pending[0], ecfg)
        first = next(r for r in pending[0].records if r.id not in saved)
        prompt = _prompt(pending[0], first, t)
        checks[t.key] = check_prompt_tokens(backend, prompt, _local_prompt_tokens(t.model, prompt))

        def generate(prompts, budget, save, desc, backend=backend):
            generate_remote(backend, prompts, budget, on_batch=save, desc=desc)

        for et in pending:
            predictions[t.key][et.label] = _evaluate(run_dir, t, et, ecfg, generate)
        # The summary lists tasks in config order.
        predictions[t.key] = {et.label: predictions[t.key][et.label] for et in tasks}
    return predictions, checks


def _local_prompt_tokens(model: str, prompt: str) -> int | None:
    """The hf path's prompt length in tokens (BOS included when its tokenizer adds one); None if the
    tokenizer is not available here (a hub model evaluated on a remote vLLM)."""
    from qrdistill.errors import QRDistillError
    from qrdistill.evaluation.generation import load_tokenizer
    from qrdistill.models import resolve_model

    try:
        tokenizer = load_tokenizer(resolve_model(model))
    except (OSError, ValueError, QRDistillError) as e:
        log.info("%s: no local tokenizer (%s); the server's prompt token count is not checked", model,
                 str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
        return None
    return len(tokenizer(prompt)["input_ids"])


# ---------------------------------------------------------------- what to evaluate


def load_eval_tasks(cfg: Any, limit: int | None) -> list[EvalTask]:
    from qrdistill.tasks import get_task
    from qrdistill.tasks.base import load_records

    specs = cfg.evaluate.tasks
    where = "evaluate.tasks"
    if specs is None:
        from qrdistill.config.evaluate import EvalTaskSpec

        specs = [EvalTaskSpec(name=s.name, path=s.path, difficulty=s.difficulty) for s in cfg.tasks]
        where = "tasks"
    names = [s.name for s in specs]
    out = []
    for i, spec in enumerate(specs):
        task = get_task(spec.name, f"{where}.{i}.name")
        splits = getattr(task, "split_names", None) or task.splits
        if spec.split not in splits:
            hint = "" if cfg.evaluate.tasks is not None else "; set evaluate.tasks to choose what to test on"
            raise ConfigError(
                f"{where}.{i}: task {spec.name!r} has no {spec.split!r} split to evaluate on "
                f"(it offers: {', '.join(splits)}){hint}"
            )
        n = spec.limit if spec.limit is not None else limit
        if spec.limit is not None and limit is not None:
            n = min(spec.limit, limit)
        records = load_records(task, spec, n, f"{where}.{i}")
        if not records:
            raise DataError(f"{where}.{i}: task {spec.name!r} has no questions in split {spec.split!r}")
        label = spec.name if names.count(spec.name) == 1 else f"{spec.name}-{spec.split}-{i}"
        out.append(EvalTask(label, task, records))
    return out


def rl_adapter_of(run_dir: Path, student: str) -> Path | None:
    """D/rl/adapters/<student> when `qrdistill rl` trained it from the distilled adapter train/ holds now and
    its summary describes this adapter; an RL adapter from an earlier training (train/ redone since), or one
    saved by a run killed before its summary, is skipped with a warning, not shown beside it."""
    from qrdistill.train.artifacts import adapter_digest, adapter_dir

    found = adapter_dir(run_dir / "rl" / "adapters" / student)
    if found is None:
        return None
    rl_summary = run_dir / "rl" / student / "summary.json"
    train_summary = run_dir / "train" / "summary.json"
    try:
        summary = read_json(rl_summary)
        started, saved = summary.get("distilled_adapter"), summary.get("adapter_digest")
        now = (read_json(train_summary).get("adapters") or {}).get(student)
    except (DataError, AttributeError):
        started, saved, now = None, None, None
    if started is None or started != now or saved != adapter_digest(found):
        log.warning("%s%s: skipped: %s does not record RL from the distilled adapter in %s (train/ changed "
                    "since, or the RL run did not finish); run `qrdistill rl` again", RL_PREFIX, student,
                    rl_summary, train_summary)
        return None
    return found


def select_targets(cfg: Any, run_dir: Path, method: str = "zero_shot") -> tuple[list[EvalTarget], str | None]:
    """Base models and/or trained adapters per `evaluate.students`; a note when training is absent."""
    students = list(cfg.train.students)
    which = cfg.evaluate.students
    from qrdistill.train.artifacts import adapter_dir

    adapters_dir = run_dir / "train" / "adapters"
    found = {s.name: adapter_dir(adapters_dir / s.name) for s in students}
    missing = [name for name, d in found.items() if d is None]
    note = None
    trained: list[EvalTarget] = []
    if which in ("trained", "all"):
        if missing:
            raise MissingArtifactError(
                f"no trained adapter for student(s) {', '.join(missing)} under {adapters_dir} "
                f"(evaluate.students={which}): run `qrdistill train` first"
            )
    if which in ("trained", "all") or (which == "auto" and not missing):
        for s in students:
            if method == "step_by_step":
                trained.append(EvalTarget(s.name, s.model, found[s.name], method=method, prefix="rationale",
                                          student=s.name))
                trained.append(EvalTarget(s.name + LABEL_SUFFIX, s.model, found[s.name], method=method,
                                          prefix="label", student=s.name))
            else:
                trained.append(EvalTarget(s.name, s.model, found[s.name], method=method, student=s.name))
    elif which == "auto":
        note = (
            f"the train stage has not run (no adapters under {adapters_dir}): "
            "evaluating the base students only (the zero-shot baseline)"
        )
    if trained:
        # After `qrdistill rl`: each RL-trained adapter beside its distilled student, on the same prompt and budget.
        for t in [t for t in trained if t.prefix != "label"]:
            rl_adapter = rl_adapter_of(run_dir, t.student)
            if rl_adapter is None:
                continue
            if cfg.evaluate.backend != "hf":
                log.warning("%s%s: not evaluated (RL adapters are scored with evaluate.backend: hf only)",
                            RL_PREFIX, t.key)
                continue
            trained.append(EvalTarget(RL_PREFIX + t.key, t.model, rl_adapter, method=method, prefix=t.prefix,
                                      student=t.student))
    base: list[EvalTarget] = []
    if which in ("base", "all", "auto"):
        for s in students:
            key = BASE_PREFIX + s.model
            if all(b.key != key for b in base):
                base.append(EvalTarget(key, s.model))
            next(b for b in base if b.key == key).members.append(s.name)
    return base + trained, note


def served_targets(cfg: Any, targets: list[EvalTarget]) -> tuple[list[EvalTarget], str | None]:
    """backend openai: each target's served name from evaluate.server.models -> (targets kept, note).

    A trained student without a name is a ConfigError; a zero-shot base without one is left out
    (with a note), unless evaluate.students asks for the base models by name (base, all)."""
    models = cfg.evaluate.server.models
    which = cfg.evaluate.students
    known = [s.name for s in cfg.train.students] + [BASE_PREFIX + s.model for s in cfg.train.students]
    for name in models:
        if name not in known:
            raise ConfigError(f"evaluate.server.models: {name!r} is not a student of train.students nor the base "
                              f"of one (expected one of: {', '.join(dict.fromkeys(known))})")
    kept, skipped = [], []
    for t in targets:
        name = models.get(t.student if t.adapter is not None else t.key)
        if name is None and t.adapter is not None:
            raise ConfigError(
                f"evaluate.server.models: no served model name for student {t.student!r}: add "
                f"`{t.student}: <name>`, the name the server serves its adapter under (the vLLM --lora-modules "
                "name, or the llama.cpp alias of its exported GGUF)")
        if name is None and which in ("base", "all"):
            raise ConfigError(
                f"evaluate.server.models: no served model name for the zero-shot base {t.key!r}, which "
                f"evaluate.students: {which} asks for: add `{t.key}: <name>` (the base model's name on the "
                "server), or set evaluate.students: trained")
        if name is None:
            skipped.append(t.key)
            continue
        t.served = name
        kept.append(t)
    if not kept:
        raise ConfigError(
            "evaluate.server.models: nothing to evaluate: the train stage has not run and no zero-shot base has "
            f"a served name (add `{targets[0].key}: <name>`)" if targets else
            "evaluate.server.models: nothing to evaluate")
    note = None
    if skipped:
        note = (f"zero-shot base model(s) {', '.join(skipped)} not evaluated: evaluate.server.models gives no "
                "served name for them (backend openai evaluates only what the server serves)")
    return kept, note


def check_trained(cfg: Any, run_dir: Path, targets: list[EvalTarget]) -> None:
    """Refuse trained adapters that are not what a finished training wrote (DataError, one line).

    With D/train/summary.json: it must be complete and record, for every student, the adapter that is there
    (sha256). Without one, adapters beside a training's log or checkpoints are left over from a training that
    has not finished; adapters alone were put there by hand and are evaluated as they are, with a warning."""
    from qrdistill.train.artifacts import check_training, has_traces

    train_dir = run_dir / "train"
    summary_file = train_dir / "summary.json"
    names = [s.name for s in cfg.train.students]
    trained = any(t.adapter is not None for t in targets)
    if summary_file.exists() and (trained or cfg.evaluate.students == "auto"):
        summary, why = check_training(train_dir, names)
        if summary is None:
            raise DataError(f"{why}; evaluate scores only the adapters a finished training wrote: run "
                            "`qrdistill train` to train them again")
        if "adapters" not in summary:
            log.warning("%s predates adapter checksums: the adapters cannot be checked against it", summary_file)
    elif trained and has_traces(train_dir):
        raise DataError(f"{train_dir}: the training there has not finished (no summary.json), so the adapters "
                        "under it are not its result; run `qrdistill train` to finish it")
    elif trained:
        log.warning("%s: adapters without a training summary (not written by `qrdistill train`); evaluating them "
                    "as they are", train_dir / "adapters")


def _resolve_budgets(cfg: Any, run_dir: Path, targets: list[EvalTarget]) -> None:
    """max_new_tokens: auto -> each trained student's budget from its training responses' p99 length, per task
    where train/summary.json has it (older summaries: one budget over all tasks)."""
    if cfg.evaluate.max_new_tokens != "auto":
        return
    p = run_dir / "train" / "summary.json"
    lengths = (read_json(p).get("sequence_lengths") or {}) if p.exists() else {}

    def scaled(p99: int) -> int:
        return max(1, -(-int(AUTO_BUDGET_FACTOR * 100 * p99) // 100))

    for t in targets:
        fit = lengths.get(t.student or "")
        if t.adapter is not None and fit and fit.get("response_tokens_p99"):
            t.budget = scaled(fit["response_tokens_p99"])
            t.task_budgets = {k: scaled(v) for k, v in (fit.get("response_tokens_p99_by_task") or {}).items() if v}
        elif t.adapter is not None:
            log.warning("%s: no training response lengths in %s; using each task's default budget", t.key, p)


def max_new_tokens(target: EvalTarget, et: EvalTask, ecfg: Any) -> int:
    """The generation budget of `target` on task `et` (see EvaluateConfig.max_new_tokens)."""
    if ecfg.max_new_tokens != "auto":
        return int(ecfg.max_new_tokens)
    if et.task.name in target.task_budgets:
        return target.task_budgets[et.task.name]
    if target.budget is not None:
        return target.budget
    if target.adapter is None and ecfg.base_max_new_tokens is not None:
        return int(ecfg.base_max_new_tokens)
    return int(getattr(et.task, "max_new_tokens", DEFAULT_BUDGET))


#: A task without its own `max_new_tokens` default.
DEFAULT_BUDGET = 256


def train_method(run_dir: Path) -> str:
    p = run_dir / "train" / "summary.json"
    if p.exists():
        summary = read_json(p)
        if not isinstance(summary, dict):
            raise DataError(f"{p}: expected a JSON object; delete {p.parent} to retrain")
        return str(summary.get("method", "unknown"))
    return "zero_shot"


def _activate_adapter(base_model: Any, peft_model: Any, target: EvalTarget) -> Any:
    from peft import PeftModel

    from qrdistill.models import quiet_peft_wrap

    name = target.key
    try:
        if peft_model is None:
            with quiet_peft_wrap():
                peft_model = PeftModel.from_pretrained(base_model, str(target.adapter), adapter_name=name)
        elif name not in peft_model.peft_config:
            peft_model.load_adapter(str(target.adapter), adapter_name=name)
    except Exception as e:  # noqa: BLE001 -- whatever PEFT or safetensors raise, the cause is this folder
        raise DataError(f"{target.adapter}: cannot load the adapter of {target.student} "
                        f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None
    peft_model.set_adapter(name)
    peft_model.eval()
    return peft_model


# ---------------------------------------------------------------- predictions


def student_dirname(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "student"


def predictions_path(run_dir: Path, key: str, task_label: str) -> Path:
    return run_dir / "eval" / student_dirname(key) / f"{task_label}.jsonl"


def _prompt(et: EvalTask, record: Any, target: EvalTarget) -> str:
    """The prompt the model was trained on: the shared student prompt (step-by-step students: its
    rationale form, which is the one that writes a reasoning path ending in the answer)."""
    from qrdistill.prompting import student_prompt

    prompt = student_prompt(et.task, et.task.prompt(record))
    if target.method == "step_by_step":
        from qrdistill.train.data import ANSWER_TAG, RATIONALE_TAG

        prompt = (ANSWER_TAG if target.prefix == "label" else RATIONALE_TAG) + prompt
    return prompt


def _row_key(target: EvalTarget, prompt: str, budget: int, ecfg: Any) -> str:
    """Identifies what produced a prediction, so a changed adapter or setting regenerates it."""
    adapter = ""
    if target.adapter is not None:
        weights = sorted(target.adapter.glob("adapter_model.*"))
        adapter = ";".join(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
    parts: list[Any] = [target.model, adapter, prompt, budget, ecfg.stop_at_answer]
    if target.served is not None:
        # Not the base_url: the same served model on another port gives the same answers.
        parts += ["openai", target.served, ecfg.server.logprobs, ecfg.server.extra_params]
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_saved(path: Path) -> list[dict[str, Any]]:
    """Saved rows; a line torn by a kill (the last one) is dropped, any other bad line is an error."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                log.warning("%s:%d: dropping a partly written line (interrupted run)", path, i)
                continue
            raise DataError(f"{path}:{i}: malformed JSON; delete the file to re-evaluate") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: expected a JSON object; delete the file to re-evaluate")
        rows.append(row)
    return rows


def _valid_saved(run_dir: Path, t: EvalTarget, et: EvalTask, ecfg: Any) -> dict[str, dict[str, Any]]:
    rows = {str(r.get("qid")): r for r in _read_saved(predictions_path(run_dir, t.key, et.label))}
    out = {}
    for rec in et.records:
        r = rows.get(rec.id)
        if r is not None and r.get("key") == _row_key(t, _prompt(et, rec, t), max_new_tokens(t, et, ecfg), ecfg):
            out[rec.id] = r
    return out


def _missing(run_dir: Path, t: EvalTarget, et: EvalTask, ecfg: Any) -> bool:
    return len(_valid_saved(run_dir, t, et, ecfg)) < len(et.records)


def _load_predictions(run_dir: Path, t: EvalTarget, et: EvalTask, ecfg: Any) -> list[dict[str, Any]]:
    saved = _valid_saved(run_dir, t, et, ecfg)
    return [saved[r.id] for r in et.records]


def _evaluate(run_dir: Path, t: EvalTarget, et: EvalTask, ecfg: Any, generate: Any):
    """Answer `et`'s questions `t` has no current row for; `generate(prompts, budget, save, desc)` calls
    `save(indices, generations)` as answers come, and each is appended to the file at once."""
    path = predictions_path(run_dir, t.key, et.label)
    saved = _valid_saved(run_dir, t, et, ecfg)
    # Rewrite without stale rows so the file holds exactly one current row per question.
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in saved.values()))
    todo = [r for r in et.records if r.id not in saved]
    if todo:
        budget = max_new_tokens(t, et, ecfg)
        log.info("%s on %s: %d of %d questions to answer (max_new_tokens %d)", t.key, et.label, len(todo),
                 len(et.records), budget)
        prompts = [_prompt(et, r, t) for r in todo]

        def save(indices: list[int], gens: list[Any]) -> None:
            with path.open("a", encoding="utf-8") as f:
                for i, g in zip(indices, gens, strict=True):
                    row = prediction_row(et, todo[i], prompts[i], g, _row_key(t, prompts[i], budget, ecfg), budget)
                    saved[row["qid"]] = row
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")

        generate(prompts, budget, save, f"{t.key} {et.label}")
    return [saved[r.id] for r in et.records]


def prediction_row(et: EvalTask, record: Any, prompt: str, gen: Any, key: str, budget: int) -> dict[str, Any]:
    score = et.task.score(gen.output, record)
    return {
        "qid": record.id,
        "prompt": prompt,
        "output": gen.output,
        "pred": score.pred,
        "correct": bool(score.correct),
        "strict_pred": score.strict_pred,
        "strict_correct": bool(score.strict_correct),
        "conflict": bool(score.conflict),
        "letter_correct": score.letter_correct,
        # The answer check hit its deadline: counted wrong, but not the student's fault alone.
        "unverifiable": bool(score.unverifiable),
        "stop": gen.stop,
        "gold": et.task.gold_text(record),
        "logprob": {"sum": gen.logprob_sum, "mean": gen.logprob_mean},
        "n_tokens": gen.n_tokens,
        "max_new_tokens": budget,
        "difficulty": record.meta.get("difficulty"),
        "key": key,
    }


# ---------------------------------------------------------------- summary


def summarize(cfg, run_dir, tasks, targets, predictions, method, note) -> dict[str, Any]:
    from qrdistill.evaluation.metrics import accuracy_summary, ensemble_pick

    ecfg = cfg.evaluate

    def acc(correct: list[bool]) -> dict[str, Any]:
        return accuracy_summary(correct, ecfg.bootstrap_resamples, ecfg.confidence, cfg.seed)

    def task_cell(rows: list[dict[str, Any]]) -> dict[str, Any]:
        cell = acc([r["correct"] for r in rows])
        n = len(rows) or 1
        cell["strict"] = acc([bool(r.get("strict_correct")) for r in rows])
        cell["cut_by_budget"] = sum(r.get("stop") == "budget" for r in rows) / n
        cell["no_strict_answer"] = sum(r.get("strict_pred") is None for r in rows) / n
        cell["conflicts"] = sum(bool(r.get("conflict")) for r in rows)
        if any(r.get("letter_correct") is not None for r in rows):
            # Multiple choice: accuracy had the letter, not the option text, decided each conflict.
            cell["letter_rule"] = acc([bool(r["correct"] if r.get("letter_correct") is None else r["letter_correct"])
                                       for r in rows])
        cell["stops"] = {k: sum(r.get("stop") == k for r in rows) for k in sorted({str(r.get("stop")) for r in rows})}
        return cell

    students = {}
    for t in targets:
        per_task = {et.label: task_cell(predictions[t.key][et.label]) for et in tasks}
        students[t.key] = {
            "kind": t.kind,
            **({"served_model": t.served} if t.served is not None else {}),
            "model": t.model,
            "adapter": str(t.adapter) if t.adapter else None,
            "members": t.members or None,
            "prefix": t.prefix,
            "max_new_tokens": {et.label: max_new_tokens(t, et, ecfg) for et in tasks},
            "tasks": per_task,
            "average": _average(per_task),
        }
    comparisons = compare_with_base(targets, tasks, predictions, ecfg, cfg.seed)
    ensembles = {}
    for label, group in (("ensemble", [t for t in targets if t.adapter is not None and t.prefix != "label"
                                       and not t.key.startswith(RL_PREFIX)]),
                         ("ensemble:base", [t for t in targets if t.adapter is None])):
        if len(group) < 2 or (ecfg.backend == "openai" and not ecfg.server.logprobs):
            continue
        per_task, chosen = {}, {}
        for et in tasks:
            picks = ensemble_pick({t.key: predictions[t.key][et.label] for t in group})
            per_task[et.label] = acc([p["correct"] for p in picks])
            chosen[et.label] = {t.key: sum(p["student"] == t.key for p in picks) for t in group}
        ensembles[label] = {"members": [t.key for t in group], "tasks": per_task,
                            "average": _average(per_task), "picked": chosen}
    shortcuts = {}
    for et in tasks:
        fn = _shortcut_fn(et.task)
        if fn is not None:
            values = fn(et.records)
            if values:
                shortcuts[et.label] = values
    return {
        "run_dir": str(run_dir),
        "method": method,
        "note": note,
        "tasks": {et.label: {"name": et.task.name, "n": len(et.records)} for et in tasks},
        "students": students,
        "comparisons": comparisons,
        "ensembles": ensembles,
        "shortcut_baselines": shortcuts,
        "settings": {
            "max_new_tokens": ecfg.max_new_tokens, "base_max_new_tokens": ecfg.base_max_new_tokens,
            "batch_size": ecfg.batch_size,
            "stop_at_answer": ecfg.stop_at_answer, "bootstrap_resamples": ecfg.bootstrap_resamples,
            "confidence": ecfg.confidence, "seed": cfg.seed,
            "backend": ecfg.backend,
            **({"server": _server_settings(ecfg)} if ecfg.backend == "openai" else {}),
        },
    }


def _server_settings(ecfg: Any) -> dict[str, Any]:
    from qrdistill.io import redact_credentials

    s = ecfg.server
    return {"base_url": redact_credentials(s.base_url), "logprobs": s.logprobs, "extra_params": s.extra_params}


def compare_with_base(targets, tasks, predictions, ecfg, seed: int) -> list[dict[str, Any]]:
    """Each trained student against the zero-shot base it was trained from, on the same questions; an RL
    student (`rl:<name>`) also against the distilled student it started from, which is what RL changed.

    Flexible and strict accuracy each get the difference with a paired bootstrap interval (questions
    resampled, both systems together) and an exact McNemar p-value.
    """
    from qrdistill.evaluation.metrics import compare_paired

    by_key = {t.key: t for t in targets}
    pairs = []
    for t in targets:
        if t.adapter is None:
            continue
        pairs += [(t, b) for b in (by_key.get(BASE_PREFIX + t.model),
                                   by_key.get(t.key.removeprefix(RL_PREFIX)) if t.key.startswith(RL_PREFIX) else None)
                  if b is not None]
    out = []
    for t, base in pairs:
        for et in tasks:
            mine = {r["qid"]: r for r in predictions[t.key][et.label]}
            theirs = {r["qid"]: r for r in predictions[base.key][et.label]}
            # Sorted, so the report's comparison of the same pair (analysis) draws the same resamples.
            qids = sorted(q for q in mine if q in theirs)
            row: dict[str, Any] = {"student": t.key, "baseline": base.key, "task": et.label, "n": len(qids)}
            metrics = [("flexible", "correct"), ("strict", "strict_correct")]
            if any(mine[q].get("letter_correct") is not None for q in qids):
                metrics.append(("letter_rule", "letter_correct"))
            for metric, key in metrics:
                def outcome(r: dict[str, Any], key: str = key) -> bool:
                    value = r.get(key)
                    return bool(r.get("correct") if value is None else value)

                row[metric] = compare_paired(
                    [outcome(mine[q]) for q in qids], [outcome(theirs[q]) for q in qids],
                    n_resamples=ecfg.bootstrap_resamples, confidence=ecfg.confidence, seed=seed,
                )
            out.append(row)
    return out


def _average(per_task: dict[str, dict[str, Any]]) -> float | None:
    vals = [v["accuracy"] for v in per_task.values() if v["n"]]
    return sum(vals) / len(vals) if vals else None


def _shortcut_fn(task: Any):
    fn = getattr(task, "shortcut_baselines", None)
    if fn is not None:
        return fn
    if type(task).__module__ == "qrdistill.tasks.procedural":
        from qrdistill.tasks import procedural

        return getattr(procedural, "shortcut_baselines", None)
    return None


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def _pts(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:+.1f}"


def _p(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2g}" if x >= 1e-4 else "<1e-4"


def _served_by(summary: dict[str, Any]) -> str:
    server = summary["settings"].get("server")
    return f" by the OpenAI-compatible server at {server['base_url']}" if server else ""


def summary_markdown(summary: dict[str, Any]) -> str:
    tasks = list(summary["tasks"])
    conf = int(round(100 * summary["settings"]["confidence"]))
    lines = [
        f"# Evaluation: {summary['run_dir']} (method: {summary['method']})",
        "",
        f"Zero-shot chain-of-thought, greedy decoding{_served_by(summary)}; accuracy % with a {conf}% bootstrap "
        "interval "
        f"({summary['settings']['bootstrap_resamples']} resamples).",
        "",
    ]
    if summary.get("note"):
        lines += [f"Note: {summary['note']}.", ""]
    lines.append("Each cell: flexible accuracy [interval] / strict accuracy (answer line only); "
                 "cut = share of answers the token budget ended.")
    lines.append("")
    lines.append("| student | " + " | ".join(tasks) + " | average |")
    lines.append("|---" * (len(tasks) + 2) + "|")
    for key, s in summary["students"].items():
        cells = []
        for t in tasks:
            a = s["tasks"][t]
            strict = a.get("strict") or {}
            cells.append(f"{_pct(a['accuracy'])} [{_pct(a['ci_low'])}, {_pct(a['ci_high'])}] / "
                         f"{_pct(strict.get('accuracy'))} (n={a['n']}, cut {_pct(a.get('cut_by_budget'))})")
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {_pct(s['average'])} |")
    for key, s in summary["ensembles"].items():
        cells = [f"{_pct(s['tasks'][t]['accuracy'])} [{_pct(s['tasks'][t]['ci_low'])}, "
                 f"{_pct(s['tasks'][t]['ci_high'])}]" for t in tasks]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {_pct(s['average'])} |")
    if summary.get("comparisons"):
        lines += ["", "Trained student vs its zero-shot base (an RL student also vs its distilled student), same "
                  f"questions (difference in points, paired bootstrap {conf}% interval, exact McNemar p):", "",
                  "| student | vs | task | flexible: diff [interval] | p | strict: diff [interval] | p |",
                  "|---|---|---|---|---|---|---|"]
        for c in summary["comparisons"]:
            f, st = c["flexible"], c["strict"]
            lines.append(f"| {c['student']} | {c['baseline']} | {c['task']} | {_pts(f['diff'])} [{_pts(f['ci_low'])}, "
                         f"{_pts(f['ci_high'])}] | {_p(f['p_value'])} | {_pts(st['diff'])} [{_pts(st['ci_low'])}, "
                         f"{_pts(st['ci_high'])}] | {_p(st['p_value'])} |")
    conflicts = sum(a.get("conflicts", 0) for s in summary["students"].values() for a in s["tasks"].values())
    if conflicts:
        lines += ["", f"Answer lines whose letter and option text name different options: {conflicts} "
                  "(the option text decides: it is what the response computed). Accuracy had the letter "
                  "decided instead:"]
        for key, s in summary["students"].items():
            cells = [f"{t} {_pct(s['tasks'][t]['letter_rule']['accuracy'])} ({s['tasks'][t]['conflicts']} conflicts)"
                     for t in tasks if s["tasks"][t].get("letter_rule")]
            if cells:
                lines.append(f"- {key}: " + ", ".join(cells))
        for c in summary.get("comparisons", []):
            if "letter_rule" in c:
                lr = c["letter_rule"]
                lines.append(f"- {c['student']} vs {c['baseline']} on {c['task']}, letter rule: {_pts(lr['diff'])} "
                             f"[{_pts(lr['ci_low'])}, {_pts(lr['ci_high'])}], p {_p(lr['p_value'])}")
    if summary["ensembles"]:
        lines += ["", "Ensemble: per question, the answer of the student with the higher mean token "
                  "log-probability of its own output."]
    for t, values in summary["shortcut_baselines"].items():
        lines += ["", f"Shortcut baselines on {t} (answer-free; accuracy %): "
                  + ", ".join(f"{k} {_pct(v)}" for k, v in values.items())]
    return "\n".join(lines) + "\n"
