"""Configuration of the regression app: one dataclass, method presets, YAML loading and validation.

Precedence: dataclass defaults < ``--config`` YAML < ``--quick`` < command-line flags. ``method`` names a
preset of the method switches (``loss``, ``reweight``, ``lds``, ``fds``, ``conr``, ``supremix``); a
switch set explicitly (YAML or flag) wins over the preset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RegressionConfig", "METHODS", "ConfigError", "load_yaml", "resolve", "QUICK"]


class ConfigError(ValueError):
    """A configuration that asks for something impossible or unknown."""


#: method presets: the switches each method sets (anything not listed keeps its default)
METHODS: dict[str, dict[str, Any]] = {
    "vanilla": {},
    "mse": {"loss": "mse"},
    "inv": {"reweight": "inverse"},
    "sqrt_inv": {"reweight": "sqrt_inv"},
    "lds": {"reweight": "sqrt_inv", "lds": True},
    "fds": {"fds": True},
    "lds_fds": {"reweight": "sqrt_inv", "lds": True, "fds": True},
    "conr": {"conr": True},
    "lds_conr": {"reweight": "sqrt_inv", "lds": True, "conr": True},
    "supremix": {"supremix": True},
}
_SWITCH_DEFAULTS = {"loss": "l1", "reweight": "none", "lds": False, "fds": False, "conr": False, "supremix": False}

#: what ``--quick`` changes (the rest stays as configured)
QUICK: dict[str, Any] = {"epochs": 12, "supremix_epochs": 4}


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RegressionConfig:
    """Every option of ``fit`` / ``evaluate`` / ``compare`` (``--help`` prints these help strings)."""

    # data
    dataset: str = _f("abalone", "embedded default used without --data: 'abalone' (tabular, DIR split made "
                      "here) or 'sts_b_dir' (frozen MiniLM pair features, official skewed train / balanced dev, test)")
    data: str | None = _f(None, "a CSV / TSV / Parquet table (a DIR split is made from it), or a folder with "
                          "pre-split train.* and val.* (or dev.*) and test.* tables")
    target: str | None = _f(None, "target column (default: 'Rings' for abalone; required with --data)")
    features: list[str] | None = _f(None, "feature columns (default: every column but the target; text columns "
                                    "with <= 50 values are one-hot encoded)")
    bin_width: float | None = _f(None, "label bin width (default: 1 for abalone, 0.1 for STS-B; otherwise 1 for "
                                 "integer labels, else range / 50)")
    per_bin: int = _f(25, "DIR split of a single table: val and test samples per bin "
                      "(min(per_bin, floor(max_fraction * n_bin)) each)")
    max_fraction: float = _f(0.3, "DIR split: at most this fraction of a bin goes to val (and as much to test)")
    split_seed: int = _f(0, "seed of the DIR split (kept fixed across training seeds)")
    many_shot: int | None = _f(None, "a bin is many-shot with more than this many training samples "
                               "(default: round(100 s), s = min(1, n_train / 5000))")
    few_shot: int | None = _f(None, "a bin is few-shot with fewer than this many training samples "
                              "(default: round(20 s))")
    # method
    method: str = _f("vanilla", "method preset: " + ", ".join(METHODS))
    loss: str | None = _f(None, "regression loss 'l1' or 'mse' (default from the method: l1)")
    reweight: str | None = _f(None, "sample re-weighting 'none', 'inverse' (counts clipped to [5, 1000]) or "
                              "'sqrt_inv'")
    lds: bool | None = _f(None, "label-distribution smoothing of the re-weighting histogram")
    lds_kernel: str = _f("gaussian", "LDS kernel: gaussian, laplace or triang")
    lds_ks: int = _f(5, "LDS kernel size (odd, in bins)")
    lds_sigma: float = _f(2.0, "LDS kernel sigma (in bins)")
    fds: bool | None = _f(None, "feature-distribution smoothing of the encoder features")
    fds_kernel: str = _f("gaussian", "FDS kernel")
    fds_ks: int = _f(5, "FDS kernel size (odd, in bins)")
    fds_sigma: float = _f(2.0, "FDS kernel sigma (in bins)")
    fds_momentum: float = _f(0.9, "FDS running-statistics momentum")
    fds_start_update: int = _f(0, "first epoch whose features update the FDS statistics")
    fds_start_smooth: int = _f(1, "first epoch whose features are re-calibrated")
    conr: bool | None = _f(None, "add the ConR regulariser (core.losses.con_r) on two augmented views")
    conr_weight: float = _f(1.0, "beta: L = L_reg + beta L_ConR")
    conr_temperature: float = _f(0.2, "ConR temperature (paper 0.2; the public code hard-codes 0.07)")
    conr_window: float | None = _f(None, "ConR window omega in label units (default: the bin width)")
    conr_push_scale: float = _f(0.01, "ConR pushing-weight exponent e: S = w exp(e |y_j - y_q|)")
    conr_denominator: str = _f("paper", "ConR denominator 'paper' or 'official' (public code's +1 artefact)")
    supremix: bool | None = _f(None, "SupReMix contrastive pre-training (core.losses.sup_re_mix), then a linear "
                               "probe on the frozen encoder")
    supremix_temperature: float = _f(0.5, "SupReMix temperature")
    supremix_window: float = _f(5.0, "SupReMix mix-pos window n, in bins")
    supremix_beta: list[float] = _f([2.0, 8.0], "Beta(a, b) of the mix-neg coefficients")
    supremix_epochs: int | None = _f(None, "SupReMix pre-training epochs (default: --epochs)")
    supremix_batch_size: int = _f(64, "SupReMix pre-training batch size (its mix-pos term is O(B^3); the paper: 128)")
    probe_ridge: float = _f(1e-3, "ridge penalty (times n) of the closed-form least-squares linear probe")
    view_noise: float = _f(0.1, "augmented views (ConR, SupReMix): Gaussian noise std on standardised features")
    view_mask: float = _f(0.1, "augmented views: probability of zeroing each standardised feature")
    # model and optimisation
    hidden: list[int] = _f([128, 128], "hidden widths of the MLP encoder")
    feature_dim: int = _f(64, "encoder output (representation) size")
    dropout: float = _f(0.0, "dropout in the encoder")
    epochs: int = _f(60, "training epochs")
    batch_size: int = _f(256, "training batch size")
    lr: float = _f(1e-3, "Adam learning rate (cosine decay)")
    weight_decay: float = _f(1e-4, "weight decay")
    seed: int = _f(0, "training seed")
    threads: int = _f(1, "torch CPU threads")
    quick: bool = _f(False, "quick mode: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    out: str = _f("runs/regression", "root of the run directories (<out>/<dataset>/<method>-seed<seed>)")
    run_dir: str | None = _f(None, "explicit run directory (default: see --out)")
    progress: bool = _f(True, "show progress bars")

    # ------------------------------------------------------------------------------------------------
    def switch(self, name: str) -> Any:
        """The resolved value of a method switch (explicit > preset > default)."""
        v = getattr(self, name)
        if v is not None:
            return v
        return METHODS.get(self.method, {}).get(name, _SWITCH_DEFAULTS[name])

    def resolved(self) -> RegressionConfig:
        """A copy with the method switches filled in."""
        return dataclasses.replace(self, **{k: self.switch(k) for k in _SWITCH_DEFAULTS})

    def default_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        name = Path(self.data).stem if self.data else self.dataset
        return Path(self.out) / name / f"{self.method}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config (a mapping of option names to values)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a config must be a mapping of option: value")
    names = {f.name for f in dataclasses.fields(RegressionConfig)}
    unknown = sorted(set(d) - names - {"methods", "seeds", "focus"})
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {unknown}")
    return d


def resolve(cfg: RegressionConfig) -> RegressionConfig:
    """Validate and fill in the method switches; raises :class:`ConfigError` with a clear message."""
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; choose from {', '.join(METHODS)}")
    if cfg.data is None and cfg.dataset not in ("abalone", "sts_b_dir"):
        raise ConfigError(f"unknown embedded dataset {cfg.dataset!r}; choose 'abalone' or 'sts_b_dir', or pass --data")
    r = cfg.resolved()
    checks = [
        (r.loss in ("l1", "mse"), f"loss must be 'l1' or 'mse', got {r.loss!r}"),
        (r.reweight in ("none", "inverse", "sqrt_inv"), f"reweight must be none/inverse/sqrt_inv, got {r.reweight!r}"),
        (not (r.lds and r.reweight == "none"),
         "LDS smooths a re-weighting histogram: set reweight to sqrt_inv or inverse"),
        (not (r.supremix and (r.conr or r.fds)),
         "SupReMix (pre-train + linear probe) cannot be combined with ConR or FDS"),
        (r.bin_width is None or (math.isfinite(r.bin_width) and r.bin_width > 0), "bin_width must be > 0"),
        (r.per_bin >= 1, "per_bin must be >= 1"),
        (0 < r.max_fraction < 0.5, "max_fraction must be in (0, 0.5)"),
        (r.many_shot is None or r.many_shot >= 0, "many_shot must be >= 0"),
        (r.few_shot is None or r.few_shot >= 0, "few_shot must be >= 0"),
        (r.many_shot is None or r.few_shot is None or r.few_shot <= r.many_shot,
         "few_shot must not exceed many_shot"),
        (r.epochs >= 1 and (r.supremix_epochs is None or r.supremix_epochs >= 1), "epochs must be >= 1"),
        (r.batch_size >= 2 and r.supremix_batch_size >= 2, "batch sizes must be >= 2"),
        (r.lr > 0 and r.weight_decay >= 0, "need lr > 0 and weight_decay >= 0"),
        (r.lds_ks % 2 == 1 and r.fds_ks % 2 == 1 and r.lds_ks > 0 and r.fds_ks > 0, "kernel sizes must be odd"),
        (r.lds_sigma > 0 and r.fds_sigma > 0, "kernel sigmas must be > 0"),
        (0 <= r.fds_momentum < 1, "fds_momentum must be in [0, 1)"),
        (r.conr_weight >= 0 and r.conr_temperature > 0 and r.conr_push_scale >= 0, "invalid ConR settings"),
        (r.conr_window is None or r.conr_window >= 0, "conr_window must be >= 0"),
        (r.conr_denominator in ("paper", "official"), "conr_denominator must be 'paper' or 'official'"),
        (r.supremix_temperature > 0 and r.supremix_window > 0, "invalid SupReMix settings"),
        (len(r.supremix_beta) == 2 and min(r.supremix_beta) > 0, "supremix_beta must be two positive numbers"),
        (r.probe_ridge >= 0, "probe_ridge must be >= 0"),
        (0 <= r.view_noise and 0 <= r.view_mask < 1, "view_noise >= 0 and 0 <= view_mask < 1"),
        (r.feature_dim >= 1 and all(h >= 1 for h in r.hidden), "layer widths must be >= 1"),
        (0 <= r.dropout < 1, "dropout must be in [0, 1)"),
        (r.threads >= 1, "threads must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    return r
