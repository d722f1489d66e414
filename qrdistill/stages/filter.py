"""Filter stage (paper §2.3): keep paths with a correct answer that the judge marks valid.

Step 1 drops paths whose extracted answer is wrong (`correct` in
paths.jsonl, computed by the task's own checker). Step 2 sends the remaining
paths to the judge; only an explicit, parsed `valid` verdict keeps a path.
Every path is written to `D/filtered.jsonl` with its verdict (null when step 1
dropped it) and `kept`; `D/filter_report.json` counts the outcome per task
and per style, and — when the simulated teacher planted known defects —
measures the filter's precision and recall on clean paths.

`filter.enabled: false` is the paper's "without quality filter" ablation:
both steps are skipped and every path is kept. `filter.judge.kind: none`
keeps step 1 only.

Judging is resumable: the `llm` judge stores its calls in `D/store.sqlite`
(a re-run asks only what is missing); the `steps` judge is deterministic
and cheap, so it simply runs again. Judge calls that fail permanently follow
generate's policy: the artifacts are written with those paths not kept, the
report counts the failures (`judge_calls`), and the stage then raises so the
CLI exits non-zero; running filter again retries only the failed calls.

`filter.execute_programs.enabled` adds a step between the two: the code of
each program-style path that passed step 1 runs in a sandbox
(`qrdistill/sandbox.py`), and a path is kept only if its program prints the
gold answer (verdict `pass`); any other verdict, including `no_code` for a
program path without a code block, drops it before the judge. Each path's
`execution` ({verdict, reason, stdout_tail}; null for paths not run) goes to
filtered.jsonl, the verdict counts per task x style to the report's
`execution`, and the outcome `execution_failed` to the counts. Results are
kept in `D/executions.sqlite`, so a re-run executes only new programs.

Decontamination (`filter.decontaminate`, on by default, also in the ablation): before any judging, each
path's question is checked against every test question the config evaluates (`evaluate.tasks`, loaded
as evaluate loads them) and `extra_eval_files`, by `qrdistill/decontam.py` (exact after normalisation,
word n-gram coverage, fuzzy similarity). A path whose question matches gets `contaminated: {task, qid,
method, score}` (null when clean) and is not kept, whatever its answer; of the paths with the same task,
question and response text, the first stays and the others get `duplicate_of: {qid, style, sample}`
(null otherwise) and are not kept. The outcomes `contaminated` and `duplicate` take precedence over the
others, and the report's `decontamination` section counts them per task x style, per method and per
evaluation set. Neither costs a judge call or a program run.

Cost: `--dry-run` prints the judge calls a run would issue (those stored
excluded; program paths counted as if their programs pass) with their tokens
and cost, and writes nothing. `filter.budget_usd` caps the `llm` judge's
spending as `generate.budget_usd` caps the teacher's: when it stops, the paths
not judged are written as not kept and the stage raises `BudgetExhausted`.
Each judged path's verdict records its judge call's key (`judge.key`), so the
report can price the judge per task x style.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from qrdistill.errors import ConfigError, DataError, QRDistillError

log = logging.getLogger(__name__)

FILTERED_FILE = "filtered.jsonl"
REPORT_FILE = "filter_report.json"
OUTCOMES = ("total", "wrong_answer", "judged_invalid", "unparseable", "kept")
#: The outcome of a program-style path whose program did not print the gold answer (filter.execute_programs).
EXECUTION_FAILED = "execution_failed"
#: The outcome of a path whose answer the task's check could not decide (see `_mark_unverifiable`).
UNVERIFIABLE = "unverifiable"
#: The outcomes of the paths decontamination drops: a question copying a test question, a copy of another path.
CONTAMINATED = "contaminated"
DUPLICATE = "duplicate"
#: Fields of a paths.jsonl row the filter reads, and the JSON types they must have.
PATH_FIELDS: dict[str, tuple[type, ...]] = {
    "qid": (str,), "task": (str,), "style": (str,), "prompt": (str,), "response": (str,), "correct": (bool,),
}
OPTIONAL_PATH_FIELDS: dict[str, tuple[type, ...]] = {
    "question": (str, type(None)), "meta": (dict, type(None)), "sample": (int,), "choices": (list, type(None)),
    "gold_text": (str, type(None)),
}
_JSON_TYPE = {
    str: "a string", bool: "true or false", dict: "an object", int: "an integer", list: "a list", type(None): "null",
}


def is_clean(planted: Any) -> bool:
    """A path is clean when the simulated teacher planted no defect in it.

    `planted` is what the teacher stored: a falsy value (None, [], {}, "") for a
    clean path; a non-empty list/str, or a mapping with any truthy value
    (e.g. {"wrong_answer": false, "spurious_step": true}) for a defective one.
    """
    if isinstance(planted, dict):
        return not any(planted.values())
    return not planted


def outcome(row: dict[str, Any]) -> str:
    if row["kept"]:
        return "kept"
    if row.get("contaminated"):
        return CONTAMINATED
    if row.get("duplicate_of"):
        return DUPLICATE
    if not row["correct"]:
        return UNVERIFIABLE if row.get("check") == UNVERIFIABLE else "wrong_answer"
    if (row.get("execution") or {}).get("verdict", "pass") != "pass":
        return EXECUTION_FAILED
    judge = row.get("judge") or {}
    if judge and not judge.get("parsed", True):
        return "unparseable"
    return "judged_invalid"


def count_outcomes(rows: list[dict[str, Any]], by: str | None,
                   pool: list[dict[str, Any]] | None = None) -> dict[str, dict[str, int]]:
    """Outcome counts of `rows` per value of field `by` (all together when None). The decontamination
    columns appear where any path of `pool` (default: `rows`) has that outcome, so that every task of a
    report has the same columns."""
    groups: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        c = groups[r[by] if by else "all"]
        c["total"] += 1
        c[outcome(r)] += 1
    # The column exists only where programs were executed, so other runs' reports keep their shape.
    keys = OUTCOMES + ((EXECUTION_FAILED,) if any("execution" in r for r in rows) else ())
    keys += (UNVERIFIABLE,) if any(r.get("check") == UNVERIFIABLE for r in rows) else ()
    keys += tuple(k for k, field in ((CONTAMINATED, "contaminated"), (DUPLICATE, "duplicate_of"))
                  if any(r.get(field) for r in (rows if pool is None else pool)))
    return {g: {k: int(c.get(k, 0)) for k in keys} for g, c in groups.items()}


def planted_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Confusion of planted defects vs kept, and precision/recall of keeping clean paths."""

    def metrics(sub: list[dict[str, Any]]) -> dict[str, Any]:
        conf = Counter()
        for r in sub:
            clean = is_clean(r["meta"].get("planted"))
            conf[("clean" if clean else "defective", "kept" if r["kept"] else "dropped")] += 1
        kept_clean, kept_def = conf[("clean", "kept")], conf[("defective", "kept")]
        drop_clean = conf[("clean", "dropped")]
        kept = kept_clean + kept_def
        clean = kept_clean + drop_clean
        return {
            "clean_kept": kept_clean,
            "clean_dropped": drop_clean,
            "defective_kept": kept_def,
            "defective_dropped": conf[("defective", "dropped")],
            "precision_clean": round(kept_clean / kept, 4) if kept else None,
            "recall_clean": round(kept_clean / clean, 4) if clean else None,
        }

    withp = [r for r in rows if "planted" in r["meta"]]
    by_style: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in withp:
        by_style[r["style"]].append(r)
        by_task[r["task"]].append(r)
    return {
        "paths_with_planted_info": len(withp),
        "overall": metrics(withp),
        "by_style": {s: metrics(v) for s, v in by_style.items()},
        "by_task": {t: metrics(v) for t, v in by_task.items()},
    }


def _limit_questions(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    if limit is None:
        return rows
    """The paths of the first `limit` questions of each task (in file order)."""
    seen: dict[str, set[str]] = defaultdict(set)
    out = []
    for r in rows:
        qids = seen[r["task"]]
        if r["qid"] not in qids:
            if len(qids) >= limit:
                continue
            qids.add(r["qid"])
        out.append(r)
    return out


def read_paths(path: Path) -> list[dict[str, Any]]:
    """The rows of paths.jsonl, each checked for the fields and types the filter relies on."""
    from qrdistill.io import iter_jsonl_lines

    rows = []
    for lineno, row in iter_jsonl_lines(path, required=tuple(PATH_FIELDS)):
        for name, types in (*PATH_FIELDS.items(), *OPTIONAL_PATH_FIELDS.items()):
            if name not in row:
                continue
            value = row[name]
            # bool is an int in Python, but `sample: true` is not a sample index.
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                want = " or ".join(_JSON_TYPE[t] for t in types)
                raise DataError(f"{path}:{lineno}: field {name} must be {want}, got {type(value).__name__}; "
                                f"run `qrdistill generate` again to rewrite {path.name} from the store")
        if row.get("meta") is None:
            row["meta"] = {}
        if not isinstance(row["meta"].get("record") or {}, dict):
            raise DataError(f"{path}:{lineno}: field meta.record must be an object; run `qrdistill generate` "
                            f"again to rewrite {path.name} from the store")
        rows.append(row)
    return rows


def run(cfg: Any, run_dir: Path, limit: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    from qrdistill.io import require_artifact
    from qrdistill.stages.generate import PATHS_FILE, run_dir_lock

    if limit is not None and limit < 1:
        raise QRDistillError(f"--limit {limit}: give a number of questions per task of at least 1")

    run_dir = Path(run_dir)
    require_artifact(run_dir / PATHS_FILE, "generate")
    if dry_run:
        return _dry_run(cfg, run_dir, limit)
    with run_dir_lock(run_dir, "filter"):
        return _run(cfg, run_dir, limit)


def _dry_run(cfg: Any, run_dir: Path, limit: int | None) -> dict[str, Any]:
    """The judge calls `_run` would issue and what they would cost, printed; nothing is called or written."""
    from qrdistill import cost
    from qrdistill.judges.base import Judge
    from qrdistill.judges.llm import LLMJudge
    from qrdistill.stages.generate import PATHS_FILE, STORE_FILE

    rows = _limit_questions(read_paths(run_dir / PATHS_FILE), limit)
    fc = cfg.filter
    if not fc.enabled or fc.judge.kind != "llm":
        why = "the filter is disabled" if not fc.enabled else f"the {fc.judge.kind} judge calls no model"
        print(f"filter --dry-run: {why}: 0 calls would be issued, nothing to pay")
        return {"stage": "filter", "calls": 0, "stored": 0, "input_tokens": 0, "output_tokens": 0,
                "cost_usd": None, "rows": []}
    _decontaminate(cfg, rows)
    # The paths the judge would see: a correct answer (step 1), and a program that may pass (step 1b).
    candidates = [r for r in rows if r["correct"] and not _dropped(r)]
    note = None
    if fc.execute_programs.enabled:
        from qrdistill.sandbox import extract_code

        candidates = [r for r in candidates if r["style"] != "program" or extract_code(r["response"]) is not None]
        note = ("  note: program paths are counted as if their programs print the gold answer (a dry run "
                "executes none); those that do not are never judged")
    jc = fc.judge
    missing = [f for f in ("{question}", "{path}") if jc.prompt is not None and f not in jc.prompt]
    if missing:  # what LLMJudge refuses when built (the bare one below is not)
        raise ConfigError(f"config field filter.judge.prompt: must contain {' and '.join(missing)}")
    # Built bare so that a dry run needs no API key; request_for reads only the judge's config.
    judge = LLMJudge.__new__(LLMJudge)
    Judge.__init__(judge, jc, None)
    judge.backend = cost.key_backend(jc.backend, "filter.judge.backend")
    try:
        calls = []
        for r in candidates:
            req = judge.request_for(r)
            calls.append(cost.PlannedCall(judge.backend.key(req), r["task"], r["style"], req.messages,
                                          int(req.params.get("max_tokens") or jc.backend.max_tokens)))
    finally:
        judge.backend.close()
    store_path = run_dir / STORE_FILE
    stored = cost.stored_ok_usage(store_path, (c.key for c in calls))
    counter = cost.token_counter(jc.backend, "filter.judge.backend")
    model = judge.backend.model
    price = cost.price_of(cfg.prices, model)
    est = cost.estimate(calls, stored, counter, price)
    budget = None
    if fc.budget_usd is not None and price is not None:
        spent, _ = cost.stored_spend(store_path, "judge", cfg.prices)
        budget = {"field": "filter.budget_usd", "budget_usd": fc.budget_usd, "spent_usd": spent}
    est.update(stage="filter", backend=judge.backend.label, model=model, budget=budget)
    print(cost.format_estimate("filter", f"judge {judge.backend.label}", model, est, price, budget))
    if note:
        print(note)
    return est


def _run(cfg: Any, run_dir: Path, limit: int | None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from qrdistill.io import (
        atomic_write_json,
        atomic_write_jsonl,
        read_json,
        require_artifact,
        write_run_meta,
    )
    from qrdistill.stages.generate import PATHS_FILE, STORE_FILE

    paths_file = require_artifact(run_dir / PATHS_FILE, "generate")
    rows = read_paths(paths_file)
    if not rows:
        # Writing on would replace filtered.jsonl with an empty pool and let training start on nothing.
        raise DataError(f"{paths_file}: no paths to filter (the file is empty); run `qrdistill generate` to "
                        f"write it again ({run_dir / FILTERED_FILE} is left as it was)")
    rows = _limit_questions(rows, limit)
    gen_meta = run_dir / "meta" / "generate.json"
    if gen_meta.exists():
        meta = read_json(gen_meta)
        summary = meta.get("summary") if isinstance(meta, dict) else None
        failed = summary.get("failed_calls") if isinstance(summary, dict) else None
        if isinstance(failed, int) and failed:
            log.warning("generate left %d teacher calls unanswered; filtering the %d paths it wrote "
                        "(run `qrdistill generate` again to complete the pool)", failed, len(rows))

    fc = cfg.filter
    decontamination = _decontaminate(cfg, rows)
    judge_calls: dict[str, int] = {}
    gate = None
    execution: dict[str, Any] | None = None
    judge_kind = fc.judge.kind if fc.enabled else None
    if not fc.enabled:
        but = " but those decontamination drops" if decontamination is not None else ""
        mode = f"disabled (ablation 'w/o quality filter'): every path kept{but}, no answer check, no judge"
        for r in rows:
            r["judge"], r["kept"] = None, not _dropped(r)
    else:
        mode = "answer check only (judge: none)" if judge_kind == "none" else f"answer check + {judge_kind} judge"
        for r in rows:
            r["judge"], r["kept"] = None, False
        correct = [r for r in rows if r["correct"] and not _dropped(r)]
        _mark_unverifiable([r for r in rows if not r["correct"]])
        if fc.execute_programs.enabled:
            from qrdistill.sandbox import EXECUTIONS_FILE, execute_programs

            mode += " + program execution"
            for r in rows:
                r["execution"] = None  # a dropped path's program is not run
            execution = execute_programs([r for r in rows if not _dropped(r)], fc.execute_programs,
                                         run_dir / EXECUTIONS_FILE)
            # A program path whose program does not print the gold answer is not kept, and costs no judge call.
            correct = [r for r in correct if (r["execution"] or {}).get("verdict", "pass") == "pass"]
        if judge_kind == "none":
            for r in correct:
                r["kept"] = True
        elif correct:
            verdicts, judge_calls, keys, gate = _judge(cfg, run_dir / STORE_FILE, correct, tqdm)
            for r, v, key in zip(correct, verdicts, keys, strict=True):
                r["judge"] = v.to_dict()
                if key is not None:
                    # Which judge call priced this path's verdict: the report's cost per task x style.
                    r["judge"]["key"] = key
                r["kept"] = bool(v.valid and v.parsed)

    n = atomic_write_jsonl(run_dir / FILTERED_FILE, rows)
    report: dict[str, Any] = {
        "mode": mode,
        "judge": judge_kind,
        "overall": count_outcomes(rows, None)["all"] if rows else dict.fromkeys(OUTCOMES, 0),
        "by_task": count_outcomes(rows, "task"),
        "by_style": count_outcomes(rows, "style"),
        "by_task_style": {
            t: count_outcomes([r for r in rows if r["task"] == t], "style", rows)
            for t in dict.fromkeys(r["task"] for r in rows)
        },
    }
    if judge_calls.get("batches"):
        report["judge_calls"] = judge_calls
    if gate is not None:
        report["budget"] = gate.summary("filter.budget_usd")
        # Calls the budget left unasked are not failures; the budget message below says what stopped.
        judge_calls["not_issued"] = len(gate.not_issued)
        judge_calls["unanswered"] -= len(gate.not_issued)
    if judge_kind == "llm" and judge_calls.get("batches"):
        from qrdistill import cost

        price = cost.price_of(cfg.prices, fc.judge.backend.model)
        if price is not None:
            report["cost_usd"] = {"stored_total": round(cost.stored_spend(run_dir / STORE_FILE, "judge",
                                                                          cfg.prices)[0], 6)}
    if execution is not None:
        report["execution"] = execution
    if decontamination is not None:
        report["decontamination"] = decontamination
    if any("planted" in r["meta"] for r in rows):
        report["planted"] = planted_metrics(rows)
    atomic_write_json(run_dir / REPORT_FILE, report)
    summary = {"paths": n, "kept": report["overall"]["kept"]}
    if decontamination is not None:
        summary.update(contaminated=decontamination["contaminated"], duplicates=decontamination["duplicates"])
    write_run_meta(run_dir, "filter", cfg, {"summary": summary})
    _print_summary(report)
    failed = judge_calls.get("failed", 0) + judge_calls.get("unanswered", 0)
    if gate is not None and gate.stopped:
        from qrdistill.cost import BudgetExhausted

        also = f"; {failed} other judge calls failed and are retried then too" if failed else ""
        raise BudgetExhausted(gate.message(
            "filter", "filter.budget_usd",
            f"Every verdict answered is stored; the {len(gate.not_issued)} paths not judged are marked not kept in "
            f"{run_dir / FILTERED_FILE} for now") + also)
    if failed:
        # Same policy as generate: artifacts are written (those paths count as not kept for now),
        # and a non-zero exit stops `qrdistill run` from training on a pool judged only in part.
        raise QRDistillError(
            f"{failed} judge calls failed permanently; their paths are marked not kept in "
            f"{run_dir / FILTERED_FILE} for now; run `qrdistill filter` again to retry only those calls"
        )
    return report


def _judge(cfg: Any, store_path: Path, rows: list[dict[str, Any]], tqdm: Any
           ) -> tuple[list[Any], dict[str, int], list[str | None], Any]:
    """Verdicts for `rows`, the totals of the judge calls made through the store during this run, each
    row's judge request key (None for a judge that calls no model) and the budget gate, if any."""
    from qrdistill import cost
    from qrdistill.judges import get_judge
    from qrdistill.store import Store

    bars: list[Any] = []

    def progress(n: int = 1) -> None:
        # Created on first use: a judge that reports through run_cached shows that bar instead.
        if not bars:
            bars.append(tqdm(total=len(rows), desc="judge", unit="path", dynamic_ncols=True))
        bars[0].update(n)

    fc = cfg.filter
    with Store(store_path) as store:
        since = store.last_batch_id()
        judge = get_judge(fc.judge, store)
        backend = getattr(judge, "backend", None)
        gate = None
        if fc.budget_usd is not None and backend is not None:
            gate = cost.budget_gate(backend, fc.budget_usd, cfg.prices, store.path, "judge", fc.judge.backend,
                                    "filter.budget_usd", "filter.judge.backend.model")
            judge.backend = gate
        keys = [backend.key(judge.request_for(r)) if backend is not None else None for r in rows]
        try:
            verdicts = list(judge.judge(rows, progress=progress))
        finally:
            for bar in bars:
                bar.close()
            close = getattr(judge, "close", None)
            if close is not None:
                close()
        calls = store.batch_totals("judge", after=since)
    if len(verdicts) != len(rows):
        raise QRDistillError(f"judge {cfg.filter.judge.kind!r} returned {len(verdicts)} verdicts for {len(rows)} paths")
    return verdicts, calls, keys, gate


def _dropped(row: dict[str, Any]) -> bool:
    """Whether decontamination drops the path (a contaminated question, or a duplicate path)."""
    return bool(row.get("contaminated") or row.get("duplicate_of"))


def _decontaminate(cfg: Any, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Set `contaminated` and `duplicate_of` on every row (filter.decontaminate) and return the report's
    `decontamination` section; None, and the rows untouched, when it is disabled."""
    import time

    from qrdistill.decontam import ContaminationIndex, question_stem

    dc = cfg.filter.decontaminate
    if not dc.enabled:
        return None
    start = time.perf_counter()
    questions, eval_sets = _eval_questions(cfg)
    index = ContaminationIndex(questions, methods=dc.methods, ngram=dc.ngram, ngram_coverage=dc.ngram_coverage,
                               fuzzy_threshold=dc.fuzzy_threshold, numbers_must_match=dc.numbers_must_match)
    matches: dict[str, Any] = {}
    first: dict[tuple[str, str, str], dict[str, Any]] = {}
    counts: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    by_method: Counter = Counter()
    by_set: Counter = Counter()
    for r in rows:
        question = r.get("question") or r["prompt"]
        stem = question_stem(question, r.get("choices"))
        if stem not in matches:
            matches[stem] = index.find_contamination(stem)
        match = matches[stem]
        r["contaminated"] = match.to_dict() if match is not None else None
        r["duplicate_of"] = None
        c = counts[r["task"]][r["style"]]
        c["contaminated"] += match is not None
        if match is not None:
            by_method[match.method] += 1
            by_set[match.task] += 1
        elif dc.deduplicate:
            key = (r["task"], question, r["response"].strip())
            if key in first:
                r["duplicate_of"] = first[key]
                c["duplicate"] += 1
            else:
                first[key] = {"qid": r["qid"], "style": r["style"], "sample": r.get("sample", 0)}
    seconds = time.perf_counter() - start
    log.info("decontamination: %d training questions checked against %d test questions in %.2f s",
             len(matches), len(index), seconds)
    return {
        "methods": list(index.methods), "ngram": dc.ngram, "ngram_coverage": dc.ngram_coverage,
        "fuzzy_threshold": dc.fuzzy_threshold, "numbers_must_match": dc.numbers_must_match,
        "deduplicate": dc.deduplicate, "eval_sets": eval_sets,
        "questions_checked": len(matches), "questions_contaminated": sum(m is not None for m in matches.values()),
        "contaminated": sum(by_method.values()),
        "duplicates": sum(c["duplicate"] for styles in counts.values() for c in styles.values()),
        "by_method": {m: by_method.get(m, 0) for m in index.methods},
        "by_eval_set": {s["task"]: by_set.get(s["task"], 0) for s in eval_sets},
        "by_task_style": {t: {st: {"contaminated": c["contaminated"], "duplicate": c["duplicate"]}
                              for st, c in styles.items()} for t, styles in counts.items()},
    }


def _eval_questions(cfg: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """The test questions to protect: evaluate's own (`load_eval_tasks`, without a --limit) and
    filter.decontaminate.extra_eval_files; and a description of each set for the report."""
    from qrdistill.decontam import EvalQuestion
    from qrdistill.stages.evaluate import load_eval_tasks
    from qrdistill.tasks.loading import read_rows

    try:
        tasks = load_eval_tasks(cfg, None)
    except QRDistillError as e:
        raise type(e)(f"filter.decontaminate: cannot load the test questions evaluate uses, to check the training "
                      f"questions against them: {e}; fix evaluate.tasks, or set filter.decontaminate.enabled: "
                      f"false to filter without the check") from None
    specs = cfg.evaluate.tasks
    questions, sets = [], []
    for i, et in enumerate(tasks):
        questions += [EvalQuestion(et.label, f"{et.task.name}/{r.id}", r.question) for r in et.records]
        sets.append({"task": et.label, "split": specs[i].split if specs is not None else "test",
                     "questions": len(et.records)})
    for i, f in enumerate(cfg.filter.decontaminate.extra_eval_files):
        where = f"config field filter.decontaminate.extra_eval_files.{i}"
        label = f.name or f.path
        try:
            file_rows = read_rows(f.path)
        except QRDistillError as e:
            raise DataError(f"{where}: {e}") from None
        if not file_rows:
            raise DataError(f"{where}: {f.path}: no questions in the file")
        for row in file_rows:
            text = row.data.get(f.question_field)
            if not isinstance(text, str) or not text.strip():
                got = "missing" if text is None else f"{type(text).__name__} {str(text)[:40]!r}"
                raise DataError(f"{where}: {row.where}: field {f.question_field!r} must be the question's text "
                                f"(a non-empty string), got {got}; set question_field to the field holding it")
            rid = row.data.get(f.id_field) if f.id_field else None
            qid = f"{label}/{rid}" if rid not in (None, "") else row.where
            questions.append(EvalQuestion(label, qid, text))
        sets.append({"task": label, "file": f.path, "questions": len(file_rows)})
    return questions, sets


def _mark_unverifiable(rows: list[dict[str, Any]]) -> None:
    """Set `check` ("wrong" or "unverifiable") on `rows`, the paths whose answer generate's check
    did not confirm. Generate stores its verdict in `check`, and that is used as it is; a row from a
    pool written before it did says only whether the check confirmed the answer, so the check runs
    again to tell an answer it cannot decide (a comparison past its deadline, a response too long to
    read) from a wrong one. Neither is kept."""
    from qrdistill.tasks import TASKS, get_task
    from qrdistill.tasks.base import Record, Verdict

    stored = (Verdict.WRONG.value, Verdict.UNVERIFIABLE.value)
    tasks: dict[str, Any] = {}
    for r in rows:
        if r.get("check") in stored:
            continue  # generate's own verdict: rerunning an undecided check would cost its deadline again
        if r["task"] not in TASKS:
            continue  # registered only in the process that generated the pool: it stays a wrong answer
        if r["task"] not in tasks:
            tasks[r["task"]] = get_task(r["task"])
        record = Record(id=r["qid"], question=r.get("question") or "", answer=str(r.get("answer", "")),
                        choices=list(r.get("choices") or []), meta=dict(r["meta"].get("record") or {}))
        verdict = tasks[r["task"]].check(r["response"], record)
        # Confirmed now but not when generate checked: the verdict depends on the moment, so it is undecided.
        r["check"] = Verdict.WRONG.value if verdict is Verdict.WRONG else Verdict.UNVERIFIABLE.value


def _print_summary(report: dict[str, Any]) -> None:
    from qrdistill.cost import usd

    print(f"filter: {report['mode']}")
    width = max([len(k) for t in (report["by_task"], report["by_style"]) for k in t] + [8])

    def line(name: str, counts: dict[str, int]) -> str:
        return f"    {name:<{width}}" + "".join(f"{counts[c]:>16}" for c in OUTCOMES)

    print(f"    {'':<{width}}" + "".join(f"{c:>16}" for c in OUTCOMES))
    for group in ("by_task", "by_style"):
        print(f"  {group.replace('_', ' ')}:")
        for name, counts in report[group].items():
            print(line(name, counts))
    print(line("overall", report["overall"]))
    if report["overall"].get(UNVERIFIABLE):
        print(f"  {report['overall'][UNVERIFIABLE]} answers the check could not decide ({UNVERIFIABLE}, not kept)")
    if "judge_calls" in report:
        c = report["judge_calls"]
        unasked = f", {c['not_issued']} not issued (budget)" if c.get("not_issued") else ""
        print(f"  judge calls: {c['issued']} issued, {c['cached']} cached (already stored), "
              f"{c['failed'] + c['unanswered']} failed{unasked}")
    if "cost_usd" in report:
        print(f"  judge cost: {usd(report['cost_usd']['stored_total'])} for every judge call stored")
    if "budget" in report:
        b = report["budget"]
        print(f"  budget: {usd(b['spent_usd'])} spent of filter.budget_usd {usd(b['budget_usd'])}")
    if "decontamination" in report:
        d = report["decontamination"]
        tested = ", ".join(f"{s['task']} {s['questions']}" for s in d["eval_sets"]) or "none"
        methods = ", ".join(f"{m} {n}" for m, n in d["by_method"].items())
        print(f"  decontamination against {sum(s['questions'] for s in d['eval_sets'])} test questions ({tested}): "
              f"{d['contaminated']} paths of {d['questions_contaminated']} questions contaminated ({methods}), "
              f"{d['duplicates']} duplicate paths dropped")
    if "execution" in report:
        e = report["execution"]
        verdicts: Counter = Counter()
        for styles in e["by_task_style"].values():
            for counts in styles.values():
                verdicts.update(counts)
        shown = ", ".join(f"{n} {v}" for v, n in verdicts.items() if n) or "none"
        print(f"  programs ({e['isolation']} isolation): {e['run']} run, {e['cached']} cached; {shown}")
    if "planted" in report:
        p = report["planted"]["overall"]

        def pct(x: float | None) -> str:
            return "-" if x is None else f"{x:.1%}"

        print(f"  planted defects: precision of kept (clean among kept) {pct(p['precision_clean'])}, "
              f"recall of clean (kept among clean) {pct(p['recall_clean'])}")
