"""Filter quality on the procedural family (acceptance test).

The simulated teacher plants wrong answers (20 %) and spurious steps (20 % of
the paths with a right answer) at known places; generate + filter with the
`steps` judge must keep almost only clean paths and almost all of them, and
D/filter_report.json must say so.
"""

from __future__ import annotations

import json
from pathlib import Path

from qrdistill.config import load_config
from qrdistill.stages import filter as filter_stage
from qrdistill.stages import generate as generate_stage


def _cfg(run_dir: Path):
    return load_config(
        None,
        {
            "run_dir": str(run_dir),
            "tasks": [
                {"name": "procedural_date", "split": "train", "limit": 40},
                {"name": "procedural_date_free", "split": "train", "limit": 30},
                {"name": "procedural_arith", "split": "train", "limit": 50},
            ],
            "generate.teacher": {"kind": "simulated", "wrong_answer_rate": 0.2, "spurious_step_rate": 0.2},
            "generate.styles": ["vanilla", "cot", "tot", "program", "fact", "backward"],
            "filter.judge": {"kind": "steps"},
        },
    )


def test_filter_keeps_clean_paths_and_drops_planted_defects(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = _cfg(run_dir)
    generate_stage.run(cfg, run_dir)
    filter_stage.run(cfg, run_dir)

    rows = [json.loads(line) for line in (run_dir / "filtered.jsonl").read_text().splitlines()]
    assert len(rows) == 120 * 6
    assert all(r["teacher"].startswith("simulated:") for r in rows)
    planted = [r["meta"]["planted"] for r in rows]
    n_wrong = planted.count("wrong_answer")
    n_spurious = planted.count("spurious_step")
    assert 0.15 <= n_wrong / len(rows) <= 0.25
    assert 0.12 <= n_spurious / len(rows) <= 0.20  # 20 % of the ~80 % with a right answer

    clean = [r for r in rows if r["meta"]["planted"] is None]
    kept = [r for r in rows if r["kept"]]
    kept_clean = [r for r in kept if r["meta"]["planted"] is None]
    precision = len(kept_clean) / len(kept)
    recall = len(kept_clean) / len(clean)
    print(
        f"filter quality: kept {len(kept)}/{len(rows)}, precision (clean among kept) {precision:.4f}, "
        f"recall (kept among clean) {recall:.4f}"
    )
    assert precision >= 0.99
    assert recall >= 0.95
    # every planted wrong answer fails the answer check; spurious steps are the judge's catch
    assert not any(r["correct"] for r in rows if r["meta"]["planted"] == "wrong_answer")
    spurious = [r for r in rows if r["meta"]["planted"] == "spurious_step"]
    assert all(r["correct"] and r["judge"] and not r["judge"]["valid"] for r in spurious)
    assert all(r["judge"]["reason"].startswith("false claim:") for r in spurious)

    report = json.loads((run_dir / "filter_report.json").read_text())
    overall = report["planted"]["overall"]
    assert overall["precision_clean"] == round(precision, 4)
    assert overall["recall_clean"] == round(recall, 4)
    assert overall["clean_kept"] == len(kept_clean)
    assert overall["defective_kept"] == len(kept) - len(kept_clean)
    assert report["overall"]["kept"] == len(kept)
    assert set(report["planted"]["by_style"]) == {"vanilla", "cot", "tot", "program", "fact", "backward"}

    # The same pool without the filter (the paper's ablation): the report shows the defects kept.
    ablation = cfg.model_copy(update={"filter": cfg.filter.model_copy(update={"enabled": False})})
    filter_stage.run(ablation, run_dir)
    report = json.loads((run_dir / "filter_report.json").read_text())
    assert report["planted"]["overall"]["precision_clean"] == round(len(clean) / len(rows), 4)
    assert report["planted"]["overall"]["precision_clean"] < 0.8
    assert report["planted"]["overall"]["recall_clean"] == 1.0
