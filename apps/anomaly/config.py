"""Settings of the anomaly app: one :class:`core.app.AppSettings` dataclass (help, ranges and choices in the field
metadata) and its quick preset. The runner layers them: defaults (or ``--quick``), then ``--config`` YAML, then
flags, and validates them before anything is written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from core.app import AppSettings, InputError, option

__all__ = ["AnomalySettings", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class AnomalySettings(AppSettings):
    """Every option of ``python -m apps.anomaly`` besides the common ones (``--data``, ``--run-dir``, ...)."""

    data: str = option("mnist", help="data path (an .npz, a folder of .npz tables, an MNIST IDX folder, or a folder "
                                     "per class) or an embedded default: 'mnist' (MNIST test images) or 'adbench' "
                                     "(13 ADBench tables); one data set per run directory")
    normal: list[str] | None = option(None, help="images: class names to use as the normal class in turn; tables: "
                                                 "table names (file stems) to use; default: all (the --quick preset "
                                                 "takes the first one)", model=False)
    pretrain_fraction: float = option(0.5, help="images: stratified share of all images held out as the unlabelled "
                                                "pre-training pool (disjoint from every train/test split)",
                                      low=0, high=1, high_open=True)
    train_fraction: float = option(0.6, help="share of the normal class's evaluation images (images) or of the "
                                             "normal rows (tables) used for one-class training; the rest are test "
                                             "normals", low=0, high=1, low_open=True, high_open=True)
    max_images: int | None = option(None, help="images: keep a stratified random subset of this many images first "
                                               "(quick mode)", low=20)
    encoder_checkpoint: str | None = option(None, help="a pre-trained encoder checkpoint (.pt state dict or Lightning "
                                                       ".ckpt) to use instead of the pretrain step; it must match "
                                                       "--width/--feature-dim (images) or --hidden-dims/--feature-dim")
    width: int = option(32, help="SmallCNN width (channels of the first conv block)", low=1)
    feature_dim: int = option(128, help="encoder output size (the features phi that MSC fine-tunes and kNN scores)",
                              low=1)
    hidden_dims: list[int] = option([256, 256], help="MLP hidden widths for tables", low=1)
    projection_dim: int = option(64, help="output size of the projection head used only during NT-Xent "
                                          "pre-training", low=1)
    pretrain_epochs: int = option(8, help="epochs of NT-Xent pre-training", low=1)
    pretrain_batch_size: int = option(256, help="batch size of pre-training, per device "
                                                "(contrastive batches need negatives)", low=2)
    pretrain_lr: float = option(3e-3, help="AdamW learning rate of pre-training (warm-up + cosine)", low=0,
                                low_open=True)
    pretrain_temperature: float = option(0.5, help="NT-Xent temperature of pre-training", low=0, low_open=True)
    corruption_rate: float = option(0.4, help="tables: share of features corrupted per view (SCARF)", low=0, high=1,
                                    high_open=True)
    corruption_mode: str = option("resample", help="tables: 'resample' (SCARF: value from a random row) or 'mask' "
                                                   "(set to the mean)", choices=("resample", "mask"))
    epochs: int = option(15, help="epochs of MSC fine-tuning", low=1)
    batch_size: int = option(64, help="batch size of MSC and compactness fine-tuning, per device",
                               low=2)
    lr: float | None = option(None, help="Adam learning rate of MSC and compactness fine-tuning (constant; default "
                                         "1e-5 for images, 1e-4 for tables)", low=0, low_open=True)
    weight_decay: float = option(5e-5, help="weight decay of fine-tuning", low=0)
    temperature: float = option(0.25, help="MSC temperature (the paper: 0.25)", low=0, low_open=True)
    angular_weight: float = option(1.0, help="weight of the angular centre term added to MSC (0 = off, 1 = the "
                                             "authors' --angular)", low=0)
    freeze_bn: bool = option(True, help="MSC fine-tuning: re-estimate the encoder's BatchNorm statistics once on "
                                        "the normal training samples, then keep them fixed (off: they drift with "
                                        "every train-mode batch)")
    holdout_fraction: float = option(0.2, help="share of the normal training samples held out of MSC fine-tuning "
                                               "to choose its epoch (lowest MSC loss on them, no labels; 0 = no "
                                               "hold-out, keep the last epoch); every training sample stays in the "
                                               "kNN bank", low=0, high=1, high_open=True)
    patience: int = option(3, help="stop MSC fine-tuning after this many epochs without a lower held-out MSC loss",
                           low=1)
    compact_epochs: int = option(5, help="epochs of the compactness (Deep-SVDD-like) baseline fine-tune; 0 skips "
                                         "that baseline", low=0)
    k: int = option(2, help="neighbours of the kNN score (sum of squared L2 distances to the k nearest normal "
                            "training features)", low=1, model=False)
    normalize_scores: bool | None = option(None, help="L2-normalise encoder features before the kNN score (MSC's "
                                                      "convention). Default: on for images, off for tables, where "
                                                      "the feature norm carries most of the anomaly signal",
                                           model=False)
    msc_weight: str = option("auto", help="weight w of the MSC-feature term in the default score msc_raw = (1 - w) "
                                          "z(raw kNN) + w z(MSC kNN): a number in [0, 1] (0.5 = equal weights), or "
                                          "'auto': per task, the w of {0, 0.25, 0.5, 0.75, 1} that best separates the "
                                          "held-out normal training samples from Gaussian-perturbed copies of them "
                                          "(no test data, no labels)", model=False)
    isolation_forest: bool = option(True, help="run the Isolation Forest baseline on the raw inputs", model=False)
    pyod: bool = option(True, help="run PyOD's classical detectors (kNN, LOF, OCSVM, ECOD, COPOD) on the raw "
                                   "inputs as baselines, when PyOD is installed", model=False)

    @classmethod
    def quick(cls) -> AnomalySettings:
        """One digit / one table, a few epochs on a 2,000-image subset: under 2 minutes on 2 CPU cores."""
        return cls(max_images=2000, pretrain_epochs=3, epochs=3, compact_epochs=2, width=16)

    def check(self) -> None:
        self.fixed_msc_weight()
        if self.pretrain_fraction == 0 and self.encoder_checkpoint is None:
            raise InputError("pretrain_fraction=0 leaves no pre-training pool: pass --encoder-checkpoint CHECKPOINT "
                             "or a pretrain_fraction > 0")

    def fixed_msc_weight(self) -> float | None:
        """``msc_weight`` as a number, or None for ``auto`` (raises :class:`InputError` for anything else)."""
        if str(self.msc_weight).strip().lower() == "auto":
            return None
        try:
            w = float(self.msc_weight)
        except ValueError:
            w = math.nan
        if not 0.0 <= w <= 1.0:
            raise InputError(f"msc_weight must be 'auto' or a number in [0, 1], got {self.msc_weight!r}")
        return w

    def finetune_lr(self, kind: str) -> float:
        """``lr``, or its default: 1e-5 for images (a gentle fine-tune, as the paper's), 1e-4 for tables."""
        if self.lr is not None:
            return self.lr
        return 1e-5 if kind == "image" else 1e-4

    def knn_normalize(self, kind: str) -> bool:
        """``normalize_scores``, or its default: True for images (MSC's cosine kNN), False for tables."""
        return self.normalize_scores if self.normalize_scores is not None else kind == "image"
