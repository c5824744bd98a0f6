"""Tour entry of the anomaly app: quick mode on one MNIST digit and one ADBench table (full: all of them, with the
settings of ``apps/anomaly/configs/<data>_full.yaml``)."""

from __future__ import annotations

import time
from pathlib import Path

from apps.anomaly.config import CONFIG_DIR
from apps.anomaly.evaluate import HEADLINE, SHORT_NAMES
from core.app import read_json
from core.tour import register_tour

__all__ = ["anomaly_tour"]


def headline(report: dict) -> dict[str, dict[str, float]]:
    """``{method: {metric: mean over the report's tasks}}`` (one seed's report)."""
    per: dict[str, dict[str, list[float]]] = {}
    for r in report["rows"]:
        for k, v in r["metrics"].items():
            per.setdefault(r["method"], {}).setdefault(k, []).append(float(v))
    return {m: {k: sum(v) / len(v) for k, v in ms.items()} for m, ms in per.items()}


def _rows(report: dict, run_dir: Path, seconds: float, quick: bool) -> list[dict]:
    extra = report.get("extra", {})
    tasks = ", ".join(extra.get("tasks", []))
    what = "normal digit" if extra.get("dataset") == "mnist" else ("normal class" if extra.get("kind") == "image"
                                                                    else "table")
    methods = headline(report)
    common = {"app": "anomaly (MSC + raw kNN)", "dataset": f"{extra.get('dataset', report['data'])} ({what} {tasks})",
              "seconds": seconds, "metric": "ROC-AUC (mean)", "value": methods[HEADLINE]["roc_auc"],
              "higher_is_better": True, "mode": "quick" if quick else "full", "full_mode_ref": "docs/apps/anomaly.md"}
    plots = [str(run_dir / p) for p in report.get("plots", [])]
    rows = []
    for i, name in enumerate(m for m in methods if m != HEADLINE):
        rows.append({**common, "baseline": methods[name]["roc_auc"], "baseline_name": SHORT_NAMES.get(name, name),
                     **({"plots": plots} if i == 0 else {})})
    return rows


@register_tour("anomaly")
def anomaly_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Fit and evaluate MSC on the embedded MNIST and ADBench data (``python -m apps.anomaly run``); one row per
    baseline."""
    import torch

    from apps.anomaly.__main__ import APP

    rows = []
    for data in ("mnist", "adbench"):
        t0 = time.perf_counter()
        run_dir = Path(out_dir) / data
        argv = ["run", "--data", data, "--run-dir", str(run_dir), "--no-progress",
                "--threads", str(torch.get_num_threads())]  # keep the tour's thread count
        argv += ["--quick"] if quick else ["--config", str(CONFIG_DIR / f"{data}_full.yaml")]
        rc = APP.main(argv)
        if rc != 0:
            raise RuntimeError(f"python -m apps.anomaly {' '.join(argv)} exited with status {rc}")
        report = read_json(run_dir / "report.json", "anomaly report")
        rows += _rows(report, run_dir, time.perf_counter() - t0, quick)
    return rows
