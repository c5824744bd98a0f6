"""Evaluation: trial lists, embeddings, cosine scoring, EER / minDCF, baselines, report and plots.

The run's report (``<run-dir>/report.json``) scores ``--test-data`` (default: the embedded FSDD speakers, never
seen in training) with a given trial list or a balanced one drawn from its speaker labels, and the held-out
speakers of ``--data`` with trials between non-overlapping segments of their utterances. ``evaluate --eval-data
OTHER`` scores OTHER alone and writes its report to ``<run-dir>/eval/<name>/``. Every set is scored with cosine
similarity for

* the trained encoder of each loss of ``--losses``;
* ``untrained``: the same architecture at its random initialisation (same seed);
* ``mfcc``: MFCC mean-and-standard-deviation vectors (same mel band as the encoder), standardised per dimension
  with the statistics of the evaluated items themselves (unsupervised: no labels), so that it does not depend on
  the training data;
* with ``--asnorm-top N``, also ``<loss>_asnorm``: the encoder's cosine scores after AS-norm against a cohort of
  training-utterance embeddings (:func:`apps.speaker.metrics.as_norm`).

With ``--crop-eval-seconds L`` (default 3) every set is also scored with each item cut to its middle L seconds (the
set ``<name>_<L>s``; skipped when no item is longer than L). The report's headline method
(``report.headline``) is the first loss of ``--losses`` (its ``_asnorm`` row with ``--asnorm-top``).
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
    centre_crop,
    load_collection,
    read_trials,
    write_trials,
)
from apps.speaker.metrics import as_norm, cosine_scores, error_rates, verification_metrics
from apps.speaker.model import build_encoder
from apps.speaker.train import Experiment, crop, load_encoder, plot_val_curves, trial_items
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
        waves, trials, how = trial_items(s, exp.heldout, s.seed)
        sets.append(EvalSet("heldout", f"{len(exp.heldout.speakers)} {exp.dataset} speakers held out of training: "
                            + how, waves, trials, len(exp.heldout.speakers)))
    if not sets:
        raise InputError("nothing to evaluate: --test-data none and --holdout-speakers 0")
    if len({es.name for es in sets}) < len(sets):
        raise InputError(f"--test-data is named {sets[0].name!r} like the held-out set; rename its folder")
    if s.eval_noise_snr is not None:
        sets = sets + noisy_sets(sets, s.eval_noise_snr, s.seed)
    return sets + cropped_sets(sets, s.crop_eval_seconds)


def noisy_sets(sets: list[EvalSet], snr_db: float, seed: int) -> list[EvalSet]:
    """Every set with its items made noisier (same trials): a synthetic reverberation (RT60 ~ U[0.2, 0.8] s) of
    every other item on average, then coloured noise at ``snr_db`` (drawn from a generator seeded with ``seed``)."""
    from apps.speaker.features import add_noise, coloured_noise, synthetic_rir

    g = torch.Generator().manual_seed(seed + 104729)
    out = []
    for es in sets:
        waves = []
        for w in es.waves:
            x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))[None]
            if float(torch.rand((), generator=g)) < 0.5:
                rir = synthetic_rir(1, rt60=0.2 + 0.6 * torch.rand(1, generator=g), length=int(0.4 * SAMPLE_RATE),
                                    generator=g)
                x = torchaudio.functional.fftconvolve(x, rir)[:, : x.shape[1]]
            noise = coloured_noise(tuple(x.shape), 2 * torch.rand(1, generator=g), generator=g)
            waves.append(add_noise(x, noise, torch.tensor([float(snr_db)]))[0].numpy().astype(np.float32))
        out.append(EvalSet(f"{es.name}_snr{snr_db:g}", f"{es.name} with coloured noise at {snr_db:g} dB SNR after "
                           "a synthetic reverberation of half of the items", waves, es.trials, es.n_speakers))
    return out


def cropped_sets(sets: list[EvalSet], seconds: float) -> list[EvalSet]:
    """Every set with an item longer than ``seconds``, its items cut to their middle ``seconds`` (same trials)."""
    if seconds <= 0:
        return []
    n = int(round(seconds * SAMPLE_RATE))
    out = []
    for es in sets:
        if max(len(w) for w in es.waves) > n:
            out.append(EvalSet(f"{es.name}_{seconds:g}s", f"{es.name} with every item cut to its middle {seconds:g} s",
                               [centre_crop(w, n) for w in es.waves], es.trials, es.n_speakers))
    return out


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
    standardised per dimension with the mean and standard deviation over the items given (the evaluated set
    itself: no training data, no labels)."""

    def __init__(self, n_mfcc: int, f_max: float = 8000.0) -> None:
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc,
            melkwargs=dict(n_fft=512, win_length=400, hop_length=160, n_mels=40, f_min=20.0, f_max=f_max,
                           window_fn=torch.hamming_window))

    @torch.inference_mode()
    def raw(self, waves: list[np.ndarray]) -> np.ndarray:
        out = []
        for w in waves:
            m = self.mfcc(torch.from_numpy(np.ascontiguousarray(w)))
            out.append(torch.cat([m.mean(1), m.std(1) if m.shape[1] > 1 else torch.zeros(m.shape[0])]).numpy())
        return np.stack(out).astype(np.float64)

    def __call__(self, waves: list[np.ndarray]) -> np.ndarray:
        raw = self.raw(waves)
        return (raw - raw.mean(0)) / (raw.std(0) + 1e-8)


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


def _method_name(m: str) -> str:
    if m.endswith("_asnorm"):
        return METHOD_NAMES.get(m[: -len("_asnorm")], m[: -len("_asnorm")]) + ", AS-norm"
    return METHOD_NAMES.get(m, m)


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
    mfcc = MFCCStats(s.mfcc_coeffs, s.f_max)
    embedders: dict[str, Callable[[list[np.ndarray], str], np.ndarray]] = {
        loss: (lambda w, n, e=enc, m=loss: embed_waves(e, w, progress, f"{n}: {m}")) for loss, enc in
        encoders.items()}
    embedders["untrained"] = lambda w, n: embed_waves(untrained, w, progress, f"{n}: untrained")
    embedders["mfcc"] = lambda w, n: mfcc(w)
    cohort_waves = [a[:cap] for a in exp.train.audio]
    cohorts: dict[tuple[str, int], np.ndarray] = {}  # (loss, crop samples or 0) -> cohort embeddings

    def cohort(loss: str, es: EvalSet) -> np.ndarray:
        longest = max(len(w) for w in es.waves)  # cohort items no longer than the set's (the cropped sets' length)
        key = (loss, longest if longest < cap else 0)
        if key not in cohorts:
            waves = [centre_crop(w, longest) for w in cohort_waves] if key[1] else cohort_waves
            cohorts[key] = embed_waves(encoders[loss], waves, progress, f"cohort: {loss}")
        return cohorts[key]

    asnorm = [f"{loss}_asnorm" for loss in s.losses] if s.asnorm_top else []
    methods = [*s.losses, *asnorm, *BASELINES]
    report = run.report("eer", higher_is_better=False, title="Speaker verification")
    scores: dict[str, dict[str, np.ndarray]] = {}
    eers: dict[str, dict[str, float]] = {m: {} for m in methods}
    for es in sets:
        scores[es.name] = {}
        for m, fn in embedders.items():
            emb = fn(es.waves, es.name)
            if not np.isfinite(emb).all():
                raise InputError(f"{m}: non-finite embeddings on {es.name} (a diverged encoder?)")
            scores[es.name][m] = cosine_scores(emb, es.trials.enroll, es.trials.test)
            if s.asnorm_top and m in encoders:
                scores[es.name][f"{m}_asnorm"] = as_norm(emb, cohort(m, es), es.trials.enroll, es.trials.test,
                                                         s.asnorm_top)
        for m in methods:
            r = verification_metrics(scores[es.name][m], es.trials.labels)
            eers[m][es.name] = r["eer"]
            report.add(m, {k: r[k] for k in METRICS}, seed=s.seed, dataset=es.name, baseline=m in BASELINES)
        log(f"{es.name}: " + ", ".join(f"{m} EER {eers[m][es.name]:.2%}" for m in methods))
    trained = [*s.losses, *asnorm]
    relative = {m: {es.name: 1 - eers[m][es.name] / max(eers["mfcc"][es.name], 1e-12) for es in sets}
                for m in trained}
    train, curves = {}, {}
    for loss in s.losses:
        root = run.run_dir.method_dir(loss)
        train[loss] = read_json(root / "train_stats.json", "training statistics") \
            if (root / "train_stats.json").is_file() else None
        if (root / "val_curve.json").is_file():
            curves[loss] = read_json(root / "val_curve.json", "validation curve")
    report.notes += [f"{es.name}: {es.description}; {len(es.trials.labels)} trials (trials_{es.name}.txt)"
                     for es in sets]
    report.notes.append("cosine scoring; EER interpolated on the ROC; minDCF normalised (C_miss = C_fa = 1) at "
                        "p_target 0.01 and 0.05")
    if asnorm:
        report.notes.append(f"AS-norm: top {s.asnorm_top} cosine scores against a cohort of the "
                            f"{len(cohort_waves)} training utterances (cut like the scored items)")
    report.notes += [f"relative EER reduction of {m} ({_method_name(m)}) vs the MFCC baseline: "
                     + ", ".join(f"{v:+.1%} on {k}" for k, v in relative[m].items()) for m in trained]
    for loss, tr in train.items():
        if tr:
            data = (f"{tr['train_utterances']} utterances of {tr['train_speakers']} speakers, "
                    f"{tr['train_hours']:.2f} h; " if "train_hours" in tr else "")
            picked = (f"; kept epoch {tr['best_epoch']} (best validation EER {tr['best_val_eer']:.2%} on "
                      f"{tr['val_speakers']} validation speakers)" if tr.get("selected") == "best_validated" else "")
            report.notes.append(f"{loss} training: {data}{tr.get('epochs')} epochs in "
                                f"{tr.get('seconds_last_attempt', float('nan')):.0f} s (last attempt), "
                                f"{tr.get('utterances_per_second', float('nan')):.1f} utterances/s "
                                f"({tr.get('device')}, {tr.get('devices', 1)} device(s), {tr.get('threads')} "
                                f"thread(s) per process){picked}")
    report.notes.append("the MFCC baseline is standardised with the mean and standard deviation of the scored items "
                        "themselves (no labels, no training data)")
    report.extra = {"eval_sets": {es.name: {"description": es.description, "n_items": len(es.waves),
                                            "n_speakers": es.n_speakers, "n_trials": len(es.trials.labels),
                                            "n_target": int(es.trials.labels.sum()),
                                            "trials_file": f"trials_{es.name}.txt"} for es in sets},
                    "relative_eer_reduction_vs_mfcc": relative, "train": train, "val_curves": curves,
                    "method_names": {m: _method_name(m) for m in methods}}
    report.headline = f"{s.losses[0]}_asnorm" if asnorm else s.losses[0]
    if run.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        report.plots = _plots(folder, scores, sets, trained)
        if curves:
            plot_val_curves(curves, folder / "learning_curve.png")
            report.plots.append("learning_curve.png")
        for es in sets:
            write_trials(es.trials, folder / f"trials_{es.name}.txt")
    run.write_report(report, folder)
    log(f"report: {folder / 'report.md'}")
    return report
