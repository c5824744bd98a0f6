"""Tour entry of the recommendation app: quick mode on a Beauty subset (full: all of Beauty, every method)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from apps.recommendation.config import RecConfig
from apps.recommendation.evaluate import NAMES, evaluate
from apps.recommendation.train import prepare
from core.tour import register_tour

__all__ = ["recommendation_tour"]


@register_tour("recommendation")
def recommendation_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Fit and evaluate SASRec, CL4SRec, DuoRec and MCLRec; one row per metric, MCLRec against SASRec and Pop."""
    t0 = time.perf_counter()
    base = RecConfig.quick() if quick else RecConfig()
    cfg = dataclasses.replace(base, run_dir=str(out_dir), progress=False)
    report = evaluate(cfg, prepare(cfg), train=True, started=t0, log=lambda *_: None)
    seconds = time.perf_counter() - t0
    rows = []
    for metric in ("hr@10", "ndcg@10"):
        for baseline in ("sasrec", "pop"):
            rows.append({"app": "recommendation (MCLRec)", "dataset": report["dataset"],
                         "metric": f"{metric.upper()} (full ranking, test)", "value": report["metrics"][metric],
                         "baseline": report["baselines"][baseline][metric], "baseline_name": NAMES[baseline],
                         "higher_is_better": True, "full_mode_ref": "docs/apps/recommendation.md", "seconds": seconds,
                         **({"plots": report["plots"]} if not rows else {})})
    return rows
