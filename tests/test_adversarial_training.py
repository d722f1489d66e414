"""Issue 10 on the train and evaluate stages: nothing hangs, nothing lost, nothing leaked.

Case 3: a retraining never destroys the finished training before the new one exists, never deletes a
user's file, and evaluate refuses adapters the training summary does not vouch for. Case 6: a damaged
checkpoint is reported and the previous one used. Case 10: one line, no traceback, for a truncated
adapter, a corrupt checkpoint, a garbage routing.jsonl, a read-only run dir. Case 11: train and evaluate
take the run-dir lock; the pipeline's stages take it one after another.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from train_helpers import (
    kill_when,
    make_filtered,
    qrdistill_cmd,
    subprocess_env,
    tiny_config,
    tiny_train_section,
    write_config,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 6, 2
SETTINGS = {"max_steps": STEPS, "checkpoint_every": EVERY, "keep_checkpoints": 3}
EVAL = {"limit": 2, "max_new_tokens": 4, "batch_size": 2, "bootstrap_resamples": 20, "students": "trained"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, models) -> Path:
    """A finished 6-step training (checkpoints at steps 2, 4, 6), copied by each test that changes it."""
    from qrdistill.stages import train as train_stage

    paths = make_filtered(tmp_path_factory.mktemp("paths"), limit=3)
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_dir.mkdir()
    shutil.copy(paths, run_dir / "filtered.jsonl")
    train_stage.run(tiny_config(run_dir, models, **SETTINGS), run_dir)
    return run_dir


def _copy(finished: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    return run_dir


def _config(run_dir: Path, models: list[str], evaluate: dict | None = None, **train):
    from qrdistill.config import RunConfig

    return RunConfig.model_validate(
        {
            "run_dir": str(run_dir),
            "seed": 0,
            "evaluate": evaluate or EVAL,
            "train": tiny_train_section(models, **{**SETTINGS, **train}),
        }
    )


def _cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, *qrdistill_cmd(*args)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("qrdistill: error: "), res.stderr[-3000:]
    return last


def _main(capsys, *argv: str) -> tuple[int, str]:
    """The CLI in this process (no interpreter start-up); an exception other than a user error propagates."""
    from qrdistill.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def _main_error(capsys, *argv: str) -> str:
    rc, err = _main(capsys, *argv)
    assert rc == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("qrdistill: error: ") and "Traceback" not in err, err[-3000:]
    return last


def _snapshot(train_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(train_dir)): p.read_bytes() for p in sorted(train_dir.rglob("*")) if p.is_file()
    }


def _steps(ckpts: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in ckpts.glob("step-*"))


# ---------------------------------------------------------------------------------------------- case 3


def test_case3_retrain_with_changed_config_keeps_the_finished_training_until_the_new_one_is_done(
    tmp_path, models, finished, caplog
):
    from qrdistill.stages import evaluate
    from qrdistill.stages import train as train_stage

    run_dir = _copy(finished, tmp_path)
    before = _snapshot(run_dir / "train")
    old_summary = json.loads((run_dir / "train" / "summary.json").read_text())
    # One changed field: a longer training, long enough to be killed after its first checkpoint.
    changed = {"max_steps": 16}
    config = write_config(tmp_path / "changed.yaml", run_dir, models, **{**SETTINGS, **changed})
    t0 = time.time()
    proc = subprocess.Popen(
        qrdistill_cmd("train", "--config", str(config)),
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # killed at the new training's first checkpoint, wherever it writes it
    kill_when(
        proc,
        lambda: any(p.stat().st_mtime > t0 for p in run_dir.glob("train*/checkpoints/step-*/checkpoint.json")),
        "the changed training",
    )
    assert proc.returncode == -signal.SIGKILL, "the changed training finished before it was killed"

    # The finished training is untouched, file for file (checkpoints, summary, tb, logs, adapters) ...
    assert _snapshot(run_dir / "train") == before
    assert len((run_dir / "train" / "log.jsonl").read_text().splitlines()) == STEPS
    # ... and usable: evaluate scores its adapters.
    ev = evaluate.run(_config(run_dir, models), run_dir)
    assert {"llama", "gpt2"} <= set(ev["students"])

    # Run again, the interrupted staged training resumes, then replaces the old one.
    caplog.clear()
    with caplog.at_level("INFO"):
        new = train_stage.run(_config(run_dir, models, **changed), run_dir)
    assert f"resuming from {run_dir / 'train.new' / 'checkpoints'}" in caplog.text
    assert new["steps"] == 16 and new["fingerprint"] != old_summary["fingerprint"]
    assert json.loads((run_dir / "train" / "summary.json").read_text())["fingerprint"] == new["fingerprint"]
    assert [
        json.loads(x)["step"] for x in (run_dir / "train" / "log.jsonl").read_text().splitlines()
    ] == list(range(1, 17))
    assert not (run_dir / "train.new").exists() and not list(run_dir.glob("train.old*"))


def test_case3_files_the_project_did_not_write_are_never_deleted(tmp_path, models, finished):
    from qrdistill.stages import train as train_stage

    # --run-dir pointed at an existing folder that holds a user's files where training writes.
    run_dir = tmp_path / "run"
    (run_dir / "train" / "checkpoints").mkdir(parents=True)
    shutil.copy(finished / "filtered.jsonl", run_dir / "filtered.jsonl")
    mine = {
        run_dir / "train" / "checkpoints" / "notes.txt": "mine",
        run_dir / "train" / "tb" / "plot.png": "png",
    }
    (run_dir / "train" / "tb").mkdir()
    for p, text in mine.items():
        p.write_text(text)
    train_stage.run(_config(run_dir, models, max_steps=2), run_dir)
    assert all(p.read_text() == text for p, text in mine.items())
    # A retraining with a changed config replaces the finished training; the user's files stay where they were.
    train_stage.run(_config(run_dir, models, max_steps=3), run_dir)
    assert json.loads((run_dir / "train" / "summary.json").read_text())["steps"] == 3
    assert all(p.read_text() == text for p, text in mine.items())
    assert not list(run_dir.glob("train.old*"))


def test_case3_resume_continues_a_finished_training_beside_it(tmp_path, models, finished, caplog):
    """--resume with more steps: the finished training's last checkpoint and logs continue in train.new/,
    which replaces train/ when done (guards the staging path; the original code resumed in place)."""
    from qrdistill.stages import train as train_stage

    run_dir = _copy(finished, tmp_path)
    with caplog.at_level("INFO"):
        summary = train_stage.run(_config(run_dir, models, max_steps=STEPS + 2), run_dir, resume=True)
    assert f"resuming from {run_dir / 'train' / 'checkpoints' / f'step-{STEPS}'}" in caplog.text
    assert summary["steps"] == STEPS + 2
    logged = [json.loads(x)["step"] for x in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, STEPS + 3))
    assert _steps(run_dir / "train" / "checkpoints") == [STEPS + 2]  # what the continued training wrote
    assert not (run_dir / "train.new").exists() and not list(run_dir.glob("train.old*"))


def test_case3_evaluate_refuses_adapters_the_training_summary_does_not_vouch_for(tmp_path, models, finished):
    from qrdistill.errors import QRDistillError
    from qrdistill.stages import evaluate

    # What an interrupted retraining used to leave: the old adapters, no summary, a log cut short.
    run_dir = _copy(finished, tmp_path / "a")
    (run_dir / "train" / "summary.json").unlink()
    log = run_dir / "train" / "log.jsonl"
    log.write_text(log.read_text().splitlines()[0] + "\n")
    with pytest.raises(QRDistillError, match="has not finished"):
        evaluate.run(_config(run_dir, models, evaluate={**EVAL, "students": "auto"}), run_dir)

    # Another training's adapter of the same shape in place of the one the summary records.
    run_dir = _copy(finished, tmp_path / "b")
    llama = run_dir / "train" / "adapters" / "llama" / "adapter_model.safetensors"
    llama.write_bytes(
        (
            run_dir / "train" / "checkpoints" / "step-2" / "adapters" / "llama" / "adapter_model.safetensors"
        ).read_bytes()
    )
    with pytest.raises(QRDistillError, match=r"adapter_model\.safetensors differ"):
        evaluate.run(_config(run_dir, models), run_dir)

    # A summary cut short by hand is not a finished training.
    run_dir = _copy(finished, tmp_path / "c")
    summary = run_dir / "train" / "summary.json"
    summary.write_text(summary.read_text()[:200])
    with pytest.raises(QRDistillError, match="summary.json"):
        evaluate.run(_config(run_dir, models), run_dir)


# ---------------------------------------------------------------------------------------------- case 6


def _interrupted(finished: Path, tmp_path: Path) -> Path:
    """The finished run as a training killed after its last checkpoint (no summary yet)."""
    run_dir = _copy(finished, tmp_path)
    (run_dir / "train" / "summary.json").unlink()
    return run_dir


def test_case3_a_staged_training_whose_predecessor_was_deleted_is_resumed_not_restarted(
    tmp_path, models, finished, caplog
):
    from qrdistill.stages import train as train_stage

    run_dir = _interrupted(finished, tmp_path)
    # The user deleted D/train/ while a changed training was staged beside it.
    os.replace(run_dir / "train", run_dir / "train.new")
    caplog.clear()
    with caplog.at_level("INFO"):
        done = train_stage.run(_config(run_dir, models), run_dir)
    assert f"resuming from {run_dir / 'train' / 'checkpoints'}" in caplog.text
    assert done["steps"] == STEPS and not (run_dir / "train.new").exists()


def test_case6_garbage_checkpoint_json_falls_back_to_the_previous_checkpoint(
    tmp_path, models, finished, caplog
):
    from qrdistill.stages import train as train_stage

    run_dir = _interrupted(finished, tmp_path)
    ckpts = run_dir / "train" / "checkpoints"
    (ckpts / f"step-{STEPS}" / "checkpoint.json").write_text("{garbage")
    with caplog.at_level("INFO"):
        summary = train_stage.run(_config(run_dir, models), run_dir)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(ckpts / f"step-{STEPS}") in m and "checkpoint.json" in m for m in warned), warned
    assert f"resuming from {ckpts / f'step-{STEPS - EVERY}'}" in caplog.text
    assert summary["steps"] == STEPS
    assert _steps(ckpts) == [2, 4, 6]  # the valid ones kept, the damaged one rewritten


def test_case6_truncated_state_pt_falls_back_to_the_previous_checkpoint(tmp_path, models, finished, caplog):
    from qrdistill.stages import train as train_stage

    run_dir = _interrupted(finished, tmp_path)
    ckpts = run_dir / "train" / "checkpoints"
    state = ckpts / f"step-{STEPS}" / "state.pt"
    state.write_bytes(state.read_bytes()[:-30])
    with caplog.at_level("INFO"):
        summary = train_stage.run(_config(run_dir, models), run_dir)
    assert any(
        str(ckpts / f"step-{STEPS}") in r.getMessage() for r in caplog.records if r.levelname == "WARNING"
    )
    assert f"resuming from {ckpts / f'step-{STEPS - EVERY}'}" in caplog.text
    assert summary["steps"] == STEPS
    assert (ckpts / f"step-{STEPS}" / "manifest.json").exists()


def test_case6_when_every_checkpoint_is_damaged_nothing_is_deleted(tmp_path, models, finished, capsys):
    run_dir = _interrupted(finished, tmp_path)
    ckpts = run_dir / "train" / "checkpoints"
    for s in _steps(ckpts):
        (ckpts / f"step-{s}" / "checkpoint.json").write_text("not json")
    config = write_config(tmp_path / "c.yaml", run_dir, models, **SETTINGS)
    msg = _main_error(capsys, "train", "--config", str(config))
    assert "damaged" in msg and all(str(ckpts / f"step-{s}") in msg for s in (2, 4, 6))
    assert _steps(ckpts) == [2, 4, 6] and (ckpts / "step-2" / "state.pt").exists()


# --------------------------------------------------------------------------------------------- case 10


def test_case10_truncated_adapter_gives_one_line_and_train_restores_it(tmp_path, models, finished, capsys):
    from qrdistill.stages import evaluate

    run_dir = _copy(finished, tmp_path / "trained")
    llama = run_dir / "train" / "adapters" / "llama" / "adapter_model.safetensors"
    llama.write_bytes(llama.read_bytes()[: llama.stat().st_size // 2])
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(_config(run_dir, models).model_dump(mode="json")))
    msg = _main_error(capsys, "evaluate", "--config", str(config))
    assert str(llama.parent) in msg
    # The training is redone from its last good checkpoint; then evaluate accepts the adapters.
    rc, err = _main(capsys, "train", "--config", str(config))
    assert rc == 0, err[-3000:]
    from qrdistill.train.artifacts import check_training

    assert check_training(run_dir / "train")[1] is None
    assert {"llama", "gpt2"} <= set(evaluate.run(_config(run_dir, models), run_dir)["students"])

    # Adapters put there by hand (no training summary, no training log): a cut one is one clear line too.
    bare = tmp_path / "bare"
    shutil.copytree(finished / "train" / "adapters", bare / "train" / "adapters")
    shutil.copy(finished / "filtered.jsonl", bare / "filtered.jsonl")
    cut = bare / "train" / "adapters" / "gpt2" / "adapter_model.safetensors"
    cut.write_bytes(cut.read_bytes()[:100])
    config.write_text(json.dumps(_config(bare, models).model_dump(mode="json")))
    msg = _main_error(capsys, "evaluate", "--config", str(config))
    assert str(cut.parent) in msg and "cannot load the adapter" in msg


def test_case10_garbage_routing_jsonl_gives_file_and_line(tmp_path, models, finished, capsys):
    run_dir = _interrupted(finished, tmp_path)
    routing = run_dir / "train" / "routing.jsonl"
    routing.write_bytes(b"\xff\xfe\x00 not a log\n" + routing.read_bytes())
    config = write_config(tmp_path / "c.yaml", run_dir, models, **SETTINGS)
    msg = _main_error(capsys, "train", "--config", str(config))
    assert f"{routing}:1:" in msg


def test_case10_garbage_saved_predictions_and_summary_are_named(tmp_path):
    from qrdistill.errors import DataError
    from qrdistill.stages.evaluate import _read_saved, train_method

    saved = tmp_path / "date.jsonl"
    saved.write_text('{"qid": "q1"}\n[1, 2]\n{"qid": "q3"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"{saved}:2: expected a JSON object"):
        _read_saved(saved)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "summary.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="summary.json: expected a JSON object"):
        train_method(tmp_path)


def _read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(stat.S_IMODE(p.stat().st_mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


STAGE_SCRIPT = """
import sys
from pathlib import Path
from qrdistill.config import load_config
from qrdistill.errors import QRDistillError
from qrdistill.stages import evaluate, train
cfg = load_config(sys.argv[2])
try:
    {"train": train, "evaluate": evaluate}[sys.argv[1]].run(cfg, Path(cfg.run_dir))
except QRDistillError as e:
    print("refused:", e)
"""


def test_case10_read_only_run_dir_gives_one_line(tmp_path, models, finished):
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # Root writes anywhere; in a user namespace of its own the permission bits bind it as they bind a user.
        if subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root without user namespaces: a read-only directory cannot be made")
        prefix = ("unshare", "-U")
    run_dir = _copy(finished, tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(_config(run_dir, models, max_steps=3).model_dump(mode="json")))
    _read_only(run_dir)
    try:
        for stage in ("train", "evaluate"):
            msg = _one_line_error(_cli(stage, "--config", str(config), prefix=prefix))
            assert str(run_dir) in msg, msg
            # The stage itself, called from Python (as the pipeline does), refuses with a QRDistillError.
            res = subprocess.run(
                [*prefix, *qrdistill_cmd()[:1], "-c", STAGE_SCRIPT, stage, str(config)],
                cwd=ROOT,
                env=subprocess_env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
            assert res.stdout.startswith("refused: ") and str(run_dir) in res.stdout, res.stdout
    finally:
        for p in [run_dir, *run_dir.rglob("*")]:
            p.chmod(stat.S_IMODE(p.stat().st_mode) | stat.S_IWUSR)


# --------------------------------------------------------------------------------------------- case 11


def test_case11_train_and_evaluate_take_the_run_dir_lock(tmp_path, models, finished):
    from qrdistill.errors import QRDistillError
    from qrdistill.stages import evaluate, pipeline
    from qrdistill.stages import train as train_stage
    from qrdistill.stages.generate import run_dir_lock

    run_dir = _copy(finished, tmp_path)
    before = _snapshot(run_dir / "train")
    with run_dir_lock(run_dir, "test"):
        with pytest.raises(QRDistillError, match="another qrdistill process"):
            train_stage.run(_config(run_dir, models, max_steps=3), run_dir)
        with pytest.raises(QRDistillError, match="another qrdistill process"):
            evaluate.run(_config(run_dir, models), run_dir)
    assert _snapshot(run_dir / "train") == before and not (run_dir / "eval").exists()
    # The pipeline's stages lock one after another (a lock held across them would refuse the next stage),
    # and nothing stays locked after it.
    cfg = _config(run_dir, models).model_copy(update={"stages": ["train", "evaluate"]})
    out = pipeline.run(cfg, run_dir)
    assert out["train"]["fingerprint"] == json.loads(before["summary.json"])["fingerprint"]
    assert {"llama", "gpt2"} <= set(out["evaluate"]["students"])
    with run_dir_lock(run_dir, "test"):
        pass
