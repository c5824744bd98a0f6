"""Representation probes: linear regression from a frozen latent state to the simulator's true state (R^2)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

__all__ = ["state_probe_r2", "split_by_group", "probe_refusal", "MIN_PROBE_EPISODES"]

#: a probe is fitted and reported only with at least this many episodes and twice as many training samples as
#: features (below that a ridge fit on one episode and a test on another measures the split, not the encoder)
MIN_PROBE_EPISODES = 5


def probe_refusal(n_episodes: int, n_train: int, n_test: int, n_features: int) -> str | None:
    """Why a probe with these counts is not reported, or ``None`` when it is."""
    if n_episodes < MIN_PROBE_EPISODES:
        return (f"state probe not reported: {n_episodes} episode(s), it needs >= {MIN_PROBE_EPISODES} "
                "(episodes are split into fit and test)")
    if n_train < 2 * n_features:
        return (f"state probe not reported: {n_train} training samples for {n_features} features (it needs "
                f">= {2 * n_features})")
    if n_test == 0:
        return "state probe not reported: no held-out samples"
    return None


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
                   test_fraction: float = 0.25, test_mask: np.ndarray | None = None) -> dict:
    """Ridge regression (alpha by leave-one-out CV over 1e-3..1e3) from standardised ``features`` (N, D) to
    ``states`` (N, S), fitted on the training episodes, scored on the held-out ones.

    Returns ``{"r2": mean R^2 over the state dimensions that vary, "per_dim": [...]}`` (``None`` for a constant
    dimension), where the R^2 of a dimension is 1 - MSE_test / Var(all samples): the share of that coordinate's
    variance the probe explains on unseen episodes (the variance of the whole set keeps the score stable when a
    short test split barely moves along a coordinate). ``test_mask`` (boolean, per sample) replaces the split by
    episode.

    With fewer than :data:`MIN_PROBE_EPISODES` episodes or fewer training samples than twice the features the
    probe is refused: ``{"r2": None, "per_dim": [], "refused": "<why>"}``.
    """
    features, states = np.asarray(features, np.float64), np.asarray(states, np.float64)
    if states.ndim == 1:
        states = states[:, None]
    if len(features) != len(states) or len(features) != len(groups):
        raise ValueError("features, states and groups must have the same length")
    if not (np.isfinite(features).all() and np.isfinite(states).all()):
        raise ValueError("the probe got non-finite features or states")
    if test_mask is not None:
        test = np.asarray(test_mask, bool)
        train = ~test
    else:
        train, test = split_by_group(groups, test_fraction)
    refused = probe_refusal(len(np.unique(groups)), int(train.sum()), int(test.sum()), features.shape[1])
    if refused:
        return {"r2": None, "per_dim": [], "refused": refused}
    scaler = StandardScaler().fit(features[train])
    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(scaler.transform(features[train]), states[train])
    pred = model.predict(scaler.transform(features[test]))
    var = states.var(axis=0)
    mse = ((states[test] - pred) ** 2).mean(axis=0)
    per_dim = [float(1.0 - mse[j] / var[j]) if var[j] > 1e-12 else None for j in range(states.shape[1])]
    varying = [v for v in per_dim if v is not None]
    if not varying:
        return {"r2": None, "per_dim": per_dim, "refused": "state probe not reported: no state dimension varies"}
    return {"r2": float(np.mean(varying)), "per_dim": per_dim, "alpha": float(model.alpha_)}
