"""Tour entry of the tracking app: quick mode trains on simulated events and scores the real TrackML subset."""

from __future__ import annotations

import time
from pathlib import Path

from apps.tracking.evaluate import METHOD_NAMES
from core.app import read_json
from core.tour import register_tour

__all__ = ["tracking_tour", "tour_rows"]


@register_tour("tracking")
def tracking_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Fit and evaluate on the embedded data (``APP.main(["run", ...])``); per data set, the headline builder's
    TrackML score against each classical baseline (DBSCAN, road following)."""
    from apps.tracking.__main__ import APP

    t0 = time.perf_counter()
    rc = APP.main(["run", "--run-dir", str(out_dir), "--no-progress", *(["--quick"] if quick else [])])
    if rc != 0:
        raise RuntimeError(f"python -m apps.tracking run exited with status {rc}")
    report = read_json(Path(out_dir) / "report.json", "tracking report")
    return tour_rows(report, Path(out_dir), quick, time.perf_counter() - t0)


def tour_rows(report: dict, folder: Path, quick: bool, seconds: float) -> list[dict]:
    """The tour's rows of a ``report.json`` in ``folder``: per data set, the headline builder against each
    classical baseline the report has (DBSCAN, and road following when it was tuned)."""
    head = report["extra"]["method"]
    plots = [str(folder / p) for p in report["plots"]]
    rows = []
    for name, per in report["extra"]["per_dataset"].items():
        for base in ("dbscan", "road"):
            if base not in per:
                continue
            rows.append({"app": f"tracking ({head})", "dataset": name, "metric": "TrackML score",
                         "value": per[head]["trackml_score"], "baseline": per[base]["trackml_score"],
                         "baseline_name": METHOD_NAMES[base], "higher_is_better": True,
                         "mode": "quick" if quick else "full", "full_mode_ref": "docs/apps/tracking.md",
                         "seconds": seconds, **({"plots": plots} if not rows else {})})
    return rows
