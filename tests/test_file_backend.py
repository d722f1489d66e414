"""The `file` teacher: existing reasoning paths imported instead of generated.

A pool written by the simulated teacher through the real generate stage is the ground truth: it is
rewritten into every format (paths.jsonl, generic JSONL/JSON/Parquet/datasets folder, distilabel,
open-r1, messages/ShareGPT), imported through the real generate stage, and must come back as the
same paths (text, answer check, prompt) with their provenance, and be filtered (steps judge) exactly
as the generated ones were. Bad rows must fail with one message naming file:line before anything in
the run dir changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qrdistill.config import load_config
from qrdistill.errors import ConfigError, DataError
from qrdistill.stages import filter as filter_stage
from qrdistill.stages import generate as generate_stage
from qrdistill.store import Store

ROOT = Path(__file__).resolve().parents[1]
TASKS = [{"name": "procedural_date", "limit": 3}, {"name": "procedural_arith", "limit": 3}]
STYLES = ["cot", "vanilla", "backward"]
SAMPLES = 2
POOL_SIZE = 6 * len(STYLES) * SAMPLES
#: paths.jsonl fields an imported path must share with the generated one it was made from.
SAME = ("qid", "task", "style", "sample", "prompt", "question", "choices", "answer", "gold_text", "response", "pred",
        "correct", "check")


def config(run: Path, teacher: dict | None = None, **overrides):
    base = {"run_dir": str(run), "tasks": TASKS, "generate.styles": STYLES, "generate.samples_per_style": SAMPLES}
    if teacher is not None:
        base["generate.teacher"] = teacher
    return load_config(None, {**base, **overrides})


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def bare_id(row: dict) -> str:
    return row["qid"].split("/", 1)[1]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """The simulated teacher's paths for 6 procedural questions x 3 styles x 2 samples, and their filtering."""
    run = tmp_path_factory.mktemp("pool") / "run"
    cfg = config(run)
    generate_stage.run(cfg, run)
    filter_stage.run(cfg, run)
    rows = read_rows(run / "paths.jsonl")
    assert len(rows) == POOL_SIZE
    kept = {(r["qid"], r["style"], r["sample"]): r["kept"] for r in read_rows(run / "filtered.jsonl")}
    return {"run": run, "rows": rows, "kept": kept}


@pytest.fixture(scope="module")
def records():
    """qid -> the task record, for writing rows by question text."""
    from qrdistill.tasks import get_task

    out = {}
    for spec in TASKS:
        task = get_task(spec["name"])
        for r in task.load("train", limit=spec["limit"]):
            out[f"{task.name}/{r.id}"] = (task, r)
    return out


def import_pool(tmp_path: Path, teacher: dict, **overrides) -> tuple[Path, dict, list[dict]]:
    run = tmp_path / "imported"
    summary = generate_stage.run(config(run, teacher, **overrides), run)
    return run, summary, read_rows(run / "paths.jsonl")


def assert_same_paths(imported: list[dict], pool_rows: list[dict], label: str, fmt: str) -> None:
    """Every imported path equals its generated original, and says where it came from."""
    by_slot = {(r["qid"], r["style"], r["sample"]): r for r in pool_rows}
    assert len(imported) == len(pool_rows)
    for r in imported:
        original = by_slot[(r["qid"], r["style"], r["sample"])]
        for name in SAME:
            assert r[name] == original[name], (name, r["qid"], r["style"], r["sample"])
        assert r["teacher"] == label
        src = r["meta"]["imported"]
        assert src["format"] == fmt and src["row"] and src["file"]
        assert r["meta"]["record"] == original["meta"]["record"] and r["meta"]["difficulty"]


# ---------------------------------------------------------------- every format round-trips


def test_paths_format_from_a_run_dir_round_trips_and_filters_alike(tmp_path, pool):
    run, summary, rows = import_pool(tmp_path, {"kind": "file", "format": "paths", "path": str(pool["run"])})
    assert summary["paths"] == POOL_SIZE and summary["failed_calls"] == 0 and summary["calls_issued"] == POOL_SIZE
    assert summary["teacher"] == "file:run" and "missing_paths" not in summary
    assert_same_paths(rows, pool["rows"], "file:run", "paths")
    # Provenance: the line of paths.jsonl each path came from, and the model that wrote it.
    assert [r["meta"]["imported"]["row"] for r in rows] == [
        f"{pool['run'] / 'paths.jsonl'}:{i}" for i in range(1, POOL_SIZE + 1)
    ]
    assert {r["meta"]["imported"]["model"] for r in rows} == {"simulated:simulated-teacher"}
    # The planted defects travel along, so the filter report can still score the filter.
    assert [r["meta"]["planted"] for r in rows] == [r["meta"]["planted"] for r in pool["rows"]]

    report = filter_stage.run(config(run, {"kind": "file", "format": "paths", "path": str(pool["run"])}), run)
    filtered = read_rows(run / "filtered.jsonl")
    assert {(r["qid"], r["style"], r["sample"]): r["kept"] for r in filtered} == pool["kept"]
    assert report["overall"]["kept"] == sum(pool["kept"].values())
    assert report["planted"]["paths_with_planted_info"] == POOL_SIZE


def generic_rows(pool_rows: list[dict]) -> list[dict]:
    """The pool under other column names, with bare record ids, the task in its own column, titles as styles."""
    from qrdistill.styles import STYLE_TITLES

    return [{"question_id": bare_id(r), "bench": r["task"], "kind": STYLE_TITLES[r["style"]],
             "n": r["sample"], "output": {"text": r["response"]}, "who": "teacher-x"} for r in pool_rows]


GENERIC_COLUMNS = {"id": "question_id", "question": None, "task": "bench", "style": "kind", "sample": "n",
                   "response": "output.text", "model": "who"}


def _write_json(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps({"data": rows}, indent=1), encoding="utf-8")
    return path


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write_dataset(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    return path


WRITERS = {"data.jsonl": write_jsonl, "data.json": _write_json, "data.parquet": _write_parquet,
           "dataset": _write_dataset}


@pytest.mark.parametrize("name", list(WRITERS))
def test_generic_format_by_id_from_each_file_type(tmp_path, pool, name):
    src = WRITERS[name](tmp_path / name, generic_rows(pool["rows"]))
    _, summary, rows = import_pool(tmp_path, {"kind": "file", "format": "generic", "path": str(src),
                                              "columns": GENERIC_COLUMNS})
    assert summary["paths"] == POOL_SIZE
    assert_same_paths(rows, pool["rows"], f"file:{name}", "generic")
    assert {r["meta"]["imported"]["model"] for r in rows} == {"teacher-x"}
    where = {"data.jsonl": f"{src}:1", "data.json": f"{src}:3", "data.parquet": f"{src}:row 1",
             "dataset": f"{src}[train] row 0"}[name]
    first = next(r for r in rows if r["qid"] == pool["rows"][0]["qid"] and r["style"] == pool["rows"][0]["style"]
                 and r["sample"] == 0)
    assert first["meta"]["imported"]["row"] == where


def test_generic_format_by_normalised_question_text(tmp_path, pool, records):
    rows = []
    for r in pool["rows"]:
        task, record = records[r["qid"]]
        # The bare question, re-cased and re-spaced: still the same question after normalisation.
        text = "  " + record.question.upper().replace(" ", "   ") + "\n"
        rows.append({"question": text, "style": r["style"], "sample": r["sample"], "response": r["response"]})
    src = write_jsonl(tmp_path / "by_text.jsonl", rows)
    _, summary, imported = import_pool(tmp_path, {"kind": "file", "format": "generic", "path": str(src),
                                                  "columns": {"style": "style", "sample": "sample"}})
    assert summary["paths"] == POOL_SIZE
    assert_same_paths(imported, pool["rows"], "file:by_text.jsonl", "generic")


def test_distilabel_rows_get_the_configured_style_and_numbered_samples(tmp_path, pool, records):
    cot = [r for r in pool["rows"] if r["style"] == "cot"]
    rows = [{"instruction": records[r["qid"]][1].question, "generation": r["response"], "model_name": "gpt-x"}
            for r in cot]
    src = write_jsonl(tmp_path / "distilabel.jsonl", rows)
    _, summary, imported = import_pool(tmp_path, {"kind": "file", "format": "distilabel", "path": str(src)},
                                       **{"generate.styles": ["cot"]})
    assert summary["paths"] == len(cot) == 12
    assert_same_paths(imported, cot, "file:distilabel.jsonl", "distilabel")
    assert {r["meta"]["imported"]["model"] for r in imported} == {"gpt-x"}


def test_openr1_generations_are_samples(tmp_path, pool):
    groups: dict[str, list[dict]] = {}
    for r in pool["rows"]:
        if r["style"] == "backward":
            groups.setdefault(r["qid"], []).append(r)
    # The question with its lettered options, as the teacher saw it.
    rows = [{"problem": g[0]["question"], "generations": [x["response"] for x in sorted(g, key=lambda x: x["sample"])],
             "uuid": qid} for qid, g in groups.items()]
    src = _write_parquet(tmp_path / "openr1.parquet", rows)
    _, summary, imported = import_pool(tmp_path, {"kind": "file", "format": "openr1", "path": str(src),
                                                  "style": "backward"}, **{"generate.styles": ["backward"]})
    backward = [r for r in pool["rows"] if r["style"] == "backward"]
    assert summary["paths"] == len(backward) == 12
    assert_same_paths(imported, backward, "file:openr1.parquet", "openr1")
    assert {r["meta"]["imported"]["row"] for r in imported if r["sample"] == 1} == {
        f"{src}:row {i} generations[1]" for i in range(1, 7)
    }


@pytest.mark.parametrize("sharegpt", [False, True])
def test_messages_conversations(tmp_path, pool, sharegpt):
    vanilla = [r for r in pool["rows"] if r["style"] == "vanilla" and r["sample"] == 0]
    rows = []
    for r in vanilla:
        if sharegpt:  # the user turn is the very prompt qrdistill sent
            turns = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": r["prompt"]},
                     {"from": "gpt", "value": r["response"]}]
            rows.append({"conversations": turns})
        else:
            turns = [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["response"]}]
            rows.append({"messages": turns, "model": "chat-y"})
    src = write_jsonl(tmp_path / "chat.jsonl", rows)
    _, summary, imported = import_pool(
        tmp_path, {"kind": "file", "format": "messages", "path": str(src), "style": "vanilla"},
        **{"generate.styles": ["vanilla"], "generate.samples_per_style": 1})
    assert summary["paths"] == len(vanilla) == 6
    assert_same_paths(imported, vanilla, "file:chat.jsonl", "messages")
    assert {r["meta"]["imported"]["model"] for r in imported} == {None if sharegpt else "chat-y"}


# ---------------------------------------------------------------- policies, cache, cost


def test_missing_paths_are_skipped_and_counted_or_an_error(tmp_path, pool):
    cot_rows = [r for r in pool["rows"] if r["style"] == "cot"]
    src = write_jsonl(tmp_path / "cot.jsonl", cot_rows)
    teacher = {"kind": "file", "format": "paths", "path": str(src)}
    run, summary, rows = import_pool(tmp_path, teacher)
    assert summary["paths"] == len(cot_rows) and summary["failed_calls"] == 0
    assert summary["expected_paths"] == POOL_SIZE and summary["missing_paths"] == POOL_SIZE - len(cot_rows)
    assert json.loads((run / "meta" / "generate.json").read_text())["summary"]["missing_paths"] == 24

    with pytest.raises(DataError, match=r"cot\.jsonl: 24 of 36 planned paths have no row \(12 vanilla, 12 "
                                        r"backward; e\.g\. procedural_date/pdate-train-000000 vanilla sample 0"):
        generate_stage.run(config(tmp_path / "strict", {**teacher, "missing": "error"}), tmp_path / "strict")
    assert not (tmp_path / "strict" / "paths.jsonl").exists() and not (tmp_path / "strict" / "store.sqlite").exists()


def test_unmatched_rows_are_an_error_or_skipped(tmp_path, pool):
    rows = [dict(r) for r in pool["rows"]]
    extra = dict(rows[0], qid="procedural_date/pdate-train-000999")
    src = write_jsonl(tmp_path / "more.jsonl", [*rows, extra])
    teacher = {"kind": "file", "format": "paths", "path": str(src)}
    with pytest.raises(DataError, match=rf"more\.jsonl:{POOL_SIZE + 1}: question id 'procedural_date/"
                                        r"pdate-train-000999' is not among the 3 questions of task procedural_date "
                                        r"this run loads"):
        import_pool(tmp_path, teacher)
    _, summary, imported = import_pool(tmp_path, {**teacher, "unmatched": "skip"})
    assert summary["paths"] == POOL_SIZE and len(imported) == POOL_SIZE

    # Known styles left out of generate.styles, and samples past samples_per_style, answer nothing asked.
    with pytest.raises(DataError, match=r"more\.jsonl:\d+: style 'vanilla' is not in generate\.styles \(cot, "
                                        r"backward\)"):
        import_pool(tmp_path, teacher, **{"generate.styles": ["cot", "backward"]})
    with pytest.raises(DataError, match=r"more\.jsonl:2: this is sample 1 of question procedural_date/"
                                        r"pdate-train-000000, style cot, and generate\.samples_per_style is 1"):
        import_pool(tmp_path, teacher, **{"generate.samples_per_style": 1})


def test_rerun_is_cached_and_an_edited_row_alone_is_imported_again(tmp_path, pool):
    src = write_jsonl(tmp_path / "p.jsonl", pool["rows"])
    teacher = {"kind": "file", "format": "paths", "path": str(src)}
    run, first, _ = import_pool(tmp_path, teacher)
    _, again, _ = import_pool(tmp_path, teacher)
    assert again["calls_issued"] == 0 and again["calls_cached"] == POOL_SIZE

    edited = [dict(r) for r in pool["rows"]]
    edited[4]["response"] = edited[4]["response"] + "\nChecked twice."
    write_jsonl(src, edited)
    _, third, rows = import_pool(tmp_path, teacher)
    assert third["calls_issued"] == 1 and third["calls_cached"] == POOL_SIZE - 1
    assert rows[4]["response"].endswith("Checked twice.")
    with Store(run / "store.sqlite") as st:
        assert st.teacher_paths_stored() == POOL_SIZE + 1  # the earlier text is kept, not overwritten
        assert st.reissued_keys() == []


def test_imported_paths_cost_nothing_under_a_budget(tmp_path, pool):
    src = write_jsonl(tmp_path / "p.jsonl", pool["rows"])
    _, summary, _ = import_pool(tmp_path, {"kind": "file", "format": "paths", "path": str(src)},
                                **{"prices": {"imported": {"input": 10.0, "output": 30.0}},
                                   "generate.budget_usd": 1.0})
    assert summary["paths"] == POOL_SIZE
    assert summary["cost_usd"] == {"this_run": 0.0, "stored_total": 0.0}
    assert summary["budget"]["spent_usd"] == 0.0 and not summary["budget"]["stopped"]
    assert summary["tokens_this_run"] == {"prompt": 0, "completion": 0}


def test_dry_run_counts_only_rows_that_answer_and_checks_them(tmp_path, pool):
    src = write_jsonl(tmp_path / "cot.jsonl", [r for r in pool["rows"] if r["style"] == "cot"])
    teacher = {"kind": "file", "format": "paths", "path": str(src)}
    run = tmp_path / "run"
    est = generate_stage.run(config(run, teacher), run, dry_run=True)
    assert est["requests"] == 12 and est["calls"] == 12 and est["stored"] == 0
    assert not run.exists()
    generate_stage.run(config(run, teacher), run)
    est = generate_stage.run(config(run, teacher), run, dry_run=True)
    assert est["stored"] == 12 and est["calls"] == 0
    write_jsonl(src, [_pool_line(pool, 0, style="fancy")])
    with pytest.raises(DataError, match=r"cot\.jsonl:1: unknown style 'fancy'"):
        generate_stage.run(config(run, teacher), run, dry_run=True)


# ---------------------------------------------------------------- bad rows: one file:line message


def _pool_line(pool, i: int, **change) -> dict:
    return {**pool["rows"][i], **change}


BAD_ROWS = {
    # name: (format, columns or None, rows builder, expected message after "<file>:<line>: ")
    "missing id": ("generic", {"id": "id", "question": None, "task": "task", "style": "style", "sample": "sample"},
                   lambda p: [{"id": bare_id(p["rows"][0]), "task": "procedural_date", "style": "cot", "sample": 0,
                               "response": "x"}, {"task": "procedural_date", "style": "cot", "sample": 1,
                                                  "response": "y"}],
                   2, "missing field 'id' (generate.teacher.columns.id / .question): no id or question text"),
    "missing qid": ("paths", None, lambda p: [p["rows"][0], {k: v for k, v in p["rows"][1].items() if k != "qid"}],
                    2, "missing question id (field 'qid')"),
    "question not in task": ("paths", None,
                             lambda p: [p["rows"][0], _pool_line(p, 1, qid="procedural_arith/parith-train-000999",
                                                                task="procedural_arith")],
                             2, "question id 'procedural_arith/parith-train-000999' is not among the 3 questions of task "
                                "procedural_arith this run loads"),
    "id and task disagree": ("paths", None,
                             lambda p: [_pool_line(p, 0, qid="procedural_arith/" + bare_id(p["rows"][0]))],
                             1, "question id 'procedural_arith/pdate-train-000000' names task 'procedural_arith', but "
                                "the row's task is 'procedural_date'"),
    "task not in config": ("paths", None, lambda p: [_pool_line(p, 0, qid="gsm8k/q1", task="gsm8k")],
                           1, "task 'gsm8k' is not among this config's tasks (procedural_date, procedural_arith)"),
    "text not in task": ("distilabel", None,
                         lambda p: [{"instruction": "What is 2 + 2?", "generation": "4. The answer is 4."}],
                         1, "the question 'What is 2 + 2?'... matches none of the 3 questions of task "
                            "procedural_date + 3 questions of task procedural_arith this run loads"),
    "unknown style": ("paths", None, lambda p: [p["rows"][0], _pool_line(p, 1, style="fancy")],
                      2, "unknown style 'fancy' (known: backward, cot, fact, program, tot, vanilla;"),
    "duplicate path": ("paths", None, lambda p: [p["rows"][0], p["rows"][2], _pool_line(p, 0, response="other")],
                       3, "duplicate path: question procedural_date/pdate-train-000000, style cot, sample 0 is "
                          "already given at "),
    "duplicate text": ("distilabel", None, lambda p: [
        {"instruction": p["rows"][0]["question"], "generation": p["rows"][0]["response"]},
        {"instruction": p["rows"][0]["question"], "generation": p["rows"][0]["response"] + "  "}],
        2, "duplicate path: the same response for question procedural_date/pdate-train-000000, style cot as at "),
    "empty response": ("paths", None, lambda p: [p["rows"][0], _pool_line(p, 1, response="  \n")],
                       2, "empty response"),
    "no response": ("distilabel", None, lambda p: [{"instruction": p["rows"][0]["question"], "generation": None}],
                    1, "empty response (the row has no response text)"),
    "id and text disagree": ("paths", None, lambda p: [_pool_line(p, 0, question=p["rows"][12]["question"])],
                             1, "the row's id 'procedural_date/pdate-train-000000' names question "
                                "'pdate-train-000000' of task procedural_date, but its question text differs"),
    "bad sample": ("paths", None, lambda p: [_pool_line(p, 0, sample=-1)],
                   1, "sample index must be a whole number >= 0 (got -1)"),
    "two exchanges": ("messages", None, lambda p: [{"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}],
        1, "expected one user turn (the question) and one assistant turn (the path), got 2 and 2"),
    "openr1 empty generation": ("openr1", None, lambda p: [
        {"problem": p["rows"][0]["question"], "generations": [p["rows"][0]["response"], ""]}],
        1, "empty response"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_rows_name_file_and_line_and_leave_the_run_dir_alone(tmp_path, pool, case):
    fmt, columns, build, line, expected = BAD_ROWS[case]
    good = write_jsonl(tmp_path / "good.jsonl", pool["rows"])
    run = tmp_path / "run"
    generate_stage.run(config(run, {"kind": "file", "format": "paths", "path": str(good)}), run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith("store")}
    with Store(run / "store.sqlite") as st:
        stored = st.teacher_paths_stored()

    src = write_jsonl(tmp_path / "bad.jsonl", build(pool))
    teacher = {"kind": "file", "format": fmt, "path": str(src), **({"columns": columns} if columns else {})}
    with pytest.raises(DataError) as err:
        generate_stage.run(config(run, teacher), run)
    where = f"{src}:{line}" + (" generations[1]" if case == "openr1 empty generation" else "")
    assert str(err.value).startswith(f"{where}: {expected}"), str(err.value)
    assert "\n" not in str(err.value)
    # Nothing stored is lost: the earlier import's artifacts and store are as they were.
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith("store")} == before
    with Store(run / "store.sqlite") as st:
        assert st.teacher_paths_stored() == stored


def test_bad_rows_in_parquet_and_dataset_folders_name_the_row(tmp_path, pool):
    rows = [dict(r, meta=None) for r in pool["rows"][:3]]
    rows[2]["response"] = ""
    src = _write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError, match=rf"^{src}:row 3: empty response$"):
        import_pool(tmp_path, {"kind": "file", "format": "paths", "path": str(src)})
    folder = _write_dataset(tmp_path / "bad_ds", rows)
    with pytest.raises(DataError, match=rf"^{folder}\[train\] row 2: empty response$"):
        import_pool(tmp_path, {"kind": "file", "format": "paths", "path": str(folder)})
    with pytest.raises(DataError, match=r"the dataset has no split 'test' \(splits: train\)"):
        import_pool(tmp_path, {"kind": "file", "format": "paths", "path": str(folder), "split": "test"})


def test_sources_and_config_that_cannot_work(tmp_path, pool):
    with pytest.raises(DataError, match=r"nowhere\.jsonl: file not found \(config field generate\.teacher\.path\)"):
        import_pool(tmp_path, {"kind": "file", "format": "paths", "path": str(tmp_path / "nowhere.jsonl")})
    # A hub id is accepted; offline it is one clear message, not a traceback.
    with pytest.raises(DataError, match=r"no-such-user/no-such-set: not a local file or folder, and cannot load it "
                                        r"from the Hugging Face hub"):
        import_pool(tmp_path, {"kind": "file", "format": "openr1", "path": "no-such-user/no-such-set"})
    with pytest.raises(ConfigError, match=r"columns applies to format generic only"):
        config(tmp_path, {"kind": "file", "format": "paths", "path": "x.jsonl", "columns": {"id": "qid"}})
    src = write_jsonl(tmp_path / "d.jsonl", [{"instruction": pool["rows"][0]["question"], "generation": "x"}])
    with pytest.raises(ConfigError, match=r"config field generate\.teacher\.style: unknown style 'socratic'"):
        import_pool(tmp_path, {"kind": "file", "format": "distilabel", "path": str(src), "style": "socratic"})
    with pytest.raises(DataError, match=r"d\.jsonl: no row answers any path this run plans"):
        import_pool(tmp_path, {"kind": "file", "format": "distilabel", "path": str(src), "style": "tot",
                               "unmatched": "skip"})

    from qrdistill.backends import Request, get_backend

    backend = get_backend(config(tmp_path, {"kind": "file", "format": "paths", "path": str(src)}).generate.teacher)
    with pytest.raises(ConfigError, match="the file backend answers only the generate stage"):
        backend.generate([Request(messages=[{"role": "user", "content": "judge this"}])], lambda r, c: None)


def test_cli_bad_row_exits_non_zero_with_one_line(tmp_path, pool):
    src = write_jsonl(tmp_path / "bad.jsonl", [pool["rows"][0], _pool_line(pool, 1, style="fancy")])
    cfg = tmp_path / "import.yaml"
    cfg.write_text(
        "tasks:\n  - {name: procedural_date, limit: 3}\n  - {name: procedural_arith, limit: 3}\n"
        f"generate:\n  styles: [cot, vanilla, backward]\n  samples_per_style: 2\n"
        f"  teacher: {{kind: file, format: paths, path: {json.dumps(str(src))}}}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "qrdistill", "generate", "--config", str(cfg), "--run-dir",
                           str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"qrdistill: error: {src}:2: unknown style 'fancy' (known: backward, cot, fact, program, tot, "
                      f"vanilla; custom styles must be listed in generate.styles)"], proc.stderr
    assert not (tmp_path / "run" / "paths.jsonl").exists()
