"""`qrdistill export --what dataset`: a real run (simulated teacher, `steps` judge) exported, loaded back
with `datasets.load_from_disk`, and checked against what training reads, the filter's report and the
store; the output directory's safety rules; and `--push-to-hub` up to the network (no token; a hub that
is unreachable; a hub that quotes the token back), with the token found nowhere afterwards."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from qrdistill.cli import main
from qrdistill.config import load_config
from qrdistill.errors import QRDistillError
from qrdistill.export.dataset import COLUMNS, export_dataset
from qrdistill.stages import filter as filter_stage
from qrdistill.stages import generate as generate_stage
from qrdistill.store import Store

ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_qrdistillTEST" + "Zx81QpLm3Vt6Wn" * 2
#: Columns the issue names (judge verdict and reason are two).
REQUIRED_COLUMNS = {"messages", "question", "response", "style", "task", "qid", "teacher_model", "judge_verdict",
                    "judge_reason", "kept", "contaminated", "cache_key", "usage"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    cfg = load_config(None, {
        "run_dir": str(run),
        "tasks": [{"name": "procedural_date", "limit": 3}, {"name": "procedural_arith", "limit": 3}],
    })
    generate_stage.run(cfg, run)
    filter_stage.run(cfg, run)
    return run


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def copy_run(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def load(out: Path):
    import datasets

    return datasets.load_from_disk(str(out / "hf"))


def test_kept_paths_load_back_as_training_sees_them(run_dir, tmp_path):
    from qrdistill.prompting import student_prompt
    from qrdistill.tasks import get_task
    from qrdistill.train.data import build_items, load_kept, path_key

    out = tmp_path / "out"
    before = snapshot(run_dir)
    result = export_dataset(run_dir, out)
    assert snapshot(run_dir) == before  # the run is only read (the store is opened read-only)
    filtered = rows_of(run_dir / "filtered.jsonl")
    kept = [r for r in filtered if r["kept"]]
    assert 0 < len(kept) < len(filtered)  # the fixture run drops some paths, so "kept only" is tested

    ds = load(out)
    assert REQUIRED_COLUMNS <= set(ds.column_names)
    assert ds.column_names == list(COLUMNS)
    assert len(ds) == len(kept) == result["rows"]
    assert all(ds["kept"])
    assert rows_of(out / "data.jsonl") == ds.to_list()  # the JSONL is the same data

    # messages[0] is exactly the prompt training builds for the path, messages[1] its target.
    items = {it.key: it for it in build_items(load_kept(run_dir / "filtered.jsonl"), "sft")}
    assert len(items) == len(ds)
    with Store(run_dir / "store.sqlite") as store:
        for row, src in zip(ds, kept, strict=True):
            item = items[path_key({**src, "response": row["response"]})]
            assert row["messages"] == [{"role": "user", "content": item.prompt},
                                       {"role": "assistant", "content": item.response}]
            assert row["messages"][0]["content"] == student_prompt(get_task(src["task"]), src["question"])
            assert (row["qid"], row["task"], row["style"], row["question"]) == (
                src["qid"], src["task"], src["style"], src["question"])
            assert row["cache_key"] == src["key"] and row["teacher_prompt"] == src["prompt"]
            assert row["teacher_model"] == "simulated-teacher" and row["teacher"] == src["teacher"]
            assert row["judge_verdict"] == "valid" and row["judge_reason"] == src["judge"]["reason"]
            assert row["outcome"] == "kept" and row["contaminated"] is False  # checked, clean
            comp = store.get(src["key"])
            assert row["usage"] == {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens}
            assert row["usage"]["completion_tokens"] > 0

    # TRL's conversational format: SFTTrainer decides by the first of its keys a row has
    # (trl.data_utils.is_conversational), so `messages` must be the only one.
    trl_keys = {"prompt", "chosen", "rejected", "completion", "messages"}
    assert trl_keys & set(ds.column_names) == {"messages"}
    for row in ds:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in row["messages"])
    with contextlib.suppress(ImportError):  # trl is not a dependency; when present, ask it too
        from trl.data_utils import is_conversational

        assert all(is_conversational(row) for row in ds)


def test_all_paths_exports_every_filtered_path_with_its_verdict(run_dir, tmp_path):
    out = tmp_path / "out"
    export_dataset(run_dir, out, all_paths=True)
    ds = load(out)
    filtered = rows_of(run_dir / "filtered.jsonl")
    report = json.loads((run_dir / "filter_report.json").read_text())
    assert len(ds) == len(filtered) == report["overall"]["total"]
    assert sum(ds["kept"]) == report["overall"]["kept"]
    outcomes = Counter(ds["outcome"])
    assert {k: outcomes.get(k, 0) for k in report["overall"] if k != "total"} == {
        k: v for k, v in report["overall"].items() if k != "total"}
    for row, src in zip(ds, filtered, strict=True):
        assert row["kept"] == src["kept"] and row["correct"] == src["correct"]
        if src["judge"] is None:
            assert row["judge_verdict"] is None and row["judge_reason"] is None
        else:
            assert row["judge_verdict"] == ("valid" if src["judge"]["valid"] else "invalid")
    assert None in ds["judge_verdict"] and "invalid" in ds["judge_verdict"]


def _section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _table(section: str) -> list[dict[str, str]]:
    """The first markdown table in `section`."""
    lines = section.split("\n|", 1)[1].split("\n\n", 1)[0].splitlines()
    lines[0] = "|" + lines[0]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]


def test_card_matches_the_filter_report_and_meta(run_dir, tmp_path):
    from huggingface_hub import DatasetCard

    out = tmp_path / "out"
    export_dataset(run_dir, out)
    text = (out / "README.md").read_text(encoding="utf-8")
    card = DatasetCard(text)  # the Hub's own parser reads the front matter
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "data.jsonl"}]}]
    assert "text-generation" in card.data.task_categories

    report = json.loads((run_dir / "filter_report.json").read_text())
    kept = Counter((r["task"], r["style"]) for r in rows_of(run_dir / "filtered.jsonl") if r["kept"])
    table = _table(_section(text, "Counts per task x style"))
    assert len(table) == sum(len(s) for s in report["by_task_style"].values())
    for row in table:
        counts = report["by_task_style"][row["task"]][row["style"]]
        assert {k: int(row[k]) for k in counts} == counts
        assert int(row["exported"]) == kept[(row["task"], row["style"])]
    overall = _table(_section(text, "Filter statistics"))[0]
    assert {k: int(overall[k]) for k in report["overall"]} == report["overall"]
    assert report["mode"] in _section(text, "Filter statistics")

    gen_meta = json.loads((run_dir / "meta" / "generate.json").read_text())
    filt_meta = json.loads((run_dir / "meta" / "filter.json").read_text())
    shas = {r["stage"]: r["git SHA"] for r in _table(_section(text, "Provenance"))}
    assert shas["generate"] == gen_meta["git_sha"] and shas["filter"] == filt_meta["git_sha"]
    assert gen_meta["git_sha"]  # the checkout is a git repo, so the SHA is known
    block = _section(text, "Resolved config").split("```yaml\n", 1)[1].split("\n```", 1)[0]
    config = yaml.safe_load(block)
    assert config["generate"] == gen_meta["config"]["generate"] and config["tasks"] == gen_meta["config"]["tasks"]
    assert config["filter"] == filt_meta["config"]["filter"] and config["seed"] == gen_meta["config"]["seed"]


def test_reexport_replaces_the_previous_one_and_user_dirs_are_refused(run_dir, tmp_path, monkeypatch):
    import datasets

    out = tmp_path / "exports" / "ds"
    export_dataset(run_dir, out)
    first = len(load(out))
    export_dataset(run_dir, out, all_paths=True)
    assert len(load(out)) > first
    # No temporary directory left behind (the lock file that keeps exports to one place apart stays).
    assert sorted(p.name for p in out.parent.iterdir()) == [".ds.lock", "ds"]

    # A failure while writing leaves the previous export whole, and nothing beside it.
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full_disk)
    with pytest.raises(QRDistillError, match=r"No space left on device.*previous export is unchanged"):
        export_dataset(run_dir, out)
    monkeypatch.undo()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == [".ds.lock", "ds"]

    # A directory with a user's files is never replaced, and neither is an export a user added a file to.
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(QRDistillError, match="not empty and is not a previous dataset export"):
        export_dataset(run_dir, user)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    (out / "notes.txt").write_text("keep me too")
    with pytest.raises(QRDistillError, match="not a previous dataset export"):
        export_dataset(run_dir, out)
    assert (out / "notes.txt").read_text() == "keep me too"
    with pytest.raises(QRDistillError, match="not a previous dataset export"):
        export_dataset(run_dir, run_dir)  # --out pointing at the run itself
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(QRDistillError, match="is a file"):
        export_dataset(run_dir, tmp_path / "a_file")
    empty = tmp_path / "empty"
    empty.mkdir()
    export_dataset(run_dir, empty)  # an empty directory is fine
    assert (empty / "hf").is_dir()


def test_cli_exit_codes(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--run-dir", str(run_dir), "--what", "dataset", "--out", str(out), "--all-paths"]) == 0
    assert len(load(out)) == len(rows_of(run_dir / "filtered.jsonl"))
    assert main(["export", "-d", str(run_dir), "--what", "dataset"]) == 0  # default --out D/export/dataset
    assert (run_dir / "export" / "dataset" / "data.jsonl").exists()
    shutil.rmtree(run_dir / "export")  # the fixture run is shared
    capsys.readouterr()

    not_filtered = tmp_path / "generated_only"
    not_filtered.mkdir()
    shutil.copy(run_dir / "paths.jsonl", not_filtered)
    for bad in (not_filtered, tmp_path / "nowhere"):
        assert main(["export", "--run-dir", str(bad), "--what", "dataset"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert main(["export", "--run-dir", str(not_filtered), "--what", "dataset"]) == 2
    assert "run `qrdistill filter` first" in capsys.readouterr().err
    assert not (not_filtered / "export").exists()


@pytest.mark.parametrize("case", ["malformed_line", "wrong_type", "unknown_task", "report_out_of_date", "none_kept"])
def test_bad_run_data_gives_one_clear_error(run_dir, tmp_path, capsys, case):
    run = copy_run(run_dir, tmp_path / "run")
    filtered = run / "filtered.jsonl"
    rows = rows_of(filtered)
    lines = [json.dumps(r) for r in rows]
    expect = {
        "malformed_line": r"filtered\.jsonl:3: malformed JSON",
        "wrong_type": r"filtered\.jsonl:2: field kept must be true or false",
        "unknown_task": r"filtered\.jsonl:1: unknown task 'my_task'",
        "report_out_of_date": r"filter_report\.json does not count the paths of .*filtered\.jsonl",
        "none_kept": r"no path was kept.*--all-paths",
    }[case]
    if case == "malformed_line":
        lines[2] = lines[2][:-5]
    elif case == "wrong_type":
        lines[1] = json.dumps({**rows[1], "kept": "yes"})
    elif case == "unknown_task":
        lines[0] = json.dumps({**rows[0], "task": "my_task"})
    elif case == "report_out_of_date":
        i = next(i for i, r in enumerate(rows) if not r["kept"])
        lines[i] = json.dumps({**rows[i], "kept": True})
    else:
        lines = [json.dumps({**r, "kept": False}) for r in rows]
        report = json.loads((run / "filter_report.json").read_text())
        for styles in report["by_task_style"].values():
            for counts in styles.values():
                counts["kept"] = 0
        (run / "filter_report.json").write_text(json.dumps(report))
    filtered.write_text("\n".join(lines) + "\n")
    with pytest.raises(QRDistillError, match=expect):
        export_dataset(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["export", "-d", str(run), "--what", "dataset", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("qrdistill: error: ")


def test_contaminated_column_says_true_false_or_unknown(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    rows = rows_of(run / "filtered.jsonl")
    rows[0]["contaminated"] = {"task": "date", "qid": "date/17", "method": "ngram", "score": 0.93}
    rows[1]["contaminated"] = None  # checked, clean
    for row in rows[2:]:
        row.pop("contaminated", None)  # written before decontamination existed: unknown
    (run / "filtered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    export_dataset(run, tmp_path / "out", all_paths=True)
    assert load(tmp_path / "out")["contaminated"] == [True, False] + [None] * (len(rows) - 2)


# -- --push-to-hub ------------------------------------------------------------------------------------------


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_push_without_hf_token_is_refused_before_any_work(run_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(QRDistillError, match="set HF_TOKEN in the environment"):
        export_dataset(run_dir, tmp_path / "out", push_to_hub="someone/reasoning-paths")
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(QRDistillError, match="not a Hub repo id"):
        export_dataset(run_dir, tmp_path / "out", push_to_hub="not a repo!")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_to_an_unreachable_hub_fails_clearly_after_a_complete_export(run_dir, tmp_path, monkeypatch, capsys,
                                                                           caplog):
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest's offline mode would stop the call early
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    out = tmp_path / "out"
    caplog.set_level("DEBUG")
    with pytest.raises(QRDistillError, match=rf"--push-to-hub someone/paths: the push to {endpoint} failed .*"
                                             r"Connection refused.*the export in .* is complete") as info:
        export_dataset(run_dir, out, push_to_hub="someone/paths")
    assert len(load(out)) > 0  # the local export is there to retry from
    captured = capsys.readouterr()
    for text in (str(info.value), captured.out, captured.err, caplog.text):
        assert FAKE_TOKEN not in text
    assert _files_containing(tmp_path, FAKE_TOKEN.encode()) == []


class _EchoHub(BaseHTTPRequestHandler):
    """A hub that answers 401 to everything and quotes the Authorization header back in both
    the error header and the body: the worst case of a server echoing the credential."""

    seen: list[str] = []

    def _reply(self) -> None:
        auth = self.headers.get("Authorization") or ""
        self.seen.append(auth)
        if int(self.headers.get("Content-Length") or 0):
            self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"error": f"Invalid credentials in Authorization header: {auth}"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Message", f"bad token {auth}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _reply

    def log_message(self, *args) -> None:
        pass


def test_push_token_is_written_nowhere_even_when_the_hub_quotes_it(run_dir, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    run = copy_run(run_dir, tmp_path / "run")
    hf_home = tmp_path / "hf_home"
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
           "HF_HOME": str(hf_home), "PYTHONPATH": str(ROOT)}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # conftest sets them; this hub is on 127.0.0.1
        env.pop(name, None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "qrdistill", "export", "-d", str(run), "--what", "dataset", "-o",
             str(tmp_path / "out"), "--push-to-hub", "someone/paths", "--verbose"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 2, proc.stderr
    assert any(FAKE_TOKEN in auth for auth in _EchoHub.seen)  # the call was made, with the token
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("qrdistill: error:")]
    assert len(errors) == 1 and "--push-to-hub someone/paths: the push to" in errors[0]
    assert "401" in errors[0] and "[REDACTED]" in errors[0]
    assert "Traceback" not in proc.stderr
    assert FAKE_TOKEN not in proc.stdout and FAKE_TOKEN not in proc.stderr
    assert _files_containing(tmp_path, FAKE_TOKEN.encode()) == []
    assert len(load(tmp_path / "out")) > 0
