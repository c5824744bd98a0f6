"""DIR metrics: MAE, MSE and GM overall and per shot group; Pearson / Spearman; error per label bin.

GM is the geometric mean of the per-sample absolute errors, ``exp(mean(log |e_i|))`` (Yang et al. 2021
use ``scipy.stats.gmean``); errors are floored at 1e-12 so that one exact prediction does not make the
whole group's GM zero through ``log 0``. A shot group with no test sample gets NaN (``null`` in JSON).
"""

from __future__ import annotations

import numpy as np

from apps.regression.dir import SHOTS

__all__ = ["geometric_mean", "shot_metrics", "per_bin_error", "correlations", "METRIC_NAMES"]

METRIC_NAMES = tuple(f"{m}_{g}" for m in ("mae", "mse", "gm") for g in ("all", *SHOTS))


def geometric_mean(errors: np.ndarray) -> float:
    """``exp(mean(log max(|e|, 1e-12)))``; NaN for no errors."""
    e = np.abs(np.asarray(errors, dtype=np.float64))
    if e.size == 0:
        return float("nan")
    return float(np.exp(np.mean(np.log(np.maximum(e, 1e-12)))))


def shot_metrics(preds: np.ndarray, labels: np.ndarray, test_bins: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """``mae_*``, ``mse_*``, ``gm_*`` for ``all``, ``many``, ``medium``, ``few``.

    Args:
        preds, labels: (n,) predictions and targets of the evaluation samples.
        test_bins: (n,) label bin of every evaluation sample.
        groups: (n_bins,) shot group of every bin (from the training histogram).
    """
    preds, labels = np.asarray(preds, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ")
    err = preds - labels
    sample_group = np.asarray(groups)[np.asarray(test_bins)]
    out: dict[str, float] = {}
    for g in ("all", *SHOTS):
        e = err if g == "all" else err[sample_group == g]
        out[f"mae_{g}"] = float(np.mean(np.abs(e))) if e.size else float("nan")
        out[f"mse_{g}"] = float(np.mean(e**2)) if e.size else float("nan")
        out[f"gm_{g}"] = geometric_mean(e)
        out[f"n_{g}"] = int(e.size)
    return out


def correlations(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation between predictions and targets."""
    from scipy.stats import pearsonr, spearmanr

    preds, labels = np.asarray(preds, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    if preds.size < 2 or np.std(preds) == 0 or np.std(labels) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}


def per_bin_error(preds: np.ndarray, labels: np.ndarray, test_bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Mean absolute error of every label bin (NaN where the evaluation split has no sample)."""
    err = np.abs(np.asarray(preds, np.float64).ravel() - np.asarray(labels, np.float64).ravel())
    tot = np.bincount(test_bins, weights=err, minlength=n_bins)
    cnt = np.bincount(test_bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
