"""Self-supervised training: the speaker split, the utterance batches and the resumable Lightning fit.

Run-directory layout (one folder per loss variant and seed)::

    <run-dir>/settings.json                  the settings that change the encoders (a re-run with others is refused)
    <run-dir>/<loss>/seed<S>/checkpoints/    Lightning checkpoints: an interrupted fit resumes from the last one
    <run-dir>/<loss>/seed<S>/encoder.pt      the trained encoder ({"spec": ..., "state_dict": ...}); fit is skipped
                                             when it exists
    <run-dir>/<loss>/seed<S>/train_stats.json  wall time and throughput (utterances / s) of the fit
    <run-dir>/<loss>/seed<S>/cpc/            the optional CPC pre-training (same layout)
    <run-dir>/<loss>/seed<S>/val_curve.json  the validation EER by epoch (epoch 0 = the untrained start) and the MFCC
                                             baseline's on the same trials; val_curve.png its plot
    <run-dir>/<loss>/seed<S>/best_encoder.pt the encoder of the lowest validation EER so far (--select-best)
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from apps.speaker.config import VARIANTS, SpeakerSettings, margin_value
from apps.speaker.data import (
    SAMPLE_RATE,
    Collection,
    Trials,
    load_collection,
    make_parts,
    make_segments,
    pair_trials,
    split_speakers,
)
from apps.speaker.model import CPCModule, SpeakerEncoder, SpeakerSSLModule, build_encoder
from core.app import CheckpointError, InputError, is_main_process, load_torch, read_json, save_torch, write_json
from core.app.files import save_figure
from core.app.hardware import barrier
from core.training import fit_with_resume, seed_everything, stopped_by_deadline

__all__ = ["Experiment", "load_experiment", "Utterances", "pad_batch", "fit_loss", "build_module", "load_encoder",
           "save_encoder", "crop", "crop_samples", "trial_items", "ValidationCurve"]

Log = Callable[[str], None]


@dataclass
class Experiment:
    dataset: str
    train: Collection  # training speakers (audio loaded)
    heldout: Collection | None  # held-out speakers of the same data (audio loaded)
    val: Collection | None = None  # validation speakers: set aside from training (audio loaded)


def load_experiment(s: SpeakerSettings) -> Experiment:
    """Load the training data, split off the held-out speakers (drawn with ``s.seed``), then the validation speakers
    from the rest (drawn with ``s.seed + 1``), so that the held-out speakers do not depend on ``--val-speakers``."""
    col = load_collection(s.data, min_speakers=2, speaker_pattern=s.speaker_pattern)
    train_spk, held_spk = split_speakers(col.speakers, s.holdout_speakers, s.seed)
    val_spk: list[str] = []
    if s.val_speakers:
        if s.val_speakers < 2:
            raise InputError(f"--val-speakers must be 0 or >= 2 (a validation EER needs non-target trials), got "
                             f"{s.val_speakers}")
        if s.val_speakers > len(train_spk) - 2:
            raise InputError(f"val_speakers={s.val_speakers} leaves fewer than 2 of the {len(train_spk)} speakers "
                             "not held out to train on: lower --val-speakers or --holdout-speakers")
        train_spk, val_spk = split_speakers(train_spk, s.val_speakers, s.seed + 1)
    col.load_audio(progress=s.progress and is_main_process())
    train = col.subset(set(train_spk))
    if len(train.utterances) < s.batch_size * s.world_size:
        raise InputError(f"{col.root}: {len(train.utterances)} training utterances, fewer than one batch "
                         f"({s.batch_size} x {s.world_size} device(s)): lower --batch-size, --holdout-speakers or "
                         "--val-speakers")
    heldout = col.subset(set(held_spk)) if held_spk else None
    val = col.subset(set(val_spk)) if val_spk else None
    return Experiment(col.name, train, heldout, val)


def trial_items(s: SpeakerSettings, col: Collection, seed: int,
                parts: int | None = None) -> tuple[list[np.ndarray], Trials, str]:
    """Trial sides of speakers with one or more utterances each: ``(waves, trials, description)``, from
    non-overlapping pieces of every utterance (``parts`` or ``--heldout-parts`` equal pieces, or, when
    ``--segment-seconds`` is set and ``parts`` is not, segments of that length); every target pair is scored against
    up to ``2 x --n-trials`` non-target pairs."""
    if s.segment_seconds > 0 and parts is None:
        segs = make_segments(col, s.segment_seconds)
        how = f"non-overlapping {s.segment_seconds:g}-s segments (up to 6 per utterance)"
    else:
        parts = parts or s.heldout_parts
        segs = make_parts(col, parts)
        mean = np.mean([g.stop - g.start for g in segs]) / SAMPLE_RATE
        how = f"pieces, every utterance cut into {parts} equal ones (mean {mean:.2f} s)"
    trials = pair_trials([g.speaker for g in segs], [g.key for g in segs], 2 * s.n_trials, seed)
    waves = [col.audio[g.utt][g.start:g.stop] for g in segs]
    n_tar = int(trials.labels.sum())
    return waves, trials, (f"{len(segs)} {how}; every target pair ({n_tar}) and {len(trials.labels) - n_tar} "
                           f"non-target pairs (seed {seed})")


def crop(wave: np.ndarray, n: int, start: int) -> np.ndarray:
    """``n`` samples from ``start``; a shorter utterance is repeated (wrapped) to length ``n``."""
    if len(wave) < n:
        wave = np.tile(wave, -(-n // len(wave)))
    return wave[start: start + n]


class Utterances(Dataset):
    """Item i: utterance i's waveform. Batches (:func:`pad_batch`) are whole utterances; the training step draws
    the two random crops (:func:`apps.speaker.model.random_crops`) after the step's generators were seeded, so a
    resumed fit draws the crops the uninterrupted one drew."""

    def __init__(self, audio: list[np.ndarray]) -> None:
        self.audio = audio

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.audio[i])


def pad_batch(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(waves, lengths)``: the utterances zero-padded to the longest, (B, T), and their lengths, (B,)."""
    lengths = torch.tensor([len(x) for x in items])
    waves = torch.zeros(len(items), int(lengths.max()))
    for row, x in zip(waves, items, strict=True):
        row[: len(x)] = x
    return waves, lengths


class _Throughput(Callback):
    """Steps and seconds of the training loop of this attempt (audio loading and set-up excluded)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.step0, self.t0, self.seconds, self.steps = trainer.global_step, time.perf_counter(), 0.0, 0

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds, self.steps = time.perf_counter() - self.t0, trainer.global_step - self.step0


class ValidationCurve(Callback):
    """EER of the encoder on the validation speakers' trials at the start (epoch 0: the untrained encoder) and after
    every ``every``-th and the last epoch, with the MFCC baseline's EER on the same trials; the curve goes to
    ``root/val_curve.json`` (and ``val_curve.png`` at the end) and the best encoder so far to
    ``root/best_encoder.pt``. A resumed fit continues the curve from the epoch of its checkpoint (the resumed fit
    repeats the lost epochs exactly, so a best encoder saved in one of them stays valid)."""

    def __init__(self, waves: list[np.ndarray], trials: Trials, root: Path, every: int, epochs: int,
                 mfcc_coeffs: int, f_max: float, log: Log) -> None:
        self.waves, self.trials, self.root, self.every, self.epochs = waves, trials, root, every, epochs
        self.mfcc_coeffs, self.f_max, self.say = mfcc_coeffs, f_max, log
        self.path = root / "val_curve.json"
        self.curve: dict = {}

    def _eer(self, encoder: torch.nn.Module) -> float:
        from apps.speaker.evaluate import embed_waves
        from apps.speaker.metrics import cosine_scores, eer

        was = encoder.training
        emb = embed_waves(encoder, self.waves)
        encoder.train(was)
        if not np.isfinite(emb).all():
            return float("nan")
        return eer(cosine_scores(emb, self.trials.enroll, self.trials.test), self.trials.labels)

    def _record(self, epoch: int, encoder: torch.nn.Module) -> None:
        v = self._eer(encoder)
        c = self.curve
        c["epoch"].append(epoch)
        c["eer"].append(v)
        if np.isfinite(v) and (c["best_epoch"] is None or v < c["best_eer"]):
            c["best_epoch"], c["best_eer"] = epoch, v
            save_encoder(encoder, self.root / "best_encoder.pt")
        write_json(self.path, c)
        best = "none" if c["best_epoch"] is None else f"{c['best_eer']:.2%} at epoch {c['best_epoch']}"
        self.say(f"validation EER after epoch {epoch}: {v:.2%} (best {best}; MFCC {c['mfcc_eer']:.2%})")

    def on_train_start(self, trainer, pl_module) -> None:
        done = trainer.current_epoch
        if self.path.is_file():
            self.curve = read_json(self.path, "validation curve")
            keep = [i for i, e in enumerate(self.curve["epoch"]) if e <= done]
            self.curve["epoch"] = [self.curve["epoch"][i] for i in keep]
            self.curve["eer"] = [self.curve["eer"][i] for i in keep]
        if not self.curve.get("epoch"):
            from apps.speaker.evaluate import MFCCStats
            from apps.speaker.metrics import cosine_scores, eer

            mf = MFCCStats(self.mfcc_coeffs, self.f_max)(self.waves)
            self.curve = {"epoch": [], "eer": [], "best_epoch": None, "best_eer": None, "n_trials":
                          len(self.trials.labels), "n_target": int(self.trials.labels.sum()),
                          "mfcc_eer": eer(cosine_scores(mf, self.trials.enroll, self.trials.test), self.trials.labels)}
            self._record(0, pl_module.encoder)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every == 0 or epoch >= self.epochs:
            self._record(epoch, pl_module.encoder)

    def plot(self, path: Path, title: str) -> None:
        plot_val_curves({title: self.curve}, path)


def plot_val_curves(curves: dict[str, dict], path: Path) -> None:
    """Validation EER by epoch of every curve (name -> val_curve.json's content), MFCC as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, c in curves.items():
        line, = ax.plot(c["epoch"], 100 * np.asarray(c["eer"], dtype=float), marker="o", ms=3, label=f"{name}")
        ax.axhline(100 * c["mfcc_eer"], color=line.get_color(), ls=":", lw=1, label=f"MFCC (same trials as {name})")
        if c.get("best_epoch") is not None:
            ax.plot([c["best_epoch"]], [100 * c["best_eer"]], "k*", ms=9)
    ax.set_xlabel("epoch (0 = untrained)")
    ax.set_ylabel("validation EER (%)")
    ax.set_title("validation EER (validation speakers, never trained on; * = encoder kept)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def build_module(s: SpeakerSettings, loss: str) -> SpeakerSSLModule:
    kind, sym = VARIANTS[loss]
    return SpeakerSSLModule(
        s.encoder_spec(), temperature=s.temperature, margin=margin_value(loss, s.margin),
        margin_type=kind or "additive", symmetric=sym, projector_dim=s.projector_dim, queue_size=s.queue_size,
        key_momentum=s.key_momentum,
        augment=dict(reverb_prob=s.reverb_prob, noise_prob=s.noise_prob, lowpass_prob=s.lowpass_prob,
                     codec_prob=s.codec_prob, snr_db=[s.snr_low_db, s.snr_high_db],
                     lowpass_hz=[s.lowpass_low_hz, s.lowpass_high_hz]),
        crop_samples=crop_samples(s), optimizer="adam", lr=s.lr, weight_decay=s.weight_decay, scheduler="cosine",
        warmup_steps=s.warmup_steps)


def crop_samples(s: SpeakerSettings) -> int:
    return int(s.crop_seconds * SAMPLE_RATE)


def save_encoder(encoder: SpeakerEncoder, path: Path) -> None:
    """``{"spec", "state_dict"}`` of the encoder (tensors and plain values only), atomically, on rank 0."""
    save_torch(path, {"spec": dict(encoder.spec), "state_dict": encoder.state_dict()})


def load_encoder(path: str | Path) -> SpeakerEncoder:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"encoder {path} does not exist: run 'python -m apps.speaker fit' first (same options)")
    blob = load_torch(path)
    try:
        enc = build_encoder(blob["spec"])
        enc.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not an encoder saved by this app ({e})") from e
    return enc.eval()


def _quiet_fit(trainer_kwargs: dict, module, loader, run_dir: Path, callbacks=()):
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        return fit_with_resume(trainer_kwargs, module, loader, run_dir, extra_callbacks=list(callbacks))


def _capped(trainer, epochs: int, what: str, log: Log) -> bool:
    """True (and a message) when ``--max-minutes`` stopped the fit before its last epoch."""
    if not stopped_by_deadline(trainer):
        return False
    log(f"{what}: stopped by --max-minutes after {trainer.current_epoch} of {epochs} epochs; re-run with a larger "
        "cap to resume from the last checkpoint")
    return True


def _cpc_pretrain(s: SpeakerSettings, root: Path, loader: DataLoader, trainer_kwargs: dict,
                  log: Log) -> SpeakerEncoder | None:
    """CPC pre-training in ``root`` (resumable; skipped when its ``encoder.pt`` exists); None when capped."""
    out = root / "encoder.pt"
    if out.is_file():
        log(f"CPC pre-trained encoder found at {out}")
        return load_encoder(out).train()
    seed_everything(s.seed)
    module = CPCModule(s.encoder_spec(), steps=s.cpc_steps, crop_samples=crop_samples(s), optimizer="adam", lr=s.lr,
                       weight_decay=s.weight_decay, scheduler="cosine", warmup_steps=s.warmup_steps)
    log(f"CPC pre-training: {s.cpc_epochs} epochs, K = {s.cpc_steps}")
    trainer = _quiet_fit({**trainer_kwargs, "max_epochs": s.cpc_epochs}, module, loader, root)
    if _capped(trainer, s.cpc_epochs, "CPC", log):
        return None
    save_encoder(module.encoder, out)
    barrier()
    return module.encoder


def fit_loss(s: SpeakerSettings, exp: Experiment, loss: str, root: Path, log: Log) -> Path | None:
    """Train (or resume) the encoder of ``loss`` in ``root``; returns the path of ``encoder.pt`` (None when
    ``--max-minutes`` stopped it first)."""
    out = root / "encoder.pt"
    if out.is_file():
        log(f"{loss}: trained encoder found at {out}; skipping fit")
        return out
    seed_everything(s.seed)
    loader = DataLoader(Utterances(exp.train.audio), batch_size=s.batch_size, shuffle=True, drop_last=True,
                        num_workers=0, collate_fn=pad_batch)
    trainer_kwargs = dict(max_epochs=s.epochs, log_every_n_steps=1, enable_progress_bar=s.progress,
                          enable_model_summary=False, num_sanity_val_steps=0)
    start = None
    if s.cpc_epochs:
        start = _cpc_pretrain(s, root / "cpc", loader, trainer_kwargs, log)
        if start is None:
            return None
    seed_everything(s.seed)
    module = build_module(s, loss)
    if start is not None:
        module.encoder.load_state_dict(start.state_dict())
    log(f"{loss}: training on {len(exp.train.utterances)} utterances of {len(exp.train.speakers)} speakers "
        f"({exp.train.seconds() / 60:.1f} min), {s.epochs} epochs x {len(loader) // s.world_size} batches"
        + (f" on each of {s.world_size} devices" if s.world_size > 1 else ""))
    t0 = time.perf_counter()
    meter = _Throughput()
    callbacks: list[Callback] = [meter]
    val = None
    if exp.val is not None:
        waves, trials, _ = trial_items(s, exp.val, s.seed, parts=s.val_parts)
        val = ValidationCurve(waves, trials, root, s.val_every, s.epochs, s.mfcc_coeffs, s.f_max, log)
        callbacks.append(val)
    trainer = _quiet_fit(trainer_kwargs, module, loader, root, callbacks)
    if _capped(trainer, s.epochs, loss, log):
        return None
    seconds = time.perf_counter() - t0
    curve = {}
    if val is not None:
        barrier()  # rank 0 wrote the curve and the best encoder
        curve = read_json(root / "val_curve.json", "validation curve") if (root / "val_curve.json").is_file() else {}
        if is_main_process() and curve:
            val.curve = curve
            val.plot(root / "val_curve.png", loss)
        if s.select_best and curve.get("best_epoch") is not None:
            module.encoder.load_state_dict(load_encoder(root / "best_encoder.pt").state_dict())
            log(f"{loss}: keeping the encoder of epoch {curve['best_epoch']} (validation EER {curve['best_eer']:.2%}"
                f"; last epoch {curve['eer'][-1]:.2%})")
    # throughput of this attempt's training loop (an attempt that resumed counts only the steps it ran)
    ran, loop_s = getattr(meter, "steps", 0), getattr(meter, "seconds", 0.0)
    per_step = s.batch_size * s.world_size
    stats = {"seconds_last_attempt": seconds, "loop_seconds_last_attempt": loop_s, "steps_last_attempt": ran,
             "global_step": trainer.global_step, "epochs": s.epochs, "devices": s.world_size,
             "utterances_per_epoch": trainer.num_training_batches * per_step,
             "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
             "device": str(module.device), "threads": torch.get_num_threads(),
             "utterances_per_second": ran * per_step / loop_s if loop_s > 0 else float("nan"),
             "train_speakers": len(exp.train.speakers), "train_utterances": len(exp.train.utterances),
             "train_hours": exp.train.seconds() / 3600,
             "val_speakers": len(exp.val.speakers) if exp.val is not None else 0,
             "best_epoch": curve.get("best_epoch"), "best_val_eer": curve.get("best_eer"),
             "selected": "best_validated" if s.select_best and curve.get("best_epoch") is not None else "last"}
    save_encoder(module.encoder, out)
    write_json(root / "train_stats.json", stats)
    barrier()  # every rank sees encoder.pt before anyone reads it
    log(f"{loss}: trained in {seconds:.0f} s ({stats['utterances_per_second']:.1f} utterances/s); encoder: {out}")
    return out
