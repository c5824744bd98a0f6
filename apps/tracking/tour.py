"""Tour entry of the tracking app: quick mode trains on simulated events and scores the real TrackML subset."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from apps.tracking.config import TrackingConfig
from apps.tracking.evaluate import BUILDER_METHOD, METHOD_NAMES, evaluate
from core.tour import register_tour

__all__ = ["tracking_tour"]


@register_tour("tracking")
def tracking_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Fit and evaluate on the embedded data; one row per data set (GNN vs DBSCAN TrackML score)."""
    t0 = time.perf_counter()
    base = TrackingConfig.quick() if quick else TrackingConfig()
    cfg = dataclasses.replace(base, run_dir=str(out_dir), progress=False)
    report = evaluate(cfg, train=True, started=t0)
    seconds = time.perf_counter() - t0
    rows = []
    for i, (name, per) in enumerate(report["per_dataset"].items()):
        rows.append({"app": "tracking (GNN)", "dataset": name, "metric": "TrackML score",
                     "value": per[BUILDER_METHOD[cfg.builder]]["trackml_score"],
                     "baseline": per["dbscan"]["trackml_score"],
                     "baseline_name": METHOD_NAMES["dbscan"], "higher_is_better": True,
                     "full_mode_ref": "docs/apps/tracking.md", "seconds": seconds,
                     **({"plots": report["plots"]} if i == 0 else {})})
    return rows
