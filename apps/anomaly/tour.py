"""Tour entry of the anomaly app: quick mode on one MNIST digit and one ADBench table (full: all of them)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from apps.anomaly.config import AnomalyConfig
from apps.anomaly.evaluate import SHORT_NAMES, evaluate
from apps.anomaly.train import prepare
from core.tour import register_tour

__all__ = ["anomaly_tour"]


def _rows(report: dict, seconds: float) -> list[dict]:
    tasks = ", ".join(report["metrics"]["per_class"])
    what = "normal digit" if report["dataset"] == "mnist" else "table"
    common = {"app": "anomaly (MSC)", "dataset": f"{report['dataset']} ({what} {tasks})", "seconds": seconds,
              "metric": "ROC-AUC (mean)", "value": report["metrics"]["roc_auc"], "higher_is_better": True,
              "full_mode_ref": "docs/apps/anomaly.md"}
    rows = []
    for i, (name, m) in enumerate(report["baselines"].items()):
        rows.append({**common, "baseline": m["roc_auc"], "baseline_name": SHORT_NAMES.get(name, name),
                     **({"plots": report["plots"]} if i == 0 else {})})
    return rows


@register_tour("anomaly")
def anomaly_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Fit and evaluate MSC on the embedded MNIST and ADBench data; one row per baseline."""
    rows = []
    for data in ("mnist", "adbench"):
        t0 = time.perf_counter()
        base = AnomalyConfig.quick() if quick else AnomalyConfig()
        cfg = dataclasses.replace(base, data=data, run_dir=str(out_dir), progress=False)
        report = evaluate(cfg, prepare(cfg, quick=quick), train=True, started=t0)
        rows += _rows(report, time.perf_counter() - t0)
    return rows
