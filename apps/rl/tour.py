"""Tour entry of the RL app: quick mode = offline TACO / CPC vs a random encoder on the embedded Pendulum rollouts."""

from __future__ import annotations

import time
from pathlib import Path

from apps.rl.evaluate import LABELS
from core.app import read_json
from core.tour import mode_name, register_tour

__all__ = ["rl_tour"]


@register_tour("rl")
def rl_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Pre-train TACO and CPC offline, probe the frozen encoders; one row per (data set, method) vs random."""
    from apps.rl.__main__ import APP

    t0 = time.perf_counter()
    argv = ["run", "--run-dir", str(out_dir), "--no-progress"] + (["--quick"] if quick else [])
    rc = APP.main(argv)
    if rc != 0:
        raise RuntimeError(f"python -m apps.rl {' '.join(argv)} exited with status {rc}")
    report = read_json(Path(out_dir) / "report.json", "rl report")
    seconds = time.perf_counter() - t0
    value = {(r["dataset"], r["method"]): r["metrics"].get("state_probe_r2") for r in report["rows"]}
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in report["rows"]):
        for method in (r["method"] for r in report["rows"] if r["dataset"] == dataset and r["method"] != "random"):
            rows.append({"app": f"rl ({LABELS[method]})", "dataset": f"{dataset} rollouts (rendered)",
                         "metric": "state-probe R^2", "value": value[(dataset, method)],
                         "baseline": value.get((dataset, "random")), "baseline_name": "random encoder",
                         "higher_is_better": True, "full_mode_ref": "docs/apps/rl.md", "mode": mode_name(quick),
                         "seconds": seconds})
    if rows:
        rows[0]["plots"] = [str(Path(out_dir) / p) for p in report["plots"]]
    return rows
