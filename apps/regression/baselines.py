"""Gradient-boosted trees baseline of every report: scikit-learn's ``HistGradientBoostingRegressor`` with the L1
loss (``loss="absolute_error"``).

It sees the very input of the app's networks (:class:`apps.regression.data.DIRData`): the numeric features and,
natively as categories (``categorical_features``), the categorical columns' codes (a value absent from the
training split, the networks' unknown code 0, is a missing value for the trees). For sentence pairs these are the
same ``[|u - v|, u * v, cos]`` features of the frozen sentence encoder.

Tuning touches the training and validation splits only: the trees are grown on the training split for up to
:data:`MAX_ITER` boosting rounds at learning rate :data:`LEARNING_RATE` (no sample weights, no subsampling), and
the number of rounds is the one with the lowest validation MAE (early stopping on validation, read off
``staged_predict``). ``random_state`` is fixed (0); with no subsampling and no internal validation split the fit is
deterministic, so its figures are the same for every training seed, and a run directory keeps them in
``<run-dir>/hgb_l1/predictions.pt`` (reused while the data and these settings are unchanged).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apps.regression.data import DIRData

__all__ = ["hgb_baseline", "hgb_inputs", "HGB_NAME", "MAX_ITER", "LEARNING_RATE"]

HGB_NAME = "hgb_l1"
MAX_ITER = 500
LEARNING_RATE = 0.05
MAX_LEAF_NODES = 31
MIN_SAMPLES_LEAF = 20


def hgb_inputs(data: DIRData, split: str) -> np.ndarray:
    """The trees' input of a split: numeric features as they are, categorical codes as categories ``0..K-1``
    (``NaN`` for the unknown code)."""
    x = np.asarray(data.x[split], np.float64).copy()
    if data.cardinalities:
        codes = x[:, data.n_num :]
        x[:, data.n_num :] = np.where(codes > 0, codes - 1, np.nan)
    return x


def _key(data: DIRData) -> str:
    """Fingerprint of the inputs and the settings of the baseline."""
    h = hashlib.sha256(repr((MAX_ITER, LEARNING_RATE, MAX_LEAF_NODES, MIN_SAMPLES_LEAF, data.n_num,
                             list(data.cardinalities))).encode())
    for k in ("train", "val", "test"):
        h.update(np.ascontiguousarray(data.x[k]).tobytes())
        h.update(np.ascontiguousarray(data.y[k]).tobytes())
    return h.hexdigest()


def hgb_baseline(data: DIRData, threads: int | None = None, cache: str | Path | None = None) -> dict[str, Any]:
    """Fit the baseline on ``data``'s training split, early-stopped on its validation split (or read it from
    ``cache`` when that file holds the fit of the same data and settings; a new fit is written there).

    Returns ``{"test": predictions, "val": predictions, "iterations": rounds kept, "val_curve": validation MAE
    per round}`` (numpy arrays).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    from core.app import load_torch, save_torch

    key = _key(data)
    if cache is not None and Path(cache).is_file():
        try:
            old = load_torch(cache)
        except Exception:  # a damaged cache is refitted
            old = None
        if isinstance(old, dict) and old.get("key") == key:
            return {"test": old["test"].numpy(), "val": old["val"].numpy(), "iterations": int(old["iterations"]),
                    "val_curve": old["val_curve"].numpy()}

    cat = np.zeros(data.in_dim, bool)
    cat[data.n_num :] = True
    model = HistGradientBoostingRegressor(
        loss="absolute_error", learning_rate=LEARNING_RATE, max_iter=MAX_ITER, max_leaf_nodes=MAX_LEAF_NODES,
        min_samples_leaf=MIN_SAMPLES_LEAF, categorical_features=cat if cat.any() else None, early_stopping=False,
        random_state=0)
    xs = {k: hgb_inputs(data, k) for k in ("train", "val", "test")}
    with threadpool_limits(limits=threads):
        model.fit(xs["train"], data.y["train"].astype(np.float64))
        val_curve = np.array([np.abs(p - data.y["val"]).mean() for p in model.staged_predict(xs["val"])])
        best = int(np.argmin(val_curve))
        val_pred = test_pred = None
        for i, (pv, pt) in enumerate(zip(model.staged_predict(xs["val"]), model.staged_predict(xs["test"]))):
            if i == best:
                val_pred, test_pred = pv, pt
                break
    out = {"test": test_pred, "val": val_pred, "iterations": best + 1, "val_curve": val_curve}
    if cache is not None:
        arrays = {k: torch.from_numpy(np.asarray(out[k])) for k in ("test", "val", "val_curve")}
        save_torch(cache, {"key": key, "iterations": best + 1, **arrays})
    return out
