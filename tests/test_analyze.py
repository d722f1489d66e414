"""analyze: tables, plots and the report from saved logs (synthetic logs with a known pattern)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qrdistill.analysis import tables
from qrdistill.errors import MissingArtifactError

STUDENTS = ["stu-a", "stu-b"]
STYLES = ["cot", "tot", "program"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def known_routing() -> tuple[list[dict], dict[tuple[str, str, str], float]]:
    """Epoch 1 (the last): stu-a takes every cot path and the even program paths, stu-b every tot
    path and all difficulty-3 paths. Epoch 0 routes everything to both (must be ignored)."""
    rows, expect_counts = [], {}
    for epoch in (0, 1):
        for task in ("procedural_date", "procedural_arith"):
            for style in STYLES:
                for q in range(10):
                    difficulty = 1 + q % 3
                    a = int(style == "cot" or (style == "program" and q % 2 == 0))
                    b = int(style == "tot" or difficulty == 3)
                    alpha = [1, 1] if epoch == 0 else [a, b]
                    rows.append({"epoch": epoch, "step": q, "path_key": f"{task}/{style}/{q}", "qid": f"{task}-{q}",
                                 "task": task, "style": style, "difficulty": difficulty, "alpha": alpha,
                                 "probs": [0.5, 0.5], "students": STUDENTS})
                    if epoch == 1:
                        for s, v in zip(STUDENTS, alpha, strict=True):
                            expect_counts.setdefault((task, style, s), []).append(v)
    # A path seen twice in the last epoch counts once, with its last decision.
    dup = dict(rows[-1])
    rows[-1] = {**dup, "alpha": [0, 0]}
    rows.append(dup)
    expect = {k: sum(v) / len(v) for k, v in expect_counts.items()}
    return rows, expect


def _eval_summary(run_dir: Path, method: str, accs: dict[str, float], n: int = 40) -> dict:
    def cell(a):
        return {"n": n, "correct": int(a * n), "accuracy": a, "ci_low": max(0, a - 0.1), "ci_high": min(1, a + 0.1),
                "confidence": 0.95}

    tasks = ["procedural_date", "procedural_arith"]
    students = {"base:tiny": {"kind": "base", "model": "tiny", "tasks": {t: cell(0.1) for t in tasks},
                              "average": 0.1}}
    for s in STUDENTS:
        students[s] = {"kind": "trained", "model": "tiny", "tasks": {t: cell(accs[s]) for t in tasks},
                       "average": accs[s]}
    return {"run_dir": str(run_dir), "method": method, "tasks": {t: {"name": t, "n": n} for t in tasks},
            "students": students,
            "ensembles": {"ensemble": {"members": STUDENTS, "tasks": {t: cell(0.5) for t in tasks}, "average": 0.5}},
            "shortcut_baselines": {"procedural_date": {"nearest_date": 0.17}}}


def make_run(root: Path, name: str, method: str = "qrdistill", fraction: float = 1.0, accs=None,
             routing: bool = True, students=STUDENTS, seconds=(10.0, 12.0)) -> Path:
    d = root / name
    accs = accs or {"stu-a": 0.3, "stu-b": 0.4}
    cfg = {"run_dir": str(d), "seed": 7, "train": {"method": method, "data_fraction": fraction}}
    for stage in ("generate", "filter", "train", "evaluate"):
        _write_json(d / "meta" / f"{stage}.json", {"stage": stage, "git_sha": "abcdef1234567", "seed": 7,
                                                    "config": cfg})
    _write_json(d / "train" / "summary.json", {
        "method": method, "students": [{"name": s, "model": "tiny"} for s in students], "epochs": 2,
        "time_per_epoch": list(seconds), "config": cfg, "seed": 7, "router": routing})
    if routing:
        _write_jsonl(d / "train" / "routing.jsonl", known_routing()[0])
    _write_json(d / "eval" / "summary.json", _eval_summary(d, method, accs))
    _write_jsonl(d / "filtered.jsonl", [
        {"qid": "q1", "task": "procedural_date", "style": "cot", "correct": True, "judge": {"valid": True},
         "kept": True},
        {"qid": "q2", "task": "procedural_date", "style": "cot", "correct": False, "judge": None, "kept": False},
        {"qid": "q3", "task": "procedural_date", "style": "tot", "correct": True, "judge": {"valid": False},
         "kept": False},
        {"qid": "q4", "task": "procedural_date", "style": "tot", "correct": True,
         "judge": {"valid": False, "parsed": False}, "kept": False},
    ])
    return d


def test_selection_rates_exact_on_known_pattern():
    rows, expect = known_routing()
    got = tables.selection_rates(rows, ("task", "style"))
    assert {(r["task"], r["style"], r["student"]): r["rate"] for r in got} == pytest.approx(expect)
    assert len(got) == len(expect)
    rate = {(r["task"], r["style"], r["student"]): r["rate"] for r in got}
    assert rate[("procedural_date", "cot", "stu-a")] == 1.0
    assert rate[("procedural_date", "cot", "stu-b")] == pytest.approx(0.3)  # only difficulty 3: q = 2, 5, 8
    assert rate[("procedural_arith", "program", "stu-a")] == pytest.approx(0.5)
    assert rate[("procedural_arith", "tot", "stu-a")] == 0.0
    by_level = {(r["difficulty"], r["style"], r["student"]): r["rate"]
                for r in tables.selection_rates(rows, ("difficulty", "style"))}
    assert by_level[(3, "cot", "stu-b")] == 1.0      # all difficulty-3 paths to stu-b
    assert by_level[(1, "tot", "stu-b")] == 1.0
    assert by_level[(1, "cot", "stu-b")] == 0.0
    # Program paths of level 2 are q = 1, 4, 7: stu-a takes the even q (4) -> 1/3 per task.
    assert by_level[(2, "program", "stu-a")] == pytest.approx(1 / 3)
    # Epoch 0 (everything to both) is still reachable on request.
    assert all(r["rate"] == 1.0 for r in tables.selection_rates(rows, ("style",), epoch=0))


def test_report_has_every_plot_and_table(tmp_path):
    import matplotlib.image as mpimg

    from qrdistill.stages import analyze

    runs = [make_run(tmp_path, f"qrd_{int(f * 100)}", "qrdistill", f, {"stu-a": 0.2 + f / 4, "stu-b": 0.3 + f / 4})
            for f in (0.3, 1.0)]
    runs.append(make_run(tmp_path, "sft_100", "sft", 1.0, {"stu-a": 0.25, "stu-b": 0.3}, routing=False))
    runs.append(make_run(tmp_path, "solo_a", "sft", 1.0, routing=False, students=["stu-a"], seconds=(8.0,)))
    runs.append(make_run(tmp_path, "solo_b", "sft", 1.0, routing=False, students=["stu-b"], seconds=(9.0,)))
    out = tmp_path / "report"
    res = analyze.run(runs, out)
    assert all(res["sections"].values()), res["sections"]
    report = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert any(p.startswith("fig4_") for p in pngs) and any(p.startswith("fig5_") for p in pngs)
    assert "fig6_sample_efficiency.png" in pngs
    for name in pngs:
        img = mpimg.imread(out / name)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0  # not blank
        assert f"({name})" in report
        labels = res["figures"][name]
        assert labels["title"]
        for ax in labels["axes"]:
            assert ax["xlabel"] and ax["ylabel"] and ax["n_artists"] > 0
    assert json.loads((out / "figures.json").read_text()) == res["figures"]
    # Table 1 layout: methods as rows, tasks + average as columns, zero-shot shown once.
    results = (out / "results.md").read_text()
    assert results.splitlines()[0].split("|")[5:8] == [" procedural_date ", " procedural_arith ", " average "]
    assert results.count("Zero-shot") == 1  # the base model evaluated by every run, shown once
    assert "QR-Distill" in results and "Answer Aug (SFT)" in results
    assert (out / "results.csv").read_text().startswith("model,method,variant,run,student,procedural_date_accuracy")
    # Table 3: joint run 11 s/epoch vs 8 + 9 s separately.
    assert "0.65" in report
    # Filter counts per style, and provenance of every run.
    assert "| procedural_date | cot | 2 | 1 | 1 | 0 | 0 |" in report
    assert "| procedural_date | tot | 2 | 0 | 0 | 1 | 1 |" in report
    assert "Trained without a router (every path to every student): sft_100, solo_a, solo_b" in report
    for r in runs:
        assert str(r) in report
    assert "abcdef1234" in report
    assert (out / "report.html").read_text().count("<img") == len(pngs)


def test_missing_artifacts_name_the_stage(tmp_path):
    from qrdistill.stages import analyze

    empty = tmp_path / "empty"
    (empty / "meta").mkdir(parents=True)
    with pytest.raises(MissingArtifactError, match="run `qrdistill generate` first"):
        analyze.run([empty])
    with pytest.raises(MissingArtifactError, match="does not exist"):
        analyze.run([tmp_path / "nope"])
    # Evaluated but untrained (a zero-shot run): results shown, routing/time sections name `train`.
    zs = tmp_path / "zs"
    _write_json(zs / "eval" / "summary.json", {**_eval_summary(zs, "zero_shot", {"stu-a": 0, "stu-b": 0}),
                                              "students": {"base:tiny": _eval_summary(zs, "x", {"stu-a": 0,
                                                                                               "stu-b": 0})
                                                           ["students"]["base:tiny"]}, "ensembles": {}})
    res = analyze.run([zs], tmp_path / "zs_report")
    report = Path(res["report"]).read_text()
    assert res["sections"]["results"] and not res["sections"]["routing"]
    assert "run `qrdistill train` first" in report and "run `qrdistill filter` first" in report


def test_cli_analyze_exit_codes(tmp_path, capsys):
    from qrdistill.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["analyze", "--run-dir", str(empty)]) == 2
    assert "run `qrdistill generate` first" in capsys.readouterr().err
    d = make_run(tmp_path, "qrd", "qrdistill")
    assert main(["analyze", "--run-dir", str(d), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.md").exists()


def test_filter_rows_prefer_the_filter_report():
    run = tables.RunLogs(Path("x"), filtered=[{"task": "t", "style": "cot", "correct": False, "kept": False}],
                         filter_report={"by_task_style": {"t": {"cot": {"total": 9, "wrong_answer": 2,
                                                                        "judged_invalid": 3, "unparseable": 1,
                                                                        "kept": 3}}}})
    assert tables.filter_rows(run) == [{"task": "t", "style": "cot", "paths": 9, "kept": 3, "wrong_answer": 2,
                                        "judged_invalid": 3, "unparseable": 1}]
    run.filter_report = None
    assert tables.filter_rows(run)[0]["wrong_answer"] == 1
