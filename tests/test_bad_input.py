"""Acceptance test "Bad input": every user mistake gives one clear line and no traceback.

Each case runs the real CLI in a subprocess and checks: non-zero exit, exactly
one non-empty stderr line, starting `qrdistill: error:` and naming the file:line
or the config field, no "Traceback". A failing re-run must never destroy
stored work.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "qrdistill", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def assert_one_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("qrdistill: error: "), line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def gsm8k_line(q: str, a: int) -> str:
    return json.dumps({"question": q, "answer": f"Some steps.\n#### {a}"})


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def gsm8k_config(tmp_path: Path, data: Path) -> Path:
    return write_config(
        tmp_path / "c.yaml",
        f"run_dir: {tmp_path / 'run'}\ntasks:\n  - name: gsm8k\n    path: {data}\n"
        "generate:\n  styles: [cot]\n",
    )


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    data = tmp_path / "gsm.jsonl"
    data.write_text(gsm8k_line("What is 1+1?", 2) + "\n" + gsm8k_line("What is 2+2?", 4) + "\n{not json\n")
    proc = cli("generate", "-c", str(gsm8k_config(tmp_path, data)), cwd=tmp_path)
    assert_one_clear_error(proc, f"{data}:3")


def test_missing_field_names_file_line_and_field(tmp_path):
    data = tmp_path / "gsm.jsonl"
    data.write_text(gsm8k_line("What is 1+1?", 2) + "\n" + json.dumps({"question": "What is 3+3?"}) + "\n")
    proc = cli("generate", "-c", str(gsm8k_config(tmp_path, data)), cwd=tmp_path)
    assert_one_clear_error(proc, f"{data}:2", "answer")


def test_empty_dataset(tmp_path):
    data = tmp_path / "gsm.jsonl"
    data.write_text("")
    proc = cli("generate", "-c", str(gsm8k_config(tmp_path, data)), cwd=tmp_path)
    assert_one_clear_error(proc, str(data))


def test_unknown_task(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"run_dir: {tmp_path / 'run'}\ntasks:\n  - name: no_such_task\n")
    proc = cli("generate", "-c", str(cfg), cwd=tmp_path)
    line = assert_one_clear_error(proc, "tasks.0.name", "no_such_task")
    assert "procedural_date" in line  # the known names are listed


def test_unknown_style(tmp_path):
    proc = cli("generate", "-d", str(tmp_path / "run"), "--set", "generate.styles=[cot, telepathy]", cwd=tmp_path)
    assert_one_clear_error(proc, "generate.styles.1", "telepathy")


@pytest.mark.parametrize(
    "yaml_text, needles",
    [
        ("generate:\n  samples_per_style: 0\n", ["c.yaml:3", "generate.samples_per_style"]),
        ("generate:\n  teacher:\n    kind: foo\n", ["c.yaml:3", "generate.teacher", "foo"]),
        ("generate:\n  styles: [cot]\n  temprature: 0.3\n", ["c.yaml:4", "generate.temprature", "unknown field"]),
        ("filter:\n  judge:\n    kind: steps\n    tolerance: -1\n", ["c.yaml:5", "filter.judge.tolerance"]),
        ("train:\n  students:\n    - {name: rl_gemma, model: gemma3-270m}\n    - {name: b, model: gemma3-270m}\n",
         ["c.yaml:4", "train.students.0.name", "may not start with 'base_' or 'rl_'"]),
    ],
    ids=["samples_per_style=0", "teacher.kind=foo", "unknown-field", "negative-tolerance", "student-named-rl_"],
)
def test_invalid_config_value(tmp_path, yaml_text, needles):
    # Line 1 of the file is run_dir, so the numbers above count it.
    cfg = write_config(tmp_path / "c.yaml", f"run_dir: {tmp_path / 'run'}\n" + yaml_text)
    proc = cli("generate", "-c", str(cfg), cwd=tmp_path)
    assert_one_clear_error(proc, *needles)


def test_invalid_override_value(tmp_path):
    proc = cli("generate", "-d", str(tmp_path / "run"), "--set", "generate.samples_per_style=0", cwd=tmp_path)
    assert_one_clear_error(proc, "generate.samples_per_style")


def test_missing_config_file(tmp_path):
    proc = cli("generate", "-c", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert_one_clear_error(proc, "nope.yaml")


def test_filter_without_generate(tmp_path):
    proc = cli("filter", "-d", str(tmp_path / "run"), cwd=tmp_path)
    assert_one_clear_error(proc, "paths.jsonl", "qrdistill generate")


def test_corrupt_paths_file_for_filter(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "paths.jsonl").write_text('{"qid": "a"}\n')
    proc = cli("filter", "-d", str(run), cwd=tmp_path)
    assert_one_clear_error(proc, "paths.jsonl:1", "missing field")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_input_never_destroys_stored_work(tmp_path):
    run = tmp_path / "run"
    base = ["-d", str(run), "--limit", "2", "--set", "generate.styles=[cot, program]"]
    ok = cli("generate", *base, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    store, paths = run / "store.sqlite", run / "paths.jsonl"
    before = {p: _digest(p) for p in (store, paths)}
    n_paths = len(paths.read_text().splitlines())
    assert n_paths == 2 * 2 * 2  # 2 default tasks x 2 questions x 2 styles

    data = tmp_path / "gsm.jsonl"
    data.write_text(gsm8k_line("What is 1+1?", 2) + "\n{broken\n")
    bad_runs = [
        cli("generate", *base, "--set", "generate.styles=[cot, telepathy]", cwd=tmp_path),
        cli("generate", *base, "--set", "generate.samples_per_style=0", cwd=tmp_path),
        cli("generate", *base, "--set", f"tasks=[{{name: gsm8k, path: '{data}'}}]", cwd=tmp_path),
        cli("generate", *base, "--set", "tasks=[{name: no_such_task}]", cwd=tmp_path),
    ]
    for proc in bad_runs:
        assert_one_clear_error(proc)
    after = {p: _digest(p) for p in (store, paths)}
    assert after == before
    # And the stored work is still used: the same command asks nothing new.
    again = cli("generate", *base, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 issued" in again.stdout and f"{n_paths} cached" in again.stdout


def test_unreadable_store_is_reported_not_replaced(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    junk = b"\x00not sqlite\x00" * 500
    (run / "store.sqlite").write_bytes(junk)
    proc = cli("generate", "-d", str(run), "--limit", "1", cwd=tmp_path)
    assert_one_clear_error(proc, "store.sqlite", "not a readable completion store")
    assert (run / "store.sqlite").read_bytes() == junk
    assert not (run / "paths.jsonl").exists()


def test_second_process_on_the_same_run_dir_is_refused(tmp_path):
    from filelock import FileLock

    from qrdistill.stages.generate import LOCK_FILE

    run = tmp_path / "run"
    ok = cli("generate", "-d", str(run), "--limit", "1", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    before = _digest(run / "paths.jsonl")
    with FileLock(str(run / LOCK_FILE)):  # stands in for a generate still running
        for stage in ("generate", "filter"):
            proc = cli(stage, "-d", str(run), "--limit", "1", cwd=tmp_path)
            assert_one_clear_error(proc, "another qrdistill process", f"qrdistill {stage}")
    assert _digest(run / "paths.jsonl") == before
    assert cli("filter", "-d", str(run), cwd=tmp_path).returncode == 0  # released: runs again
