"""Human multi-style pools from ../shared/data, imported by the `file` teacher as the shipped configs do.

The expected pool sizes are counted here from the raw files (json, not the builders): one `fact` path per
StrategyQA training question with facts, one `cot` per question with a decomposition, one `vanilla` per
question BIG-bench strategyqa also holds, one `cot` per GSM8K training question. Every path must end in an
answer line the task's own strict check reads as the gold; the GSM8K solutions must lose their calculator
annotations and keep every check the `steps` judge made of them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from qrdistill.config import load_config
from qrdistill.errors import ConfigError, DataError
from qrdistill.stages import generate as generate_stage
from qrdistill.tasks import get_task
from qrdistill.tasks.base import Record

ROOT = Path(__file__).resolve().parents[1]
SQA_CONFIG = ROOT / "configs" / "strategyqa_human.yaml"
GSM_CONFIG = ROOT / "configs" / "gsm8k_human.yaml"
ANSWER_LINE = re.compile(r"^The answer is (Yes|No|-?\d+(?:\.\d+)?)\.$")
#: Measured on all 7,473 GSM8K training solutions made readable: 7,416 pass the steps judge (99.24 %; the same
#: 57 fail with their annotations, human slips such as "192 * 100 = $1920" and a few misreads), and 7,288
#: (97.5 %) hold at least one claim it recomputes.
GSM8K_STEPS_PASS = 0.99
GSM8K_CHECKED = 0.97


def fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def record_of(row: dict) -> Record:
    return Record(id=row["qid"].split("/", 1)[1], question=row["question"], answer=row["answer"],
                  choices=row["choices"], meta=row["meta"]["record"])


@pytest.mark.parametrize("task_name, example", [("strategyqa", "Yes"), ("strategyqa", "No"), ("gsm8k", "N")])
def test_the_answer_line_is_the_one_the_task_asks_for(task_name, example):
    from qrdistill.backends.human_pools import answer_line

    assert f'"{answer_line(example)}"' in get_task(task_name).answer_instruction


def assert_answer_lines(rows: list[dict], task_name: str) -> None:
    """Each path ends in the answer line, and the task's strict check (that line alone) finds the gold in it."""
    task = get_task(task_name)
    for r in rows:
        assert ANSWER_LINE.match(r["response"].splitlines()[-1]), r["response"]
        score = task.score(r["response"], record_of(r))
        assert score.strict_correct and score.correct, (r["qid"], r["style"], r["response"])
        assert r["correct"] and r["check"] == "correct"


@pytest.fixture(scope="module")
def raw(shared_data):
    dev = json.loads((shared_data / "strategyqa" / "dev.json").read_text(encoding="utf-8"))
    bigbench = json.loads((shared_data / "bigbench_strategyqa" / "task.json").read_text(encoding="utf-8"))["examples"]
    gsm = read_jsonl(shared_data / "gsm8k" / "train.jsonl")
    return {"dev": dev, "bigbench": bigbench, "gsm": gsm}


def run_config(path: Path, run: Path, monkeypatch, **overrides) -> tuple[object, dict, list[dict]]:
    monkeypatch.chdir(ROOT)  # the shipped configs name ../shared/data relative to the project root
    cfg = load_config(path, {"run_dir": str(run), **overrides})
    summary = generate_stage.run(cfg, run)
    return cfg, summary, read_jsonl(run / "paths.jsonl")


# ---------------------------------------------------------------- StrategyQA


@pytest.fixture(scope="module")
def sqa(tmp_path_factory, raw):
    run = tmp_path_factory.mktemp("sqa") / "run"
    with pytest.MonkeyPatch.context() as mp:
        cfg, summary, rows = run_config(SQA_CONFIG, run, mp)
    return {"cfg": cfg, "summary": summary, "rows": rows}


def test_strategyqa_pool_has_a_path_per_human_annotation(sqa, raw, shared_data):
    train = get_task("strategyqa").load("train", str(shared_data / "strategyqa" / "dev.json"))
    by_qid = {f"strategyqa-{d['qid']}": d for d in raw["dev"]}
    bigbench = {fold(x["input"]) for x in raw["bigbench"]}
    expected = {
        "fact": sum(bool(by_qid[r.id]["facts"]) for r in train),
        "cot": sum(bool(by_qid[r.id]["decomposition"]) for r in train),
        "vanilla": sum(fold(by_qid[r.id]["question"]) in bigbench for r in train),
    }
    rows = sqa["rows"]
    got = {s: sum(r["style"] == s for r in rows) for s in expected}
    assert got == expected
    assert sqa["summary"]["paths"] == sum(expected.values()) == len(rows)
    assert "missing_paths" not in sqa["summary"] and sqa["summary"]["failed_calls"] == 0
    assert {r["qid"] for r in rows} == {f"strategyqa/{r.id}" for r in train}
    # The design rests on this: every dev question is in BIG-bench strategyqa, so each has all three styles.
    assert expected == {"fact": len(train), "cot": len(train), "vanilla": len(train)}


def test_strategyqa_paths_are_the_human_text_with_provenance(sqa, raw):
    by_question = {fold(d["question"]): d for d in raw["dev"]}
    for r in sqa["rows"]:
        source = by_question[fold(r["question"])]
        src = r["meta"]["imported"]
        assert src["format"] == "strategyqa_human" and src["model"] == "human"
        lines = r["response"].splitlines()
        if r["style"] == "fact":
            assert src["field"] == "facts" and src["id"] == source["qid"]
            assert src["file"].endswith("strategyqa/dev.json") and re.search(r"dev\.json:\d+$", src["row"])
            assert [fold(line.removeprefix("- ")).rstrip(".") for line in lines[1:-1]] == [
                fold(f).rstrip(".") for f in source["facts"]]
        elif r["style"] == "cot":
            assert src["field"] == "decomposition" and src["id"] == source["qid"]
            assert len(lines) == len(source["decomposition"]) + 2
            assert all(line.startswith(f"{i}. ") for i, line in enumerate(lines[1:-1], 1))
            assert "#" not in r["response"]  # "#2" reads "the answer to step 2"
        else:
            assert src["field"] == "target" and src["file"].endswith("bigbench_strategyqa/task.json")
            target = next(x["target"] for x in raw["bigbench"] if fold(x["input"]) == fold(r["question"]))
            assert fold(target).endswith(fold(lines[0])) and len(lines) == 2


def test_strategyqa_paths_end_in_an_answer_line_the_task_accepts(sqa):
    assert_answer_lines(sqa["rows"], "strategyqa")


def test_every_strategyqa_source_row_builds_a_correct_path(raw):
    """All 229 dev rows and all 2,290 BIG-bench rows, not only the config's training questions."""
    from qrdistill.backends.human_pools import strategyqa_paths
    from qrdistill.tasks.loading import Row

    task = get_task("strategyqa")
    n = 0
    for i, d in enumerate(raw["dev"]):
        gold = "Yes" if d["answer"] else "No"
        paths = strategyqa_paths(Row(d, f"dev.json:{i}"))
        assert [p.style for p in paths] == ["fact", "cot"]
        n += len(paths)
        for p in paths:
            assert task.score(p.response, Record(id="x", question=p.question, answer=gold)).strict_correct
    for i, x in enumerate(raw["bigbench"]):
        gold = max(x["target_scores"], key=x["target_scores"].get)
        (p,) = strategyqa_paths(Row(x, f"task.json:{i}"))
        assert p.style == "vanilla" and p.question == x["input"].strip()
        assert task.score(p.response, Record(id="x", question=p.question, answer=gold)).strict_correct
        n += 1
    assert n == 2 * len(raw["dev"]) + len(raw["bigbench"])


def test_training_on_bigbench_questions_gives_vanilla_to_all_and_three_styles_to_dev_ones(tmp_path, raw, shared_data,
                                                                                           monkeypatch):
    """The other way to train: BIG-bench's train split, which lists one question twice (two records)."""
    bigbench = shared_data / "bigbench_strategyqa" / "task.json"
    train = get_task("strategyqa").load("train", str(bigbench))
    in_train = {fold(r.question) for r in train}
    dev_in_train = sum(fold(d["question"]) in in_train for d in raw["dev"])
    listed = Counter(fold(x["input"]) for x in raw["bigbench"])
    repeated = [q for q in in_train if listed[q] > 1]
    assert repeated and len(train) == len(in_train) + len(repeated)
    _, summary, rows = run_config(SQA_CONFIG, tmp_path / "run", monkeypatch,
                                  tasks=[{"name": "strategyqa", "split": "train", "path": str(bigbench)}])
    got = {s: sum(r["style"] == s for r in rows) for s in ("vanilla", "fact", "cot")}
    assert got == {"vanilla": len(train), "fact": dev_in_train, "cot": dev_in_train}
    assert summary["missing_paths"] == 2 * (len(train) - dev_in_train)
    # Each copy of the repeated question gets its own row's path.
    copies = [r for r in rows if fold(r["question"]) == repeated[0]]
    assert len({r["qid"] for r in copies}) == 2 and len({r["meta"]["imported"]["row"] for r in copies}) == 2
    assert_answer_lines(rows, "strategyqa")


def test_shipped_strategyqa_config_evaluates_on_held_out_dev_questions(sqa, shared_data):
    cfg = sqa["cfg"]
    teacher = cfg.generate.teacher
    assert teacher.kind == "file" and teacher.format == "strategyqa_human" and len(teacher.path) == 2
    assert all((ROOT / p).resolve().is_file() for p in teacher.path)
    (spec,) = cfg.evaluate.tasks
    test = get_task(spec.name).load(spec.split, str((ROOT / spec.path).resolve()))
    assert spec.path.endswith("strategyqa/dev.json") and spec.limit is None
    trained = {fold(r["question"]) for r in sqa["rows"]}
    assert trained and test and not trained & {fold(r.question) for r in test}
    assert [s.name for s in cfg.train.students] == ["gemma", "smollm2"]


# ---------------------------------------------------------------- GSM8K


@pytest.fixture(scope="module")
def gsm(tmp_path_factory):
    run = tmp_path_factory.mktemp("gsm") / "run"
    with pytest.MonkeyPatch.context() as mp:
        cfg, summary, rows = run_config(GSM_CONFIG, run, mp)
    return {"cfg": cfg, "summary": summary, "rows": rows}


def test_gsm8k_pool_has_one_path_per_training_question(gsm, raw):
    (spec,) = gsm["cfg"].tasks
    expected = min(spec.limit, len(raw["gsm"]))
    rows = gsm["rows"]
    assert gsm["summary"]["paths"] == len(rows) == expected
    assert {r["style"] for r in rows} == {"cot"}
    assert [fold(r["question"]) for r in rows] == [fold(x["question"]) for x in raw["gsm"][:expected]]
    for i, r in enumerate(rows, 1):
        src = r["meta"]["imported"]
        assert src["format"] == "gsm8k_human" and src["field"] == "answer" and src["model"] == "human"
        assert src["row"].endswith(f"gsm8k/train.jsonl:{i}")
    assert_answer_lines(rows, "gsm8k")


def test_gsm8k_annotations_become_readable_steps_the_judge_still_checks(raw):
    """Over every training solution: no annotation is left, and the steps judge decides as it did with them."""
    from qrdistill.backends.human_pools import gsm8k_paths
    from qrdistill.judges.steps import verdict_for
    from qrdistill.tasks.loading import Row

    task = get_task("gsm8k")
    # Every 4th solution (1,869): the judge's verdicts on all 7,473 twice would take most of the time budget.
    sample = raw["gsm"][::4]
    passed = checked = 0
    for i, x in enumerate(sample):
        (p,) = gsm8k_paths(Row(x, f"train.jsonl:{4 * i + 1}"))
        text = p.response
        assert "<<" not in text and ">>" not in text and "####" not in text
        gold = x["answer"].rsplit("####", 1)[1].strip()
        assert task.score(text, Record(id="x", question=p.question, answer=gold)).strict_correct
        verdict = verdict_for(text)
        # Making the annotations readable neither hides a wrong step nor invents one.
        assert verdict.valid == verdict_for(x["answer"]).valid, (x["answer"], text, verdict.reason)
        passed += verdict.valid
        checked += verdict.reason != "no checkable claims"
    assert passed / len(sample) >= GSM8K_STEPS_PASS
    assert checked / len(sample) >= GSM8K_CHECKED


@pytest.mark.parametrize("line, readable, claims", [
    # the text shows the calculation: the annotation goes
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.", "Natalia sold 48/2 = 24 clips in May.", 1),
    ("Bill and Dale eat 2 x 4 x 50% = <<2*4*50*.01=4>>4 pieces.", "Bill and Dale eat 2 x 4 x 50% = 4 pieces.", 1),
    ("Accommodation is 15% * $1000=$<<15*.01*1000=150>>150", "Accommodation is 15% * $1000=$150", 1),
    # an annotation continuing the text's expression, and one computing nothing
    ("She spent S + 30 + 46 = S + <<+30+46=76>>76.", "She spent S + 30 + 46 = S + 76.", 0),
    ("The total they both run is <<12=12>>12 miles a day", "The total they both run is 12 miles a day", 0),
    # only the result, a calculation in words, or one cut by units: the calculation is written out
    ("Half of 318 is <<318/2=159>>159", "Half of 318 is 318/2 = 159", 1),
    ("He averaged 30 points because 150 divided by 5 equals <<150/5=30>>30.",
     "He averaged 30 points because 150 divided by 5 equals 150/5 = 30.", 1),
    ("First find the snakes eaten: 5 snakes/jaguar * 6 jaguars = <<5*6=30>>30 snakes",
     "First find the snakes eaten: 5 snakes/jaguar * 6 jaguars = 5*6 = 30 snakes", 1),
    ("Noah earned $60/large painting x 8 large paintings = $<<60*8=480>>480 for them.",
     "Noah earned $60/large painting x 8 large paintings = 60*8 = $480 for them.", 1),
])
def test_readable_line(line, readable, claims):
    from qrdistill.backends.human_pools import readable_line
    from qrdistill.judges.steps import check_text

    assert readable_line(line) == readable
    # What the steps judge recomputes in the readable line, all of it true.
    found = check_text(readable)
    assert len(found) == claims and all(c.ok for c in found)


def test_shipped_gsm8k_config_evaluates_on_a_fixed_test_subset(gsm, shared_data):
    cfg = gsm["cfg"]
    teacher = cfg.generate.teacher
    assert teacher.kind == "file" and teacher.format == "gsm8k_human"
    assert (ROOT / teacher.path).resolve() == (shared_data / "gsm8k" / "train.jsonl").resolve()
    (spec,) = cfg.evaluate.tasks
    assert spec.split == "test" and spec.path.endswith("gsm8k/test.jsonl") and spec.limit == 100
    test = get_task("gsm8k").load("test", str((ROOT / spec.path).resolve()), spec.limit)
    first = read_jsonl(shared_data / "gsm8k" / "test.jsonl")[: spec.limit]
    assert [r.question for r in test] == [x["question"].strip() for x in first]
    assert not {fold(r["question"]) for r in gsm["rows"]} & {fold(r.question) for r in test}


# ---------------------------------------------------------------- bad rows and configs


def _dev_row(raw, i=0, **change):
    return {**raw["dev"][i], **change}


def _bb_row(raw, question, **change):
    return {**next(x for x in raw["bigbench"] if fold(x["input"]) == fold(question)), **change}


BAD = {
    # name: (format, rows builder, line of the bad row, message after "<file>:<line>: ")
    "answer not a boolean": ("strategyqa_human", lambda raw: [_dev_row(raw, 0), _dev_row(raw, 1, answer="yes")],
                             2, "field 'answer' must be true or false, got 'yes'"),
    "facts not a list": ("strategyqa_human", lambda raw: [_dev_row(raw, 0, facts="Albany is small")],
                         1, "field 'facts' must be a list of texts (got str)"),
    "an empty fact": ("strategyqa_human", lambda raw: [_dev_row(raw, 0, facts=["Albany is small", " "])],
                      1, "facts[1] must be a non-empty text (got ' ')"),
    "no annotation": ("strategyqa_human", lambda raw: [_dev_row(raw, 0, facts=[], decomposition=[])],
                      1, "the row has neither 'facts' nor 'decomposition'"),
    "target disagrees": ("strategyqa_human",
                         lambda raw: [_bb_row(raw, raw["dev"][0]["question"], target="Yes. Albany, GA is larger.")],
                         1, "field 'target' says Yes but target_scores' best option is No"),
    "target without explanation": ("strategyqa_human", lambda raw: [_bb_row(raw, raw["dev"][0]["question"],
                                                                            target="No.")],
                                   1, "field 'target' has no explanation after its Yes/No"),
    "no solution": ("gsm8k_human", lambda raw: [raw["gsm"][0], {**raw["gsm"][1], "answer": "She earns 10."}],
                    2, "field 'answer' must be a solution ending in '#### <number>'"),
    "final not a number": ("gsm8k_human", lambda raw: [{**raw["gsm"][0], "answer": "48/2 = 24\n#### seventy"}],
                           1, "the answer after '####' is not a number: 'seventy'"),
    "no steps": ("gsm8k_human", lambda raw: [{**raw["gsm"][0], "answer": "#### 72"}],
                 1, "the solution has no steps before its '####' line"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_source_rows_name_file_and_line(tmp_path, raw, shared_data, case):
    fmt, build, line, expected = BAD[case]
    src = write_jsonl(tmp_path / "pool.jsonl", build(raw))
    if fmt == "strategyqa_human":
        tasks = [{"name": "strategyqa", "path": str(shared_data / "strategyqa" / "dev.json")}]
        styles = ["fact", "cot", "vanilla"]
    else:
        tasks = [{"name": "gsm8k", "path": str(shared_data / "gsm8k" / "train.jsonl"), "limit": 5}]
        styles = ["cot"]
    run = tmp_path / "run"
    cfg = load_config(None, {"run_dir": str(run), "tasks": tasks, "generate.styles": styles,
                             "generate.teacher": {"kind": "file", "format": fmt, "path": [str(src)],
                                                  "unmatched": "skip"}})
    with pytest.raises(DataError) as err:
        generate_stage.run(cfg, run)
    assert str(err.value).startswith(f"{src}:{line}: {expected}"), str(err.value)
    assert "\n" not in str(err.value)
    assert not (run / "paths.jsonl").exists() and not (run / "store.sqlite").exists()


def test_file_teacher_configs_for_the_human_formats():
    base = {"kind": "file", "path": "pool.jsonl"}
    with pytest.raises(ConfigError, match="style does not apply to format strategyqa_human"):
        load_config(None, {"generate.teacher": {**base, "format": "strategyqa_human", "style": "cot"}})
    with pytest.raises(ConfigError, match="format gsm8k_human matches rows to questions by their text"):
        load_config(None, {"generate.teacher": {**base, "format": "gsm8k_human", "match": "id"}})
    with pytest.raises(ConfigError, match=r"generate\.teacher\.path: Value error, give a source"):
        load_config(None, {"generate.teacher": {**base, "format": "paths", "path": []}})
    cfg = load_config(None, {"generate.teacher": {**base, "format": "gsm8k_human", "style": "vanilla"}})
    assert cfg.generate.teacher.style == "vanilla"
    for path in (SQA_CONFIG, GSM_CONFIG):
        cfg = load_config(path)
        assert cfg.generate.teacher.kind == "file" and cfg.filter.judge.kind == "steps"
        assert cfg.train.method == "qrdistill" and cfg.seeds == [0, 1, 2]
