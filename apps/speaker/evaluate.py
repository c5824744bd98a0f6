"""Evaluation: trial lists, embeddings, cosine scoring, EER / minDCF, baselines, report and plots.

The run's report (``<run-dir>/report.json``) scores ``--test-data`` (default: the embedded FSDD speakers, never
seen in training) with a given trial list or a balanced one drawn from its speaker labels, and the held-out
speakers of ``--data`` with trials between non-overlapping segments of their utterances. ``evaluate --eval-data
OTHER`` scores OTHER alone and writes its report to ``<run-dir>/eval/<name>/``. Every set is scored with cosine
similarity for

* the trained encoder of each loss of ``--losses``;
* ``untrained``: the same architecture at its random initialisation (same seed);
* ``mfcc``: MFCC mean-and-standard-deviation vectors (same mel band as the encoder), standardised with the training
  utterances' statistics (so this baseline moves a little with the training set, see the report's notes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from apps.speaker.config import SpeakerSettings
from apps.speaker.data import (
    SAMPLE_RATE,
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
from apps.speaker.train import Experiment, crop, load_encoder
from core.app import InputError, Report, Run, is_main_process, read_json
from core.app.files import save_figure

__all__ = ["EvalSet", "eval_sets", "embed_waves", "MFCCStats", "evaluate_encoders", "METHOD_NAMES", "BASELINES"]

METHOD_NAMES = {
    "mfcc": "MFCC mean+std, cosine", "untrained": "untrained encoder, cosine",
    "simclr": "SimCLR (no margin), non-symmetric", "simclr_sym": "SimCLR (no margin), symmetric",
    "am": "NT-Xent-AM, non-symmetric", "am_sym": "NT-Xent-AM, symmetric",
    "aam": "NT-Xent-AAM, non-symmetric", "aam_sym": "NT-Xent-AAM, symmetric",
}
BASELINES = ("mfcc", "untrained")
MIN_SECONDS = 0.5  # shorter items are repeated to this length before embedding
METRICS = ("eer", "min_dcf_p01", "min_dcf_p05")


@dataclass
class EvalSet:
    name: str
    description: str
    waves: list[np.ndarray]
    trials: Trials
    n_speakers: int


def _labelled_set(s: SpeakerSettings, data: str, pattern: str | None) -> EvalSet:
    """A collection of unseen speakers with a trial list (``--trials``) or balanced trials from its labels."""
    cap = int(s.eval_max_seconds * SAMPLE_RATE)
    col = load_collection(data, min_speakers=1 if s.trials else 2, speaker_pattern=pattern)
    col.load_audio(progress=s.progress and is_main_process())
    keys = [u.key for u in col.utterances]
    if s.trials:
        trials = read_trials(Path(s.trials), keys)
        how = f"trial list {s.trials}"
    else:
        trials = balanced_trials([u.speaker for u in col.utterances], keys, s.n_trials, s.seed)
        how = f"balanced trials drawn from the speaker labels (seed {s.seed})"
    return EvalSet(col.name, f"{len(col.utterances)} utterances of {len(col.speakers)} speakers, {how}",
                   [a[:cap] for a in col.audio], trials, len(col.speakers))


def eval_sets(s: SpeakerSettings, exp: Experiment) -> list[EvalSet]:
    """The sets to score: ``--eval-data`` alone when given, else ``--test-data`` (unless 'none') and the held-out
    speakers of ``--data``; trial lists are drawn with ``s.seed``."""
    if s.eval_data:
        return [_labelled_set(s, s.eval_data, s.eval_speaker_pattern)]
    sets = []
    if s.test_data.lower() != "none":
        sets.append(_labelled_set(s, s.test_data, s.test_speaker_pattern))
    if exp.heldout is not None:
        segs = make_segments(exp.heldout, s.segment_seconds)
        trials = segment_trials(segs, s.n_trials, s.seed)
        sets.append(EvalSet("heldout", f"{len(exp.heldout.speakers)} {exp.dataset} speakers held out of training: "
                            f"{len(segs)} non-overlapping {s.segment_seconds:g}-s segments, balanced trials "
                            f"(seed {s.seed})",
                            [exp.heldout.audio[g.utt][g.start:g.stop] for g in segs], trials,
                            len(exp.heldout.speakers)))
    if not sets:
        raise InputError("nothing to evaluate: --test-data none and --holdout-speakers 0")
    if len({es.name for es in sets}) < len(sets):
        raise InputError(f"--test-data is named {sets[0].name!r} like the held-out set; rename its folder")
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


def _plots(folder: Path, scores: dict[str, dict[str, np.ndarray]], sets: list[EvalSet],
           losses: list[str]) -> list[str]:
    """DET curves (every method, one panel per set), score histograms (every loss x set) and, with several losses,
    EER by method; returns the file names (written on the main process only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    names = []
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4.4), squeeze=False)
    ticks = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8])
    for ax, es in zip(axes[0], sets, strict=True):
        for m, sc in scores[es.name].items():
            _, fnr, fpr = error_rates(sc, es.trials.labels)
            eps = 1e-3
            ax.plot(norm.ppf(np.clip(fpr, eps, 1 - eps)), norm.ppf(np.clip(fnr, eps, 1 - eps)),
                    label=f"{m} (EER {verification_metrics(sc, es.trials.labels)['eer']:.1%})",
                    lw=1 if m in BASELINES else 2, ls=":" if m in BASELINES else "-")
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
    names.append("det.png")
    save_figure(fig, folder / names[-1])
    fig, axes = plt.subplots(len(losses), len(sets), figsize=(5 * len(sets), 3.2 * len(losses)), squeeze=False)
    for row, loss in zip(axes, losses, strict=True):
        for ax, es in zip(row, sets, strict=True):
            sc, y = scores[es.name][loss], es.trials.labels.astype(bool)
            bins = np.linspace(min(sc.min(), -0.2), 1.0, 50)
            ax.hist(sc[y], bins=bins, alpha=0.6, label="target", density=True)
            ax.hist(sc[~y], bins=bins, alpha=0.6, label="non-target", density=True)
            ax.set_title(f"{loss} cosine scores: {es.name}", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    names.append("score_histograms.png")
    save_figure(fig, folder / names[-1])
    if len(losses) > 1:
        methods = [*BASELINES, *losses]
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(methods), 3.6))
        x = np.arange(len(methods))
        w = 0.8 / len(sets)
        for i, es in enumerate(sets):
            eers = [100 * verification_metrics(scores[es.name][m], es.trials.labels)["eer"] for m in methods]
            ax.bar(x + i * w, eers, w, label=es.name)
        ax.set_xticks(x + w * (len(sets) - 1) / 2, methods, rotation=30, fontsize=8)
        ax.set_ylabel("EER (%)")
        ax.legend(fontsize=8)
        ax.set_title("EER by method (lower is better)", fontsize=9)
        fig.tight_layout()
        names.append("eer_by_method.png")
        save_figure(fig, folder / names[-1])
    return names


def _device(run: Run) -> torch.device:
    """Where this rank embeds: its GPU when the run trains on GPUs, else the CPU."""
    if run.hardware.on_cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def evaluate_encoders(run: Run, exp: Experiment, sets: list[EvalSet], log: Callable[[str], None]) -> Report:
    """Score ``sets`` with the trained encoder of every loss and the baselines; write the report, plots and trial
    lists to ``run.report_dir`` (``--eval-data``) or the run directory. Every rank scores, rank 0 writes."""
    s = run.settings
    folder = run.report_dir or run.run_dir.path
    device = _device(run)
    progress = s.progress and run.is_main
    encoders = {loss: load_encoder(run.run_dir.method_dir(loss) / "encoder.pt").to(device) for loss in s.losses}
    torch.manual_seed(s.seed)
    untrained = build_encoder(s.encoder_spec()).eval().to(device)
    cap = int(s.eval_max_seconds * SAMPLE_RATE)
    mfcc = MFCCStats(s.mfcc_coeffs, [a[:cap] for a in exp.train.audio], s.f_max)
    embedders: dict[str, Callable[[list[np.ndarray], str], np.ndarray]] = {
        loss: (lambda w, n, e=enc, m=loss: embed_waves(e, w, progress, f"{n}: {m}")) for loss, enc in
        encoders.items()}
    embedders["untrained"] = lambda w, n: embed_waves(untrained, w, progress, f"{n}: untrained")
    embedders["mfcc"] = lambda w, n: mfcc(w)
    report = run.report("eer", higher_is_better=False, title="Speaker verification")
    scores: dict[str, dict[str, np.ndarray]] = {}
    eers: dict[str, dict[str, float]] = {m: {} for m in embedders}
    for es in sets:
        scores[es.name] = {}
        for m, fn in embedders.items():
            emb = fn(es.waves, es.name)
            if not np.isfinite(emb).all():
                raise InputError(f"{m}: non-finite embeddings on {es.name} (a diverged encoder?)")
            sc = cosine_scores(emb, es.trials.enroll, es.trials.test)
            scores[es.name][m] = sc
            r = verification_metrics(sc, es.trials.labels)
            eers[m][es.name] = r["eer"]
            report.add(m, {k: r[k] for k in METRICS}, seed=s.seed, dataset=es.name, baseline=m in BASELINES)
        log(f"{es.name}: " + ", ".join(f"{m} EER {eers[m][es.name]:.2%}" for m in embedders))
    relative = {loss: {es.name: 1 - eers[loss][es.name] / max(eers["mfcc"][es.name], 1e-12) for es in sets}
                for loss in s.losses}
    train = {}
    for loss in s.losses:
        path = run.run_dir.method_dir(loss) / "train_stats.json"
        train[loss] = read_json(path, "training statistics") if path.is_file() else None
    report.notes += [f"{es.name}: {es.description}; {len(es.trials.labels)} trials (trials_{es.name}.txt)"
                     for es in sets]
    report.notes.append("cosine scoring; EER interpolated on the ROC; minDCF normalised (C_miss = C_fa = 1) at "
                        "p_target 0.01 and 0.05")
    report.notes += [f"relative EER reduction of {loss} ({METHOD_NAMES[loss]}) vs the MFCC baseline: "
                     + ", ".join(f"{v:+.1%} on {k}" for k, v in relative[loss].items()) for loss in s.losses]
    for loss, tr in train.items():
        if tr:
            report.notes.append(f"{loss} training: {tr.get('epochs')} epochs, "
                                f"{tr.get('utterances_per_second', float('nan')):.1f} utterances/s "
                                f"({tr.get('device')}, {tr.get('devices', 1)} device(s), {tr.get('threads')} "
                                "thread(s) per process)")
    report.notes.append("the MFCC baseline is standardised with the statistics of the training utterances, so it "
                        "moves a little with --data and the held-out split (--seed)")
    report.extra = {"eval_sets": {es.name: {"description": es.description, "n_items": len(es.waves),
                                            "n_speakers": es.n_speakers, "n_trials": len(es.trials.labels),
                                            "trials_file": f"trials_{es.name}.txt"} for es in sets},
                    "relative_eer_reduction_vs_mfcc": relative, "train": train,
                    "method_names": {m: METHOD_NAMES.get(m, m) for m in embedders}}
    if run.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        report.plots = _plots(folder, scores, sets, list(s.losses))
        for es in sets:
            write_trials(es.trials, folder / f"trials_{es.name}.txt")
    run.write_report(report, folder)
    log(f"report: {folder / 'report.md'}")
    return report
