"""Self-supervised training: the speaker split, the two-crop data set and the resumable Lightning fit.

Run-directory layout (``RUN_DIR/<loss>/``)::

    config.json                settings the artefacts were made with (a re-run with other ones is refused)
    checkpoints/last.ckpt      Lightning checkpoints: an interrupted fit resumes from here
    encoder.pt                 the trained encoder ({"spec": ..., "state_dict": ...}); fit is skipped when it exists
    train_stats.json           wall time and throughput (utterances / s) of the fit
    report.json, report.md     written by evaluate, with the plots and trial lists
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from apps.speaker.config import VARIANTS, SpeakerConfig
from apps.speaker.data import SAMPLE_RATE, Collection, DataError, load_collection, split_speakers
from apps.speaker.model import CPCModule, SpeakerEncoder, SpeakerSSLModule, build_encoder
from core.training import fit_with_resume, seed_everything

__all__ = ["Experiment", "prepare", "CropPairs", "fit", "load_encoder", "save_encoder", "crop"]

# settings that do not change the trained encoder (may differ between fit and evaluate)
_NON_ARTEFACT = ("eval_data", "eval_speaker_pattern", "trials", "run_dir", "n_trials", "segment_seconds",
                 "eval_max_seconds", "mfcc_coeffs", "accelerator", "devices", "threads", "progress")


@dataclass
class Experiment:
    dataset: str
    train: Collection  # training speakers (audio loaded)
    heldout: Collection | None  # held-out speakers of the same data (audio loaded)
    root: Path


def prepare(cfg: SpeakerConfig) -> Experiment:
    """Load the training data, split off the held-out speakers and lay out the run directory."""
    cfg.validate()
    col = load_collection(cfg.data, min_speakers=2, speaker_pattern=cfg.speaker_pattern)
    train_spk, held_spk = split_speakers(col.speakers, cfg.holdout_speakers, cfg.seed)
    col.load_audio(progress=cfg.progress)
    train = col.subset(set(train_spk))
    if len(train.utterances) < cfg.batch_size:
        raise DataError(f"{col.root}: {len(train.utterances)} training utterances, fewer than batch_size="
                        f"{cfg.batch_size}: lower --batch-size or --holdout-speakers")
    heldout = col.subset(set(held_spk)) if held_spk else None
    return Experiment(col.name, train, heldout, Path(cfg.run_dir) / cfg.loss)


def crop(wave: np.ndarray, n: int, start: int) -> np.ndarray:
    """``n`` samples from ``start``; a shorter utterance is repeated (wrapped) to length ``n``."""
    if len(wave) < n:
        wave = np.tile(wave, -(-n // len(wave)))
    return wave[start: start + n]


class CropPairs(Dataset):
    """Item i: two independent random crops of ``seconds`` of utterance i (the positive pair)."""

    def __init__(self, audio: list[np.ndarray], seconds: float) -> None:
        self.audio, self.n = audio, int(seconds * SAMPLE_RATE)

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.audio[i]
        hi = max(1, len(a) - self.n + 1)
        s1, s2 = torch.randint(0, hi, (2,)).tolist()
        return torch.from_numpy(crop(a, self.n, s1).copy()), torch.from_numpy(crop(a, self.n, s2).copy())


class _Throughput(Callback):
    """Steps and seconds of the training loop of this attempt (audio loading and set-up excluded)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.step0, self.t0, self.seconds, self.steps = trainer.global_step, time.perf_counter(), 0.0, 0

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds, self.steps = time.perf_counter() - self.t0, trainer.global_step - self.step0


def build_module(cfg: SpeakerConfig) -> SpeakerSSLModule:
    kind, sym = VARIANTS[cfg.loss]
    return SpeakerSSLModule(
        cfg.encoder_spec(), temperature=cfg.temperature, margin=cfg.margin_value(),
        margin_type=kind or "additive", symmetric=sym, projector_dim=cfg.projector_dim, queue_size=cfg.queue_size,
        key_momentum=cfg.key_momentum,
        augment=dict(reverb_prob=cfg.reverb_prob, noise_prob=cfg.noise_prob, lowpass_prob=cfg.lowpass_prob),
        optimizer="adam", lr=cfg.lr, weight_decay=cfg.weight_decay, scheduler="cosine",
        warmup_steps=cfg.warmup_steps)


def _artefact_settings(cfg: SpeakerConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in _NON_ARTEFACT}


def check_run_dir(cfg: SpeakerConfig, root: Path, write: bool) -> None:
    """Refuse to mix artefacts made with other settings; record the settings on first use."""
    path = root / "config.json"
    mine = _artefact_settings(cfg)
    if path.is_file():
        theirs = {k: v for k, v in json.loads(path.read_text()).items() if k not in _NON_ARTEFACT}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise DataError(f"{root} holds a run made with other settings ({', '.join(diff)}); use another "
                            "--run-dir or delete it")
    elif write:
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(mine, indent=2))


def save_encoder(encoder: SpeakerEncoder, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"spec": encoder.spec, "state_dict": encoder.state_dict()}, tmp)
    os.replace(tmp, path)


def load_encoder(path: str | Path) -> SpeakerEncoder:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"encoder {path} does not exist: run 'python -m apps.speaker fit' first (same options)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        enc = build_encoder(blob["spec"])
        enc.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not an encoder saved by this app ({e})") from e
    return enc.eval()


def _quiet_fit(trainer_kwargs: dict, module, loader, run_dir: Path, callbacks=()):
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        return fit_with_resume(trainer_kwargs, module, loader, run_dir, extra_callbacks=list(callbacks))


def _cpc_pretrain(cfg: SpeakerConfig, exp: Experiment, loader: DataLoader, trainer_kwargs: dict, log) -> SpeakerEncoder:
    """CPC pre-training in ``RUN_DIR/<loss>/cpc/`` (resumable; skipped when its ``encoder.pt`` exists)."""
    root = exp.root / "cpc"
    out = root / "encoder.pt"
    if out.is_file():
        log(f"[speaker] CPC pre-trained encoder found at {out}")
        return load_encoder(out).train()
    seed_everything(cfg.seed)
    module = CPCModule(cfg.encoder_spec(), steps=cfg.cpc_steps, optimizer="adam", lr=cfg.lr,
                       weight_decay=cfg.weight_decay, scheduler="cosine", warmup_steps=cfg.warmup_steps)
    log(f"[speaker] CPC pre-training: {cfg.cpc_epochs} epochs, K = {cfg.cpc_steps}")
    _quiet_fit({**trainer_kwargs, "max_epochs": cfg.cpc_epochs}, module, loader, root)
    root.mkdir(parents=True, exist_ok=True)
    save_encoder(module.encoder, out)
    return module.encoder


def fit(cfg: SpeakerConfig, exp: Experiment, log=print) -> Path:
    """Train (or resume) the encoder of ``cfg.loss``; returns the path of ``encoder.pt``."""
    check_run_dir(cfg, exp.root, write=True)
    out = exp.root / "encoder.pt"
    if out.is_file():
        log(f"[speaker] {cfg.loss}: trained encoder found at {out}; skipping fit")
        return out
    seed_everything(cfg.seed)
    loader = DataLoader(CropPairs(exp.train.audio, cfg.crop_seconds), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=True, num_workers=0)
    trainer_kwargs = dict(max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices, log_every_n_steps=1,
                          enable_progress_bar=cfg.progress, enable_model_summary=False, num_sanity_val_steps=0)
    start = _cpc_pretrain(cfg, exp, loader, trainer_kwargs, log) if cfg.cpc_epochs else None
    seed_everything(cfg.seed)
    module = build_module(cfg)
    if start is not None:
        module.encoder.load_state_dict(start.state_dict())
    log(f"[speaker] {cfg.loss}: training on {len(exp.train.utterances)} utterances of {len(exp.train.speakers)} "
        f"speakers ({exp.train.seconds() / 60:.1f} min), {cfg.epochs} epochs x {len(loader)} batches")
    t0 = time.perf_counter()
    meter = _Throughput()
    trainer = _quiet_fit(trainer_kwargs, module, loader, exp.root, [meter])
    seconds = time.perf_counter() - t0
    # throughput of this attempt's training loop (an attempt that resumed counts only the steps it ran)
    ran, loop_s = getattr(meter, "steps", 0), getattr(meter, "seconds", 0.0)
    stats = {"seconds_last_attempt": seconds, "loop_seconds_last_attempt": loop_s, "steps_last_attempt": ran,
             "global_step": trainer.global_step,
             "epochs": cfg.epochs, "utterances_per_epoch": len(loader) * cfg.batch_size,
             "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
             "device": str(module.device), "threads": torch.get_num_threads(),
             "utterances_per_second": ran * cfg.batch_size / loop_s if loop_s > 0 else float("nan")}
    save_encoder(module.encoder, out)
    (exp.root / "train_stats.json").write_text(json.dumps(stats, indent=2))
    log(f"[speaker] {cfg.loss}: trained in {seconds:.0f} s ({stats['utterances_per_second']:.1f} utterances/s); "
        f"encoder: {out}")
    return out
