"""Generate stage: ask the teacher for a reasoning path per question × style × sample.

Every completion goes into `D/store.sqlite` the moment it arrives (see
`qrdistill.store`), so a killed run resumes without re-asking, and a second
run of the same config issues no calls at all. `D/paths.jsonl` is rebuilt
from the store at the end of every run, atomically, in a deterministic order
(tasks, then questions, styles and samples in config order).

Failed calls. Calls that still fail after the backend's own retries are
stored as errors. The stage then writes `paths.jsonl` with every path that
succeeded (it is consistent: each row is a real stored completion) and
records the shortfall in `D/meta/generate.json` (`failed_calls`), and then
raises a `QRDistillError` — so the CLI exits non-zero and `qrdistill run`
stops before training on a silently incomplete pool. Running generate again
retries only the failed calls. `qrdistill filter` run by hand on such a
partial pool works on what is there and warns how many paths are missing,
rather than refusing: the user has already been told, and may want to
inspect the partial result.

A lost store. When `store.sqlite` holds no teacher completion but
`paths.jsonl` has paths, the store was emptied, truncated or replaced, and
running on would ask the teacher for every path again (with a paid teacher,
real money). That is refused; `--rebuild-store` (`rebuild_store=True`) is the
explicit request to ask again, and keeps the old `paths.jsonl` beside the new
one (`paths.before-rebuild-<time>.jsonl`).

Cost (`qrdistill.cost`). `--dry-run` (`dry_run=True`) prints, per task x style,
the calls a run would issue (keys already stored `ok` excluded), their
estimated input and output tokens and, with a price for the teacher's model in
`prices`, their cost; it issues no call, takes no lock and reads the store
without writing, so the run dir is left as it was. `generate.budget_usd` caps
what every stored teacher call of this run dir has cost: each call is reserved
at its worst case before it is sent, and when the next one no longer fits the
stage writes what was answered, as after failed calls, and raises
`BudgetExhausted` (non-zero exit, so `qrdistill run` does not train on a
partial pool); a rerun with a larger budget asks only the rest.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qrdistill.errors import DataError, QRDistillError, RunDirError
from qrdistill.io import LOCK_FILE

log = logging.getLogger(__name__)

PATHS_FILE = "paths.jsonl"
STORE_FILE = "store.sqlite"


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, stage: str) -> Iterator[None]:
    """Refuse to run while another stage works on the same run dir.

    Two generate (or filter) processes on one store would each ask the same
    pending keys, paying twice. The lock is an OS file lock, so a process
    killed with -9 releases it.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise QRDistillError(
            f"{run_dir}: another qrdistill process is working on this run dir; wait for it to finish "
            f"(or stop it) before running `qrdistill {stage}`"
        ) from None
    except OSError as e:
        raise RunDirError(f"{run_dir}: cannot use the run directory ({e.strerror or e}); fix its permissions "
                          f"or pick another --run-dir") from None
    try:
        yield
    finally:
        lock.release()


def _cap(a: int | None, b: int | None) -> int | None:
    caps = [x for x in (a, b) if x is not None]
    return min(caps) if caps else None


def build_messages(system_prompt: str | None, user: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user}]


def path_meta(record: Any, completion: Any) -> dict[str, Any]:
    """What downstream stages and analysis need besides the text: difficulty, planted defects, record facts."""
    meta: dict[str, Any] = {}
    if "difficulty" in record.meta:
        meta["difficulty"] = record.meta["difficulty"]
    if "planted" in (completion.meta or {}):
        meta["planted"] = completion.meta["planted"]
    if "imported" in (completion.meta or {}):
        meta["imported"] = completion.meta["imported"]  # where a `file` teacher's path came from
    meta["record"] = record.meta
    if completion.finish_reason:
        meta["finish_reason"] = completion.finish_reason
    return meta


def run(cfg: Any, run_dir: Path, limit: int | None = None, rebuild_store: bool = False,
        dry_run: bool = False) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if dry_run:
        # Reads only: no lock (it would create the run dir and its lock file), no store opened for writing.
        return _dry_run(cfg, run_dir, limit)
    with run_dir_lock(run_dir, "generate"):
        return _run(cfg, run_dir, limit, rebuild_store)


def _check_store_not_lost(store: Any, run_dir: Path, rebuild_store: bool) -> None:
    """Refuse to re-ask the teacher for a pool whose store is gone, unless asked to; see the module doc."""
    import datetime
    import os

    from qrdistill.io import count_nonblank_lines

    paths = run_dir / PATHS_FILE
    existing = count_nonblank_lines(paths)
    if not existing or store.teacher_paths_stored():
        return
    if not rebuild_store:
        raise QRDistillError(
            f"{store.path} holds no teacher completions but {paths} has {existing} paths: the store was emptied "
            f"or replaced, and generating now would ask the teacher for every path again (paid calls with a "
            f"paid teacher). Restore store.sqlite from a backup, or run `qrdistill generate --rebuild-store` to "
            f"ask the teacher again (the current {PATHS_FILE} is kept beside the new one)"
        )
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    backup = run_dir / f"paths.before-rebuild-{stamp}.jsonl"
    os.replace(paths, backup)
    log.warning("generate --rebuild-store: the store is empty; asking the teacher for every path again "
                "(the previous %d paths are kept in %s)", existing, backup)


def _load(cfg: Any, limit: int | None) -> tuple[dict[str, str], list[tuple[Any, list[Any]]]]:
    """The styles and each task's records, everything the user wrote validated before anyone is asked."""
    from qrdistill.io import not_utf8_error
    from qrdistill.styles import resolve_styles
    from qrdistill.tasks import get_task
    from qrdistill.tasks.base import load_records

    gen = cfg.generate
    styles = resolve_styles(gen.styles, gen.custom_styles)
    tasks = [get_task(spec.name, f"tasks.{i}.name") for i, spec in enumerate(cfg.tasks)]

    loaded = []
    for i, (spec, task) in enumerate(zip(cfg.tasks, tasks, strict=True)):
        try:
            records = load_records(task, spec, _cap(spec.limit, limit), f"tasks.{i}")
        except UnicodeDecodeError:
            if not spec.path:
                raise
            raise not_utf8_error(spec.path) from None
        if not records:
            where = spec.path or f"task {spec.name!r} split {spec.split!r}"
            raise DataError(f"{where}: no questions to generate for (config field tasks.{i})")
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            dup = next(x for x in ids if ids.count(x) > 1)
            raise DataError(f"{spec.path or spec.name}: question id {dup!r} appears twice")
        loaded.append((task, records))
    return styles, loaded


def _plan(cfg: Any, styles: dict[str, str], loaded: list[tuple[Any, list[Any]]]) -> list[tuple[Any, ...]]:
    """(task, record, style, sample, question, user message, request) for every path, in output order."""
    from qrdistill.backends import Request
    from qrdistill.styles import render

    gen = cfg.generate
    plan = []
    for task, records in loaded:
        for record in records:
            question = task.prompt(record)
            for style, template in styles.items():
                user = render(template, question, task.answer_instruction)
                for k in range(gen.samples_per_style):
                    req = Request(
                        messages=build_messages(gen.system_prompt, user),
                        sample=k,
                        context={"record": record, "style": style, "task": task.name},
                    )
                    plan.append((task, record, style, k, question, user, req))
    return plan


def _answerable(backend: Any, plan: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], int]:
    """The plan less the paths a backend answering from data has no row for (kind: file), and their count.

    Such a backend (`prepare`) reads and checks its data against the whole plan first, so a bad row
    raises before the store or paths.jsonl is touched."""
    prepare = getattr(backend, "prepare", None)
    if prepare is None:
        return plan, 0
    answerable = {id(req) for req in prepare([p[-1] for p in plan])}
    kept = [p for p in plan if id(p[-1]) in answerable]
    return kept, len(plan) - len(kept)


def _dry_run(cfg: Any, run_dir: Path, limit: int | None) -> dict[str, Any]:
    """What `_run` would ask and what it would cost, printed; no call is issued and nothing is written."""
    from qrdistill import cost
    from qrdistill.io import count_nonblank_lines

    gen = cfg.generate
    styles, loaded = _load(cfg, limit)
    backend = cost.key_backend(gen.teacher, "generate.teacher")
    try:
        plan, _ = _answerable(backend, _plan(cfg, styles, loaded))
        calls = [cost.PlannedCall(backend.key(req), task.name, style, req.messages,
                                  int(req.params.get("max_tokens") or gen.teacher.max_tokens))
                 for task, _, style, _, _, _, req in plan]
    finally:
        backend.close()
    store_path = run_dir / STORE_FILE
    stored = cost.stored_ok_usage(store_path, (c.key for c in calls))
    counter = cost.token_counter(gen.teacher, "generate.teacher")
    price = cost.price_of(cfg.prices, backend.model)
    est = cost.estimate(calls, stored, counter, price)
    budget = None
    if gen.budget_usd is not None and price is not None:
        spent, _ = cost.stored_spend(store_path, "teacher", cfg.prices)
        budget = {"field": "generate.budget_usd", "budget_usd": gen.budget_usd, "spent_usd": spent}
    est.update(stage="generate", backend=backend.label, model=backend.model, budget=budget)
    print(cost.format_estimate("generate", backend.label, backend.model, est, price, budget))
    existing = count_nonblank_lines(run_dir / PATHS_FILE)
    if existing and not cost.stored_calls(store_path, "teacher"):
        print(f"  note: {run_dir / PATHS_FILE} has {existing} paths but the store holds no teacher call: a real "
              f"run refuses to ask them all again without --rebuild-store")
    return est


def _run(cfg: Any, run_dir: Path, limit: int | None, rebuild_store: bool = False) -> dict[str, Any]:
    from qrdistill import cost
    from qrdistill.backends import get_backend
    from qrdistill.io import atomic_write_jsonl, count_nonblank_lines, write_run_meta
    from qrdistill.store import Store, run_cached
    from qrdistill.tasks.base import Verdict

    gen = cfg.generate
    styles, loaded = _load(cfg, limit)
    backend = get_backend(gen.teacher, "generate.teacher")
    if gen.budget_usd is not None:
        cost.require_price(cfg.prices, backend.model, "generate.budget_usd", "generate.teacher.model")
    if gen.samples_per_style > 1 and gen.teacher.temperature == 0:
        log.warning("generate.samples_per_style is %d but generate.teacher.temperature is 0: a deterministic "
                    "teacher writes the same path for every sample", gen.samples_per_style)
    plan, missing = _answerable(backend, _plan(cfg, styles, loaded))

    n_questions = sum(len(r) for _, r in loaded)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with Store(run_dir / STORE_FILE) as store:
            _check_store_not_lost(store, run_dir, rebuild_store)
            log.info("generate: %d questions × %d styles × %d samples = %d paths from %s",
                     n_questions, len(styles), gen.samples_per_style, len(plan), backend.label)
            price = cost.price_of(cfg.prices, backend.model)
            spent_before = cost.stored_spend(store.path, "teacher", cfg.prices)[0] if price else None
            gate = None
            if gen.budget_usd is not None:
                gate = cost.budget_gate(backend, gen.budget_usd, cfg.prices, store.path, "teacher", gen.teacher,
                                        "generate.budget_usd", "generate.teacher.model")
            got = run_cached(gate or backend, store, [p[-1] for p in plan], "teacher", "generate")
            usage = store.usage("teacher")
            spent_after = cost.stored_spend(store.path, "teacher", cfg.prices)[0] if price else None
    finally:
        backend.close()

    unasked = {backend.key(r) for r in gate.not_issued} if gate is not None else set()
    rows = []
    per_style: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    failed = 0
    for task, record, style, k, question, user, req in plan:
        key = backend.key(req)
        comp = got.get(key)
        if comp is None:
            failed += key not in unasked
            continue
        text = comp.text or ""
        # Stored with the row, so filter need not run an undecided check (5 s each) again.
        check = task.check(text, record)
        correct = check is Verdict.CORRECT
        per_style[style][0] += 1
        per_style[style][1] += int(correct)
        rows.append({
            "qid": f"{task.name}/{record.id}",
            "task": task.name,
            "style": style,
            "sample": k,
            "prompt": user,
            "question": question,
            "choices": record.choices,
            "answer": record.answer,
            "gold_text": task.gold_text(record),
            "response": text,
            "pred": task.extract_answer(text, record),
            "correct": correct,
            "check": check.value,
            "teacher": backend.label,
            "key": key,
            "meta": path_meta(record, comp),
        })
    written = bool(rows) or not count_nonblank_lines(run_dir / PATHS_FILE)
    if written:
        atomic_write_jsonl(run_dir / PATHS_FILE, rows)
    else:
        # Every call failed: an empty pool must not replace the one there (the error below says so).
        log.warning("no teacher call succeeded; %s is left as it was", run_dir / PATHS_FILE)

    stats = got.stats
    summary = {
        "questions": n_questions,
        "styles": list(styles),
        "samples_per_style": gen.samples_per_style,
        "expected_paths": len(plan) + missing,
        "paths": len(rows),
        "failed_calls": failed,
        "teacher": backend.label,
        "calls_issued": stats["issued"],
        "calls_cached": stats["cached"],
        "tokens_this_run": {"prompt": stats["prompt_tokens"], "completion": stats["completion_tokens"]},
        "usage_total": usage,
        "accuracy_by_style": {s: round(c / n, 4) if n else None for s, (n, c) in per_style.items()},
        "paths_file": str(run_dir / PATHS_FILE),
    }
    if missing:
        summary["missing_paths"] = missing  # planned paths the teacher's data has no row for (skipped)
    if price is not None:
        summary["cost_usd"] = {"this_run": round(spent_after - spent_before, 6), "stored_total": round(spent_after, 6)}
    if gate is not None:
        summary["budget"] = gate.summary("generate.budget_usd")
        # Paths not asked for want of budget are not failures: the message below says what stopped.
        summary["unasked_calls"] = sum(1 for p in plan if backend.key(p[-1]) in unasked)
    write_run_meta(run_dir, "generate", cfg, {"summary": summary})
    _print_summary(summary)
    if gate is not None and gate.stopped:
        where = (f"The {len(rows)} paths answered so far are stored and written to {run_dir / PATHS_FILE}"
                 if written else f"None was answered, so {run_dir / PATHS_FILE} was left as it was")
        also = f"; {failed} other calls failed and are retried then too" if failed else ""
        raise cost.BudgetExhausted(gate.message("generate", "generate.budget_usd", where) + also)
    if failed:
        err = f" (first error: {stats['first_error']})" if stats.get("first_error") else ""
        where = (f"the {len(rows)} paths that succeeded are stored and written to {run_dir / PATHS_FILE}"
                 if written else f"none succeeded, so {run_dir / PATHS_FILE} was left as it was")
        raise QRDistillError(
            f"{failed} of {len(plan)} teacher calls failed permanently{err}; {where}; run `qrdistill generate` "
            f"again to retry only the failed calls"
        )
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    from qrdistill.cost import usd

    print(f"generate: {s['questions']} questions, {s['paths']}/{s['expected_paths']} paths from {s['teacher']}")
    print(f"  calls: {s['calls_issued']} issued, {s['calls_cached']} cached (already stored), "
          f"{s['failed_calls']} failed; tokens this run: {s['tokens_this_run']['prompt']} prompt + "
          f"{s['tokens_this_run']['completion']} completion")
    if s.get("missing_paths"):
        print(f"  {s['missing_paths']} planned paths have no row in the teacher's data (skipped)")
    if "cost_usd" in s:
        print(f"  cost: {usd(s['cost_usd']['this_run'])} this run, {usd(s['cost_usd']['stored_total'])} for every "
              f"teacher call stored")
    if "budget" in s:
        b = s["budget"]
        print(f"  budget: {usd(b['spent_usd'])} spent of generate.budget_usd {usd(b['budget_usd'])}"
              + (f"; stopped with {s['unasked_calls']} paths not asked" if b["stopped"] else ""))
    if s["accuracy_by_style"]:
        width = max(len(k) for k in s["accuracy_by_style"])
        print("  teacher answer accuracy by style:")
        for style, acc in s["accuracy_by_style"].items():
            print(f"    {style:<{width}}  {acc:.1%}" if acc is not None else f"    {style:<{width}}  -")
