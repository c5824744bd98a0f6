"""Tour entry of the recommendation app: quick mode on a random sample of Beauty users with every item they touched
(full ranking over those items; full: all of Beauty, every method)."""

from __future__ import annotations

import time
from pathlib import Path

from apps.recommendation.evaluate import NAMES
from core.app import read_json
from core.tour import register_tour

__all__ = ["recommendation_tour"]


@register_tour("recommendation")
def recommendation_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Fit and evaluate SASRec, CL4SRec, DuoRec and MCLRec (``APP.main(["run", ...])``); one row per metric,
    MCLRec against SASRec and Pop."""
    from apps.recommendation.__main__ import APP

    t0 = time.perf_counter()
    argv = ["run", "--run-dir", str(out_dir), "--no-progress", *(["--quick"] if quick else [])]
    rc = APP.main(argv)
    if rc != 0:
        raise RuntimeError(f"python -m apps.recommendation {' '.join(argv)} exited with status {rc}")
    seconds = time.perf_counter() - t0
    report = read_json(Path(out_dir) / "report.json", "recommendation report")
    metrics = {r["method"]: r["metrics"] for r in report["rows"]}
    plots = [str(Path(out_dir) / p) for p in report["plots"]]
    rows = []
    for metric in ("hr@10", "ndcg@10"):
        for baseline in ("sasrec", "pop"):
            rows.append({"app": "recommendation (MCLRec)", "dataset": report["extra"]["dataset"],
                         "metric": f"{metric.upper()} (full ranking, test)", "value": metrics["mclrec"][metric],
                         "baseline": metrics[baseline][metric], "baseline_name": NAMES[baseline],
                         "higher_is_better": True, "mode": "quick" if quick else "full",
                         "full_mode_ref": "docs/apps/recommendation.md", "seconds": seconds,
                         **({"plots": plots} if not rows else {})})
    return rows
