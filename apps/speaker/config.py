"""Settings of the speaker app: one dataclass, a quick preset, YAML overrides, validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.speaker.data import DataError
from core.training.options import load_yaml_options

__all__ = ["SpeakerConfig", "HELP", "load_yaml", "VARIANTS"]

#: the ablation of the papers at this scale: name -> (margin_type or None, symmetric)
VARIANTS: dict[str, tuple[str | None, bool]] = {
    "simclr": (None, False), "simclr_sym": (None, True),
    "am": ("additive", False), "am_sym": ("additive", True),
    "aam": ("angular", False), "aam_sym": ("angular", True),
}


@dataclass
class SpeakerConfig:
    """Every option of ``python -m apps.speaker`` (see :data:`HELP`)."""

    data: str = "librispeech"
    eval_data: str = "fsdd"
    speaker_pattern: str | None = None
    eval_speaker_pattern: str | None = None
    trials: str | None = None
    holdout_speakers: int = 51
    run_dir: str = "runs/speaker"
    seed: int = 1717
    encoder: str = "ecapa"
    width: int = 64
    n_mels: int = 40
    f_max: float = 3800.0
    feature_norm: str = "global"
    embed_dim: int = 192
    projector_dim: int = 0
    crop_seconds: float = 2.0
    loss: str = "am_sym"
    margin: float | None = None
    temperature: float = 0.05
    queue_size: int = 0
    cpc_epochs: int = 0
    cpc_steps: int = 4
    key_momentum: float = 0.999
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    reverb_prob: float = 0.5
    noise_prob: float = 0.8
    lowpass_prob: float = 0.0
    n_trials: int = 3000
    segment_seconds: float = 3.0
    eval_max_seconds: float = 20.0
    mfcc_coeffs: int = 20
    accelerator: str = "auto"
    devices: int = 1
    threads: int | None = None
    progress: bool = True

    @classmethod
    def quick(cls) -> SpeakerConfig:
        """8 epochs on the embedded LibriSpeech crops: under 2 minutes on 2 CPU cores."""
        return cls(run_dir="runs/speaker_quick", epochs=8, warmup_steps=5, n_trials=1500, segment_seconds=1.6)

    def margin_value(self) -> float:
        """``margin``, or the variant's default: 0 for SimCLR, 0.1 for AM, 0.1 rad for AAM."""
        kind, _ = VARIANTS[self.loss]
        if kind is None:
            return 0.0
        return 0.1 if self.margin is None else self.margin

    def validate(self) -> SpeakerConfig:
        """Raise :class:`DataError` for settings that cannot work."""
        for name in ("width", "n_mels", "embed_dim", "epochs", "n_trials", "mfcc_coeffs", "cpc_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{name} must be a positive integer, got {v!r}")
        for name in ("projector_dim", "queue_size", "warmup_steps", "holdout_speakers", "cpc_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise DataError(f"{name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise DataError(f"batch_size must be an integer >= 2 (contrastive batches need negatives), got "
                            f"{self.batch_size!r}")
        for name in ("crop_seconds", "temperature", "lr", "segment_seconds", "eval_max_seconds", "f_max"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise DataError(f"{name} must be a positive finite number, got {v!r}")
        if not 100 < self.f_max <= 8000:
            raise DataError(f"f_max must be in (100, 8000] Hz (audio is resampled to 16 kHz), got {self.f_max}")
        if self.feature_norm not in ("channel", "global"):
            raise DataError(f"feature_norm must be 'channel' or 'global', got {self.feature_norm!r}")
        if self.crop_seconds < 0.5:
            raise DataError(f"crop_seconds must be >= 0.5 (the encoder needs some frames), got {self.crop_seconds}")
        for name in ("weight_decay",):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise DataError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("reverb_prob", "noise_prob", "lowpass_prob"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise DataError(f"{name} must be a probability in [0, 1], got {v!r}")
        if not 0 <= self.key_momentum <= 1:
            raise DataError(f"key_momentum must be in [0, 1], got {self.key_momentum}")
        if self.loss not in VARIANTS:
            raise DataError(f"loss must be one of {list(VARIANTS)}, got {self.loss!r}")
        if self.margin is not None and (not math.isfinite(self.margin) or self.margin < 0):
            raise DataError(f"margin must be a finite number >= 0, got {self.margin}")
        kind, sym = VARIANTS[self.loss]
        if kind == "angular" and self.margin_value() >= math.pi:
            raise DataError(f"an angular margin must be < pi, got {self.margin}")
        if self.queue_size and sym:
            raise DataError(f"queue_size > 0 (MoCo) needs a non-symmetric loss, got loss={self.loss!r}")
        if self.encoder not in ("resnet", "ecapa"):
            raise DataError(f"encoder must be 'resnet' or 'ecapa', got {self.encoder!r}")
        if self.encoder == "ecapa" and self.width % 4:
            raise DataError(f"ecapa width (channels) must be divisible by 4, got {self.width}")
        if self.trials is not None and not Path(self.trials).is_file():
            raise DataError(f"trial list {self.trials} does not exist")
        if not isinstance(self.devices, int) or self.devices < 1:
            raise DataError(f"devices must be a positive integer, got {self.devices!r}")
        if self.threads is not None and self.threads < 1:
            raise DataError(f"threads must be >= 1, got {self.threads}")
        return self

    def encoder_spec(self) -> dict[str, Any]:
        return dict(arch=self.encoder, n_mels=self.n_mels, width=self.width, embed_dim=self.embed_dim,
                    f_max=self.f_max, feature_norm=self.feature_norm)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HELP: dict[str, str] = {
    "data": "training data: a folder ROOT/<speaker>/**/*.{wav,flac,ogg} (VoxCeleb layout) or a CSV manifest with "
            "columns path,speaker; or an embedded alias: 'librispeech' (251 LibriSpeech speakers, 5-s crops) or "
            "'fsdd'. Speaker labels are only used to hold speakers out and to build trials, never in training",
    "eval_data": "evaluation data (same formats) scored with trials; 'none' to evaluate on the held-out training "
                 "speakers only",
    "speaker_pattern": "for a flat --data folder: regular expression whose first group extracts the speaker from "
                       "each file name, e.g. '^(\\d+)-' for LibriSpeech names (default: ROOT/<speaker>/ layout)",
    "eval_speaker_pattern": "the same for a flat --eval-data folder, e.g. '^\\d+_([a-z]+)_' for FSDD recordings/",
    "trials": "trial list of eval_data in the VoxCeleb format (lines 'label enroll test', paths relative to the "
              "data root); default: a balanced list from the speaker labels (fixed seed, written next to the report)",
    "holdout_speakers": "speakers of --data held back from training (random, --seed) and evaluated with trials "
                        "between non-overlapping segments of their utterances; 0 = none",
    "run_dir": "run directory; a run's artefacts go to RUN_DIR/<loss>/ (re-running resumes there)",
    "seed": "seed of the speaker split, initialisation, crops, augmentation and trial lists",
    "encoder": "'resnet' (thin ResNet-34 + self-attentive pooling) or 'ecapa' (small ECAPA-TDNN)",
    "width": "resnet: base width (channels of the first stage; the paper's thin model uses 16); ecapa: channels C",
    "n_mels": "log-mel bins (40 or 80; 25 ms Hamming window, 10 ms hop)",
    "f_max": "upper edge of the mel filterbank in Hz, for the encoder and the MFCC baseline (8000 = full band; the "
             "default 3800 keeps to the band that 8 kHz evaluation data such as FSDD actually has)",
    "feature_norm": "per-utterance normalisation of the log-mels: 'channel' (mean/variance of each mel channel over "
                    "time, sslsv) or 'global' (one mean/variance per utterance: removes the gain, keeps the spectral "
                    "envelope, which carries most of the speaker information of one-word utterances)",
    "embed_dim": "embedding size (the encoder output that is scored)",
    "projector_dim": "0 = no projector (the margin papers' 2024 setting); else an MLP head to this size for the loss",
    "crop_seconds": "length of the two random crops of each utterance (the positives)",
    "loss": "training objective: " + ", ".join(VARIANTS) + " (simclr = no margin, am = additive margin "
            "NT-Xent-AM, aam = angular margin; _sym = symmetric NT-Xent over both views, else view-1 anchors only)",
    "margin": "margin m (AM: cos - m; AAM: cos(theta + m), radians); default 0.1 for am/aam, 0 for simclr",
    "temperature": "temperature tau of the cosine logits (scale s = 1 / tau)",
    "queue_size": "> 0: MoCo with an EMA key encoder and a queue of this many past keys as extra negatives "
                  "(non-symmetric losses only)",
    "cpc_epochs": "> 0: CPC pre-training of the encoder's frame level for this many epochs before the contrastive "
                  "training (GRU context, core.losses.cpc)",
    "cpc_steps": "CPC prediction steps K (frames ahead)",
    "key_momentum": "EMA momentum of the MoCo key encoder",
    "epochs": "training epochs (one epoch = one pair of crops of every training utterance)",
    "batch_size": "utterances per batch (2 x batch_size crops); the last incomplete batch is dropped",
    "lr": "Adam learning rate (linear warm-up, cosine decay)",
    "weight_decay": "Adam weight decay",
    "warmup_steps": "learning-rate warm-up steps",
    "reverb_prob": "probability of synthetic-RIR reverberation per crop",
    "noise_prob": "probability of additive coloured noise (SNR 0-15 dB) or babble (13-20 dB) per crop",
    "lowpass_prob": "probability of band-limiting a crop to 3.4-4 kHz (telephone / 8 kHz evaluation data)",
    "n_trials": "target (and as many non-target) trials per generated trial list",
    "segment_seconds": "length of the non-overlapping segments of held-out utterances used as trial sides",
    "eval_max_seconds": "evaluation utterances longer than this are cut to it (memory)",
    "mfcc_coeffs": "MFCC coefficients of the MFCC mean-and-std baseline",
    "accelerator": "Lightning accelerator of fit ('auto', 'cpu', 'gpu', ...)",
    "devices": "devices of fit; > 1 trains with DDP, negatives gathered from every device (core's all-gather with "
               "gradient) and the MoCo queue filled from every device",
    "threads": "torch CPU threads (unset: torch's choice)",
    "progress": "show progress bars",
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config of :class:`SpeakerConfig` fields; errors name the file (and line)."""
    return load_yaml_options(path, SpeakerConfig, DataError)
