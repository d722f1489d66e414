"""The lm-evaluation-harness bridge: lm_eval's own BBH Date / GSM8K tasks on the local benchmark files.

The tasks must read the questions `qrdistill evaluate` scores, in its order, and keep lm_eval's prompts
and scoring; a tiny model run end to end through `lm_eval.simple_evaluate` shows the results and
samples are written.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

if os.environ.get("CI"):
    # CI installs the lmeval extra: a skip there would hide a missing install step.
    import lm_eval  # noqa: F401
else:
    pytest.importorskip("lm_eval", reason="the lm-eval bridge needs the extra: pip install -e '.[lmeval]'")

from qrdistill.errors import ConfigError, DataError, QRDistillError  # noqa: E402
from qrdistill.lmeval import write_tasks  # noqa: E402
from qrdistill.prompting import student_prompt  # noqa: E402
from qrdistill.tasks import get_task  # noqa: E402

N = 3
COT = "\nA: Let's think step by step."


def _project_records(shared_data, name):
    """What `qrdistill evaluate` scores with `limit: N` (evaluate.tasks: [{name, path}], split test)."""
    path = shared_data / ("bigbench_date/task.json" if name == "date" else "gsm8k")
    task = get_task(name)
    return task, task.load("test", str(path), N)


def _load(tasks_dir, names):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir), include_defaults=False).load(names)["tasks"]


def _score(task, responses):
    """lm_eval's own filters and metric on `responses` (one per instance), as its evaluator applies them."""
    task.build_all_requests(limit=len(responses), rank=0, world_size=1)
    for inst, resp in zip(task.instances, responses, strict=True):
        inst.resps = [resp]
    task.apply_filters()
    return [{name: task.process_results(inst.doc, [out])["exact_match"] for name, out in inst.filtered_resps.items()}
            for inst in task.instances]


def test_tasks_read_the_project_questions_with_lm_eval_prompts_and_scoring(shared_data, tmp_path):
    date, date_records = _project_records(shared_data, "date")
    gsm, gsm_records = _project_records(shared_data, "gsm8k")
    written = write_tasks(shared_data, tmp_path, "bbh_date,bbh_date_student,gsm8k,gsm8k_cot_zeroshot")
    assert sorted(written) == ["qrdistill_bbh_date", "qrdistill_bbh_date_student", "qrdistill_gsm8k",
                               "qrdistill_gsm8k_cot_zeroshot"]
    tasks = _load(tmp_path, list(written))

    bbh = tasks["qrdistill_bbh_date"]
    docs = list(bbh.test_docs())
    assert len(docs) == len(date.load("test", str(shared_data / "bigbench_date/task.json")))
    for doc, rec in zip(docs[:N], date_records, strict=True):
        assert doc["qid"] == rec.id
        # lm_eval's bbh_cot_zeroshot_date_understanding prompt around the project's lettered options.
        assert bbh.fewshot_context(doc, 0) == "Infer the date from context.\n\nQ: " + date.prompt(rec) + COT
        assert bbh.doc_to_target(doc) == f"({rec.answer})"
    right = [f"So it is {r.meta['answer_text']}. The answer is ({r.answer})." for r in date_records]
    wrong = [f"The answer is ({'A' if r.answer != 'A' else 'B'})." for r in date_records]
    assert _score(bbh, right) == [{"flexible-extract": 1.0, "strict-match": 1.0}] * N
    assert _score(bbh, wrong) == [{"flexible-extract": 0.0, "strict-match": 0.0}] * N

    student = tasks["qrdistill_bbh_date_student"]
    for doc, rec in zip(list(student.test_docs())[:N], date_records, strict=True):
        assert student.fewshot_context(doc, 0) == student_prompt(date, date.prompt(rec))

    g = tasks["qrdistill_gsm8k"]
    for doc, rec in zip(list(g.test_docs())[:N], gsm_records, strict=True):
        context = g.fewshot_context(doc, 5)
        assert context.endswith(f"Question: {rec.question}\nAnswer:")
        # Five solved examples from the local train.jsonl come first, as lm_eval's gsm8k does.
        assert context.count("Question:") == 6 and context.count("#### ") == 5
    right = [f"{r.meta['solution'].rsplit('####', 1)[0]}#### {r.answer}" for r in gsm_records]
    assert _score(g, right) == [{"strict-match": 1.0, "flexible-extract": 1.0}] * N
    cot = tasks["qrdistill_gsm8k_cot_zeroshot"]
    assert cot.fewshot_context(next(iter(cot.test_docs())), 0) == f"Q: {gsm_records[0].question}{COT}"
    assert _score(cot, [f"The answer is {r.answer}." for r in gsm_records]) == [
        {"strict-match": 1.0, "flexible-extract": 1.0}] * N


def test_bad_input_is_one_clear_error(shared_data, tmp_path):
    with pytest.raises(ConfigError, match=r"--tasks: unknown task 'bbh'.*bbh_date"):
        write_tasks(shared_data, tmp_path / "t", "bbh")
    with pytest.raises(DataError, match="no such directory"):
        write_tasks(tmp_path / "nowhere", tmp_path / "t")
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    shutil.copy(shared_data / "gsm8k" / "test.jsonl", data / "gsm8k" / "test.jsonl")
    write_tasks(data, tmp_path / "t", "gsm8k_cot_zeroshot")  # zero-shot needs no train file
    with pytest.raises(DataError, match=r"gsm8k/train\.jsonl: file not found \(gsm8k takes its few-shot"):
        write_tasks(data, tmp_path / "t", "gsm8k")
    with pytest.raises(DataError, match=r"bigbench_date/task\.json: file not found"):
        write_tasks(data, tmp_path / "t", "bbh_date")
    (data / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:1: field 'answer' must be a solution"):
        write_tasks(data, tmp_path / "t", "gsm8k_cot_zeroshot")

    from qrdistill.stages.lmeval import run

    only = run(shared_data, write_tasks_to=tmp_path / "w", tasks="bbh_date", limit=5)
    assert f"--include_path {tmp_path / 'w'} --tasks qrdistill_bbh_date --limit 5" in only["command"]
    assert (tmp_path / "w" / "qrdistill_bbh_date.yaml").is_file()
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        run(shared_data, model=str(tmp_path), out=tmp_path / "o")
    with pytest.raises(QRDistillError, match="--out"):
        run(shared_data, model=str(tmp_path))


@pytest.mark.slow
def test_tiny_model_end_to_end(shared_data, tmp_path):
    from tiny_models import make_tiny_students

    from qrdistill.stages.lmeval import run

    model = make_tiny_students(tmp_path / "models")[0]
    out = tmp_path / "out"
    result = run(shared_data, model=model, out=out, tasks="bbh_date,gsm8k", limit=N, batch_size=N,
                 max_gen_toks=8)
    saved = json.loads((out / "results.json").read_text())
    names = ["qrdistill_bbh_date", "qrdistill_gsm8k"]
    for name in names:
        cells = saved["results"][name]
        assert {"exact_match,flexible-extract", "exact_match,strict-match"} <= set(cells)
        assert saved["n-samples"][name]["effective"] == N
        assert result["summary"][name]["n"] == N
    assert saved["n-samples"]["qrdistill_gsm8k"]["original"] == 1319
    assert "--include_path" in saved["qrdistill"]["command"] and "--limit 3" in saved["qrdistill"]["command"]
    # The prompts lm_eval built and the model answered hold the local files' first test questions.
    for name, project in (("qrdistill_bbh_date", "date"), ("qrdistill_gsm8k", "gsm8k")):
        _, records = _project_records(shared_data, project)
        rows = [json.loads(line) for line in (out / f"samples_{name}.jsonl").read_text().splitlines()]
        # lm_eval logs one row per question and filter.
        assert sorted(r["filter"] for r in rows) == ["flexible-extract"] * N + ["strict-match"] * N
        rows = [r for r in rows if r["filter"] == "strict-match"]
        for row, rec in zip(sorted(rows, key=lambda r: r["doc_id"]), records, strict=True):
            assert rec.question in row["arguments"][0][0]
            assert isinstance(row["resps"][0][0], str)
