"""Analyze stage: tables, the paper's figures and a report from saved run logs (no models).

`qrdistill analyze --run-dir D [--run-dir D2 ...] [--out O]` reads each run's
eval/summary.json (and the per-question eval/<student>/<task>.jsonl),
train/summary.json, train/routing_final.jsonl, train/routing.jsonl,
filtered.jsonl and meta/*.json and writes O/report.md (+ report.html), CSV
tables and PNG plots: accuracy in the paper's Table 1 layout (flexible and
strict, with the shares of answers never stated as final), paired comparisons
(bootstrap interval and exact McNemar p), mean P(route) per style x task x
student (Fig. 4) and per difficulty (Fig. 5) with the spread across styles
and the students' usage, sample efficiency (Fig. 6), training time per epoch
(Table 3) and the filter's counts. A D holding seed-k run directories (from
`qrdistill run --seeds`) and no evaluation of its own stands for those seeds,
which the tables average.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def run(run_dirs: list[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    from qrdistill.analysis.report import build_report

    result = build_report(run_dirs, out)
    missing = [name for name, ok in result["sections"].items() if not ok]
    log.info("report: %s%s", result["report"], f" (sections without data: {', '.join(missing)})" if missing else "")
    return result
