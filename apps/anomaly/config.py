"""Settings of the anomaly app: one dataclass, a quick preset, YAML overrides, validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.anomaly.data import DataError
from core.training.options import load_yaml_options

__all__ = ["AnomalyConfig", "HELP", "load_yaml", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class AnomalyConfig:
    """Every option of ``python -m apps.anomaly`` (see :data:`HELP`)."""

    data: str = "mnist"
    run_dir: str = "runs/anomaly"
    normal: list[str] | None = None
    pretrain_fraction: float = 0.5
    train_fraction: float = 0.6
    max_images: int | None = None
    seed: int = 0
    encoder: str | None = None
    width: int = 32
    feature_dim: int = 128
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    projection_dim: int = 64
    pretrain_epochs: int = 8
    pretrain_batch_size: int = 256
    pretrain_lr: float = 3e-3
    pretrain_temperature: float = 0.5
    corruption_rate: float = 0.4
    corruption_mode: str = "resample"
    epochs: int = 15
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 5e-5
    temperature: float = 0.25
    angular_weight: float = 0.0
    compact_epochs: int = 5
    k: int = 2
    normalize_scores: bool | None = None
    isolation_forest: bool = True
    threads: int | None = None
    progress: bool = True

    @classmethod
    def quick(cls) -> AnomalyConfig:
        """One digit / one table, a few epochs on a 2,000-image subset: under 2 minutes on 2 CPU cores."""
        return cls(run_dir="runs/anomaly_quick", normal=None, max_images=2000, pretrain_epochs=3,
                   epochs=3, compact_epochs=2, width=16)

    def finetune_lr(self, kind: str) -> float:
        """``lr``, or its default: 1e-5 for images (a gentle fine-tune, as the paper's), 1e-4 for tables."""
        if self.lr is not None:
            return self.lr
        return 1e-5 if kind == "image" else 1e-4

    def knn_normalize(self, kind: str) -> bool:
        """``normalize_scores``, or its default: True for images (MSC's cosine kNN), False for tables."""
        return self.normalize_scores if self.normalize_scores is not None else kind == "image"

    def validate(self) -> AnomalyConfig:
        """Raise :class:`DataError` for settings that cannot work."""
        pos_int = ("width", "feature_dim", "projection_dim", "pretrain_epochs", "epochs", "k")
        for name in pos_int:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{name} must be a positive integer, got {v!r}")
        for name in ("pretrain_batch_size", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 2:
                raise DataError(f"{name} must be an integer >= 2 (contrastive batches need negatives), got {v!r}")
        if not isinstance(self.compact_epochs, int) or self.compact_epochs < 0:
            raise DataError(f"compact_epochs must be an integer >= 0, got {self.compact_epochs!r}")
        for name in ("pretrain_lr", "lr", "temperature", "pretrain_temperature"):
            v = getattr(self, name)
            if name == "lr" and v is None:
                continue
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise DataError(f"{name} must be a positive number, got {v!r}")
        for name in ("weight_decay", "angular_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise DataError(f"{name} must be a number >= 0, got {v!r}")
        if not 0 <= self.pretrain_fraction < 1:
            raise DataError(f"pretrain_fraction must be in [0, 1), got {self.pretrain_fraction}")
        if self.pretrain_fraction == 0 and self.encoder is None:
            raise DataError("pretrain_fraction=0 leaves no pre-training pool: pass --encoder CHECKPOINT or a "
                            "pretrain_fraction > 0")
        if not 0 < self.train_fraction < 1:
            raise DataError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if not 0 <= self.corruption_rate < 1:
            raise DataError(f"corruption_rate must be in [0, 1), got {self.corruption_rate}")
        if self.corruption_mode not in ("resample", "mask"):
            raise DataError(f"corruption_mode must be 'resample' or 'mask', got {self.corruption_mode!r}")
        if any(not isinstance(h, int) or h < 1 for h in self.hidden_dims):
            raise DataError(f"hidden_dims must be positive integers, got {self.hidden_dims!r}")
        if self.max_images is not None and self.max_images < 20:
            raise DataError(f"max_images must be >= 20 or unset, got {self.max_images}")
        if self.threads is not None and self.threads < 1:
            raise DataError(f"threads must be >= 1, got {self.threads}")
        if self.encoder is not None and not Path(self.encoder).is_file():
            raise DataError(f"encoder checkpoint {self.encoder} does not exist")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HELP: dict[str, str] = {
    "data": "data path (an .npz, a folder of .npz tables, an MNIST IDX folder, or a folder per class) or an "
            "embedded default: 'mnist' (MNIST test images) or 'adbench' (13 ADBench tables)",
    "run_dir": "run directory; the data set's artefacts go to RUN_DIR/<dataset>/ (a re-run resumes there)",
    "normal": "images: class names to use as the normal class in turn; tables: table names (file stems) to "
              "use; default: all (the --quick preset takes the first one)",
    "pretrain_fraction": "images: stratified share of all images held out as the unlabelled pre-training pool "
                         "(disjoint from every train/test split)",
    "train_fraction": "share of the normal class's evaluation images (images) or of the normal rows (tables) "
                      "used for one-class training; the rest are test normals",
    "max_images": "images: keep a stratified random subset of this many images first (quick mode)",
    "seed": "seed of the splits, initialisation and augmentation",
    "encoder": "a pre-trained encoder checkpoint (.pt state dict or Lightning .ckpt) to use instead of the "
               "pretrain step; it must match --width/--feature-dim (images) or --hidden-dims/--feature-dim",
    "width": "SmallCNN width (channels of the first conv block)",
    "feature_dim": "encoder output size (the features phi that MSC fine-tunes and kNN scores)",
    "hidden_dims": "MLP hidden widths for tables",
    "projection_dim": "output size of the projection head used only during NT-Xent pre-training",
    "pretrain_epochs": "epochs of NT-Xent pre-training",
    "pretrain_batch_size": "batch size of pre-training",
    "pretrain_lr": "AdamW learning rate of pre-training (warm-up + cosine)",
    "pretrain_temperature": "NT-Xent temperature of pre-training",
    "corruption_rate": "tables: share of features corrupted per view (SCARF)",
    "corruption_mode": "tables: 'resample' (SCARF: value from a random row) or 'mask' (set to the mean)",
    "epochs": "epochs of MSC fine-tuning",
    "batch_size": "batch size of MSC and compactness fine-tuning",
    "lr": "Adam learning rate of MSC and compactness fine-tuning (constant; default 1e-5 for images, 1e-4 for "
          "tables)",
    "weight_decay": "weight decay of fine-tuning",
    "temperature": "MSC temperature (the paper: 0.25)",
    "angular_weight": "weight of the angular centre term added to MSC (0 = off, 1 = the authors' --angular)",
    "compact_epochs": "epochs of the compactness (Deep-SVDD-like) baseline fine-tune; 0 skips that baseline",
    "k": "neighbours of the kNN score (sum of squared L2 distances to the k nearest normal training features)",
    "normalize_scores": "L2-normalise encoder features before the kNN score (MSC's convention). Default: on for "
                        "images, off for tables, where the feature norm carries most of the anomaly signal (rows "
                        "with extreme values map to large features) and normalising throws it away",
    "isolation_forest": "run the Isolation Forest baseline on the raw inputs",
    "threads": "torch CPU threads (default: torch's choice)",
    "progress": "show progress bars",
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config of :class:`AnomalyConfig` fields; errors name the file (and line)."""
    return load_yaml_options(path, AnomalyConfig, DataError)
