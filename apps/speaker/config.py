"""Settings of the speaker app: one :class:`core.app.AppSettings` dataclass (help, ranges and whether a field changes
the trained encoders live in each field's :func:`core.app.option`) and the quick preset."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.app import AppSettings, InputError, option

__all__ = ["SpeakerSettings", "VARIANTS", "margin_value"]

#: the ablation of the papers at this scale: name -> (margin_type or None, symmetric)
VARIANTS: dict[str, tuple[str | None, bool]] = {
    "simclr": (None, False), "simclr_sym": (None, True),
    "am": ("additive", False), "am_sym": ("additive", True),
    "aam": ("angular", False), "aam_sym": ("angular", True),
}

_FORMATS = ("a folder ROOT/<speaker>/**/*.{wav,flac,ogg} (VoxCeleb layout), a flat folder with a speaker pattern, "
            "or a CSV manifest with columns path,speaker")


@dataclass
class SpeakerSettings(AppSettings):
    """Every option of ``python -m apps.speaker`` (fit / evaluate / run / sweep)."""

    data: str = option(
        "librispeech", help="training data: " + _FORMATS + "; or 'librispeech' (embedded: 251 LibriSpeech speakers, "
        "5-s crops). Speaker labels only choose the held-out speakers and build trials, never train")
    speaker_pattern: str | None = option(
        None, help="for a flat --data folder: regular expression whose first group is the speaker in each file name, "
        "e.g. '^(\\d+)-' for LibriSpeech names (default: the ROOT/<speaker>/ layout)")
    holdout_speakers: int = option(
        51, help="speakers of --data held back from training (drawn with --seed) and scored with trials between "
        "non-overlapping segments of their utterances; 0 = none", low=0)
    val_speakers: int = option(
        20, help="training speakers set aside (never trained on, drawn with --seed) for the validation EER every "
        "--val-every epochs: the learning curve (val_curve.json / .png, EER by epoch) and, with --select-best, the "
        "encoder kept; 0 = none", low=0)
    val_every: int = option(1, help="epochs between two validation EERs (the last epoch is always validated)", low=1)
    val_parts: int = option(4, help="equal non-overlapping pieces per validation utterance (trial sides: more pieces, "
                                    "more target trials, a finer validation EER)", low=2)
    select_best: bool = option(
        True, help="keep the encoder of the lowest validation EER, the untrained start (epoch 0) included, rather "
        "than the last epoch's (needs --val-speakers > 0)")
    test_data: str = option(
        "fsdd", help="unseen speakers the run's report scores (same formats as --data; 'fsdd' = the embedded Free "
        "Spoken Digit recordings; 'none' = the held-out speakers only)", model=False)
    test_speaker_pattern: str | None = option(
        None, help="speaker pattern of a flat --test-data folder, e.g. '^\\d+_([a-z]+)_' for FSDD recordings/",
        model=False)
    eval_data: str = option(
        "", help="evaluate: score the trained encoders on this other data instead (same formats); its report goes "
        "to <run-dir>/eval/<name>/ and leaves the run's own report as it is", model=False)
    eval_speaker_pattern: str | None = option(
        None, help="speaker pattern of a flat --eval-data folder", model=False)
    trials: str | None = option(
        None, help="trial list of the scored data (--eval-data when given, else --test-data) in the VoxCeleb format "
        "(lines 'label enroll test', paths relative to the data root); default: a balanced list drawn from the "
        "speaker labels (seeded, written next to the report)", model=False)
    losses: list[str] = option(
        ["am_sym"], help="loss variants to train and compare, each in <run-dir>/<loss>/seed<S>: simclr = no margin, "
        "am = additive margin (NT-Xent-AM), aam = angular margin; _sym = symmetric NT-Xent over both views, else "
        "view-1 anchors only; 'all' = the six (the papers' ablation)", choices=(*VARIANTS, "all"), model=False)
    encoder: str = option("ecapa", help="architecture: 'resnet' (thin ResNet-34 + self-attentive pooling) or 'ecapa' "
                                        "(small ECAPA-TDNN)", choices=("resnet", "ecapa"))
    width: int = option(64, help="resnet: channels of the first stage (the paper's thin model uses 16); ecapa: "
                                 "channels C (divisible by 4)", low=1)
    n_mels: int = option(40, help="log-mel bins (25 ms Hamming window, 10 ms hop)", low=1)
    f_max: float = option(3800.0, help="upper edge of the mel filterbank in Hz, for the encoder and the MFCC baseline "
                                       "(8000 = full band; 3800 keeps to the band of 8 kHz data such as FSDD)",
                          low=100, low_open=True, high=8000)
    feature_norm: str = option(
        "global", help="per-utterance normalisation of the log-mels: 'channel' (mean / variance of each mel channel "
        "over time, sslsv) or 'global' (one mean / variance per utterance: removes the gain, keeps the spectral "
        "envelope)", choices=("channel", "global"))
    embed_dim: int = option(192, help="embedding size (the encoder output that is scored)", low=1)
    projector_dim: int = option(0, help="0 = no projector (the margin papers' 2024 setting); else an MLP head to this "
                                        "size for the loss", low=0)
    crop_seconds: float = option(2.0, help="length of the two random crops of each utterance (the positives)",
                                 low=0.5)
    margin: float | None = option(None, help="margin m (AM: cos - m; AAM: cos(theta + m), radians); default 0.1 for "
                                             "am / aam; SimCLR variants have none", low=0)
    temperature: float = option(0.05, help="temperature tau of the cosine logits (scale s = 1 / tau)", low=0,
                                low_open=True)
    queue_size: int = option(0, help="> 0: MoCo with an EMA key encoder and a queue of this many past keys as extra "
                                     "negatives, filled from every device (non-symmetric losses only)", low=0)
    cpc_epochs: int = option(0, help="> 0: CPC pre-training of the encoder's frame level for this many epochs before "
                                     "the contrastive training (GRU context, core.losses.cpc)", low=0)
    cpc_steps: int = option(4, help="CPC prediction steps K (frames ahead)", low=1)
    key_momentum: float = option(0.999, help="EMA momentum of the MoCo key encoder", low=0, high=1)
    epochs: int = option(60, help="training epochs (one epoch = one pair of crops of every training utterance)",
                         low=1)
    batch_size: int = option(32, help="utterances per batch and device (2 x batch_size crops; contrastive batches "
                                      "need negatives); the last incomplete batch is dropped", low=2)
    lr: float = option(1e-3, help="Adam learning rate (linear warm-up, cosine decay)", low=0, low_open=True)
    weight_decay: float = option(0.0, help="Adam weight decay", low=0)
    warmup_steps: int = option(20, help="learning-rate warm-up steps", low=0)
    reverb_prob: float = option(0.5, help="probability of synthetic-RIR reverberation per crop (decaying-noise "
                                          "impulse response, RT60 0.2-0.8 s)", low=0, high=1)
    noise_prob: float = option(0.8, help="probability of additive coloured noise (SNR --snr-low-db to --snr-high-db) "
                                         "or babble (13-20 dB) per crop", low=0, high=1)
    snr_low_db: float = option(0.0, help="lowest SNR of the coloured noise (dB)")
    snr_high_db: float = option(15.0, help="highest SNR of the coloured noise (dB)")
    lowpass_prob: float = option(0.0, help="probability of a random low-pass per crop (cut-off drawn in "
                                           "--lowpass-low-hz .. --lowpass-high-hz)", low=0, high=1)
    lowpass_low_hz: float = option(3400.0, help="lowest cut-off of the random low-pass (Hz)", low=100, high=8000)
    lowpass_high_hz: float = option(4000.0, help="highest cut-off of the random low-pass (Hz)", low=100, high=8000)
    codec_prob: float = option(0.0, help="probability of a telephone-like codec per crop (300-3400 Hz band-pass, "
                                         "8-bit mu-law)", low=0, high=1)
    n_trials: int = option(3000, help="target (and as many non-target) trials per generated trial list", low=1,
                           model=False)
    segment_seconds: float = option(0.0, help="> 0: trial sides of the held-out (and validation) speakers are "
                                              "non-overlapping segments of this length (up to 6 per utterance); 0: "
                                              "each utterance cut into --heldout-parts equal pieces (full length)",
                                    low=0, model=False)
    heldout_parts: int = option(2, help="with --segment-seconds 0: equal non-overlapping pieces per held-out or "
                                        "validation utterance (trial sides; every target pair is scored)", low=2,
                                model=False)
    crop_eval_seconds: float = option(3.0, help="> 0: also score every evaluation set with each item cut to its "
                                                "middle this many seconds (sets '<name>_<L>s'; skipped where no item "
                                                "is longer); 0 = full length only", low=0, model=False)
    eval_noise_snr: float | None = option(
        None, help="also score every evaluation set with noisier copies of its items (sets '<name>_snr<DB>'): "
        "coloured noise at this SNR in dB (1/f^beta, beta ~ U[0, 2]) after a synthetic reverberation of half of "
        "them, drawn with --seed; default: clean only", model=False)
    asnorm_top: int = option(0, help="> 0: also score every encoder with AS-norm (rows '<loss>_asnorm'; the "
                                     "headline then), the top-N cosine scores against a cohort of training-utterance "
                                     "embeddings; 0 = cosine only", low=0, model=False)
    eval_max_seconds: float = option(20.0, help="evaluation utterances longer than this are cut to it (memory)",
                                     low=0, low_open=True, model=False)
    mfcc_coeffs: int = option(20, help="MFCC coefficients of the MFCC mean-and-std baseline (of 40 mel bins)", low=1,
                              high=40, model=False)

    @classmethod
    def quick(cls) -> SpeakerSettings:
        """20 epochs on the embedded LibriSpeech crops, validated every 2, scored clean and at 5 dB SNR: a few
        minutes on a shared CPU thread."""
        return cls(epochs=20, val_every=2, warmup_steps=5, n_trials=1500, heldout_parts=3, eval_noise_snr=5.0)

    def check(self) -> None:
        if not self.data:
            raise InputError("no training data: pass --data PATH (full mode: the 'librispeech' folder written by "
                             "'python -m apps.speaker prepare', see docs/apps/speaker.md)")
        if not self.test_data:
            raise InputError("no test data: pass --test-data PATH (full mode: the 'fsdd' folder written by "
                             "'python -m apps.speaker prepare'), or --test-data none")
        if "all" in self.losses:
            self.losses = list(VARIANTS)
        self.losses = list(dict.fromkeys(self.losses))
        for loss in self.losses:
            kind, sym = VARIANTS[loss]
            if kind == "angular" and margin_value(loss, self.margin) >= math.pi:
                raise InputError(f"an angular margin must be < pi, got {self.margin}")
            if self.queue_size and sym:
                raise InputError(f"queue_size > 0 (MoCo) needs a non-symmetric loss, got {loss!r}")
        if self.encoder == "ecapa" and self.width % 4:
            raise InputError(f"ecapa width (channels) must be divisible by 4, got {self.width}")
        for name, lo, hi in (("snr", self.snr_low_db, self.snr_high_db),
                             ("lowpass", self.lowpass_low_hz, self.lowpass_high_hz)):
            if lo > hi:
                raise InputError(f"--{name}-low-* ({lo:g}) must not exceed --{name}-high-* ({hi:g})")
        if self.select_best and not self.val_speakers:
            self.select_best = False  # nothing to select on: the last epoch's encoder is kept
        if self.trials is not None and not Path(self.trials).is_file():
            raise InputError(f"trial list {self.trials} does not exist")

    def encoder_spec(self) -> dict[str, Any]:
        return dict(arch=self.encoder, n_mels=self.n_mels, width=self.width, embed_dim=self.embed_dim,
                    f_max=self.f_max, feature_norm=self.feature_norm)


def margin_value(loss: str, margin: float | None) -> float:
    """The margin of ``loss``: 0 for SimCLR, else ``margin`` (default 0.1; radians for AAM)."""
    kind, _ = VARIANTS[loss]
    if kind is None:
        return 0.0
    return 0.1 if margin is None else margin
