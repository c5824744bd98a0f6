"""Tour entry of the speaker app: quick mode (small ECAPA, NT-Xent-AM symmetric) on the embedded data."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from apps.speaker.config import SpeakerConfig
from apps.speaker.evaluate import evaluate
from apps.speaker.train import prepare
from core.tour import register_tour

__all__ = ["speaker_tour"]


@register_tour("speaker")
def speaker_tour(out_dir: Path, quick: bool) -> list[dict]:
    """Train on the embedded LibriSpeech crops, evaluate EER on FSDD and held-out LibriSpeech speakers."""
    t0 = time.perf_counter()
    base = SpeakerConfig.quick() if quick else SpeakerConfig()
    cfg = dataclasses.replace(base, run_dir=str(out_dir), progress=False)
    report = evaluate(cfg, prepare(cfg), train=True, started=t0)
    seconds = time.perf_counter() - t0
    rows = []
    for i, (name, info) in enumerate(report["eval_sets"].items()):
        for j, base_name in enumerate(("mfcc", "untrained")):
            rows.append({"app": "speaker (NT-Xent-AM)", "dataset": f"{name} ({info['n_speakers']} unseen speakers)",
                         "metric": "EER (lower is better)", "value": report["metrics"][f"{name}_eer"],
                         "baseline": report["baselines"][base_name][f"{name}_eer"], "baseline_name": base_name,
                         "higher_is_better": False, "full_mode_ref": "docs/apps/speaker.md", "seconds": seconds,
                         **({"plots": report["plots"]} if i == j == 0 else {})})
    return rows
