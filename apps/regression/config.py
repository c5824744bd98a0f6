"""Settings of the regression app: one :class:`core.app.AppSettings` dataclass and the method presets.

Every field is a flag of ``fit`` / ``evaluate`` / ``run`` / ``sweep`` (kebab-case: ``--bin-width``); ``--config``
reads them from YAML (``apps/regression/configs/``); flags win over YAML. ``--methods`` names method presets;
each preset sets the method switches (``loss``, ``reweight``, ``lds``, ``fds``, ``conr``, ``supremix``); a switch
given explicitly (YAML or flag) overrides the preset for every method of the run (:func:`switches`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.app import AppSettings, InputError, option

__all__ = ["RegressionSettings", "METHODS", "DEFAULT_METHOD", "EMBEDDED", "Switches", "switches"]

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
#: the app's recommended method (the reports' headline: compared with each baseline)
DEFAULT_METHOD = "lds_conr"
_SWITCH_DEFAULTS = {"loss": "l1", "reweight": "none", "lds": False, "fds": False, "conr": False, "supremix": False}
#: embedded data sets (``--data NAME``), in shared_data/regression/
EMBEDDED = ("abalone", "sts_b_dir")
FULL_METHODS = ["vanilla", "lds", "fds", "lds_fds", "conr", "lds_conr", "supremix"]
KERNELS = ("gaussian", "laplace", "triang")


@dataclass
class RegressionSettings(AppSettings):
    """Every option of the regression app (``--help`` prints these help strings)."""

    # data
    data: str = option("abalone", help="'abalone' (embedded; tabular, DIR split made here), 'sts_b_dir' (embedded "
                       "frozen MiniLM pair features; official skewed train / balanced dev, test), a CSV / TSV / "
                       "Parquet table (a DIR split is made from it), a folder with pre-split train.*, val.* (or "
                       "dev.*) and test.* tables, or a .npz of sentence-pair embeddings made by `prepare sts_b_dir`")
    target: str | None = option(None, help="target column (default: 'Rings' for abalone; required with a table)")
    features: list[str] | None = option(None, help="feature columns (default: every column but the target; text "
                                        "columns are categorical, see --categorical)")
    categorical: list[str] | None = option(None, help="feature columns to treat as categories although numeric "
                                           "(integer codes); text, bool and category columns always are (<= 250 "
                                           "values each; learned embeddings, unseen values -> 'unknown')")
    bin_width: float | None = option(None, help="label bin width (default: 1 for abalone, 0.1 for STS-B; otherwise "
                                     "1 for integer labels, else range / 50)", low=0, low_open=True)
    per_bin: int = option(25, help="DIR split of a single table: val and test samples per bin "
                          "(min(per_bin, floor(max_fraction * n_bin)) each)", low=1)
    max_fraction: float = option(0.3, help="DIR split: at most this fraction of a bin goes to val (and as much "
                                 "to test)", low=0, high=0.5, low_open=True, high_open=True)
    split_seed: int = option(0, help="seed of the DIR split (kept fixed across training seeds)", low=0)
    many_shot: int | None = option(None, help="a bin is many-shot with more than this many training samples "
                                   "(default: round(100 s), s = min(1, n_train / 5000))", low=0, model=False)
    few_shot: int | None = option(None, help="a bin is few-shot with fewer than this many training samples "
                                  "(default: round(20 s))", low=0, model=False)
    # methods
    methods: list[str] = option(FULL_METHODS, help="method presets to train / evaluate, each in "
                                "<run-dir>/<method>/seed<S>", choices=tuple(METHODS), model=False)
    loss: str | None = option(None, help="override of the regression loss of every method (default from the "
                              "method: l1)", choices=("l1", "mse"))
    reweight: str | None = option(None, help="override of the sample re-weighting: 'none', 'inverse' (counts "
                                  "clipped to [5, 1000]) or 'sqrt_inv'", choices=("none", "inverse", "sqrt_inv"))
    lds: bool | None = option(None, help="override: label-distribution smoothing of the re-weighting histogram")
    lds_kernel: str = option("gaussian", help="LDS kernel", choices=KERNELS)
    lds_ks: int = option(5, help="LDS kernel size (odd, in bins)", low=1)
    lds_sigma: float = option(2.0, help="LDS kernel sigma (in bins)", low=0, low_open=True)
    fds: bool | None = option(None, help="override: feature-distribution smoothing of the encoder features")
    fds_kernel: str = option("gaussian", help="FDS kernel", choices=KERNELS)
    fds_ks: int = option(5, help="FDS kernel size (odd, in bins)", low=1)
    fds_sigma: float = option(2.0, help="FDS kernel sigma (in bins)", low=0, low_open=True)
    fds_momentum: float = option(0.9, help="FDS running-statistics momentum", low=0, high=1, high_open=True)
    fds_start_update: int = option(0, help="first epoch whose features update the FDS statistics", low=0)
    fds_start_smooth: int = option(1, help="first epoch whose features are re-calibrated", low=0)
    conr: bool | None = option(None, help="override: add the ConR regulariser (core.losses.con_r) on two "
                               "augmented views")
    conr_weight: float = option(1.0, help="beta: L = L_reg + beta L_ConR", low=0)
    conr_temperature: float = option(0.2, help="ConR temperature (paper 0.2; the public code hard-codes 0.07)",
                                     low=0, low_open=True)
    conr_window: float | None = option(None, help="ConR window omega in label units (default: the bin width)",
                                       low=0)
    conr_push_scale: float = option(0.01, help="ConR pushing-weight exponent e: S = w exp(e |y_j - y_q|)", low=0)
    conr_denominator: str = option("paper", help="ConR denominator ('official': the public code's +1 artefact)",
                                   choices=("paper", "official"))
    supremix: bool | None = option(None, help="override: SupReMix contrastive pre-training "
                                   "(core.losses.sup_re_mix), then a linear probe on the frozen encoder")
    supremix_temperature: float = option(0.5, help="SupReMix temperature", low=0, low_open=True)
    supremix_window: float = option(5.0, help="SupReMix mix-pos window n, in bins", low=0, low_open=True)
    supremix_beta: list[float] = option([2.0, 8.0], help="Beta(a, b) of the mix-neg coefficients (two numbers)",
                                        low=0, low_open=True)
    supremix_epochs: int | None = option(None, help="SupReMix pre-training epochs (default: --epochs; a short "
                                         "pre-training leaves the frozen encoder under-trained and its linear "
                                         "probe unstable across seeds)", low=1)
    supremix_batch_size: int = option(32, help="SupReMix pre-training batch size per device (its mix-pos term is "
                                      "O(B^3); the paper: 128)", low=2)
    probe_ridge: float = option(1e-3, help="ridge penalty (times n) of the closed-form least-squares linear probe",
                                low=0)
    view_noise: float = option(0.1, help="augmented views (ConR, SupReMix): Gaussian noise std on standardised "
                               "features", low=0)
    view_mask: float = option(0.1, help="augmented views: probability of zeroing each standardised feature",
                              low=0, high=1, high_open=True)
    # model and optimisation
    hidden: list[int] = option([128, 128], help="hidden widths of the MLP encoder", low=1)
    feature_dim: int = option(64, help="encoder output (representation) size", low=1)
    dropout: float = option(0.0, help="dropout in the encoder", low=0, high=1, high_open=True)
    epochs: int = option(40, help="training epochs", low=1)
    batch_size: int = option(256, help="training batch size per device", low=2)
    lr: float = option(1e-3, help="Adam learning rate (cosine decay)", low=0, low_open=True)
    weight_decay: float = option(1e-4, help="weight decay", low=0)
    select_epoch: str = option("best_val", help="weights kept by the networks trained end to end: those of the "
                               "epoch with the lowest validation MAE ('best_val'; the trees baseline likewise keeps "
                               "the boosting rounds with the lowest validation MAE) or of the last epoch ('last'); "
                               "SupReMix always keeps its last pre-training epoch", choices=("best_val", "last"))

    @classmethod
    def quick(cls) -> RegressionSettings:
        """Abalone, 12 epochs (SupReMix pre-training too), vanilla vs LDS+ConR (the default) vs SupReMix."""
        return cls(epochs=12, methods=["vanilla", DEFAULT_METHOD, "supremix"])

    def check(self) -> None:
        if not self.methods:
            raise InputError("methods must name at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise InputError(f"methods lists a method twice: {self.methods}")
        if self.data not in EMBEDDED and not str(self.data).endswith(".npz") and not self.target:
            raise InputError("--target NAME is required with --data PATH (a table or a folder of tables)")
        if self.lds_ks % 2 == 0 or self.fds_ks % 2 == 0:
            raise InputError(f"kernel sizes must be odd, got lds_ks={self.lds_ks}, fds_ks={self.fds_ks}")
        if self.many_shot is not None and self.few_shot is not None and self.few_shot > self.many_shot:
            raise InputError(f"few_shot ({self.few_shot}) must not exceed many_shot ({self.many_shot})")
        if len(self.supremix_beta) != 2:
            raise InputError(f"supremix_beta must be two positive numbers, got {self.supremix_beta}")
        if self.bin_width is not None and not math.isfinite(self.bin_width):
            raise InputError("bin_width must be finite")
        for m in self.methods:
            switches(self, m)


@dataclass(frozen=True)
class Switches:
    """The resolved method switches of one method."""

    method: str
    loss: str
    reweight: str
    lds: bool
    fds: bool
    conr: bool
    supremix: bool


def switches(s: RegressionSettings, method: str) -> Switches:
    """``method``'s switches: explicit settings > the method's preset > defaults; :class:`InputError` for
    impossible combinations."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    values = {k: getattr(s, k) if getattr(s, k) is not None else METHODS[method].get(k, d)
              for k, d in _SWITCH_DEFAULTS.items()}
    sw = Switches(method=method, **values)
    if sw.lds and sw.reweight == "none":
        raise InputError(f"{method}: LDS smooths a re-weighting histogram: set reweight to sqrt_inv or inverse")
    if sw.supremix and (sw.conr or sw.fds):
        raise InputError(f"{method}: SupReMix (pre-train + linear probe) cannot be combined with ConR or FDS")
    return sw
