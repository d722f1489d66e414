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


TASKS = ["procedural_date", "procedural_arith"]
N = 40
#: the final router's P(route) per style: stu-a prefers cot, stu-b is indifferent.
FINAL_PROBS = {"cot": [0.9, 0.5], "tot": [0.5, 0.5], "program": [0.2, 0.5]}


def prediction_rows(acc: float, task: str, n: int = N) -> list[dict]:
    """Per-question predictions with accuracy `acc`: the first round(acc * n) questions right, the strict
    answer line on the even ones, every tenth cut by the budget, every fifth without an answer line."""
    rows = []
    for q in range(n):
        correct = q < round(acc * n)
        rows.append({"qid": f"{task}-{q}", "correct": correct, "strict_correct": correct and q % 2 == 0,
                     "pred": "x", "strict_pred": None if q % 5 == 4 else "x", "conflict": False,
                     "stop": "budget" if q % 10 == 9 else "eos", "difficulty": 1 + q % 3})
    return rows


def cell(rows: list[dict]) -> dict:
    """An eval-summary cell consistent with the prediction rows (fixed-width interval: not under test)."""
    n = len(rows)
    a = sum(r["correct"] for r in rows) / n
    s = sum(r["strict_correct"] for r in rows) / n
    return {"n": n, "correct": round(a * n), "accuracy": a, "ci_low": max(0, a - 0.1), "ci_high": min(1, a + 0.1),
            "confidence": 0.95, "strict": {"n": n, "accuracy": s, "ci_low": max(0, s - 0.1),
                                          "ci_high": min(1, s + 0.1)},
            "cut_by_budget": sum(r["stop"] == "budget" for r in rows) / n,
            "no_strict_answer": sum(r["strict_pred"] is None for r in rows) / n, "conflicts": 0}


def write_eval(run_dir: Path, method: str, accs: dict[str, float], base_acc: float = 0.1,
               prefixes: dict[str, str] | None = None, ensemble: bool = True) -> None:
    """eval/summary.json and eval/<student>/<task>.jsonl for a base model `tiny` and the students in `accs`."""
    from qrdistill.stages.evaluate import predictions_path

    prefixes = prefixes or {}
    students = {}
    for key, acc in {"base:tiny": base_acc, **accs}.items():
        cells = {}
        for t in TASKS:
            rows = prediction_rows(acc, t)
            _write_jsonl(predictions_path(run_dir, key, t), rows)
            cells[t] = cell(rows)
        students[key] = {"kind": "base" if key.startswith("base:") else "trained", "model": "tiny",
                         "prefix": prefixes.get(key), "tasks": cells,
                         "average": sum(c["accuracy"] for c in cells.values()) / len(cells)}
    trained = [k for k in accs if not k.endswith("@label")]
    ensembles = {"ensemble": {"members": trained, "tasks": {t: cell(prediction_rows(0.5, t)) for t in TASKS},
                              "average": 0.5}} if ensemble and len(trained) > 1 else {}
    _write_json(run_dir / "eval" / "summary.json", {
        "run_dir": str(run_dir), "method": method, "tasks": {t: {"name": t, "n": N} for t in TASKS},
        "students": students, "ensembles": ensembles,
        "shortcut_baselines": {"procedural_date": {"nearest_date": 0.17}},
        "settings": {"bootstrap_resamples": 200, "confidence": 0.95, "seed": 0}})


def final_routing(probs: dict[str, list[float]] = FINAL_PROBS, per_style: int = 10) -> list[dict]:
    return [{"path_key": f"{task}/{style}/{q}", "qid": f"{task}-{q}", "task": task, "style": style,
             "difficulty": 1 + q % 3, "probs": p, "students": STUDENTS}
            for task in TASKS for style, p in probs.items() for q in range(per_style)]


def make_run(root: Path, name: str, method: str = "qrdistill", fraction: float = 1.0, accs=None,
             routing: bool = True, students=STUDENTS, seconds=(10.0, 12.0), seed: int = 7,
             router_mode: str | None = None, final: list[dict] | None = None) -> Path:
    """A complete run directory as generate/filter/train/evaluate leave it. `final` = routing_final.jsonl rows
    (default `final_routing()` for a routed run; [] writes none)."""
    d = root / name
    accs = accs or {"stu-a": 0.3, "stu-b": 0.4}
    mode = router_mode or ("learned" if routing else "off")
    cfg = {"run_dir": str(d), "seed": seed, "train": {"method": method, "data_fraction": fraction}}
    for stage in ("generate", "filter", "train", "evaluate"):
        _write_json(d / "meta" / f"{stage}.json", {"stage": stage, "git_sha": "abcdef1234567", "seed": seed,
                                                    "config": cfg})
    _write_json(d / "train" / "summary.json", {
        "method": method, "students": [{"name": s, "model": "tiny"} for s in students], "epochs": 2,
        "time_per_epoch": list(seconds), "config": cfg, "seed": seed, "router": mode != "off",
        "router_mode": mode})
    if mode != "off":
        _write_jsonl(d / "train" / "routing.jsonl", known_routing()[0])
        rows = final_routing() if final is None else final
        if rows:
            _write_jsonl(d / "train" / "routing_final.jsonl", rows)
    write_eval(d, method, accs)
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
    runs.append(make_run(tmp_path, "solo_a", "sft", 1.0, {"stu-a": 0.3}, routing=False, students=["stu-a"],
                         seconds=(8.0,)))
    runs.append(make_run(tmp_path, "solo_b", "sft", 1.0, {"stu-b": 0.4}, routing=False, students=["stu-b"],
                         seconds=(9.0,)))
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
    assert "QR-Distill" in results and "All paths (no router, no collab)" in results
    # Flexible [interval] / strict side by side: qrd_100's stu-a answers q < 18 right, the even ones strictly.
    qrd_a = next(line for line in results.splitlines() if "| qrd_100 | stu-a |" in line)
    assert "| 45.0 [35.0, 55.0] / 22.5 |" in qrd_a
    # Every tenth answer cut by the budget, every fifth without an answer line.
    form = report.split("### Answers never stated as final")[1].split("\n## ")[0]
    assert "| qrd_100 | stu-a | 10.0 / 20.0 | 10.0 / 20.0 |" in form
    for heading in ("## Runs", "## Accuracy", "## Paired comparisons", "## Routing: mean P(route) per style",
                    "### qrd_100: per task and style (Fig. 4)", "### qrd_100: per difficulty level and style (Fig. 5)",
                    "### qrd_100: spread across styles", "### qrd_100: usage", "## Sample efficiency (Fig. 6)",
                    "## Training time per epoch (Table 3)", "## Quality filter per task and style"):
        assert heading in report, heading
    assert "a random router gives exactly 0 [0, 0]" in report
    assert (out / "comparisons.csv").read_text().startswith("a,b,task,seeds,questions,n,accuracy_a")
    # Fig. 4 from the final router's P(route): stu-a's cot bar at 0.9, an error bar per bar.
    fig4 = res["figures"]["fig4_routing_by_task_qrd_100.png"]
    assert {ax["ylabel"] for ax in fig4["axes"] if ax["title"]} == {"mean P(route)"}
    assert "| procedural_date | cot | stu-a | 10 | 0.90 | 0.90 | 0.90 |" in report
    # The spread across styles: stu-a 0.9 - 0.2, stu-b indifferent.
    row_a = next(x for x in report.splitlines() if x.startswith("| procedural_date | stu-a | 3 | 0.700 |"))
    assert row_a.startswith("| procedural_date | stu-a | 3 | 0.700 | 0.700 | 0.700 |")
    assert row_a.endswith("| cot | program |")
    # The shuffled-style null of a constant-per-style router is far below its spread.
    null_p95, p_value = (float(x) for x in row_a.split("|")[7:9])
    assert null_p95 < 0.7 and p_value < 0.05
    # No spread at all: the null is 0 too, and every shuffle is "as spread" (p = 1).
    assert "| procedural_date | stu-b | 3 | 0.000 | 0.000 | 0.000 | 0.000 | 1.000 | – | – |" in report
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
    write_eval(zs, "zero_shot", {})
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


def test_filter_rows_show_unverifiable_checks_and_failed_programs_when_the_filter_counted_them():
    counts = {"total": 9, "wrong_answer": 2, "judged_invalid": 0, "unparseable": 0, "kept": 3}
    run = tables.RunLogs(Path("x"), filter_report={"by_task_style": {"math": {
        "cot": {**counts, "unverifiable": 1}, "program": {**counts, "execution_failed": 3}}}})
    rows = {r["style"]: r for r in tables.filter_rows(run)}
    assert (rows["cot"]["unverifiable"], rows["cot"]["execution_failed"]) == (1, 0)
    assert (rows["program"]["unverifiable"], rows["program"]["execution_failed"]) == (0, 3)


# ---------------------------------------------------------------- seeds, labels, paired comparisons


def make_seeds(root: Path, name: str, accs_per_seed: dict[int, dict[str, float]], method: str = "qrdistill",
               **kw) -> Path:
    """D/seed-k run directories as `qrdistill run --seeds` writes them (D itself has no eval/)."""
    for seed, accs in accs_per_seed.items():
        make_run(root / name, f"seed-{seed}", method, accs=accs, seed=seed, **kw)
    return root / name


def test_seed_dirs_expand_in_seed_order_unless_d_is_a_run(tmp_path):
    d = tmp_path / "D"
    for name in ("seed-10", "seed-2", "seed-0", "seed-x"):
        (d / name).mkdir(parents=True)
    (d / "seed-3").write_text("not a directory")
    other = tmp_path / "plain"
    other.mkdir()
    assert tables.expand_seed_dirs([d, other]) == [d / "seed-0", d / "seed-2", d / "seed-10", other]
    _write_json(d / "eval" / "summary.json", {})
    assert tables.expand_seed_dirs([d]) == [d]


def test_seeds_of_one_run_become_one_row_with_mean_and_spread(tmp_path):
    from qrdistill.stages import analyze

    d = make_seeds(tmp_path, "D", {0: {"stu-a": 0.3, "stu-b": 0.4}, 1: {"stu-a": 0.4, "stu-b": 0.4},
                                   2: {"stu-a": 0.5, "stu-b": 0.4}})
    runs = [tables.load_run(p) for p in tables.expand_seed_dirs([d])]
    assert [r.name for r in runs] == ["D/seed-0", "D/seed-1", "D/seed-2"] and [r.seed for r in runs] == [0, 1, 2]
    assert [[r.seed for r in g] for g in tables.seed_groups(runs)] == [[0, 1, 2]]
    rows, _ = tables.results_rows(runs)
    a = [r for r in rows if r["key"] == "stu-a"]
    assert len(a) == 1 and a[0]["seeds"] == [0, 1, 2] and a[0]["run"] == "D (seeds 0, 1, 2)"
    c = a[0]["cells"]["procedural_date"]
    assert (c["accuracy"], c["std"], c["min"], c["max"], c["seeds"]) == pytest.approx((0.4, 0.1, 0.3, 0.5, 3))
    # Strict: the even questions of q < 12, 16, 20 -> 6, 8, 10 of 40.
    assert c["strict"]["accuracy"] == pytest.approx(0.2)
    assert a[0]["average"] == pytest.approx(0.4) and a[0]["average_std"] == pytest.approx(0.1)
    # Equal seeds leave no spread.
    b = next(r for r in rows if r["key"] == "stu-b")["cells"]["procedural_date"]
    assert (b["accuracy"], b["std"]) == pytest.approx((0.4, 0.0))
    assert sum(r["kind"] == "base" for r in rows) == 1

    res = analyze.run([d])  # the CLI's `--run-dir D`
    assert Path(res["out"]) == d / "report" and res["runs"] == [str(d / f"seed-{k}") for k in range(3)]
    results = (d / "report" / "results.md").read_text()
    line = next(x for x in results.splitlines() if "| stu-a |" in x)
    assert "| 40.0 ± 10.0 (30.0–50.0) / 20.0 |" in line and line.endswith("| 40.0 ± 10.0 | 3 |")
    assert results.count("Zero-shot") == 1 and results.count("| stu-a |") == 1
    report = Path(res["report"]).read_text()
    assert "Seeds of one configuration, averaged in the tables below: D (seeds 0, 1, 2)." in report
    # One routing figure for the three seeds, the spread per seed.
    assert sorted(p.name for p in (d / "report").glob("fig4_*.png")) == ["fig4_routing_by_task_D_seeds_0_1_2.png"]
    assert "Pooled over seeds 0, 1, 2." in report
    spread = report.split("### D (seeds 0, 1, 2): spread across styles")[1].split("###")[0]
    assert spread.count("| stu-a | 3 | 0.700 |") == 6  # 2 tasks x 3 seeds
    # The seeds' copies of filtered.jsonl: one table.
    assert "### D/seed-0, D/seed-1, D/seed-2\n" in report and report.count("| procedural_date | cot | 2 | 1 |") == 1


def test_sample_efficiency_averages_seeds_into_one_point(tmp_path):
    dirs = [make_seeds(tmp_path, f"E{int(100 * f)}", {0: {"stu-a": 0.2 + f / 2, "stu-b": 0.4},
                                                      1: {"stu-a": 0.3 + f / 2, "stu-b": 0.4}}, fraction=f)
            for f in (0.5, 1.0)]
    rows = tables.sample_efficiency_rows([tables.load_run(p) for p in tables.expand_seed_dirs(dirs)])
    points = [(r["data_fraction"], r["accuracy"], r["ci_low"]) for r in rows
              if r["student"] == "stu-a" and r["task"] == "procedural_date"]
    assert points == [(0.5, pytest.approx(0.5), None), (1.0, pytest.approx(0.75), None)]
    assert tables.has_sweep(rows)


def test_runs_with_the_same_seed_are_not_averaged(tmp_path):
    runs = [tables.load_run(make_run(tmp_path, n, "sft", routing=False)) for n in ("a", "b")]
    assert [len(g) for g in tables.seed_groups(runs)] == [1, 1]
    rows, _ = tables.results_rows(runs)
    assert sorted(r["run"] for r in rows if r["key"] == "stu-a") == ["a", "b"]


def test_method_names_variants_and_prefixes(tmp_path):
    assert tables.METHOD_NAMES["sft"] == "All paths (no router, no collab)"
    assert tables.METHOD_NAMES["answer_aug"] == "Answer Aug (k sampled paths, one style)"
    rnd = tables.load_run(make_run(tmp_path, "rnd", "qrdistill", router_mode="random",
                                   final=final_routing({s: [0.5, 0.5] for s in FINAL_PROBS})))
    off = tables.load_run(make_run(tmp_path, "off", "qrdistill", routing=False))
    sft = tables.load_run(make_run(tmp_path, "sft", "sft", routing=False))
    assert (rnd.variant, rnd.routed) == ("random router", True)
    assert (off.variant, off.routed) == ("w/o Route", False)
    assert (sft.variant, sft.routed) == ("", False)
    sbs = make_run(tmp_path, "sbs", "step_by_step", routing=False)
    write_eval(sbs, "step_by_step", {"stu-a": 0.3, "stu-a@label": 0.2},
               prefixes={"stu-a": "rationale", "stu-a@label": "label"})
    rows, _ = tables.results_rows([tables.load_run(sbs), rnd])
    label = {(r["run"], r["key"]): tables.method_label(r["method"], r["variant"], r["prefix"]) for r in rows}
    assert label[("sbs", "stu-a")] == "Distill Step-by-Step (rationale prefix)"
    assert label[("sbs", "stu-a@label")] == "Distill Step-by-Step (label prefix)"
    assert label[("rnd", "stu-a")] == "QR-Distill (random router)"


def test_random_router_report_shows_zero_spread(tmp_path):
    from qrdistill.stages import analyze

    d = make_run(tmp_path, "rnd", "qrdistill", router_mode="random",
                 final=final_routing({s: [0.5, 0.5] for s in FINAL_PROBS}))
    report = Path(analyze.run([d], tmp_path / "o")["report"]).read_text()
    spread = report.split("### rnd: spread across styles")[1].split("###")[0]
    rows = [x for x in spread.splitlines() if x.startswith("| procedural")]
    assert len(rows) == 4 and all("| 3 | 0.000 | 0.000 | 0.000 | 0.000 | 1.000 | – | – |" in x for x in rows)
    assert "| QR-Distill (random router) |" in report


def test_report_labels_hard_sample_fallback(tmp_path):
    from qrdistill.stages import analyze

    d = make_run(tmp_path, "old", "qrdistill", final=[])
    _write_jsonl(d / "train" / "routing.jsonl", [{**r, "probs": None} for r in known_routing()[0]])
    res = analyze.run([d], tmp_path / "o")
    axes = res["figures"]["fig4_routing_by_task_old.png"]["axes"]
    assert {ax["ylabel"] for ax in axes if ax["title"]} == {"selection rate (hard samples)"}
    assert tables.ROUTE_SOURCES["hard"][1] in Path(res["report"]).read_text()


def _vectors(seed: int, n: int = N) -> tuple[list[bool], list[bool]]:
    import random

    rng = random.Random(seed)
    return [rng.random() < 0.6 for _ in range(n)], [rng.random() < 0.4 for _ in range(n)]


def _write_correct(run_dir: Path, key: str, task: str, correct: list[bool], strict: list[bool] | None = None):
    from qrdistill.stages.evaluate import predictions_path

    strict = strict if strict is not None else correct
    _write_jsonl(predictions_path(run_dir, key, task),
                 [{"qid": f"{task}-{q}", "correct": c, "strict_correct": s, "pred": "x", "strict_pred": "x"}
                  for q, (c, s) in enumerate(zip(correct, strict, strict=True))])


def test_paired_comparison_matches_mcnemar_on_the_same_vectors(tmp_path):
    from qrdistill.evaluation.metrics import compare_paired, mcnemar_exact

    d = make_run(tmp_path, "qrd", "qrdistill")
    a, base = _vectors(1)
    _write_correct(d, "stu-a", "procedural_date", a, [x and i % 3 == 0 for i, x in enumerate(a)])
    _write_correct(d, "base:tiny", "procedural_date", base[:30])  # base answered 30 questions only
    rows, tasks = tables.results_rows([tables.load_run(d)])
    comps = tables.paired_comparisons(rows, tasks, n_resamples=300, seed=0)
    row = next(c for c in comps if c["a"].endswith("stu-a (qrd)") and c["task"] == "procedural_date")
    assert row["b"] == "Zero-shot: base:tiny" and row["n"] == row["questions"] == 30 and row["seeds"] == 1
    assert row["flexible_p"] == [mcnemar_exact(a[:30], base[:30])["p_value"]]
    # Questions in sorted-id order, the order eval/summary.json's comparison uses too.
    order = sorted(range(30), key=lambda q: f"procedural_date-{q}")
    expect = compare_paired([a[q] for q in order], [base[q] for q in order], n_resamples=300, seed=0)
    assert (row["flexible_diff"], row["flexible_ci_low"], row["flexible_ci_high"]) == pytest.approx(
        (expect["diff"], expect["ci_low"], expect["ci_high"]))
    strict_a = [x and i % 3 == 0 for i, x in enumerate(a)][:30]
    assert row["strict_p"] == [mcnemar_exact(strict_a, base[:30])["p_value"]]
    assert row["strict_diff"] == pytest.approx((sum(strict_a) - sum(base[:30])) / 30)


def test_an_rl_student_is_compared_with_the_distilled_student_of_its_run(tmp_path):
    from qrdistill.evaluation.metrics import mcnemar_exact

    qrd = make_run(tmp_path, "qrd", accs={"stu-a": 0.3, "rl:stu-a": 0.5, "stu-b": 0.4})
    other = make_run(tmp_path, "other", accs={"stu-a": 0.2, "rl:stu-a": 0.6})
    rl, distilled = _vectors(5)
    _write_correct(qrd, "rl:stu-a", "procedural_date", rl)
    _write_correct(qrd, "stu-a", "procedural_date", distilled)
    rows, tasks = tables.results_rows([tables.load_run(qrd), tables.load_run(other)])
    pairs = {(a["run"], a["key"], b["run"], b["key"]) for a, b in tables.comparison_pairs(rows)}
    # with its own run's distilled student, never another run's (that one started from another adapter)
    assert {("qrd", "rl:stu-a", "qrd", "stu-a"), ("other", "rl:stu-a", "other", "stu-a")} <= pairs
    assert ("qrd", "rl:stu-a", "other", "stu-a") not in pairs and ("qrd", "rl:stu-a", "qrd", "stu-b") not in pairs
    assert ("qrd", "rl:stu-a", "qrd", "base:tiny") in pairs
    comps = tables.paired_comparisons(rows, tasks, n_resamples=200, seed=0)
    row = next(c for c in comps if c["a"].endswith("rl:stu-a (qrd)") and c["b"].endswith("stu-a (qrd)")
               and "rl:" not in c["b"] and c["task"] == "procedural_date")
    assert row["flexible_p"] == [mcnemar_exact(rl, distilled)["p_value"]]
    assert row["flexible_diff"] == pytest.approx((sum(rl) - sum(distilled)) / N)


def test_paired_comparisons_over_seeds_pool_questions_and_give_p_per_seed(tmp_path):
    from qrdistill.evaluation.metrics import compare_paired, mcnemar_exact
    from qrdistill.stages import analyze

    qrd = make_seeds(tmp_path, "qrd", {0: {"stu-a": 0.3, "stu-b": 0.4}, 1: {"stu-a": 0.3, "stu-b": 0.4}})
    skd = make_seeds(tmp_path, "skd", {0: {"stu-a": 0.3, "stu-b": 0.4}, 1: {"stu-a": 0.3, "stu-b": 0.4}}, "skd",
                     routing=False)
    sft = make_run(tmp_path, "sft", "sft", routing=False, seed=0)
    vec = {}
    for k in (0, 1):
        vec[k] = _vectors(10 + k)
        _write_correct(qrd / f"seed-{k}", "stu-a", "procedural_date", vec[k][0])
        _write_correct(skd / f"seed-{k}", "stu-a", "procedural_date", vec[k][1])
    runs = [tables.load_run(p) for p in tables.expand_seed_dirs([qrd, skd, sft])]
    rows, tasks = tables.results_rows(runs)
    pairs = {(a["method"], a["key"], b["method"], b["key"]) for a, b in tables.comparison_pairs(rows)}
    # Against the base, and every method against QR-Distill (never SKD against SFT).
    assert ("skd", "stu-a", "zero_shot", "base:tiny") in pairs and ("qrdistill", "stu-a", "skd", "stu-a") in pairs
    assert ("qrdistill", "stu-b", "sft", "stu-b") in pairs
    assert not any(a in ("skd", "sft") and b in ("skd", "sft") for a, _, b, _ in pairs)
    comps = tables.paired_comparisons(rows, tasks, n_resamples=300, seed=0)
    row = next(c for c in comps if c["a"] == "QR-Distill: stu-a (qrd (seeds 0, 1))"
               and c["b"] == "SKD: stu-a (skd (seeds 0, 1))" and c["task"] == "procedural_date")
    assert (row["seeds"], row["questions"], row["n"]) == (2, N, 2 * N)
    assert row["flexible_p"] == [mcnemar_exact(*vec[0])["p_value"], mcnemar_exact(*vec[1])["p_value"]]
    order = sorted(range(N), key=lambda q: f"procedural_date-{q}")
    pooled = [(q, vec[k][0][q], vec[k][1][q]) for k in (0, 1) for q in order]
    expect = compare_paired([x for _, x, _ in pooled], [y for _, _, y in pooled], n_resamples=300, seed=0,
                            clusters=[q for q, _, _ in pooled])
    assert (row["flexible_diff"], row["flexible_ci_low"], row["flexible_ci_high"]) == pytest.approx(
        (expect["diff"], expect["ci_low"], expect["ci_high"]))
    # A single run (sft, seed 0) pairs with seed 0 of QR-Distill only.
    single = next(c for c in comps if c["b"] == "All paths (no router, no collab): stu-a (sft)"
                  and c["task"] == "procedural_date")
    assert single["seeds"] == 1 and single["flexible_p"] == [mcnemar_exact(vec[0][0], prediction_rows_correct(0.3))
                                                             ["p_value"]]

    res = analyze.run([qrd, skd, sft], tmp_path / "o")
    assert res["sections"]["comparisons"]
    report = Path(res["report"]).read_text()
    line = next(x for x in report.splitlines() if x.startswith("| QR-Distill: stu-a (qrd (seeds 0, 1)) | SKD"))
    p0, p1 = (f"{p:.2g}" for p in row["flexible_p"])
    assert f"| per seed: {p0}, {p1} |" in line
    csv_text = (tmp_path / "o" / "comparisons.csv").read_text()
    assert f"{row['flexible_p'][0]:.6g};{row['flexible_p'][1]:.6g}" in csv_text


def prediction_rows_correct(acc: float) -> list[bool]:
    return [r["correct"] for r in prediction_rows(acc, "procedural_date")]


def test_answer_form_shows_letter_text_conflicts_and_letter_rule_accuracy(tmp_path):
    """A multiple-choice cell adds the share of answer lines whose letter and text disagree and the accuracy by
    the letter alone; over seeds both are averaged; a cell without them keeps the two shares only."""
    one = {"cut_by_budget": 0.1, "no_strict_answer": 0.2, "n": 40, "conflicts": 10,
           "letter_rule": {"accuracy": 0.15}}
    other = {**one, "conflicts": 30, "letter_rule": {"accuracy": 0.25}}
    merged = tables.seed_cell([{**one, "accuracy": 0.3}, {**other, "accuracy": 0.4}])
    assert merged["conflict_share"] == pytest.approx(0.5)
    assert merged["letter_rule"]["accuracy"] == pytest.approx(0.2)
    rows = [{"model": "m", "method": "qrdistill", "variant": "", "prefix": None, "run": "r", "student": "s",
             "cells": {"mc": one, "num": {"cut_by_budget": 0.0, "no_strict_answer": 0.5}}},
            {"model": "m", "method": "qrdistill", "variant": "", "prefix": None, "run": "r2", "student": "s",
             "cells": {"mc": merged, "num": {}}}]
    md = tables.answer_form_markdown(rows, ["mc", "num"])
    assert "| 10.0 / 20.0 / 25.0 / 15.0 | 0.0 / 50.0 |" in md
    assert "| 10.0 / 20.0 / 50.0 / 20.0 | – |" in md


def test_report_says_what_a_simulated_demo_cannot_show(tmp_path):
    from qrdistill.analysis.report import build_report

    demo = make_run(tmp_path, "demo")
    for stage in ("generate", "filter"):
        meta = json.loads((demo / "meta" / f"{stage}.json").read_text())
        meta["config"] = {**meta["config"], "generate": {"teacher": {"kind": "simulated"}},
                          "filter": {"judge": {"kind": "steps"}}}
        _write_json(demo / "meta" / f"{stage}.json", meta)
    build_report([demo], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## What these runs cannot show" in text
    assert "simulated" in text and "circular" in text

    real = make_run(tmp_path, "real")  # no teacher/judge kinds recorded, tiny students: nothing to say
    build_report([real], tmp_path / "out2")
    assert "What these runs cannot show" not in (tmp_path / "out2" / "report.md").read_text()
