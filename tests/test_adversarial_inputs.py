"""Adversarial inputs (issue 10): nothing hangs, nothing stored is lost, nothing secret is leaked.

Each test is named after its case in the issue. CLI cases run the real CLI in a subprocess and expect
one `qrdistill: error:` line naming the file:line or config field, a non-zero exit and no traceback;
where a stage would otherwise write, they also check that no artifact was replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_stub import OpenAIStub

ROOT = Path(__file__).resolve().parents[1]
#: Small and quick: two built-in procedural tasks, one question each, one style (simulated teacher).
SMALL = ["--limit", "1", "--set", "generate.styles=[cot]"]


def cli(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "qrdistill", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("qrdistill: error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    """A run dir after generate and filter."""
    run = tmp_path / "run"
    for stage in ("generate", "filter"):
        proc = cli(stage, "-d", str(run), *SMALL, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    return run


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# -- 4: an empty paths.jsonl never replaces filtered.jsonl ----------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_case4_empty_paths_never_replaces_filtered(generated, content):
    before = {name: digest(generated / name) for name in ("filtered.jsonl", "filter_report.json")}
    write(generated / "paths.jsonl", content)
    proc = cli("filter", "-d", str(generated), cwd=generated.parent)
    one_error_line(proc, "paths.jsonl", "no paths", "qrdistill generate")
    assert {name: digest(generated / name) for name in before} == before


def test_case4_limit_zero_never_replaces_filtered(generated):
    before = digest(generated / "filtered.jsonl")
    proc = cli("filter", "-d", str(generated), "--limit", "0", cwd=generated.parent)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "--limit" in proc.stderr
    assert digest(generated / "filtered.jsonl") == before


# -- 5: an emptied store is not silently asked again ----------------------------------------------------------


def _teacher_calls(store: Path) -> int:
    db = sqlite3.connect(store)
    try:
        return db.execute("SELECT COUNT(*) FROM calls WHERE kind = 'teacher'").fetchone()[0]
    except sqlite3.OperationalError:  # an empty file has no tables
        return 0
    finally:
        db.close()


def test_case5_empty_store_refuses_to_reissue_calls(generated):
    store, paths = generated / "store.sqlite", generated / "paths.jsonl"
    old_paths = paths.read_bytes()
    store.write_bytes(b"")  # a 0-byte store: a failed copy, a truncation
    for side in ("-wal", "-shm"):
        Path(f"{store}{side}").unlink(missing_ok=True)

    proc = cli("generate", "-d", str(generated), *SMALL, cwd=generated.parent)
    one_error_line(proc, "store.sqlite", "paths.jsonl", "--rebuild-store")
    assert _teacher_calls(store) == 0, "the teacher was asked again"
    assert paths.read_bytes() == old_paths

    # The explicit opt-in asks again, and keeps the old pool beside the new one.
    proc = cli("generate", "-d", str(generated), *SMALL, "--rebuild-store", cwd=generated.parent)
    assert proc.returncode == 0, proc.stderr
    assert _teacher_calls(store) == len(old_paths.splitlines())
    backups = list(generated.glob("paths.before-rebuild-*.jsonl"))
    assert len(backups) == 1 and backups[0].read_bytes() == old_paths


def test_case4_generate_with_every_call_failing_keeps_paths(tmp_path, monkeypatch, capsys):
    from qrdistill.backends.base import Completion
    from qrdistill.backends.simulated import SimulatedBackend
    from qrdistill.cli import main

    run = tmp_path / "run"
    assert main(["generate", "-d", str(run), *SMALL]) == 0
    before = digest(run / "paths.jsonl")

    def fail_all(self, requests, on_result, progress=None):
        for req in requests:
            on_result(req, Completion(text=None, status="error", error="HTTP 503"))

    monkeypatch.setattr(SimulatedBackend, "generate", fail_all)
    # New keys (another temperature), every one failing: the old pool must stay.
    assert (
        main(
            [
                "generate",
                "-d",
                str(run),
                *SMALL,
                "--set",
                "generate.teacher={kind: simulated, temperature: 0.3}",
            ]
        )
        == 2
    )
    assert "failed permanently" in capsys.readouterr().err
    assert digest(run / "paths.jsonl") == before


# -- 7: keys in api_key_env or in URLs are refused or redacted ------------------------------------------------


def _fake_key() -> str:
    return "sk-proj-" + secrets.token_urlsafe(24)


@pytest.mark.parametrize("where", ["teacher-local", "teacher-remote", "judge-remote"])
def test_case7_key_in_api_key_env_is_refused_without_echo(tmp_path, where):
    key = _fake_key()
    run = tmp_path / "run"
    with OpenAIStub() as stub:
        url = stub.base_url if where == "teacher-local" else "https://api.example.invalid/v1"
        backend = f"{{kind: openai, base_url: '{url}', model: m, api_key_env: '{key}', max_retries: 0}}"
        field = "filter.judge.backend" if where.startswith("judge") else "generate.teacher"
        setting = (
            f"filter.judge={{kind: llm, backend: {backend}}}"
            if field.startswith("filter")
            else (f"generate.teacher={backend}")
        )
        stage = "filter" if field.startswith("filter") else "generate"
        if stage == "filter":
            assert cli("generate", "-d", str(run), *SMALL, cwd=tmp_path).returncode == 0
        proc = cli(stage, "-d", str(run), *SMALL, "--set", setting, cwd=tmp_path)
    one_error_line(proc, f"{field}.api_key_env")
    assert key not in proc.stdout + proc.stderr and key[3:15] not in proc.stderr
    for p in run.rglob("*") if run.exists() else []:
        if p.is_file():
            assert key.encode() not in p.read_bytes(), p


@pytest.mark.parametrize(
    "value",
    [
        "sk-" + "a" * 40,
        # Key-shaped values are assembled here, so that no key-shaped literal sits in the repo.
        "hf_" + "FakeTokenX9" * 3,
        "ghp_" + "FakeTokenX9" * 3 + "abc",
        "5f4dcc3b5aa765d61d8327deb882cf99",
        "MY KEY",
        "1PASSWORD",
    ],
)
def test_case7_key_like_values_are_refused_by_the_config(value):
    from qrdistill.config import load_config
    from qrdistill.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, {"generate.teacher": {"kind": "openai", "model": "m", "api_key_env": value}})
    assert "generate.teacher.api_key_env" in str(err.value) and value not in str(err.value)


@pytest.mark.parametrize(
    "name",
    [
        "OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "HF_TOKEN",
        "AZURE_OPENAI_API_KEY_2",
        "my_provider_key",
        "TEAM_KEY_20240101",
    ],
)
def test_case7_real_variable_names_are_accepted(name):
    from qrdistill.config import load_config

    cfg = load_config(None, {"generate.teacher": {"kind": "openai", "model": "m", "api_key_env": name}})
    assert cfg.generate.teacher.api_key_env == name


def test_case7_credentials_in_base_url_are_redacted_everywhere(tmp_path):
    password = "pw-" + secrets.token_hex(16)
    token = "tok" + secrets.token_hex(16)
    run = tmp_path / "run"
    with OpenAIStub(
        reply=lambda p: "VERDICT: VALID" if "REASONING PATH" in p else "So 7. The answer is 7."
    ) as stub:
        host = stub.base_url.removeprefix("http://")
        url = f"http://user:{password}@{host}?api_key={token}"
        backend = f"{{kind: openai, base_url: '{url}', model: m, api_key_env: null, max_retries: 0}}"
        common = ["-d", str(run), "--verbose", *SMALL]
        gen = cli("generate", *common, "--set", f"generate.teacher={backend}", cwd=tmp_path)
        flt = cli("filter", *common, "--set", f"filter.judge={{kind: llm, backend: {backend}}}", cwd=tmp_path)
        assert stub.requests, "the stub was never asked"
    assert gen.returncode == 0 and flt.returncode == 0, gen.stderr + flt.stderr
    assert (run / "meta" / "generate.json").exists() and (run / "meta" / "filter.json").exists()
    for proc in (gen, flt):
        assert password not in proc.stdout + proc.stderr and token not in proc.stdout + proc.stderr
    for p in run.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert password.encode() not in data and token.encode() not in data, f"credential written to {p}"
    meta = json.loads((run / "meta" / "generate.json").read_text())
    assert "[REDACTED]" in meta["config"]["generate"]["teacher"]["base_url"]


def test_case7_missing_key_message_hides_url_credentials(tmp_path):
    password = "pw-" + secrets.token_hex(16)
    backend = (
        f"{{kind: openai, base_url: 'https://user:{password}@api.example.invalid/v1', model: m, "
        f"api_key_env: QRDISTILL_TEST_UNSET_KEY}}"
    )
    env = {k: v for k, v in os.environ.items() if k != "QRDISTILL_TEST_UNSET_KEY"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qrdistill",
            "generate",
            "-d",
            str(tmp_path / "run"),
            *SMALL,
            "--set",
            f"generate.teacher={backend}",
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    one_error_line(proc, "api_key_env", "QRDISTILL_TEST_UNSET_KEY")
    assert password not in proc.stderr + proc.stdout


def test_case7_credential_query_params_redacted_in_meta_store_and_logs(tmp_path, caplog):
    from qrdistill.backends.base import Backend, Completion, Request
    from qrdistill.config import load_config
    from qrdistill.io import RedactingFilter, write_run_meta
    from qrdistill.store import Store

    token = secrets.token_hex(20)
    url = f"https://gw.example.invalid/v1?key={token}&region=eu"
    cfg = load_config(None, {"generate.teacher": {"kind": "openai", "model": "m", "base_url": url}})
    meta = write_run_meta(tmp_path, "generate", cfg).read_text()
    assert token not in meta and "region=eu" in meta

    backend = Backend(cfg.generate.teacher)
    with Store(tmp_path / "store.sqlite") as store:
        store.put(
            "k",
            "teacher",
            backend,
            Request(messages=[{"role": "user", "content": "q"}]),
            Completion(text=None, status="error", error=f"connection to {url} refused"),
        )
    for p in tmp_path.glob("store.sqlite*"):
        assert token.encode() not in p.read_bytes()

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "calling %s", (url,), None)
    RedactingFilter().filter(record)
    assert token not in record.getMessage() and "gw.example.invalid" in record.getMessage()


# -- 9: config values that would be read as something else ---------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        (
            "tasks:\n  - name: procedural_arith\n    limit: 1\n  - name: procedural_arith\n    limit: 1\n",
            "tasks",
        ),
        ("seed: true\n", "seed"),
        ("generate:\n  samples_per_style: true\n", "generate.samples_per_style"),
        (
            "generate:\n  styles: [mine]\n  custom_styles:\n    mine: 'Solve {question} in {oops} steps'\n",
            "generate.custom_styles",
        ),
        (
            "filter:\n  judge:\n    kind: llm\n    prompt: '{question} {path} {verdict}'\n",
            "filter.judge.prompt",
        ),
    ],
    ids=["task-twice", "seed-bool", "samples-bool", "style-placeholder", "judge-placeholder"],
)
def test_case9_ambiguous_config_values_are_refused(tmp_path, yaml_text, field):
    cfg = write(tmp_path / "c.yaml", f"run_dir: {tmp_path / 'run'}\n" + yaml_text)
    proc = cli("generate", "-c", str(cfg), "--limit", "1", cwd=tmp_path)
    line = one_error_line(proc, f"config field {field}")
    if "oops" in yaml_text or "verdict" in yaml_text:
        assert "{oops}" in line or "{verdict}" in line
    assert not (tmp_path / "run" / "paths.jsonl").exists()


def test_case9_latex_in_a_custom_style_is_not_taken_for_a_placeholder():
    from qrdistill.config import load_config

    template = r"{question} Put the result in \boxed{answer}; \frac{a}{b} and x^{n} are fine."
    cfg = load_config(None, {"generate.styles": ["mine"], "generate.custom_styles": {"mine": template}})
    assert cfg.generate.custom_styles["mine"] == template
    with pytest.raises(Exception, match="oops"):
        load_config(None, {"generate.styles": ["mine"], "generate.custom_styles": {"mine": template + " {oops}"}})


# -- 10: unreadable inputs and unusable run dirs: one line, no traceback --------------------------------------


def test_case10_an_override_that_is_not_yaml_is_a_usage_error(capsys):
    from qrdistill.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--set", "generate.styles=[cot"])
    assert exit_.value.code == 2
    assert "--set generate.styles: not a YAML value" in capsys.readouterr().err


def test_case10_non_utf8_config(tmp_path):
    cfg = write(tmp_path / "c.yaml", b"run_dir: run\nseed: 1\n# caf\xe9\n")
    one_error_line(cli("generate", "-c", str(cfg), cwd=tmp_path), f"{cfg}:3", "UTF-8")


def test_case10_non_utf8_task_data_file(tmp_path):
    data = write(
        tmp_path / "gsm.jsonl",
        json.dumps({"question": "1+1?", "answer": "#### 2"}).encode()
        + b"\n"
        + b'{"question": "caf\xe9?", "answer": "#### 3"}\n',
    )
    proc = cli(
        "generate",
        "-d",
        str(tmp_path / "run"),
        "--set",
        f"tasks=[{{name: gsm8k, path: '{data}'}}]",
        cwd=tmp_path,
    )
    one_error_line(proc, f"{data}:2", "UTF-8")


@pytest.mark.parametrize("yaml_text", ["a: &x [*x]\n", "generate: &g {styles: [cot], custom_styles: *g}\n"])
def test_case10_self_referencing_yaml_alias(tmp_path, yaml_text):
    cfg = write(tmp_path / "c.yaml", yaml_text)
    one_error_line(cli("generate", "-c", str(cfg), cwd=tmp_path), str(cfg), "alias")


def test_case10_yaml_alias_bomb_is_refused_quickly(tmp_path):
    from qrdistill.config import load_config
    from qrdistill.errors import ConfigError

    levels = ["a0: &a0 [cot, cot, cot, cot, cot, cot, cot, cot, cot]"]
    for i in range(1, 7):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    text = "generate:\n  x:\n" + "".join(f"    {line}\n" for line in levels) + "  styles: *a6\n"
    cfg = write(tmp_path / "c.yaml", text)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="alias"):
        load_config(cfg)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", "paths.jsonl:1"),
        (
            b'{"qid": "a/1", "task": "a", "style": 5, "prompt": "p", "response": "r", "correct": true}\n',
            "style",
        ),
        (
            b'{"qid": "a/1", "task": "a", "style": "cot", "prompt": "p", "response": null, "correct": true}\n',
            "response",
        ),
        (
            b'{"qid": "a/1", "task": "a", "style": "cot", "prompt": "p", "response": "r", "correct": "yes"}\n',
            "correct",
        ),
        (
            b'{"qid": "a/1", "task": "a", "style": "cot", "prompt": "p", "response": "r", "correct": true, "meta": 3}\n',
            "meta",
        ),
        (
            b'{"qid": "a/1", "task": "a", "style": "cot", "prompt": "p", "response": "r", "correct": false, '
            b'"choices": 5}\n',
            "choices",
        ),
        (b"[" * 100_000 + b"\n", "paths.jsonl:1"),
        (b'{"qid": 1' + b"0" * 5000 + b"}\n", "paths.jsonl:1"),
    ],
    ids=[
        "binary",
        "style-int",
        "response-null",
        "correct-str",
        "meta-int",
        "choices-int",
        "deep-nesting",
        "huge-int",
    ],
)
def test_case10_garbage_paths_file(tmp_path, content, needle):
    run = tmp_path / "run"
    run.mkdir()
    write(run / "paths.jsonl", content)
    one_error_line(cli("filter", "-d", str(run), cwd=tmp_path), "paths.jsonl", needle)
    assert not (run / "filtered.jsonl").exists()


def _without_root_write_override() -> tuple[str, ...]:
    """A command prefix under which permission bits bind, even when the tests run as root."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only directory cannot be simulated")
    # Root keeps reading everything (CAP_DAC_READ_SEARCH) but loses the override of write permissions.
    return ("setpriv", "--bounding-set=-dac_override,-fowner")


@pytest.mark.parametrize("stage", ["generate", "filter"])
def test_case10_read_only_run_dir(tmp_path, stage):
    prefix = _without_root_write_override()
    run = tmp_path / "run"
    if stage == "filter":
        assert cli("generate", "-d", str(run), *SMALL, cwd=tmp_path).returncode == 0
    else:
        run.mkdir()
    for p in [run, *run.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        before = tree_digest(run)
        proc = cli(stage, "-d", str(run), *SMALL, cwd=tmp_path, prefix=prefix)
        one_error_line(proc, str(run), "not writable")
        assert tree_digest(run) == before
    finally:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(28, "No space left on device", "/run/train/step-3/adapter.safetensors"),
        OSError(30, "Read-only file system", "/run/eval/summary.json"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ],
    ids=["ENOSPC", "EROFS", "not-utf8"],
)
def test_case10_os_errors_from_any_stage_are_one_line(tmp_path, monkeypatch, capsys, exc):
    """The CLI's net for code that does not convert these itself (e.g. a checkpoint write in train)."""
    from qrdistill import cli

    def stage(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli, "_stage", lambda name: type("Stage", (), {"run": staticmethod(stage)}))
    assert cli.main(["filter", "-d", str(tmp_path / "run")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("qrdistill: error: "), err
    assert (getattr(exc, "filename", None) or "UTF-8") in err[0]


def test_case10_run_dir_that_is_a_file(tmp_path):
    target = write(tmp_path / "notes.txt", "my notes\n")
    for stage in ("generate", "filter"):
        one_error_line(cli(stage, "-d", str(target), *SMALL, cwd=tmp_path), str(target), "is a file")
    assert target.read_text() == "my notes\n"


def test_case10_disk_full_shows_sqlites_reason(tmp_path, monkeypatch, capsys):
    from qrdistill import store as store_mod
    from qrdistill.cli import main

    real_init = store_mod.Store.__init__

    def tiny_disk(self, path):
        real_init(self, path)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages + 3}")

    monkeypatch.setattr(store_mod.Store, "__init__", tiny_disk)
    run = tmp_path / "run"
    assert main(["generate", "-d", str(run), "--limit", "30"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert not any("Traceback" in ln for ln in err)
    assert err[-1].startswith("qrdistill: error: ") and "database or disk is full" in err[-1], err[-1]
    assert "cannot rollback" not in err[-1]
    monkeypatch.setattr(store_mod.Store, "__init__", real_init)
    with store_mod.Store(run / "store.sqlite") as store:  # what was stored before the disk filled is intact
        assert store.integrity_ok() and store.teacher_paths_stored() > 0


# -- 11: a directory that is not a run dir is refused unless --force -----------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", *SMALL],
        ["filter"],
        ["train"],
        ["evaluate", "--set", "evaluate.students=trained"],
        ["run", "--set", "stages=[generate]", *SMALL],
    ],
    ids=["generate", "filter", "train", "evaluate", "run"],
)
def test_case11_foreign_directory_is_refused_without_force(tmp_path, argv):
    home = tmp_path / "home"
    home.mkdir()
    write(home / "thesis.tex", "\\documentclass{article}\n")
    (home / "photos").mkdir()
    before = tree_digest(home)
    proc = cli(argv[0], "-d", str(home), *argv[1:], cwd=tmp_path)
    one_error_line(proc, str(home), "not a qrdistill run directory", "--force")
    assert tree_digest(home) == before and sorted(p.name for p in home.iterdir()) == ["photos", "thesis.tex"]


def test_case11_force_and_real_run_dirs_are_accepted(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    write(home / "thesis.tex", "\\documentclass{article}\n")
    proc = cli("generate", "-d", str(home), *SMALL, "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (home / "paths.jsonl").exists() and (home / "thesis.tex").exists()
    # Now marked as a run dir: the next stage needs no --force.
    assert cli("filter", "-d", str(home), cwd=tmp_path).returncode == 0


def test_case11_filesystem_root_is_refused():
    from qrdistill.errors import RunDirError
    from qrdistill.io import check_run_dir

    with pytest.raises(RunDirError, match="--force"):
        check_run_dir(Path("/"))
