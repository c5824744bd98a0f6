"""Tour entry of the RL app: quick mode = offline TACO / CPC vs a random encoder on the embedded Pendulum rollouts."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from apps.rl.config import RLConfig
from apps.rl.evaluate import LABELS, evaluate_offline_report
from core.tour import register_tour

__all__ = ["rl_tour"]


@register_tour("rl")
def rl_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Pre-train TACO and CPC offline, probe the frozen encoders; one row per (metric, method) vs random."""
    t0 = time.perf_counter()
    base = RLConfig.quick() if quick else RLConfig()
    cfg = dataclasses.replace(base, run_dir=str(out_dir), progress=False).validate()
    report = evaluate_offline_report(cfg, started=t0)
    seconds = time.perf_counter() - t0
    rnd = report["baselines"]["random"]
    rows = []
    for i, method in enumerate([report["method"]] + [m for m in report["baselines"] if m != "random"]):
        m = report["metrics"] if i == 0 else report["baselines"][method]
        rows.append({"app": f"rl ({LABELS[method]})", "dataset": f"{report['dataset']} rollouts (rendered)",
                     "metric": "state-probe R^2", "value": m["state_probe_r2"],
                     "baseline": rnd["state_probe_r2"], "baseline_name": "random encoder", "higher_is_better": True,
                     "full_mode_ref": "docs/apps/rl.md", "seconds": seconds,
                     **({"plots": report["plots"]} if i == 0 else {})})
    return rows
