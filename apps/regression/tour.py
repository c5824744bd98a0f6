"""Tour entry of the regression app: quick mode on abalone (vanilla L1 vs ConR vs SupReMix, one seed)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from apps.regression.compare import compare
from apps.regression.config import QUICK, RegressionConfig
from core.tour import register_tour

__all__ = ["regression_tour"]


@register_tour("regression")
def regression_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Quick: 12 epochs (SupReMix 4), seed 0; full: the abalone compare config (40 epochs, 3 seeds)."""
    t0 = time.perf_counter()
    cfg = RegressionConfig(dataset="abalone", out=str(out_dir), progress=False)
    if quick:
        cfg = dataclasses.replace(cfg, quick=True, **QUICK)
        methods, seeds = ["vanilla", "conr", "supremix"], [0]
    else:
        cfg = dataclasses.replace(cfg, epochs=40, supremix_epochs=10)
        methods, seeds = ["vanilla", "lds", "fds", "lds_fds", "conr", "lds_conr", "supremix"], [0, 1, 2]
    s = compare(cfg, methods, seeds, focus="conr", echo=lambda *_: None)
    seconds = time.perf_counter() - t0
    plots = [str(Path(out_dir) / s["dataset"] / "compare" / p) for p in ("per_bin_error.png", "label_histogram.png")]
    t = s["table"]
    rows = []
    for m in ("conr", "supremix"):
        for metric in ("mae_few", "mae_many", "mae_all"):
            rows.append({"app": "regression (ConR)" if m == "conr" else "regression (SupReMix)",
                         "dataset": f"abalone (DIR split, seed{'s' if len(seeds) > 1 else ''} "
                         f"{','.join(map(str, seeds))})", "metric": f"{metric} ({m}), lower is better",
                         "value": t[m][metric]["mean"], "baseline": t["vanilla"][metric]["mean"],
                         "baseline_name": "vanilla L1", "higher_is_better": False,
                         "full_mode_ref": "docs/apps/regression.md", "seconds": seconds,
                         "plots": plots if not rows else []})
    return rows
