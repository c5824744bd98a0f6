"""Settings of the recommendation app: one dataclass, a quick preset, YAML overrides, validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.recommendation.data import DataError
from apps.recommendation.model import METHODS
from core.training.options import check_run_limits, load_yaml_options

__all__ = ["RecConfig", "HELP", "load_yaml", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class RecConfig:
    """Every option of ``python -m apps.recommendation`` (see :data:`HELP`)."""

    data: str = "beauty"
    run_dir: str = "runs/recommendation"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0])
    max_users: int | None = None
    max_items: int | None = None
    max_len: int = 50
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.5
    batch_size: int = 256
    bucket_pool: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 100
    eval_every: int = 2
    patience: int = 5
    cl4srec_lambda: float = 0.1
    duorec_lambda: float = 0.1
    mclrec_lambda: float = 0.0
    mclrec_beta: float = 0.05
    reg_weight: float = 0.1
    tau: float = 1.0
    cl_positions: str = "last"
    training: str = "all_positions"
    crop_eta: float = 0.5
    mask_gamma: float = 0.5
    reorder_beta: float = 0.8
    exclude_seen: bool = True
    eval_batch_size: int = 1024
    threads: int | None = None
    progress: bool = True
    accelerator: str = "cpu"
    max_minutes: float | None = None
    missing_seeds: str = "error"

    @classmethod
    def quick(cls) -> RecConfig:
        """4,000 Beauty users and their 1,000 most frequent items, 6 epochs per method: all four methods fit and
        evaluate in < 2 min on 2 CPU cores."""
        return cls(run_dir="runs/recommendation_quick", max_users=4000, max_items=1000, epochs=6, eval_every=3,
                   patience=100, dropout=0.2, lr=2e-3, batch_size=64)

    def method_weights(self, method: str) -> dict[str, float]:
        """(lam, beta) of a method: the weight of its contrastive term(s)."""
        return {"sasrec": dict(lam=0.0, beta=0.0), "cl4srec": dict(lam=self.cl4srec_lambda, beta=0.0),
                "duorec": dict(lam=self.duorec_lambda, beta=0.0),
                "mclrec": dict(lam=self.mclrec_lambda, beta=self.mclrec_beta)}[method]

    def validate(self) -> RecConfig:
        """Raise :class:`DataError` for settings that cannot work."""
        for name in ("max_len", "dim", "layers", "heads", "epochs", "eval_every", "patience", "eval_batch_size",
                     "bucket_pool"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise DataError(f"batch_size must be an integer >= 2 (in-batch negatives), got {self.batch_size!r}")
        if self.dim % self.heads:
            raise DataError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not self.methods:
            raise DataError("methods is empty")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise DataError(f"unknown method(s) {bad}; choose from {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise DataError(f"methods lists a method twice: {self.methods}")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise DataError(f"seeds must be non-negative integers, got {self.seeds!r}")
        for name in ("lr", "tau"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise DataError(f"{name} must be a positive number, got {v!r}")
        for name in ("weight_decay", "cl4srec_lambda", "duorec_lambda", "mclrec_lambda", "mclrec_beta", "reg_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise DataError(f"{name} must be a number >= 0, got {v!r}")
        if self.training not in ("all_positions", "prefixes"):
            raise DataError(f"training must be 'all_positions' or 'prefixes', got {self.training!r}")
        if self.cl_positions == "all" and self.training == "prefixes":
            raise DataError("cl_positions='all' needs training='all_positions' (a prefix row has one target)")
        if self.cl_positions not in ("last", "all"):
            raise DataError(f"cl_positions must be 'last' or 'all', got {self.cl_positions!r}")
        if not 0 <= self.dropout < 1:
            raise DataError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("crop_eta", "mask_gamma", "reorder_beta"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise DataError(f"{name} must be in [0, 1], got {v}")
        if self.max_users is not None and self.max_users < 2:
            raise DataError(f"max_users must be >= 2 or unset, got {self.max_users}")
        if self.max_items is not None and self.max_items < 2:
            raise DataError(f"max_items must be >= 2 or unset, got {self.max_items}")
        if self.threads is not None and self.threads < 1:
            raise DataError(f"threads must be >= 1, got {self.threads}")
        if self.missing_seeds not in ("error", "skip"):
            raise DataError(f"missing_seeds must be 'error' or 'skip', got {self.missing_seeds!r}")
        check_run_limits(self.accelerator, self.max_minutes, DataError)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HELP: dict[str, str] = {
    "data": "interactions: an embedded data set ('beauty' = Amazon Beauty, 'toys' = Amazon Toys and Games, S3-Rec "
            "preprocessing), an S3-Rec .txt file (one line per user: 'user item1 item2 ...', chronological) or a "
            ".csv with columns user,item,timestamp",
    "run_dir": "run directory; artefacts go to RUN_DIR/<dataset>/seed<S>/<method>/ (a re-run resumes there) and the "
               "report to RUN_DIR/<dataset>/",
    "methods": "methods to fit / evaluate, from sasrec cl4srec duorec mclrec (the report's main method is the last)",
    "seeds": "seeds to run (one model per method and seed; the report gives the mean and every seed)",
    "max_users": "keep a random subset of this many users first (quick mode)",
    "max_items": "keep only this many most frequent items (users left with < 3 interactions are dropped; quick "
                 "mode)",
    "max_len": "maximum sequence length n (longer training sequences are cut into windows of n targets)",
    "dim": "embedding / hidden size d",
    "layers": "Transformer layers",
    "heads": "attention heads",
    "dropout": "hidden and attention dropout (the MCLRec paper: 0.5 on Amazon data)",
    "batch_size": "training sequences per batch (also the in-batch negatives of the contrastive terms)",
    "bucket_pool": "training batches are drawn from pools of this many batches sorted by sequence length (less "
                   "padding, faster); 1 = plain random batches (more diverse in-batch negatives, see the README)",
    "lr": "Adam learning rate (encoder and MCLRec augmenters)",
    "weight_decay": "Adam weight decay",
    "epochs": "maximum training epochs per method (early stopping usually ends a run before)",
    "eval_every": "full-ranking validation every this many epochs",
    "patience": "early stopping: stop after this many validations without a better validation NDCG@10",
    "cl4srec_lambda": "CL4SRec: weight of the NT-Xent term",
    "duorec_lambda": "DuoRec: weight of the contrastive regulariser",
    "mclrec_lambda": "MCLRec: weight lambda of L_cl1 (NT-Xent of the two augmented views; Beauty script: 0)",
    "mclrec_beta": "MCLRec: weight beta of L_cl2 (+ reg_weight * R) in the encoder loss (Beauty script: 0.05)",
    "reg_weight": "MCLRec: weight of the regulariser R inside the beta term and the augmenter loss (code: 0.1)",
    "tau": "temperature of every contrastive term (dot-product similarity; the papers' code: 1)",
    "training": "training samples: 'all_positions' (one row per sequence, the loss at every position: fast) or "
                "'prefixes' (the papers' RecBole form: one row per prefix, the loss and the contrastive views on its "
                "last position only; ~6x more rows per epoch on Beauty; only each row's last state is computed)",
    "cl_positions": "DuoRec's contrastive term on the last position of each sequence ('last': the paper's one "
                    "prefix per sample, with a sampled same-target partner) or on every position ('all': every "
                    "training prefix of the batch, two dropout views, same-target states as positives)",
    "crop_eta": "crop keeps floor(eta * L) items",
    "mask_gamma": "mask sets floor(gamma * L) items to padding",
    "reorder_beta": "reorder shuffles a span of floor(beta * L) items",
    "exclude_seen": "evaluation: items already in the user's input sequence are not ranked (S3-Rec convention)",
    "eval_batch_size": "users per batch of full-ranking evaluation",
    "threads": "torch CPU threads (default: torch's choice)",
    "progress": "show progress bars",
    "accelerator": "Lightning accelerator for training and validation (cpu, cuda / gpu, auto); the test ranking "
                   "runs on the CPU",
    "max_minutes": "wall-clock limit of each method's training (Lightning max_time, counted over the whole run): "
                   "training stops there and keeps the best validated model; re-running fit with a larger limit "
                   "continues such a run from its last checkpoint",
    "missing_seeds": "evaluate: a method with no fitted model for one of --seeds is an 'error' (default), or 'skip' "
                     "tests the seeds it has (the report names them per method; a method with none is an error)",
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config of :class:`RecConfig` fields; errors name the file (and line)."""
    return load_yaml_options(path, RecConfig, DataError)
