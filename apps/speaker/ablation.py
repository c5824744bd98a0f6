"""The ablation of the papers at this scale: every loss variant trained and evaluated with the same settings.

Writes ``RUN_DIR/ablation.json``, ``RUN_DIR/ablation.md`` and ``RUN_DIR/ablation.png`` (EER per evaluation set);
each variant keeps its own run directory ``RUN_DIR/<loss>/`` with its report, so an interrupted ablation
resumes where it stopped (finished variants are only re-evaluated).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from apps.speaker.config import VARIANTS, SpeakerConfig
from apps.speaker.evaluate import METHOD_NAMES, evaluate
from apps.speaker.train import Experiment, prepare

__all__ = ["ablation"]


def _table(rows: dict[str, dict], sets: list[str]) -> list[str]:
    head = "| method | " + " | ".join(f"{s} EER | {s} minDCF0.01 | {s} minDCF0.05" for s in sets) + " |"
    lines = [head, "|---|" + "---|" * (3 * len(sets))]
    for m, r in rows.items():
        cells = []
        for s in sets:
            cells += [f"{r[f'{s}_eer']:.2%}", f"{r[f'{s}_min_dcf_p01']:.3f}", f"{r[f'{s}_min_dcf_p05']:.3f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def ablation(cfg: SpeakerConfig, variants: list[str] | None = None, log=print, started: float | None = None) -> dict:
    """Fit + evaluate each variant (default: all six); returns {"rows": {method: metrics}, ...}."""
    t0 = started if started is not None else time.perf_counter()
    variants = variants or list(VARIANTS)
    base = prepare(cfg)
    rows: dict[str, dict] = {}
    extra: dict[str, dict] = {}
    sets: list[str] = []
    for v in variants:
        cv = dataclasses.replace(cfg, loss=v, margin=cfg.margin if VARIANTS[v][0] else None).validate()
        exp = Experiment(base.dataset, base.train, base.heldout, Path(cfg.run_dir) / v)
        tv = time.perf_counter()
        rep = evaluate(cv, exp, train=True, log=log)
        if not rows:
            rows.update({m: rep["baselines"][m] for m in ("mfcc", "untrained")})
            sets = list(rep["eval_sets"])
        rows[v] = rep["metrics"]
        tr = rep.get("train") or {}
        extra[v] = {"seconds": time.perf_counter() - tv, "utterances_per_second": tr.get("utterances_per_second"),
                    "relative_eer_reduction_vs_mfcc": rep["relative_eer_reduction_vs_mfcc"]}
    root = Path(cfg.run_dir)
    result = {"app": "speaker", "dataset": base.dataset, "eval_sets": sets, "rows": rows, "variants": extra,
              "seconds": time.perf_counter() - t0, "config": cfg.to_dict()}
    (root / "ablation.json").write_text(json.dumps(result, indent=2))
    lines = ["# Speaker verification ablation", "",
             f"Training data: {base.dataset} ({len(base.train.utterances)} utterances, no labels used); "
             f"{cfg.encoder} encoder (width {cfg.width}), {cfg.epochs} epochs, tau = {cfg.temperature}, "
             f"margin {cfg.margin if cfg.margin is not None else 0.1}.", "", *_table(rows, sets), "",
             "Methods: " + "; ".join(f"`{m}` = {METHOD_NAMES.get(m, m)}" for m in rows) + ".", "",
             "| variant | train utterances/s | wall s (fit + eval) | " + " | ".join(
                 f"rel. EER reduction vs MFCC ({s})" for s in sets) + " |",
             "|---|---|---|" + "---|" * len(sets)]
    for v, e in extra.items():
        ups = e["utterances_per_second"]
        lines.append(f"| {v} | {ups:.1f} | {e['seconds']:.0f} | " if ups is not None else f"| {v} | - | "
                     f"{e['seconds']:.0f} | ")
        lines[-1] += " | ".join(f"{e['relative_eer_reduction_vs_mfcc'][s]:+.1%}" for s in sets) + " |"
    lines += ["", f"Total wall time: {result['seconds']:.0f} s.", "", "![ablation](ablation.png)"]
    (root / "ablation.md").write_text("\n".join(lines) + "\n")
    _plot(root / "ablation.png", rows, sets)
    log(f"[speaker] ablation: {root / 'ablation.md'}")
    return result


def _plot(path: Path, rows: dict[str, dict], sets: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.6))
    x = np.arange(len(rows))
    w = 0.8 / max(1, len(sets))
    for i, s in enumerate(sets):
        ax.bar(x + i * w, [100 * r[f"{s}_eer"] for r in rows.values()], w, label=s)
    ax.set_xticks(x + w * (len(sets) - 1) / 2, list(rows), rotation=30, fontsize=8)
    ax.set_ylabel("EER (%)")
    ax.legend(fontsize=8)
    ax.set_title("EER by method (lower is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
