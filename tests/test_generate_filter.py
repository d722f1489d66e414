"""generate + filter end to end: the simulated teacher and the `steps` judge on a
few procedural questions, through the stage functions and through the CLI;
the failure policy through the real `openai` backend against a local stub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai_stub import OpenAIStub

from qrdistill.config import DEMO_STYLES, load_config
from qrdistill.errors import MissingArtifactError, QRDistillError
from qrdistill.stages import filter as filter_stage
from qrdistill.stages import generate as generate_stage
from qrdistill.store import Store

ROOT = Path(__file__).resolve().parents[1]
PATH_FIELDS = {"qid", "task", "style", "sample", "prompt", "question", "answer", "gold_text", "response", "pred",
               "correct", "teacher", "key", "meta"}
#: The built-in demo's styles (config DEMO_STYLES); every test here runs the default config.
STYLES = list(DEMO_STYLES)
PATHS = 6 * len(STYLES)  # 3 questions per procedural task x 2 tasks x the styles


def small_config(run: Path, **overrides):
    base = {
        "run_dir": str(run),
        "tasks": [{"name": "procedural_date", "limit": 3}, {"name": "procedural_arith", "limit": 3}],
    }
    return load_config(None, {**base, **overrides})


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_then_filter_via_stage_functions(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = small_config(run)
    summary = generate_stage.run(cfg, run)
    assert summary["questions"] == 6 and summary["paths"] == PATHS and summary["failed_calls"] == 0
    assert summary["calls_issued"] == PATHS and summary["calls_cached"] == 0

    rows = read_rows(run / "paths.jsonl")
    assert len(rows) == PATHS
    for r in rows:
        assert PATH_FIELDS <= set(r), PATH_FIELDS - set(r)
        assert r["teacher"].startswith("simulated")  # the simulated teacher says so in every output
        assert r["prompt"].startswith(r["question"]) or r["question"] in r["prompt"]
        assert "difficulty" in r["meta"] and "planted" in r["meta"]
    assert len({(r["qid"], r["style"], r["sample"]) for r in rows}) == PATHS
    assert [r["style"] for r in rows[: len(STYLES)]] == STYLES  # deterministic order: question, then style
    assert any(r["correct"] for r in rows) and not all(r["correct"] for r in rows)
    first_bytes = (run / "paths.jsonl").read_bytes()

    with Store(run / "store.sqlite") as st:
        calls_before = st.usage("teacher")["calls"]
    again = generate_stage.run(cfg, run)
    assert again["calls_issued"] == 0 and again["calls_cached"] == PATHS
    with Store(run / "store.sqlite") as st:
        assert st.usage("teacher")["calls"] == calls_before == PATHS
        assert st.reissued_keys() == []
    assert (run / "paths.jsonl").read_bytes() == first_bytes

    meta = json.loads((run / "meta" / "generate.json").read_text())
    assert meta["seed"] == cfg.seed and meta["git_sha"] and meta["config"]["generate"]["styles"] == STYLES
    assert meta["summary"]["paths"] == PATHS

    report = filter_stage.run(cfg, run)
    filtered = read_rows(run / "filtered.jsonl")
    assert len(filtered) == PATHS
    for r in filtered:
        assert PATH_FIELDS <= set(r) and "judge" in r and "kept" in r
        if not r["correct"]:
            assert r["judge"] is None and not r["kept"]
        else:
            assert set(r["judge"]) == {"valid", "reason", "parsed"}
            assert r["kept"] == (r["judge"]["valid"] and r["judge"]["parsed"])
    o = report["overall"]
    assert o["total"] == PATHS == sum(o[k] for k in ("wrong_answer", "judged_invalid", "unparseable", "kept"))
    assert o["kept"] == sum(r["kept"] for r in filtered)
    assert o["wrong_answer"] == sum(not r["correct"] for r in filtered)
    for group in ("by_task", "by_style"):
        assert sum(c["total"] for c in report[group].values()) == PATHS
    assert set(report["by_style"]) == set(STYLES)
    assert set(report["by_task"]) == {"procedural_date", "procedural_arith"}
    for task, styles in report["by_task_style"].items():
        assert set(styles) == set(STYLES)
        assert sum(c["kept"] for c in styles.values()) == report["by_task"][task]["kept"]
    planted = report["planted"]
    assert planted["paths_with_planted_info"] == PATHS and set(planted["by_style"]) == set(STYLES)
    on_disk = json.loads((run / "filter_report.json").read_text())
    assert on_disk["overall"] == o
    meta = json.loads((run / "meta" / "filter.json").read_text())
    assert meta["git_sha"] and meta["config"]["filter"]["judge"]["kind"] == "steps"
    out = capsys.readouterr().out
    assert "filter: answer check + steps judge" in out and "overall" in out


def test_filter_ablation_and_answer_check_only(tmp_path):
    run = tmp_path / "run"
    generate_stage.run(small_config(run), run)
    rows = read_rows(run / "paths.jsonl")

    report = filter_stage.run(small_config(run, **{"filter.enabled": False}), run)
    filtered = read_rows(run / "filtered.jsonl")
    assert all(r["kept"] and r["judge"] is None for r in filtered)
    assert report["overall"]["kept"] == len(rows) and "disabled" in report["mode"]

    report = filter_stage.run(small_config(run, **{"filter.judge": {"kind": "none"}}), run)
    filtered = read_rows(run / "filtered.jsonl")
    assert [r["kept"] for r in filtered] == [r["correct"] for r in rows]
    assert all(r["judge"] is None for r in filtered) and report["judge"] == "none"


def test_filter_requires_generate(tmp_path):
    with pytest.raises(MissingArtifactError, match="qrdistill generate"):
        filter_stage.run(small_config(tmp_path / "run"), tmp_path / "run")


def test_filter_limit_caps_questions_per_task(tmp_path):
    run = tmp_path / "run"
    generate_stage.run(small_config(run), run)
    report = filter_stage.run(small_config(run), run, limit=1)
    assert report["overall"]["total"] == 2 * len(STYLES)


def test_planted_precision_and_recall():
    def row(style, planted, kept):
        return {"style": style, "task": "t", "meta": {"planted": planted}, "kept": kept}

    rows = (
        [row("cot", [], True)] * 6  # clean, kept
        + [row("cot", [], False)] * 2  # clean, dropped
        + [row("cot", ["spurious_step"], True)] * 1  # defective, kept
        + [row("cot", {"wrong_answer": True}, False)] * 3
        + [row("tot", {"wrong_answer": False, "spurious_step": False}, True)] * 2
    )
    m = filter_stage.planted_metrics(rows)
    cot = m["by_style"]["cot"]
    assert (cot["clean_kept"], cot["clean_dropped"], cot["defective_kept"], cot["defective_dropped"]) == (6, 2, 1, 3)
    assert cot["precision_clean"] == round(6 / 7, 4) and cot["recall_clean"] == 0.75
    assert m["by_style"]["tot"]["precision_clean"] == 1.0
    assert m["overall"]["precision_clean"] == round(8 / 9, 4) and m["overall"]["recall_clean"] == 0.8


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "qrdistill", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def test_generate_then_filter_via_cli(tmp_path):
    run = tmp_path / "run"
    gen = cli("generate", "--run-dir", str(run), "--limit", "3", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
    n = 2 * 3 * len(STYLES)  # the default config's two procedural tasks
    assert f"{n}/{n} paths" in gen.stdout and f"{n} issued, 0 cached" in gen.stdout
    assert "Traceback" not in gen.stderr
    flt = cli("filter", "--run-dir", str(run), cwd=tmp_path)
    assert flt.returncode == 0, flt.stderr
    for name in ("store.sqlite", "paths.jsonl", "filtered.jsonl", "filter_report.json",
                 "meta/generate.json", "meta/filter.json"):
        assert (run / name).exists(), name
    assert len(read_rows(run / "filtered.jsonl")) == n
    again = cli("generate", "--run-dir", str(run), "--limit", "3", cwd=tmp_path)
    assert again.returncode == 0 and f"0 issued, {n} cached" in again.stdout
    with Store(run / "store.sqlite") as st:
        assert st.usage("teacher")["calls"] == n


def test_failed_calls_are_reported_and_retried(tmp_path):
    """Failure policy: partial paths.jsonl, an error naming the count, and a re-run asks only the failures."""
    data = tmp_path / "gsm.jsonl"
    qs = ["What is half of 84?", "FLAKY What is 40 plus 2?", "What is 6 times 7?"]
    data.write_text("".join(json.dumps({"question": q, "answer": "steps\n#### 42"}) + "\n" for q in qs))
    flaky = {"on": True}
    run = tmp_path / "run"
    with OpenAIStub(reply=lambda p: "The answer is 42.",
                    status=lambda p: 400 if flaky["on"] and "FLAKY" in p else 200) as stub:
        cfg = load_config(None, {
            "run_dir": str(run),
            "tasks": [{"name": "gsm8k", "path": str(data)}],
            "generate": {"styles": ["cot", "program"], "teacher": {
                "kind": "openai", "base_url": stub.base_url, "model": "stub", "api_key_env": None,
                "max_retries": 0}},
        })
        with pytest.raises(QRDistillError, match=r"2 of 6 teacher calls failed permanently .*HTTP 400"):
            generate_stage.run(cfg, run)
        rows = read_rows(run / "paths.jsonl")
        assert len(rows) == 4 and not any("FLAKY" in r["question"] for r in rows)
        assert json.loads((run / "meta" / "generate.json").read_text())["summary"]["failed_calls"] == 2
        n_requests = len(stub.requests)
        flaky["on"] = False
        summary = generate_stage.run(cfg, run)
        assert summary["calls_issued"] == 2 and summary["calls_cached"] == 4
        assert len(stub.requests) == n_requests + 2
        assert all("FLAKY" in json.dumps(r["body"]) for r in stub.requests[n_requests:])
    assert len(read_rows(run / "paths.jsonl")) == 6
    with Store(run / "store.sqlite") as st:
        u = st.usage("teacher")
        assert (u["ok"], u["errors"], u["stored_ok"]) == (6, 2, 6)


def test_llm_judge_calls_are_stored_resumed_and_failures_reported(tmp_path):
    """The llm judge (real openai backend, local stub) shares the run's store: a re-run asks only
    the judge calls that failed, and a failure makes filter exit non-zero after writing its artifacts."""
    data = tmp_path / "gsm.jsonl"
    qs = ["What is half of 84?", "FLAKY What is 40 plus 2?", "What is 6 times 7?", "What is 50 minus 8?"]
    data.write_text("".join(json.dumps({"question": q, "answer": "steps\n#### 42"}) + "\n" for q in qs))
    flaky = {"on": True}

    def reply(prompt: str) -> str:
        if "REASONING PATH" in prompt:
            return "VERDICT: INVALID\nREASON: step two is made up." if "50 minus" in prompt else "VERDICT: VALID"
        how = "print(42)" if "Use code" in prompt else "Step by step."  # styles differ, so judge prompts do
        return f"{how} Subtracting gives 42. The answer is 42." if "minus" in prompt else f"{how} The answer is 42."

    def status(prompt: str) -> int:
        return 503 if flaky["on"] and "FLAKY" in prompt and "REASONING PATH" in prompt else 200

    run = tmp_path / "run"
    with OpenAIStub(reply=reply, status=status) as stub:
        backend = {"kind": "openai", "base_url": stub.base_url, "model": "stub", "api_key_env": None,
                   "max_retries": 1, "backoff_base": 0.01}
        cfg = load_config(None, {
            "run_dir": str(run), "tasks": [{"name": "gsm8k", "path": str(data)}],
            "generate": {"styles": ["cot", "program"], "teacher": backend},
            "filter": {"judge": {"kind": "llm", "backend": {**backend, "temperature": 0.0}}},
        })
        generate_stage.run(cfg, run)
        with pytest.raises(QRDistillError, match="2 judge calls failed permanently"):
            filter_stage.run(cfg, run)
        report = json.loads((run / "filter_report.json").read_text())
        assert report["judge_calls"]["failed"] == 2 and report["judge_calls"]["issued"] == 8
        rows = read_rows(run / "filtered.jsonl")
        assert [r["kept"] for r in rows if "FLAKY" in r["question"]] == [False, False]
        assert all(r["judge"]["parsed"] is False for r in rows if "FLAKY" in r["question"])
        assert [r["kept"] for r in rows if "minus" in r["question"]] == [False, False]
        assert rows[0]["judge"] == {"valid": True, "reason": "", "parsed": True} or rows[0]["judge"]["valid"]

        flaky["on"] = False
        before = len(stub.requests)
        report = filter_stage.run(cfg, run)
        judge_requests = stub.requests[before:]
        assert len(judge_requests) == 2 and all("FLAKY" in json.dumps(r["body"]) for r in judge_requests)
        assert report["judge_calls"]["issued"] == 2 and report["judge_calls"]["cached"] == 6
        assert report["overall"] == {"total": 8, "wrong_answer": 0, "judged_invalid": 2, "unparseable": 0,
                                     "kept": 6}
        before = len(stub.requests)
        filter_stage.run(cfg, run)
        assert len(stub.requests) == before  # fully resumed: nothing asked again
    with Store(run / "store.sqlite") as st:
        assert st.usage("judge")["stored_ok"] == 8 and st.reissued_keys() == []
        assert st.usage("teacher")["stored_ok"] == 8
