"""Tour entry of the regression app: quick mode on abalone (vanilla L1 vs LDS+ConR, the default, vs SupReMix, and
gradient-boosted trees, one seed)."""

from __future__ import annotations

import time
from pathlib import Path

from apps.regression.baselines import HGB_NAME
from apps.regression.config import DEFAULT_METHOD
from core.app import read_json
from core.tour import register_tour

__all__ = ["regression_tour"]

CONFIGS = Path(__file__).resolve().parent / "configs"


@register_tour("regression")
def regression_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Quick: ``run --quick`` (12 epochs, SupReMix 4, seed 0); full: ``sweep`` of the abalone config (40 epochs,
    SupReMix 10, seeds 0 1 2)."""
    from apps.regression.__main__ import APP

    t0 = time.perf_counter()
    run_dir = Path(out_dir) / "run"
    if quick:
        argv = ["run", "--quick", "--config", str(CONFIGS / "quick.yaml"), "--run-dir", str(run_dir)]
        seeds = [0]
    else:
        seeds = [0, 1, 2]
        argv = ["sweep", "--config", str(CONFIGS / "abalone.yaml"), "--run-dir", str(run_dir), "--seeds",
                *map(str, seeds)]
    rc = APP.main(argv)
    if rc != 0:
        raise RuntimeError(f"python -m apps.regression {' '.join(argv)} exited with status {rc}")
    report = read_json(run_dir / "report.json", "regression report")
    seconds = time.perf_counter() - t0
    means = {s["method"]: {k: v["mean"] for k, v in s["metrics"].items()} for s in report["summary"]}
    folder = run_dir if quick else run_dir / f"seed{seeds[0]}"
    plots = [str(folder / p) for p in ("per_bin_error.png", "label_histogram.png")]
    rows = []
    names = {DEFAULT_METHOD: "LDS+ConR", "supremix": "SupReMix"}
    pairs = [(DEFAULT_METHOD, HGB_NAME, "mae_few"), (DEFAULT_METHOD, HGB_NAME, "mae_all")]
    pairs += [(m, "vanilla", metric) for m in (DEFAULT_METHOD, "supremix") for metric in ("mae_few", "mae_many",
                                                                                         "mae_all")]
    for m, base, metric in pairs:
        rows.append({"app": f"regression ({names[m]})",
                     "dataset": f"abalone (DIR split, seed{'s' if len(seeds) > 1 else ''} "
                     f"{','.join(map(str, seeds))})", "metric": f"{metric} ({m}), lower is better",
                     "value": means[m][metric], "baseline": means[base][metric],
                     "baseline_name": "gradient-boosted trees (L1)" if base == HGB_NAME else "vanilla L1",
                     "higher_is_better": False, "mode": "quick" if quick else "full",
                     "full_mode_ref": "docs/apps/regression.md", "seconds": seconds,
                     "plots": plots if not rows else []})
    return rows
