"""`qrdistill train` on bad input: exit code 2, one clear line naming the file:line or config field."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from train_helpers import make_filtered, qrdistill_cmd, subprocess_env, tiny_train_section

from qrdistill.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def filtered(tmp_path_factory) -> Path:
    return make_filtered(tmp_path_factory.mktemp("paths"), limit=2)


def _config(tmp_path: Path, models: list[str], **train) -> Path:
    section = tiny_train_section(models, max_steps=1)
    section.update(train)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": section}, sort_keys=False))
    return path


def _fail(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    last = err[-1]
    assert last.startswith("qrdistill: error: ")
    assert not any("Traceback" in line for line in err)
    return last


def _run_dir(tmp_path: Path, content: str | None) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    if content is not None:
        (d / "filtered.jsonl").write_text(content)
    return d


def test_missing_filtered_says_which_stage(tmp_path, capsys, models):
    d = _run_dir(tmp_path, None)
    msg = _fail(capsys, ["train", "-c", str(_config(tmp_path, models)), "-d", str(d)])
    assert "filtered.jsonl" in msg and "qrdistill filter" in msg


def test_empty_filtered(tmp_path, capsys, models):
    d = _run_dir(tmp_path, "")
    msg = _fail(capsys, ["train", "-c", str(_config(tmp_path, models)), "-d", str(d)])
    assert f"{d / 'filtered.jsonl'}: file is empty" in msg


def test_malformed_line_named(tmp_path, capsys, models, filtered):
    lines = filtered.read_text().splitlines()
    lines.insert(2, '{"qid": "x", "kept": true, ')
    d = _run_dir(tmp_path, "\n".join(lines) + "\n")
    msg = _fail(capsys, ["train", "-c", str(_config(tmp_path, models)), "-d", str(d)])
    assert f"{d / 'filtered.jsonl'}:3: malformed JSON" in msg


def test_kept_row_without_response(tmp_path, capsys, models, filtered):
    rows = [json.loads(x) for x in filtered.read_text().splitlines()]
    i = next(k for k, r in enumerate(rows) if r["kept"])
    del rows[i]["response"]
    d = _run_dir(tmp_path, "".join(json.dumps(r) + "\n" for r in rows))
    msg = _fail(capsys, ["train", "-c", str(_config(tmp_path, models)), "-d", str(d)])
    assert f"filtered.jsonl:{i + 1}: missing field(s) response" in msg


def test_nothing_kept(tmp_path, capsys, models, filtered):
    rows = [dict(json.loads(x), kept=False) for x in filtered.read_text().splitlines()]
    d = _run_dir(tmp_path, "".join(json.dumps(r) + "\n" for r in rows))
    msg = _fail(capsys, ["train", "-c", str(_config(tmp_path, models)), "-d", str(d)])
    assert "no row has kept: true" in msg


def test_student_that_cannot_load(tmp_path, capsys, models, filtered):
    d = _run_dir(tmp_path, filtered.read_text())
    students = tiny_train_section(models)["students"]
    students[1]["model"] = str(tmp_path / "no-such-model")
    msg = _fail(capsys, ["train", "-c", str(_config(tmp_path, models, students=students)), "-d", str(d)])
    assert "train.students.1.model" in msg


@pytest.mark.parametrize("field,value,expect", [
    ("students", "one", "train.students: QR-Distill trains S >= 2 students jointly, 1 given"),
    ("lambda_entropy", -0.5, "train.lambda_entropy: λ1 (routing entropy) must be in [0, 100]"),
    ("lambda_mutual", 1e6, "train.lambda_mutual: λ2 (mutual distillation) must be in [0, 100]"),
    ("frozen_peer", "nobody", "train.frozen_peer: 'nobody' names no student"),
    ("students", "dup", "train.students: students 0 and 1 are both named 'llama'"),
    ("method", "sft+mutual", "train.lambda_mutual: method sft trains without collaboration"),
])
def test_config_errors_name_the_field_and_line(tmp_path, capsys, models, filtered, field, value, expect):
    d = _run_dir(tmp_path, filtered.read_text())
    students = tiny_train_section(models)["students"]
    extra = {}
    if value == "one":
        extra["students"] = students[:1]
    elif value == "dup":
        students[1]["name"] = "llama"
        extra["students"] = students
    elif value == "sft+mutual":
        extra = {"method": "sft", "lambda_mutual": 0.2}
    else:
        extra[field] = value
    cfg = _config(tmp_path, models, **extra)
    msg = _fail(capsys, ["train", "-c", str(cfg), "-d", str(d)])
    assert expect in msg
    assert f"{cfg}:" in msg  # the YAML line of the offending field


def test_cli_subprocess_prints_one_line_no_traceback(tmp_path, models):
    d = _run_dir(tmp_path, "\n\n")
    cfg = _config(tmp_path, models)
    res = subprocess.run(qrdistill_cmd("train", "-c", str(cfg), "-d", str(d)), cwd=ROOT, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"qrdistill: error: {d / 'filtered.jsonl'}: file is empty " \
                                                  "(did `qrdistill filter` finish?)"
    shutil.rmtree(d)
