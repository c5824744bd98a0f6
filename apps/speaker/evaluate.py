"""Evaluation: trial lists, embeddings, cosine scoring, EER / minDCF, baselines, report and plots.

Evaluation sets: ``--eval-data`` (default: the embedded FSDD speakers, never seen in training) with a given
trial list or a balanced one drawn from its speaker labels, and the held-out speakers of ``--data`` with
trials between non-overlapping segments of their utterances. Every set is scored with cosine similarity for

* the trained encoder (method = ``--loss``);
* ``untrained``: the same architecture at its random initialisation (same seed);
* ``mfcc``: MFCC mean-and-standard-deviation vectors (same mel band as the encoder), standardised with the training
  utterances' statistics.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from apps.speaker.config import SpeakerConfig
from apps.speaker.data import (
    SAMPLE_RATE,
    DataError,
    Trials,
    balanced_trials,
    load_collection,
    make_segments,
    read_trials,
    segment_trials,
    write_trials,
)
from apps.speaker.metrics import cosine_scores, error_rates, verification_metrics
from apps.speaker.model import build_encoder
from apps.speaker.train import Experiment, check_run_dir, crop, fit, load_encoder

__all__ = ["EvalSet", "eval_sets", "embed_waves", "MFCCStats", "evaluate", "METHOD_NAMES"]

METHOD_NAMES = {
    "mfcc": "MFCC mean+std, cosine", "untrained": "untrained encoder, cosine",
    "simclr": "SimCLR (no margin), non-symmetric", "simclr_sym": "SimCLR (no margin), symmetric",
    "am": "NT-Xent-AM, non-symmetric", "am_sym": "NT-Xent-AM, symmetric",
    "aam": "NT-Xent-AAM, non-symmetric", "aam_sym": "NT-Xent-AAM, symmetric",
}
MIN_SECONDS = 0.5  # shorter items are repeated to this length before embedding


@dataclass
class EvalSet:
    name: str
    description: str
    waves: list[np.ndarray]
    trials: Trials
    n_speakers: int


def eval_sets(cfg: SpeakerConfig, exp: Experiment) -> list[EvalSet]:
    """The evaluation sets of the run (see the module docstring); trial lists are drawn with ``cfg.seed``."""
    sets = []
    cap = int(cfg.eval_max_seconds * SAMPLE_RATE)
    if cfg.eval_data.lower() != "none":
        col = load_collection(cfg.eval_data, min_speakers=1 if cfg.trials else 2,
                              speaker_pattern=cfg.eval_speaker_pattern).load_audio(progress=cfg.progress)
        keys = [u.key for u in col.utterances]
        if cfg.trials:
            trials = read_trials(Path(cfg.trials), keys)
            how = f"trial list {cfg.trials}"
        else:
            trials = balanced_trials([u.speaker for u in col.utterances], keys, cfg.n_trials, cfg.seed)
            how = f"balanced trials drawn from the speaker labels (seed {cfg.seed})"
        sets.append(EvalSet(col.name, f"{len(col.utterances)} utterances of {len(col.speakers)} speakers, {how}",
                            [a[:cap] for a in col.audio], trials, len(col.speakers)))
    if exp.heldout is not None:
        segs = make_segments(exp.heldout, cfg.segment_seconds)
        trials = segment_trials(segs, cfg.n_trials, cfg.seed)
        sets.append(EvalSet("heldout", f"{len(exp.heldout.speakers)} {exp.dataset} speakers held out of training: "
                            f"{len(segs)} non-overlapping {cfg.segment_seconds:g}-s segments, balanced trials "
                            f"(seed {cfg.seed})",
                            [exp.heldout.audio[s.utt][s.start:s.stop] for s in segs], trials,
                            len(exp.heldout.speakers)))
    if not sets:
        raise DataError("nothing to evaluate: --eval-data none and --holdout-speakers 0")
    return sets


@torch.inference_mode()
def embed_waves(encoder: torch.nn.Module, waves: list[np.ndarray], progress: bool = False,
                desc: str = "embedding") -> np.ndarray:
    """(N, D) embeddings of whole waveforms (one forward each; items shorter than 0.5 s are repeated)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    it = waves
    if progress:
        from tqdm import tqdm

        it = tqdm(waves, desc=desc, leave=False)
    out = []
    n_min = int(MIN_SECONDS * SAMPLE_RATE)
    for w in it:
        w = crop(w, max(n_min, len(w)), 0)
        out.append(encoder(torch.from_numpy(np.ascontiguousarray(w))[None].to(device)).float().cpu().numpy()[0])
    return np.stack(out)


class MFCCStats:
    """MFCC (``n_mfcc`` coefficients of 40 log-mel bins, 25 ms / 10 ms) mean and standard deviation over time,
    standardised per dimension with the statistics of the training utterances."""

    def __init__(self, n_mfcc: int, train_waves: list[np.ndarray], f_max: float = 8000.0) -> None:
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc,
            melkwargs=dict(n_fft=512, win_length=400, hop_length=160, n_mels=40, f_min=20.0, f_max=f_max,
                           window_fn=torch.hamming_window))
        raw = self.raw(train_waves)
        self.mu, self.sd = raw.mean(0), raw.std(0) + 1e-8

    @torch.inference_mode()
    def raw(self, waves: list[np.ndarray]) -> np.ndarray:
        out = []
        for w in waves:
            m = self.mfcc(torch.from_numpy(np.ascontiguousarray(w)))
            out.append(torch.cat([m.mean(1), m.std(1) if m.shape[1] > 1 else torch.zeros(m.shape[0])]).numpy())
        return np.stack(out).astype(np.float64)

    def __call__(self, waves: list[np.ndarray]) -> np.ndarray:
        return (self.raw(waves) - self.mu) / self.sd


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _plots(root: Path, scores: dict[str, dict[str, np.ndarray]], sets: list[EvalSet], method: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    paths = []
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4.4), squeeze=False)
    ticks = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8])
    for ax, es in zip(axes[0], sets, strict=True):
        for m, s in scores[es.name].items():
            _, fnr, fpr = error_rates(s, es.trials.labels)
            eps = 1e-3
            ax.plot(norm.ppf(np.clip(fpr, eps, 1 - eps)), norm.ppf(np.clip(fnr, eps, 1 - eps)),
                    label=f"{m} (EER {verification_metrics(s, es.trials.labels)['eer']:.1%})",
                    lw=2 if m == method else 1)
        ax.set_xticks(norm.ppf(ticks), [f"{t:.0%}" for t in ticks])
        ax.set_yticks(norm.ppf(ticks), [f"{t:.0%}" for t in ticks])
        lim = norm.ppf([0.005, 0.9])
        ax.set_xlim(*lim)
        ax.set_ylim(*lim)
        ax.plot(lim, lim, "k:", lw=0.7)
        ax.set_xlabel("false acceptance rate")
        ax.set_ylabel("false rejection rate")
        ax.set_title(f"DET: {es.name} ({len(es.trials.labels)} trials)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    p = root / "det.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, es in zip(axes[0], sets, strict=True):
        s, y = scores[es.name][method], es.trials.labels.astype(bool)
        bins = np.linspace(min(s.min(), -0.2), 1.0, 50)
        ax.hist(s[y], bins=bins, alpha=0.6, label="target", density=True)
        ax.hist(s[~y], bins=bins, alpha=0.6, label="non-target", density=True)
        ax.set_title(f"{method} cosine scores: {es.name}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = root / "score_histograms.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def _markdown(report: dict, sets: list[EvalSet], plots: list[Path]) -> str:
    method = report["method"]
    methods = [method, *report["baselines"]]
    allm = {method: report["metrics"], **report["baselines"]}
    lines = [f"# Speaker verification: {report['dataset']}", "",
             f"Encoder trained without speaker labels with `{method}` ({METHOD_NAMES.get(method, method)}); "
             "cosine scoring. EER interpolated on the ROC; minDCF normalised (C_miss = C_fa = 1).", ""]
    for es in sets:
        lines += [f"## {es.name}: {es.description}", "", "| method | EER | minDCF (p=0.01) | minDCF (p=0.05) |",
                  "|---|---|---|---|"]
        for m in methods:
            r = allm[m]
            lines.append(f"| {m} | {r[f'{es.name}_eer']:.2%} | {r[f'{es.name}_min_dcf_p01']:.4f} | "
                         f"{r[f'{es.name}_min_dcf_p05']:.4f} |")
        rel = report["relative_eer_reduction_vs_mfcc"][es.name]
        lines += ["", f"Relative EER reduction of `{method}` vs the MFCC baseline: {rel:+.1%} "
                  "(the goal is >= +25% on unseen speakers).", ""]
    tr = report.get("train") or {}
    if tr:
        lines += [f"Training: {tr.get('epochs')} epochs, {tr.get('utterances_per_second', float('nan')):.1f} "
                  f"utterances/s ({tr.get('device')}, {tr.get('threads')} threads).", ""]
    lines += [f"Wall time of this command: {report['seconds']:.0f} s.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def evaluate(cfg: SpeakerConfig, exp: Experiment, *, train: bool = False, log=print,
             started: float | None = None) -> dict:
    """Score every evaluation set with the trained encoder and the baselines; write the report into
    ``exp.root``. With ``train=True`` the encoder is fitted first when missing. Returns the report dict."""
    t0 = started if started is not None else time.perf_counter()
    check_run_dir(cfg, exp.root, write=train)
    sets = eval_sets(cfg, exp)  # before training: a bad evaluation set or trial list fails at once
    enc_path = fit(cfg, exp, log) if train else exp.root / "encoder.pt"
    encoder = load_encoder(enc_path)
    torch.manual_seed(cfg.seed)
    untrained = build_encoder(cfg.encoder_spec()).eval()
    cap = int(cfg.eval_max_seconds * SAMPLE_RATE)
    mfcc = MFCCStats(cfg.mfcc_coeffs, [a[:cap] for a in exp.train.audio], cfg.f_max)
    embedders = {cfg.loss: lambda w, n: embed_waves(encoder, w, cfg.progress, f"{n}: {cfg.loss}"),
                 "untrained": lambda w, n: embed_waves(untrained, w, cfg.progress, f"{n}: untrained"),
                 "mfcc": lambda w, n: mfcc(w)}
    metrics: dict[str, dict[str, float]] = {m: {} for m in embedders}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for i, es in enumerate(sets):
        scores[es.name] = {}
        for m, fn in embedders.items():
            emb = fn(es.waves, es.name)
            if not np.isfinite(emb).all():
                raise DataError(f"{m}: non-finite embeddings on {es.name} (a diverged encoder?)")
            s = cosine_scores(emb, es.trials.enroll, es.trials.test)
            scores[es.name][m] = s
            r = verification_metrics(s, es.trials.labels)
            metrics[m].update({f"{es.name}_{k}": v for k, v in r.items()})
            if i == 0:
                metrics[m].update({k: r[k] for k in ("eer", "min_dcf_p01", "min_dcf_p05")})
        log(f"[speaker] {es.name}: " + ", ".join(f"{m} EER {metrics[m][f'{es.name}_eer']:.2%}" for m in embedders))
    stats_path = exp.root / "train_stats.json"
    report = {
        "app": "speaker",
        "dataset": f"{exp.dataset} (train) -> " + ", ".join(es.name for es in sets),
        "method": cfg.loss,
        "metrics": metrics[cfg.loss],
        "baselines": {m: metrics[m] for m in ("mfcc", "untrained")},
        "seconds": 0.0,
        "config": cfg.to_dict(),
        "eval_sets": {es.name: {"description": es.description, "n_items": len(es.waves),
                                "n_speakers": es.n_speakers, "n_trials": len(es.trials.labels),
                                "trials_file": f"trials_{es.name}.txt"} for es in sets},
        "relative_eer_reduction_vs_mfcc": {
            es.name: 1 - metrics[cfg.loss][f"{es.name}_eer"] / max(metrics["mfcc"][f"{es.name}_eer"], 1e-12)
            for es in sets},
        "train": json.loads(stats_path.read_text()) if stats_path.is_file() else None,
    }
    plots = _plots(exp.root, scores, sets, cfg.loss)
    for es in sets:
        write_trials(es.trials, exp.root / f"trials_{es.name}.txt")
    report["seconds"] = time.perf_counter() - t0
    _write_atomic(exp.root / "report.json", json.dumps(report, indent=2))
    _write_atomic(exp.root / "report.md", _markdown(report, sets, plots))
    report["plots"] = [str(p) for p in plots]
    log(f"[speaker] report: {exp.root / 'report.json'}, {exp.root / 'report.md'}")
    return report
