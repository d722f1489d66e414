"""RL stage: D/train/ (the distilled students) -> D/rl/ (GRPO-trained adapters, logs, summary).

`qrdistill rl` trains each student of `rl.students` (default: all) with GRPO on the training questions
(`qrdistill.rl.grpo`, on TRL's GRPOTrainer), starting from and anchored to its distilled adapter, with
the rewards of `rl.rewards` (`qrdistill.rl.rewards`) against each question's reference path
(`qrdistill.rl.data`). Artifacts:

- D/rl/adapters/<name>/: the PEFT adapter (and tokenizer); `evaluate` scores it as `rl:<name>`;
- D/rl/<name>/: checkpoints, log.jsonl (per step: mean reward per term, KL, wall time, time in
  rewards), tb/, fingerprint, summary.json;
- D/rl/summary.json: every student's summary with the resolved config, seed, git SHA, the mean reward
  per term, the wall time per step and the share of it in reward functions, and the reward-model calls
  of this run (through D/store.sqlite, like teacher and judge calls).

Run again, a student whose training finished with the same config, seed and distilled adapter is
skipped; an interrupted one resumes from its newest checkpoint; a changed one starts over. Runs under
`accelerate launch -m qrdistill rl` too; only rank 0 takes the run-dir lock and writes artifacts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RL_DIR = "rl"
SUMMARY_FILE = "summary.json"
#: what evaluate's max_new_tokens: auto gives a trained student, as a multiple of its responses' p99
AUTO_FACTOR = 1.25
#: max_completion_length: auto without training response lengths
DEFAULT_COMPLETION_LENGTH = 256
#: fields of `rl.rewards.backend` that say how the judge is reached, not what it answers (the store's key
#: leaves them out too)
JUDGE_TRANSPORT = ("base_url", "api_key_env", "max_concurrency", "timeout", "max_retries", "backoff_base",
                   "backoff_max", "requests_per_minute", "max_response_bytes", "batch_size", "device")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def run(cfg: Any, run_dir: str | Path) -> dict[str, Any]:
    from qrdistill.stages.generate import run_dir_lock
    from qrdistill.train.artifacts import permission_errors

    run_dir = Path(run_dir)
    lock = run_dir_lock(run_dir, "rl") if _rank() == 0 else contextlib.nullcontext()
    with permission_errors(run_dir, "rl"), lock:
        return _run(cfg, run_dir)


def _students(cfg: Any) -> list[Any]:
    from qrdistill.errors import ConfigError

    by_name = {s.name: s for s in cfg.train.students}
    names = cfg.rl.students or list(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"rl.students: {unknown[0]!r} is not a student of train.students "
                          f"(students: {', '.join(by_name)})")
    return [by_name[n] for n in names]


def completion_length(cfg: Any, train_summary: dict[str, Any], name: str) -> int:
    if cfg.rl.max_completion_length != "auto":
        return int(cfg.rl.max_completion_length)
    fit = (train_summary.get("sequence_lengths") or {}).get(name) or {}
    # One budget for every task's questions: the longest task's, so no task gets less than evaluate gives it.
    p99 = max((v for v in (fit.get("response_tokens_p99_by_task") or {}).values() if v), default=None) \
        or fit.get("response_tokens_p99")
    if not p99:
        log.warning("rl %s: no training response lengths in train/summary.json; completions get %d tokens",
                    name, DEFAULT_COMPLETION_LENGTH)
        return DEFAULT_COMPLETION_LENGTH
    return max(1, -(-int(AUTO_FACTOR * 100 * int(p99)) // 100))


def fingerprint(cfg: Any, seed: int, train_summary: dict[str, Any], name: str, length: int) -> str:
    """Identifies one student's RL: the rl config, seed, the training it starts from and its adapter."""
    # Which students run, how often checkpoints are kept and how the judge server is reached do not change
    # a student's training (a judge back on another port must not cost the checkpoints).
    rl = cfg.rl.model_dump(mode="json", exclude={"students": True, "checkpoint_every": True, "keep_checkpoints": True,
                                                 "rewards": {"backend": set(JUDGE_TRANSPORT)}})
    blob = {"rl": rl, "seed": seed, "length": length, "stop_at_answer": cfg.evaluate.stop_at_answer,
            "train": train_summary.get("fingerprint"), "adapter": (train_summary.get("adapters") or {}).get(name),
            "student": next(s.model_dump(mode="json") for s in cfg.train.students if s.name == name)}  # fmt: skip
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def _finished(work: Path, adapter: Path, fp: str) -> dict[str, Any] | None:
    from qrdistill.train.artifacts import adapter_digest

    path = work / SUMMARY_FILE
    with contextlib.suppress(OSError, ValueError):
        s = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(s, dict) and s.get("fingerprint") == fp and s.get("adapter_digest") and \
                s["adapter_digest"] == adapter_digest(adapter):
            return s
    return None


def _extractor(cfg: Any, store: Any) -> Any:
    from qrdistill.rl.grpo import BatchedExtractor

    rw = cfg.rl.rewards
    if rw.extractor == "llm":
        from qrdistill.rl.steps_llm import llm_extractor

        return BatchedExtractor(llm_extractor(rw.backend, store))
    from qrdistill.rl.steps_claims import ClaimsExtractor

    return BatchedExtractor(ClaimsExtractor(rw.tolerance))


def _run(cfg: Any, run_dir: Path) -> dict[str, Any]:
    from qrdistill.errors import ConfigError, MissingArtifactError
    from qrdistill.io import atomic_write_json, git_sha, write_run_meta
    from qrdistill.rl.data import choose_reference, read_routing, training_questions
    from qrdistill.rl.grpo import StudentRun, process_state, require_trl, train_student
    from qrdistill.rl.rewards import RewardContext
    from qrdistill.stages.generate import STORE_FILE
    from qrdistill.stages.train import recover
    from qrdistill.store import Store
    from qrdistill.train.artifacts import check_training

    rc = cfg.rl
    students = _students(cfg)
    import torch

    state = process_state(torch.cuda.is_available())
    if state.is_main_process:
        recover(run_dir)
    state.wait_for_everyone()
    train_dir = run_dir / "train"
    train_summary, why = check_training(train_dir, [s.name for s in students])
    if train_summary is None:
        raise MissingArtifactError(f"{why}; RL starts from the distilled adapters: run `qrdistill train` first")
    require_trl()
    questions = training_questions(cfg, run_dir)
    # TRL's sampler draws only whole steps of questions_per_step questions per process: fewer questions
    # than one step would end training at step 0 with a warning and the distilled adapter saved as RL's.
    if len(questions) < rc.questions_per_step * state.num_processes:
        raise ConfigError(f"rl.questions_per_step: {rc.questions_per_step} questions per step"
                          f"{f' on each of {state.num_processes} processes' if state.num_processes > 1 else ''} "
                          f"need at least {rc.questions_per_step * state.num_processes} training questions; "
                          f"{run_dir / 'filtered.jsonl'} has {len(questions)} with a kept path")
    routed, probs = read_routing(train_dir) if rc.rewards.reference == "routed" else ({}, {})
    if rc.rewards.reference == "routed" and not routed:
        log.warning("rl: %s has no routing log; every reference path falls back (rl.rewards.reference: routed)",
                    train_dir)
    seed = rc.seed if rc.seed is not None else cfg.seed
    out_root = run_dir / RL_DIR
    llm = rc.rewards.extractor == "llm"
    results: dict[str, Any] = {}
    with (Store(run_dir / STORE_FILE) if llm else contextlib.nullcontext()) as store:
        since = store.last_batch_id() if store is not None else 0
        usage0 = store.usage("judge") if store is not None else None
        extractor = _extractor(cfg, store)
        caller = getattr(extractor.inner, "caller", None)
        ctx = RewardContext(extractor=extractor)
        for spec in students:
            length = completion_length(cfg, train_summary, spec.name)
            fp = fingerprint(cfg, seed, train_summary, spec.name, length)
            work, adapter_out = out_root / spec.name, out_root / "adapters" / spec.name
            done = _finished(work, adapter_out, fp)
            if done is not None:
                log.info("rl %s: already trained with this config (%s)", spec.name, work / SUMMARY_FILE)
                results[spec.name] = done
                continue
            refs = {q.qid: choose_reference(q, spec.name, rc.rewards.reference, seed, routed, probs)
                    for q in questions}  # fmt: skip
            fallbacks = sum(r.source == "fallback" for r in refs.values())
            log.info("rl %s: GRPO on %d questions, %d steps of %d x %d completions%s (max %d tokens); "
                     "reference paths: %s%s", spec.name, len(questions), rc.max_steps, rc.questions_per_step,
                     rc.num_generations, f" on each of {state.num_processes} processes"
                     if state.num_processes > 1 else "", length, rc.rewards.reference,
                     f" ({fallbacks} not routed to {spec.name}: fallback)" if fallbacks else "")
            summary = train_student(StudentRun(
                spec=spec, adapter_in=train_dir / "adapters" / spec.name, adapter_out=adapter_out, work=work,
                questions=questions, refs=refs, rl=rc, seed=seed, max_completion_length=length, fingerprint=fp,
                ctx=ctx, calls=(lambda c=caller: c.issued) if caller is not None else (lambda: 0),
                stop_at_answer=cfg.evaluate.stop_at_answer,
                distilled_adapter=(train_summary.get("adapters") or {}).get(spec.name),
            ))  # fmt: skip
            if state.is_main_process:
                atomic_write_json(work / SUMMARY_FILE, summary)
            results[spec.name] = summary
        calls = _reward_calls(store, since, usage0) if store is not None else {"extractor": "claims", "issued": 0}
    if not state.is_main_process:
        return {}
    summary = {
        "students": results,
        "reward_calls": calls,
        "config": rc.model_dump(mode="json"),
        "seed": seed,
        "git_sha": git_sha(),
        "train_fingerprint": train_summary.get("fingerprint"),
    }
    atomic_write_json(out_root / SUMMARY_FILE, summary)
    write_run_meta(run_dir, "rl", cfg, extra={"students": list(results)})
    _print_summary(summary, out_root)
    return summary


def _reward_calls(store: Any, since: int, usage0: dict[str, Any]) -> dict[str, Any]:
    """This run's reward-model calls (store batches since it began) and the tokens they used."""
    totals = store.batch_totals("judge", after=since)
    usage = store.usage("judge")
    return {"extractor": "llm", **totals,
            "prompt_tokens": usage["prompt_tokens"] - usage0["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"] - usage0["completion_tokens"],
            "store": str(store.path)}  # fmt: skip


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _print_summary(s: dict[str, Any], out: Path) -> None:
    for name, st in s["students"].items():
        terms = ", ".join(f"{t} {_fmt(v)}" for t, v in (st.get("mean_rewards") or {}).items())
        share = st.get("reward_share")
        print(f"rl: {name}: {st.get('steps')} steps, mean reward per term: {terms}; "
              f"{_fmt(st.get('wall_per_step_s'), '.2f')} s/step, "
              f"{'n/a' if share is None else f'{100 * share:.0f} %'} in rewards")
    calls = s.get("reward_calls") or {}
    if calls.get("extractor") == "llm":
        print(f"  reward-model calls: {calls.get('issued', 0)} issued, {calls.get('cached', 0)} from the store")
    print(f"  adapters: {out / 'adapters'}")
