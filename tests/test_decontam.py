"""Decontamination (issue 9): the matcher's properties (qrdistill/decontam.py), and the filter stage
dropping contaminated and duplicate paths of a real simulated-teacher pool, counted in its report."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qrdistill.config import load_config
from qrdistill.decontam import ContaminationIndex, EvalQuestion, numbers, question_stem, tokenize
from qrdistill.errors import QRDistillError
from qrdistill.stages import filter as filter_stage
from qrdistill.stages import generate as generate_stage

ROOT = Path(__file__).resolve().parents[1]
#: Words for generated questions; none is a number word, so a question's numbers are those drawn as digits.
VOCAB = ("apple river stone jump quickly house blue train garden paper light window music paint seven "
         "cloud table mountain letter silver orange bridge doctor winter forest market yellow engine").split()
VOCAB.remove("seven")
FRESH = "zebraword"  # in no generated question


def index_of(*texts: str, **kw) -> ContaminationIndex:
    return ContaminationIndex([EvalQuestion("t", f"t/{i}", q) for i, q in enumerate(texts)], **kw)


words = st.lists(st.sampled_from(VOCAB), min_size=7, max_size=30)


def render(tokens: list[str], rnd: random.Random) -> str:
    """The tokens as a user might type them: random case, punctuation and spacing."""
    out = []
    for w in tokens:
        w = w.upper() if rnd.random() < 0.2 else (w.capitalize() if rnd.random() < 0.3 else w)
        out.append(w + rnd.choice(["", "", ",", ".", "?", " -", ";", "!"]))
    return rnd.choice(["", "  ", '"']) + rnd.choice([" ", "  ", "\n"]).join(out)


# ---------------------------------------------------------------- the matcher


def test_normalisation_folds_case_punctuation_dates_and_numbers():
    assert tokenize("Today's date is May 5, 2010!") == tokenize("TODAYS date is 5/5/2010") == \
        ["todays", "date", "is", "05/05/2010"]
    assert tokenize("5th of May 2010") == ["05/05/2010"]
    assert tokenize("It costs $1,000.50 for ten crêpes") == ["it", "costs", "1000.5", "for", "10", "crepes"]
    assert numbers(tokenize("Tom has 3 apples and 3 pears on 01/02/2003")) == Counter({"3": 2, "01/02/2003": 1})
    assert question_stem("Q?\nOptions:\n(A) x\n(B) y", ["x", "y"]) == "Q?"
    assert question_stem("Q?\nOptions:\n(A) x", []) == "Q?\nOptions:\n(A) x"


@settings(max_examples=60, deadline=None)
@given(words, st.randoms(use_true_random=False))
def test_recased_and_repunctuated_copy_is_an_exact_match(tokens, rnd):
    index = index_of("something else entirely here today", " ".join(tokens))
    m = index.find_contamination(render(tokens, rnd))
    assert m is not None and (m.method, m.qid, m.score) == ("exact", "t/1", 1.0)


@settings(max_examples=80, deadline=None)
@given(words, st.data())
def test_one_word_changed_is_caught(tokens, data):
    i = data.draw(st.integers(0, len(tokens) - 1))
    edited = tokens[:i] + [FRESH] + tokens[i + 1:]
    m = index_of(" ".join(tokens)).find_contamination(" ".join(edited))
    assert m is not None and m.method in ("ngram", "fuzzy"), (tokens, i)
    # and a word inserted or deleted
    assert index_of(" ".join(tokens)).find_contamination(" ".join(tokens[:i] + tokens[i + 1:])) is not None
    assert index_of(" ".join(tokens)).find_contamination(" ".join(tokens[:i] + [FRESH] + tokens[i:])) is not None


@settings(max_examples=40, deadline=None)
@given(words, st.lists(st.sampled_from(VOCAB), min_size=30, max_size=60))
def test_a_test_question_quoted_in_a_longer_text_is_an_ngram_match(tokens, context):
    cut = len(context) // 2
    longer = " ".join(context[:cut] + tokens + context[cut:])
    m = index_of(" ".join(tokens)).find_contamination(longer)
    assert m is not None and m.method == "ngram" and m.score == 1.0


def test_numbers_keep_template_questions_apart():
    test = "Today is 03/04/2001. What is the date 10 days after today? Answer in MM/DD/YYYY."
    index = index_of(test)
    for other in ("Today is 03/05/2001. What is the date 10 days after today? Answer in MM/DD/YYYY.",
                  "Today is 03/04/2001. What is the date 11 days after today? Answer in MM/DD/YYYY.",
                  "Yesterday was 07/09/1999. What is the date 10 days after today? Answer in MM/DD/YYYY."):
        assert index.find_contamination(other) is None, other
    # The same question, its date and count written otherwise, is a copy.
    m = index.find_contamination("Today is March 4, 2001. What is the date ten days after today? Answer in mm/dd/yyyy")
    assert m is not None and m.method == "exact"
    # Without the numbers rule a changed number is a near-duplicate like any changed word.
    loose = index_of(test, numbers_must_match=False)
    assert loose.find_contamination("Today is 03/05/2001. What is the date 10 days after today? "
                                    "Answer in MM/DD/YYYY.").method in ("ngram", "fuzzy")


def test_different_procedural_questions_are_not_flagged():
    from qrdistill.config import DEMO_EVAL, DEMO_TRAIN
    from qrdistill.tasks import get_task
    from qrdistill.tasks.base import load_records

    cfg = load_config(None)
    for name in DEMO_TRAIN:
        task = get_task(name)
        train = load_records(task, next(s for s in cfg.tasks if s.name == name), DEMO_TRAIN[name], "t")
        test = load_records(task, next(s for s in cfg.evaluate.tasks if s.name == name), DEMO_EVAL[name], "e")
        index = ContaminationIndex([EvalQuestion(name, r.id, r.question) for r in test])
        assert [r.id for r in train if index.find_contamination(r.question)] == []
    # The whole family: 2,500 questions per task from a dozen templates, of which a handful are copies
    # with only the name changed (the same numbers, so the same answer) and nothing else is flagged.
    for name, most in (("procedural_date_free", 2), ("procedural_arith", 12)):
        task = get_task(name)
        test = task.load("test")
        index = ContaminationIndex([EvalQuestion(name, r.id, r.question) for r in test])
        text = {r.id: r.question for r in test}
        flagged = [(r.question, m) for r in task.load("train") if (m := index.find_contamination(r.question))]
        assert len(flagged) <= most, len(flagged)
        for question, m in flagged:
            assert not numbers(tokenize(text[m.qid])) - numbers(tokenize(question))


def brute_fuzzy(tests: list[str], query: str, t: float) -> float | None:
    """The best word-level ratio over every test question (numbers rule applied), without the index."""
    q = tokenize(query)
    best = None
    for text in tests:
        toks = tokenize(text)
        if not toks or numbers(toks) - numbers(q):
            continue
        r = SequenceMatcher(None, toks, q, autojunk=False).ratio()
        if r + 1e-9 >= t and (best is None or r > best):
            best = r
    return best


def brute_ngram(tests: list[str], query: str, n: int, coverage: float) -> float | None:
    q = tokenize(query)
    grams = {tuple(q[i:i + k]) for k in range(1, n + 1) for i in range(len(q) - k + 1)}
    best = None
    for text in tests:
        toks = tokenize(text)
        if not toks or numbers(toks) - numbers(q):
            continue
        k = min(n, len(toks))
        covered = {p for i in range(len(toks) - k + 1) if tuple(toks[i:i + k]) in grams for p in range(i, i + k)}
        share = len(covered) / len(toks)
        if share + 1e-9 >= (coverage if len(toks) >= n else 1.0) and (best is None or share > best):
            best = share
    return best


small_words = st.lists(st.sampled_from(VOCAB[:8] + ["3", "5"]), min_size=1, max_size=14)


@settings(max_examples=150, deadline=None)
@given(st.lists(small_words, min_size=1, max_size=8), small_words,
       st.sampled_from([0.5, 0.7, 0.85, 0.95]), st.integers(2, 6), st.sampled_from([0.3, 0.8, 1.0]))
def test_the_index_finds_what_comparing_every_pair_finds(tests, query, t, n, coverage):
    """Prefix filtering and the n-gram index may skip work, never a match."""
    texts = [" ".join(x) for x in tests]
    query_text = " ".join(query)
    want_f = brute_fuzzy(texts, query_text, t)
    got_f = index_of(*texts, methods=["fuzzy"], fuzzy_threshold=t).find_contamination(query_text)
    assert (got_f and round(got_f.score, 6)) == (want_f and round(want_f, 6))
    want_n = brute_ngram(texts, query_text, n, coverage)
    got_n = index_of(*texts, methods=["ngram"], ngram=n, ngram_coverage=coverage).find_contamination(query_text)
    assert (got_n and round(got_n.score, 6)) == (want_n and round(want_n, 6))


def test_strategyqa_dev_is_inside_bigbench_strategyqa(shared_data):
    """The real case: StrategyQA dev's questions are BIG-bench strategyqa questions; the hash split puts a
    shared question in the same split of both files, so a config's train vs test view shares none."""
    from qrdistill.tasks import get_task

    task = get_task("strategyqa")
    bb = str(shared_data / "bigbench_strategyqa" / "task.json")
    dev = str(shared_data / "strategyqa" / "dev.json")
    bb_all = task.load("train", bb) + task.load("test", bb)
    dev_test = task.load("test", dev)
    index = ContaminationIndex([EvalQuestion("strategyqa", r.id, r.question)
                                for r in task.load("train", dev) + dev_test])
    methods = Counter(m.method for r in bb_all if (m := index.find_contamination(r.question)))
    assert methods == {"exact": 229}
    index = ContaminationIndex([EvalQuestion("strategyqa", r.id, r.question) for r in dev_test])
    assert not any(index.find_contamination(r.question) for r in task.load("train", bb))


def test_gsm8k_size_case_takes_seconds(shared_data):
    import time

    from qrdistill.tasks import get_task

    task = get_task("gsm8k")
    train = task.load("train", str(shared_data / "gsm8k" / "train.jsonl"))
    test = task.load("test", str(shared_data / "gsm8k" / "test.jsonl"))
    start = time.perf_counter()
    index = ContaminationIndex([EvalQuestion("gsm8k", r.id, r.question) for r in test])
    flagged = [r.id for r in train if index.find_contamination(r.question)]
    seconds = time.perf_counter() - start
    assert (len(train), len(test)) == (7473, 1319)
    assert flagged == []  # GSM8K's train and test share templates, never a question with its numbers
    assert seconds < 15, seconds  # about 2.5 s on 2 busy cores


# ---------------------------------------------------------------- the filter stage


def small_config(run: Path, **overrides):
    base = {"run_dir": str(run),
            "tasks": [{"name": "procedural_date", "limit": 3}, {"name": "procedural_arith", "limit": 3}]}
    return load_config(None, {**base, **overrides})


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A generated pool with planted contamination: one date question replaced by a re-cased,
    re-punctuated demo test question (options kept), one arithmetic question by a test question with one
    word changed, and a copy of one path appended as another sample."""
    from qrdistill.stages.evaluate import load_eval_tasks
    from qrdistill.stages.filter import is_clean

    run = tmp_path_factory.mktemp("decontam") / "run"
    cfg = small_config(run)
    generate_stage.run(cfg, run)
    rows = rows_of(run / "paths.jsonl")
    tested = {et.label: et.records for et in load_eval_tasks(cfg, None)}  # what evaluate will test on
    date_test, arith_test = tested["procedural_date"][5], tested["procedural_arith"][3]
    date_qid = next(r["qid"] for r in rows if r["task"] == "procedural_date")
    arith_qid = next(r["qid"] for r in rows if r["task"] == "procedural_arith")
    recased = date_test.question.upper().replace(".", " !").replace("?", " ?")
    words = arith_test.question.split()
    middle = min((i for i, w in enumerate(words) if w.isalpha()), key=lambda i: abs(i - len(words) // 2))
    words[middle] = "zebraword"
    for r in rows:
        if r["qid"] == date_qid:
            r["question"] = recased + r["question"][r["question"].index("\nOptions:\n"):]
        if r["qid"] == arith_qid:
            r["question"] = " ".join(words)
    copy = next(r for r in rows if r["correct"] and is_clean(r["meta"]["planted"])
                and r["qid"] not in (date_qid, arith_qid))
    rows.append({**copy, "sample": 1, "key": "a-copy", "response": copy["response"] + "\n"})
    write_rows(run / "paths.jsonl", rows)
    return run, {"date": (date_qid, f"procedural_date/{date_test.id}"),
                 "arith": (arith_qid, f"procedural_arith/{arith_test.id}"), "copy": copy}


def test_filter_drops_planted_test_questions_and_duplicates(pool, capsys):
    run, planted = pool
    report = filter_stage.run(small_config(run), run)
    rows = rows_of(run / "filtered.jsonl")
    date_qid, date_test = planted["date"]
    arith_qid, arith_test = planted["arith"]
    for r in rows:
        assert "contaminated" in r and "duplicate_of" in r
        if r["qid"] == date_qid:
            assert r["contaminated"] == {"task": "procedural_date", "qid": date_test, "method": "exact", "score": 1.0}
        elif r["qid"] == arith_qid:
            c = r["contaminated"]
            assert (c["task"], c["qid"]) == ("procedural_arith", arith_test) and c["method"] in ("ngram", "fuzzy")
            assert 0.85 <= c["score"] < 1
        else:
            assert r["contaminated"] is None
        if r["contaminated"]:
            assert r["kept"] is False and r["judge"] is None  # no judge call spent on it
    dups = [r for r in rows if r["duplicate_of"]]
    copy = planted["copy"]
    assert [(r["qid"], r["style"], r["sample"]) for r in dups] == [(copy["qid"], copy["style"], 1)]
    assert dups[0]["duplicate_of"] == {"qid": copy["qid"], "style": copy["style"], "sample": 0}
    assert not dups[0]["kept"]
    assert next(r for r in rows if r["key"] == copy["key"])["kept"]  # the first copy is judged as usual

    d = report["decontamination"]
    n_contaminated = sum(bool(r["contaminated"]) for r in rows)
    assert n_contaminated == 2 * 3  # two questions x the demo's three styles
    assert (d["contaminated"], d["duplicates"], d["questions_contaminated"]) == (n_contaminated, 1, 2)
    assert d["eval_sets"] == [{"task": "procedural_date", "split": "test", "questions": 60},
                              {"task": "procedural_arith", "split": "test", "questions": 20}]
    assert sum(d["by_method"].values()) == n_contaminated and d["by_method"]["exact"] == 3
    assert d["by_eval_set"] == {"procedural_date": 3, "procedural_arith": 3}
    # The report's counts are filtered.jsonl's, per task x style, in both sections.
    for task, styles in report["by_task_style"].items():
        for style, c in styles.items():
            mine = [r for r in rows if (r["task"], r["style"]) == (task, style)]
            want = {"contaminated": sum(bool(r["contaminated"]) for r in mine),
                    "duplicate": sum(bool(r["duplicate_of"]) for r in mine)}
            assert {k: c[k] for k in want} == want == d["by_task_style"][task][style]
            assert c["kept"] == sum(r["kept"] for r in mine) and c["total"] == len(mine)
    o = report["overall"]
    assert o["total"] == len(rows) == sum(v for k, v in o.items() if k != "total")
    assert json.loads((run / "filter_report.json").read_text())["decontamination"] == d
    out = capsys.readouterr().out
    assert "6 paths of 2 questions contaminated" in out and "1 duplicate paths dropped" in out

    # The quality-filter ablation still decontaminates.
    report = filter_stage.run(small_config(run, **{"filter.enabled": False}), run)
    rows = rows_of(run / "filtered.jsonl")
    assert [r["kept"] for r in rows] == [not (r["contaminated"] or r["duplicate_of"]) for r in rows]
    assert report["overall"]["contaminated"] == 6 and report["overall"]["duplicate"] == 1


def test_decontamination_disabled_keeps_them(pool):
    run, planted = pool
    report = filter_stage.run(small_config(run, **{"filter.decontaminate": {"enabled": False}}), run)
    rows = rows_of(run / "filtered.jsonl")
    assert "decontamination" not in report and not any("contaminated" in r or "duplicate_of" in r for r in rows)
    assert {"contaminated", "duplicate"}.isdisjoint(report["overall"])
    copy = planted["copy"]
    assert [r["kept"] for r in rows if r["qid"] == copy["qid"] and r["style"] == copy["style"]] == [True, True]
    assert any(r["kept"] for r in rows if r["qid"] in (planted["date"][0], planted["arith"][0]))


def test_extra_eval_files_are_checked_too(pool, tmp_path):
    run, planted = pool
    rows = rows_of(run / "paths.jsonl")
    target = next(r for r in rows if r["task"] == "procedural_arith" and r["qid"] != planted["arith"][0])
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"problem": "Unrelated: what is 2 + 2?"}) + "\n\n"
                    + json.dumps({"problem": target["question"].lower(), "id": 7}) + "\n", encoding="utf-8")
    cfg = small_config(run, **{"filter.decontaminate.extra_eval_files": [
        {"path": str(held), "question_field": "problem", "name": "held"}]})
    report = filter_stage.run(cfg, run)
    flagged = {r["contaminated"]["qid"] for r in rows_of(run / "filtered.jsonl")
               if r["qid"] == target["qid"] and r["contaminated"]}
    assert flagged == {"held/7"}
    assert report["decontamination"]["eval_sets"][-1] == {"task": "held", "file": str(held), "questions": 2}
    assert report["decontamination"]["by_eval_set"]["held"] == 3


def test_bad_extra_eval_file_is_one_clear_error(pool, tmp_path):
    run, _ = pool
    before = (run / "filtered.jsonl").read_bytes() if (run / "filtered.jsonl").exists() else None
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"question": "Fine?"}) + "\n" + json.dumps({"text": "No question"}) + "\n")
    field = "filter.decontaminate.extra_eval_files.0"
    cfg = small_config(run, **{"filter.decontaminate.extra_eval_files": [str(held)]})
    with pytest.raises(QRDistillError, match=rf"config field {field}: {held}:2: field 'question'"):
        filter_stage.run(cfg, run)
    cfg = small_config(run, **{"filter.decontaminate.extra_eval_files": [str(tmp_path / "none.jsonl")]})
    with pytest.raises(QRDistillError, match=rf"{field}: {tmp_path / 'none.jsonl'}: file not found"):
        filter_stage.run(cfg, run)
    assert ((run / "filtered.jsonl").read_bytes() if before is not None else None) == before

    # Through the CLI: one line, no traceback.
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {run}\ntasks:\n  - {{name: procedural_date, limit: 3}}\n"
                      f"  - {{name: procedural_arith, limit: 3}}\nfilter:\n  decontaminate:\n"
                      f"    extra_eval_files: [{held}]\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "qrdistill", "filter", "-c", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("qrdistill: error: ") and field in lines[0] and f"{held}:2" in lines[0]


def test_training_on_the_test_split_is_all_contaminated(tmp_path):
    """Without evaluate.tasks, evaluate tests on every task's test split: a pool drawn from that split is
    all contaminated; an evaluation set that cannot be loaded stops the filter with a way out."""
    run = tmp_path / "run"
    cfg = load_config(None, {"run_dir": str(run), "tasks": [{"name": "procedural_arith", "split": "test", "limit": 2}],
                             "evaluate.tasks": None})
    generate_stage.run(cfg, run)
    report = filter_stage.run(cfg, run)
    rows = rows_of(run / "filtered.jsonl")
    assert rows and all(r["contaminated"]["method"] == "exact" and r["contaminated"]["qid"] == r["qid"]
                        and not r["kept"] for r in rows)
    assert report["decontamination"]["eval_sets"] == [{"task": "procedural_arith", "split": "test", "questions": 500}]
    assert report["overall"]["contaminated"] == len(rows) and report["overall"]["kept"] == 0

    bad = load_config(None, {"run_dir": str(run), "tasks": [{"name": "procedural_arith", "split": "test", "limit": 2}],
                             "evaluate.tasks": [{"name": "gsm8k", "path": str(tmp_path / "missing.jsonl")}]})
    with pytest.raises(QRDistillError, match=r"filter\.decontaminate: cannot load the test questions .*missing\.jsonl"
                                             r".*filter\.decontaminate\.enabled: false"):
        filter_stage.run(bad, run)
