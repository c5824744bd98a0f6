"""Tour entry of the speaker app: quick mode (small ECAPA, NT-Xent-AM symmetric) on the embedded data."""

from __future__ import annotations

import time
from pathlib import Path

from core.app import read_json
from core.tour import register_tour

__all__ = ["speaker_tour"]


@register_tour("speaker")
def speaker_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Train on the embedded LibriSpeech crops, evaluate EER on FSDD and held-out LibriSpeech speakers."""
    from apps.speaker.__main__ import APP

    t0 = time.perf_counter()
    argv = ["run", "--run-dir", str(out_dir), "--no-progress", *(["--quick"] if quick else [])]
    if APP.main(argv) != 0:
        raise RuntimeError(f"python -m apps.speaker {' '.join(argv)} failed")
    seconds = time.perf_counter() - t0
    report = read_json(Path(out_dir) / "report.json", "speaker report")
    eer = {(r["method"], r["dataset"]): r["metrics"]["eer"] for r in report["rows"]}
    method = report.get("headline") or next(r["method"] for r in report["rows"]
                                            if r["method"] not in report["baselines"])
    plots = [str(Path(out_dir) / p) for p in report["plots"]]
    rows = []
    for i, (name, info) in enumerate(report["extra"]["eval_sets"].items()):
        for j, base_name in enumerate(("mfcc", "untrained")):
            rows.append({"app": "speaker (NT-Xent-AM)", "dataset": f"{name} ({info['n_speakers']} unseen speakers)",
                         "metric": "EER (lower is better)", "value": eer[(method, name)],
                         "baseline": eer[(base_name, name)], "baseline_name": base_name,
                         "higher_is_better": False, "full_mode_ref": "docs/apps/speaker.md", "seconds": seconds,
                         "mode": "quick" if quick else "full", **({"plots": plots} if i == j == 0 else {})})
    return rows
