"""Representation probes: linear regression from a frozen latent state to the simulator's true state (R^2)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

__all__ = ["state_probe_r2", "split_by_group"]


def split_by_group(groups: np.ndarray, test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) masks holding out the last ``test_fraction`` of the groups (episodes); with a
    single group, every 4th block of 25 consecutive samples is the test part (a time split of one episode
    would test on a different part of the state space)."""
    groups = np.asarray(groups)
    ids = np.unique(groups)
    if len(ids) < 2:
        test = (np.arange(len(groups)) // 25) % 4 == 3
        return ~test, test
    n_test = max(1, int(round(test_fraction * len(ids))))
    test = np.isin(groups, ids[-n_test:])
    return ~test, test


def state_probe_r2(features: np.ndarray, states: np.ndarray, groups: np.ndarray,
                   test_fraction: float = 0.25) -> dict:
    """Ridge regression (alpha by leave-one-out CV over 1e-3..1e3) from standardised ``features`` (N, D) to
    ``states`` (N, S), fitted on the training episodes, scored on the held-out ones.

    Returns ``{"r2": mean R^2 over the state dimensions that vary, "per_dim": [...]}``, where the R^2 of a
    dimension is 1 - MSE_test / Var(all samples): the share of that coordinate's variance the probe explains
    on unseen episodes (the variance of the whole set keeps the score stable when a short test split barely
    moves along a coordinate).
    """
    features, states = np.asarray(features, np.float64), np.asarray(states, np.float64)
    if states.ndim == 1:
        states = states[:, None]
    if len(features) != len(states) or len(features) != len(groups):
        raise ValueError("features, states and groups must have the same length")
    if not (np.isfinite(features).all() and np.isfinite(states).all()):
        raise ValueError("the probe got non-finite features or states")
    train, test = split_by_group(groups, test_fraction)
    scaler = StandardScaler().fit(features[train])
    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(scaler.transform(features[train]), states[train])
    pred = model.predict(scaler.transform(features[test]))
    var = states.var(axis=0)
    mse = ((states[test] - pred) ** 2).mean(axis=0)
    per_dim = [float(1.0 - mse[j] / var[j]) if var[j] > 1e-12 else float("nan") for j in range(states.shape[1])]
    return {"r2": float(np.nanmean(per_dim)), "per_dim": per_dim, "alpha": float(model.alpha_)}
