"""Dataset export: a run's reasoning paths as an HF `datasets` folder, JSONL and a dataset card.

`export_dataset(D, O)` reads `D/filtered.jsonl` and `D/filter_report.json`
(both written by `qrdistill filter`), `D/meta/{generate,filter}.json` and the
teacher calls' usage in `D/store.sqlite` (opened read-only), and writes

- `O/hf/`: `Dataset.save_to_disk`, for `datasets.load_from_disk`;
- `O/data.jsonl`: the same rows, one JSON object a line;
- `O/README.md`: an HF dataset card (YAML front matter) with counts per
  task x style, the filter's statistics, the git SHAs and the resolved config;
- `O/export.json`: what was exported from where; it marks O as an export, so a
  later export may replace it.

The rows are the kept paths, or with `all_paths` every filtered path (`kept`
and `outcome` say which survived). `messages` is the conversational format
TRL's `SFTTrainer` reads: the user turn is exactly the prompt a student trains
on (`qrdistill.prompting.student_prompt`, the prompt of every method except
step_by_step, which adds a tag to it) and the assistant turn the teacher's path.

O is replaced whole: everything is written to a temporary sibling directory
first, then swapped in by rename, so a killed export leaves the previous one
(or nothing), never a mix. A non-empty O that is not a previous export is
refused: replacing it would delete a user's files.

`push_to_hub` uploads the card and data.jsonl to a Hub dataset repo (created
private if it does not exist: publishing teacher outputs is the user's call).
The token comes from `HF_TOKEN` in the environment only and is passed to
`huggingface_hub` directly; no file, log line or message carries it.

The run dir's files are parsed as JSON and SQLite only; nothing in them is
imported, unpickled or run. Task names are looked up in the task registry.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qrdistill.errors import DataError, QRDistillError
from qrdistill.export import staged_dir

log = logging.getLogger(__name__)

HF_DIR = "hf"
DATA_FILE = "data.jsonl"
CARD_FILE = "README.md"
MANIFEST_FILE = "export.json"
#: What an export directory holds; a directory holding anything else is not replaced.
EXPORT_ENTRIES = frozenset({HF_DIR, DATA_FILE, CARD_FILE, MANIFEST_FILE})
MANIFEST_FORMAT = "qrdistill-dataset-export"
TOKEN_ENV = "HF_TOKEN"

#: Fields of a filtered.jsonl row the export needs, and their JSON types.
_REQUIRED: dict[str, tuple[type, ...]] = {
    "qid": (str,), "task": (str,), "style": (str,), "question": (str,), "response": (str,), "kept": (bool,),
    "correct": (bool,),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "prompt": (str, type(None)), "sample": (int,), "teacher": (str, type(None)), "key": (str, type(None)),
    "judge": (dict, type(None)), "execution": (dict, type(None)), "meta": (dict, type(None)),
    "gold_text": (str, type(None)), "pred": (str, type(None)), "check": (str, type(None)),
    "contaminated": (dict, type(None)), "duplicate_of": (dict, type(None)),
}
_TYPE_NAMES = {str: "a string", bool: "true or false", dict: "an object", int: "an integer", type(None): "null"}

#: Column -> what it holds (the card's column table; `features` builds the schema in the same order).
COLUMNS: dict[str, str] = {
    "messages": "user turn (the student prompt) + assistant turn (the teacher's path), TRL's conversational format",
    "question": "the question as shown to teacher and student (with lettered options if any)",
    "response": "the teacher's reasoning path",
    "task": "qrdistill task name",
    "style": "reasoning style the teacher was asked for",
    "sample": "sample index within the question x style",
    "qid": "question id, `<task>/<record id>`",
    "teacher": "teacher backend label",
    "teacher_model": "teacher model name",
    "teacher_prompt": "the user message sent to the teacher (style instruction included)",
    "answer": "gold answer (a letter for multiple choice)",
    "gold_text": "how the gold final answer is written",
    "pred": "answer extracted from the response",
    "correct": "whether the extracted answer is right (the task's own check)",
    "kept": "whether the filter kept the path",
    "outcome": "the filter's outcome: kept, wrong_answer, judged_invalid, unparseable, contaminated, duplicate, ...",
    "judge_verdict": "valid, invalid or unparseable; null where the judge did not see the path",
    "judge_reason": "the judge's reason; null where the judge did not see the path",
    "execution_verdict": "program execution verdict (filter.execute_programs); null where not run",
    "contaminated": "whether decontamination flagged the question; null where it did not run",
    "cache_key": "the teacher call's key in the run's store.sqlite",
    "usage": "the teacher call's prompt and completion tokens; null where not recorded",
}


def export_dataset(run_dir: Path, out: Path, all_paths: bool = False, push_to_hub: str | None = None) -> dict:
    from qrdistill.io import read_json, require_artifact
    from qrdistill.stages.filter import FILTERED_FILE, REPORT_FILE
    from qrdistill.stages.generate import PATHS_FILE, STORE_FILE

    run_dir = Path(run_dir)
    out = Path(os.path.abspath(out))
    # Before any work: a missing token should not cost a full export first.
    token = hub_token(push_to_hub) if push_to_hub is not None else None
    filtered = require_artifact(run_dir / FILTERED_FILE, "filter")
    report_file = require_artifact(run_dir / REPORT_FILE, "filter")
    check_out_dir(out)

    rows = read_filtered(filtered)
    if not rows:
        raise DataError(f"{filtered}: no paths (the file is empty); run `qrdistill filter` again")
    report = read_json(report_file)
    check_report(report, rows, report_file, filtered)
    metas = {stage: _read_meta(run_dir / "meta" / f"{stage}.json") for stage in ("generate", "filter")}
    selected = rows if all_paths else [r for r in rows if r["kept"]]
    if not selected:
        raise QRDistillError(f"{filtered}: no path was kept, so there is nothing to export; pass --all-paths to "
                             f"export every filtered path with its verdict")
    calls = read_teacher_calls(run_dir / STORE_FILE, [r.get("key") for r in selected])
    records = [to_record(r, calls.get(r.get("key") or "")) for r in selected]

    from qrdistill import __version__
    from qrdistill.io import count_nonblank_lines, git_sha

    export_info = {
        "format": MANIFEST_FORMAT,
        "what": "dataset",
        "run_dir": str(run_dir.resolve()),
        "all_paths": all_paths,
        "rows": len(records),
        "kept": sum(r["kept"] for r in rows),
        "filtered": len(rows),
        "generated": count_nonblank_lines(run_dir / PATHS_FILE) or None,
        "usage_known": sum(r["usage"] is not None for r in records),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "qrdistill_version": __version__,
        "git_sha": git_sha(),
        "files": sorted(EXPORT_ENTRIES),
    }
    card = render_card(records, report, metas, export_info, run_dir.resolve().name)
    write_export(out, records, card, export_info)
    print(f"export dataset: {len(records)} paths ({'every filtered path' if all_paths else 'the kept paths'}, "
          f"{export_info['kept']} kept of {len(rows)}) -> {out} ({HF_DIR}/, {DATA_FILE}, {CARD_FILE})")
    result = {**export_info, "out": str(out), "hf": str(out / HF_DIR), "jsonl": str(out / DATA_FILE),
              "card": str(out / CARD_FILE), "pushed_to": None}
    if push_to_hub is not None:
        result["pushed_to"] = push(out, push_to_hub, token)  # type: ignore[arg-type]
    return result


# -- reading the run ----------------------------------------------------------------------------------------


def read_filtered(path: Path) -> list[dict[str, Any]]:
    """The rows of filtered.jsonl, each checked for the fields and types the export relies on."""
    from qrdistill.io import iter_jsonl_lines
    from qrdistill.tasks import TASKS

    rows = []
    for lineno, row in iter_jsonl_lines(path):
        where = f"{path}:{lineno}"
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)} (is this a filtered.jsonl written by "
                            f"`qrdistill filter`?)")
        for name, types in (*_REQUIRED.items(), *_OPTIONAL.items()):
            if name in row and (not isinstance(row[name], types) or (isinstance(row[name], bool) and bool not in types)):
                want = " or ".join(_TYPE_NAMES[t] for t in types)
                raise DataError(f"{where}: field {name} must be {want}, got {type(row[name]).__name__}; run "
                                f"`qrdistill filter` again to rewrite {path.name}")
        if row["task"] not in TASKS:
            raise DataError(f"{where}: unknown task {row['task']!r} (known: {', '.join(TASKS.names())}); the student "
                            f"prompt depends on the task, so the path cannot be exported")
        rows.append(row)
    return rows


def check_report(report: Any, rows: list[dict[str, Any]], report_file: Path, filtered: Path) -> None:
    """The report must count the same paths as filtered.jsonl, or the card would describe other data.

    filter writes filtered.jsonl before the report, so a filter killed in between leaves them apart.
    """
    by_ts = report.get("by_task_style") if isinstance(report, dict) else None
    if not isinstance(by_ts, dict) or not isinstance(report.get("overall"), dict):
        raise DataError(f"{report_file}: not a filter report (no overall / by_task_style counts); run "
                        f"`qrdistill filter` again")
    counted: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in rows:
        c = counted[(r["task"], r["style"])]
        c["total"] += 1
        c["kept"] += int(r["kept"])
    reported = {
        (t, s): {k: c.get(k) for k in ("total", "kept")}
        for t, styles in by_ts.items() if isinstance(styles, dict)
        for s, c in styles.items() if isinstance(c, dict)
    }
    actual = {k: {"total": c["total"], "kept": c["kept"]} for k, c in counted.items()}
    if reported != actual:
        diff = sorted(set(reported) ^ set(actual)) or sorted(k for k in actual if reported.get(k) != actual[k])
        task, style = diff[0]
        raise DataError(
            f"{report_file} does not count the paths of {filtered} (first difference: task {task!r}, style "
            f"{style!r}: report {reported.get((task, style))}, file {actual.get((task, style))}); run `qrdistill "
            f"filter` again to write both"
        )


def _read_meta(path: Path) -> dict[str, Any] | None:
    from qrdistill.io import read_json

    if not path.exists():
        log.warning("%s not found: the dataset card will not show that stage's config and git SHA", path)
        return None
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object (stage metadata written by qrdistill)")
    return meta


def read_teacher_calls(store_path: Path, keys: list[str | None]) -> dict[str, dict[str, Any]]:
    """key -> {model, prompt_tokens, completion_tokens} of the stored teacher completions, read-only.

    Usage is "where known": a missing or unreadable store leaves it null (with a warning) rather
    than blocking an export that does not need it.
    """
    wanted = sorted({k for k in keys if k})
    if not wanted:
        return {}
    if not store_path.exists():
        log.warning("%s not found: usage and teacher_model come out null", store_path)
        return {}
    out: dict[str, dict[str, Any]] = {}
    try:
        # Read-only, so the export changes nothing in the run. A WAL reader creates -shm/-wal files and
        # leaves them behind; without a -wal file every commit is in the main file, and `immutable`
        # reads it without them. With one (a stage still running, or killed) its commits count too.
        wal = store_path.with_name(store_path.name + "-wal")
        mode = "mode=ro" if wal.exists() else "immutable=1"
        db = sqlite3.connect(f"{store_path.resolve().as_uri()}?{mode}", uri=True, timeout=30.0)
        try:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                for key, model, pt, ct in db.execute(
                    f"SELECT key, model, prompt_tokens, completion_tokens FROM completions "
                    f"WHERE kind = 'teacher' AND status = 'ok' AND key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ):
                    out[key] = {"model": model, "prompt_tokens": _int_or_none(pt), "completion_tokens": _int_or_none(ct)}
        finally:
            db.close()
    except sqlite3.Error as e:
        log.warning("%s: cannot read the teacher calls (%s): usage and teacher_model come out null", store_path, e)
        return {}
    if len(out) < len(wanted):
        log.warning("%s holds %d of the %d exported teacher calls: usage is null for the others",
                    store_path, len(out), len(wanted))
    return out


def _int_or_none(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


# -- rows -----------------------------------------------------------------------------------------------------


def features() -> Any:
    """The dataset's schema: fixed, so a column that is null in every row still has its type."""
    import datasets

    string, integer, boolean = datasets.Value("string"), datasets.Value("int64"), datasets.Value("bool")
    turn = {"role": string, "content": string}
    # datasets < 4 has no `List`; a one-element list is its spelling of the same feature.
    messages = datasets.List(turn) if hasattr(datasets, "List") else [turn]
    types = {
        "messages": messages, "sample": integer, "correct": boolean, "kept": boolean, "contaminated": boolean,
        "usage": {"prompt_tokens": integer, "completion_tokens": integer},
    }
    return datasets.Features({name: types.get(name, string) for name in COLUMNS})


def _str_or_none(x: Any) -> str | None:
    return None if x is None else str(x)


def judge_verdict(judge: dict[str, Any] | None) -> str | None:
    if not judge:
        return None
    if not judge.get("parsed", True):
        return "unparseable"
    return "valid" if judge.get("valid") else "invalid"


def contaminated(row: dict[str, Any]) -> bool | None:
    """True when decontamination flagged the path (`contaminated: {task, qid, method, score}`), False
    when it ran and did not, None when the row does not say (decontamination did not run)."""
    if "contaminated" in row:
        return bool(row["contaminated"])
    meta = row.get("meta") or {}
    return bool(meta["contaminated"]) if "contaminated" in meta else None


def to_record(row: dict[str, Any], call: dict[str, Any] | None) -> dict[str, Any]:
    """One exported row (the columns of COLUMNS, in that order)."""
    from qrdistill.prompting import student_prompt
    from qrdistill.stages.filter import outcome
    from qrdistill.tasks import get_task

    prompt = student_prompt(get_task(row["task"]), row["question"])
    teacher = row.get("teacher")
    model = (call or {}).get("model") or (teacher.split(":", 1)[-1] if teacher else None)
    usage = None
    if call is not None:
        usage = {"prompt_tokens": call["prompt_tokens"], "completion_tokens": call["completion_tokens"]}
    judge = row.get("judge") or None
    record = {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["response"]}],
        "question": row["question"],
        "response": row["response"],
        "task": row["task"],
        "style": row["style"],
        "sample": row.get("sample", 0),
        "qid": row["qid"],
        "teacher": teacher,
        "teacher_model": model,
        "teacher_prompt": row.get("prompt"),
        "answer": _str_or_none(row.get("answer")),
        "gold_text": row.get("gold_text"),
        "pred": row.get("pred"),
        "correct": row["correct"],
        "kept": row["kept"],
        "outcome": outcome(row),
        "judge_verdict": judge_verdict(judge),
        "judge_reason": _str_or_none(judge.get("reason")) if judge else None,
        "execution_verdict": _str_or_none((row.get("execution") or {}).get("verdict")),
        "contaminated": contaminated(row),
        "cache_key": row.get("key"),
        "usage": usage,
    }
    return record


# -- the card -------------------------------------------------------------------------------------------------


def _cell(x: Any) -> str:
    text = "" if x is None else str(x)
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fenced(text: str, lang: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it (run data may hold some)."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "1M<n<10M"


def resolved_config(metas: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The parts of the config that made the data: tasks, seed and generate from the generate stage's
    meta, filter from the filter stage's (each may have been run with a different config file)."""
    gen = (metas.get("generate") or {}).get("config") or {}
    filt = (metas.get("filter") or {}).get("config") or {}
    out: dict[str, Any] = {}
    for key, src in (("seed", gen), ("tasks", gen), ("generate", gen), ("filter", filt)):
        if isinstance(src, dict) and key in src:
            out[key] = src[key]
    return out


def render_card(records: list[dict[str, Any]], report: dict[str, Any], metas: dict[str, dict[str, Any] | None],
                info: dict[str, Any], run_name: str) -> str:
    import yaml

    tasks = list(dict.fromkeys(r["task"] for r in records))
    styles = list(dict.fromkeys(r["style"] for r in records))
    teachers = list(dict.fromkeys(r["teacher"] for r in records if r["teacher"]))
    front = {
        "pretty_name": f"qrdistill reasoning paths ({run_name})",
        "tags": ["qrdistill", "reasoning", "distillation", "synthetic"],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(len(records))],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE}]}],
    }
    what = ("every filtered path (`kept` marks the ones the filter kept)" if info["all_paths"]
            else "the paths the filter kept")
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---",
        f"# {_cell(front['pretty_name'])}",
        f"Reasoning paths written by the teacher {', '.join(f'`{_cell(t)}`' for t in teachers) or '(not recorded)'} "
        f"for {', '.join(f'`{_cell(t)}`' for t in tasks)} in {len(styles)} styles "
        f"({', '.join(f'`{_cell(s)}`' for s in styles)}), filtered by qrdistill ({_cell(report.get('mode'))}). "
        f"This export holds {what}: {info['rows']} rows; the filter kept {info['kept']} of {info['filtered']} paths"
        + (f" (generate wrote {info['generated']})." if info.get("generated") else "."),
        "## Use\n\n" + _fenced(
            'from datasets import load_dataset, load_from_disk\n\n'
            f'ds = load_from_disk("{HF_DIR}")  # or: load_dataset("json", data_files="{DATA_FILE}", split="train")'
            , "python")
        + "\n\n`messages` is the conversational format TRL's `SFTTrainer` reads. Its user turn is the prompt "
        "qrdistill's students train on (`qrdistill.prompting.student_prompt`; the step_by_step method adds a tag "
        "in front of it), its assistant turn the teacher's path. Set a license before publishing: the teacher's "
        "terms of use may govern its outputs.",
        "## Columns\n\n" + md_table(["column", "type", "description"],
                                    [[c, _type_name(c), d] for c, d in COLUMNS.items()]),
        _counts_section(report, records),
        _filter_section(report),
        _usage_section(records, info),
        _provenance_section(metas, info, run_name),
    ]
    config = resolved_config(metas)
    if config:
        parts.append(
            "## Resolved config\n\nTasks, seed and `generate` as the generate stage ran them, `filter` as the filter "
            "stage ran it (from the run's `meta/generate.json` and `meta/filter.json`, which hold the whole "
            "config).\n\n" + _fenced(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), "yaml")
        )
    return "\n\n".join(parts) + "\n"


def _type_name(column: str) -> str:
    return {"messages": "list of {role, content}", "sample": "int", "correct": "bool", "kept": "bool",
            "contaminated": "bool", "usage": "{prompt_tokens, completion_tokens}"}.get(column, "string")


def _outcome_keys(report: dict[str, Any]) -> list[str]:
    keys: dict[str, None] = {}
    for styles in report["by_task_style"].values():
        for counts in styles.values():
            keys.update(dict.fromkeys(counts))
    return list(keys)


def _counts_section(report: dict[str, Any], records: list[dict[str, Any]]) -> str:
    keys = _outcome_keys(report)
    exported = Counter((r["task"], r["style"]) for r in records)
    rows = [[task, style, *(counts.get(k, 0) for k in keys), exported[(task, style)]]
            for task, styles in report["by_task_style"].items() for style, counts in styles.items()]
    return ("## Counts per task x style\n\nThe filter's outcome for every path it saw (`filter_report.json`), and "
            "the rows of this export.\n\n" + md_table(["task", "style", *keys, "exported"], rows))


def _filter_section(report: dict[str, Any]) -> str:
    overall = report["overall"]
    lines = [
        "## Filter statistics",
        f"Mode: {_cell(report.get('mode'))}; judge: `{_cell(report.get('judge'))}`.",
        md_table(list(overall), [list(overall.values())]),
    ]
    calls = report.get("judge_calls")
    if isinstance(calls, dict):
        lines.append(f"Judge calls: {calls.get('issued', 0)} issued, {calls.get('cached', 0)} cached, "
                     f"{calls.get('failed', 0) + calls.get('unanswered', 0)} failed.")
    cost = report.get("cost_usd")
    if isinstance(cost, dict) and cost.get("stored_total") is not None:
        lines.append(f"Judge cost, every judge call stored in the run: ${cost['stored_total']}.")
    execution = report.get("execution")
    if isinstance(execution, dict):
        lines.append(f"Programs executed ({_cell(execution.get('isolation'))} isolation): {execution.get('run', 0)} "
                     f"run, {execution.get('cached', 0)} cached.")
    planted = (report.get("planted") or {}).get("overall") if isinstance(report.get("planted"), dict) else None
    if isinstance(planted, dict):
        lines.append("Defects the simulated teacher planted, against the filter's decisions:\n\n"
                     + md_table(list(planted), [list(planted.values())]))
    return "\n\n".join(lines)


def _usage_section(records: list[dict[str, Any]], info: dict[str, Any]) -> str:
    known = [r["usage"] for r in records if r["usage"] is not None]
    prompt = sum(u["prompt_tokens"] or 0 for u in known)
    completion = sum(u["completion_tokens"] or 0 for u in known)
    return (f"## Teacher usage\n\nOver the {len(records)} exported rows ({info['usage_known']} with usage recorded "
            f"in the run's store): {prompt} prompt tokens, {completion} completion tokens.")


def _provenance_section(metas: dict[str, dict[str, Any] | None], info: dict[str, Any], run_name: str) -> str:
    rows = []
    for stage, meta in metas.items():
        if meta is None:
            rows.append([stage, "(no meta file)", "", ""])
        else:
            rows.append([stage, meta.get("git_sha") or "(unknown)", meta.get("qrdistill_version"), meta.get("time")])
    rows.append(["export", info.get("git_sha") or "(unknown)", info.get("qrdistill_version"), info.get("time")])
    return (f"## Provenance\n\nRun directory `{_cell(run_name)}`; the git SHA of qrdistill each stage ran at:\n\n"
            + md_table(["stage", "git SHA", "qrdistill", "time (UTC)"], rows))


# -- writing --------------------------------------------------------------------------------------------------


def is_previous_export(path: Path) -> bool:
    """Whether `path` holds a dataset export and nothing else (so replacing it loses no user file)."""
    try:
        names = {p.name for p in path.iterdir()}
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT
            and manifest.get("what") == "dataset" and names <= EXPORT_ENTRIES)


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise QRDistillError(f"--out {out}: is a file, not a directory; give a new or empty directory")
    if not out.is_dir():
        return
    try:
        empty = next(out.iterdir(), None) is None
    except OSError as e:
        raise QRDistillError(f"--out {out}: cannot read the directory ({e.strerror or e})") from None
    if not empty and not is_previous_export(out):
        raise QRDistillError(
            f"--out {out}: the directory is not empty and is not a previous dataset export (no {MANIFEST_FILE}, or "
            f"files other than {', '.join(sorted(EXPORT_ENTRIES))}); the export replaces the whole directory, so "
            f"give a new or empty --out"
        )


def write_export(out: Path, records: list[dict[str, Any]], card: str, info: dict[str, Any]) -> None:
    """Write the export into a temporary sibling of `out`, then swap it in by rename."""
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    with staged_dir(out, f"--out {out}", "the export") as tmp:
        ds = datasets.Dataset.from_list(records, features=features())
        datasets.disable_progress_bars()
        try:
            ds.save_to_disk(str(tmp / HF_DIR))
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()
        with open(tmp / DATA_FILE, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        (tmp / MANIFEST_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- the Hub --------------------------------------------------------------------------------------------------


def hub_token(repo: str) -> str:
    """The token for pushing to `repo`, from HF_TOKEN only; the repo id is checked first."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except ValueError as e:
        raise QRDistillError(f"--push-to-hub {repo!r}: not a Hub repo id ({e}); give one like user/name") from None
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise QRDistillError(
            f"--push-to-hub {repo}: set {TOKEN_ENV} in the environment to a Hugging Face token with write access "
            f"(it is read from there only, never from a file or the command line); nothing was exported"
        )
    return token


def _scrub(text: str, token: str) -> str:
    from qrdistill.io import redact_credentials

    return " ".join(redact_credentials(text.replace(token, "[REDACTED]")).split())


class _TokenFilter(logging.Filter):
    """Handler filter: a record's final message goes out with the token replaced.

    With --verbose the HTTP client logs response headers at DEBUG, and a server that quotes the
    Authorization header back (in an error header or body) would put the token in the log.
    """

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001  (a bad format string is logging's to report, not ours)
            return True
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "[REDACTED]"), None
        return True


@contextlib.contextmanager
def _token_kept_out_of_logs(token: str) -> Iterator[None]:
    loggers = [logging.getLogger()] + [
        lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)
    ]
    handlers = {id(h): h for lg in loggers for h in lg.handlers}.values()
    token_filter = _TokenFilter(token)
    for h in handlers:
        h.addFilter(token_filter)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(token_filter)


def push(out: Path, repo: str, token: str) -> str:
    """Upload the card and data.jsonl of the export in `out` to the Hub dataset `repo`; return its URL."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hub_errors

    # huggingface_hub >= 1 raises httpx errors (hub_errors.HTTPError); older versions requests' (OSErrors).
    failures: tuple[type[BaseException], ...] = (OSError, ValueError, getattr(hub_errors, "HTTPError", OSError))
    api = HfApi(token=token)
    try:
        with _token_kept_out_of_logs(token):
            url = api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
            api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="dataset",
                              allow_patterns=[CARD_FILE, DATA_FILE], commit_message="qrdistill export --what dataset")
    except failures as e:
        raise QRDistillError(
            f"--push-to-hub {repo}: the push to {constants.ENDPOINT} failed ({type(e).__name__}: "
            f"{_scrub(str(e), token)}); the export in {out} is complete: run the same command again to retry the push"
        ) from None
    log.info("pushed %s and %s to %s", CARD_FILE, DATA_FILE, url)
    return str(url)
