r"""Linear evaluation: a logistic-regression probe on frozen features.

The standard protocol of self-supervised representation learning (e.g. Chen et al., "A Simple Framework
for Contrastive Learning of Visual Representations", ICML 2020, section 4; Kolesnikov et al., "Revisiting
Self-Supervised Visual Representation Learning", CVPR 2019): freeze the encoder, fit a linear classifier
on its features of the training split and report accuracy on the test split. Features are standardised
(zero mean, unit variance per dimension, statistics from the training split) so one regularisation
strength suits encoders whose feature scales differ, e.g. a trained and a randomly initialised one.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = ["linear_probe_accuracy"]


def _as_numpy(x: ArrayLike | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def linear_probe_accuracy(
    train_x: ArrayLike | torch.Tensor,
    train_y: ArrayLike | torch.Tensor,
    test_x: ArrayLike | torch.Tensor,
    test_y: ArrayLike | torch.Tensor,
    *,
    C: float = 1.0,
    max_iter: int = 2000,
) -> float:
    r"""Test accuracy of a multinomial logistic regression fitted on standardised training features.

    .. math::
        \hat y = \arg\max_c\, (W \tilde x + b)_c, \qquad \tilde x = (x - \mu_{\text{train}}) / \sigma_{\text{train}}

    with :math:`W, b` minimising the L2-regularised cross-entropy (strength ``1/C``) on the training split.

    Args:
        train_x: (N, D) training features.
        train_y: (N,) integer class labels, at least two classes.
        test_x: (M, D) test features.
        test_y: (M,) labels.
        C: inverse regularisation strength of :class:`sklearn.linear_model.LogisticRegression`.
        max_iter: L-BFGS iterations.

    Returns:
        Accuracy on the test split, in [0, 1].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr = _as_numpy(train_x), _as_numpy(train_y)
    xte, yte = _as_numpy(test_x), _as_numpy(test_y)
    for name, x in (("train_x", xtr), ("test_x", xte)):
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D array (n_samples, dim), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    for name, y, x in (("train_y", ytr, xtr), ("test_y", yte, xte)):
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{name} must be 1-D with one label per row of features, got shape {y.shape}")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_x and test_x differ in dimension: {xtr.shape[1]} vs {xte.shape[1]}")
    if np.unique(ytr).size < 2:
        raise ValueError("train_y must contain at least two classes")
    if not C > 0:
        raise ValueError(f"C must be positive, got {C}")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    clf.fit(xtr, ytr)
    return float((clf.predict(xte) == yte).mean())


def few_shot_probe_accuracy(
    train_x: ArrayLike | torch.Tensor,
    train_y: ArrayLike | torch.Tensor,
    test_x: ArrayLike | torch.Tensor,
    test_y: ArrayLike | torch.Tensor,
    *,
    shots: int,
    draws: int = 10,
    seed: int = 0,
    C: float = 1.0,
) -> float:
    r"""Mean test accuracy of :func:`linear_probe_accuracy` fitted on ``shots`` labelled samples per class.

    The low-label protocol of semi-supervised evaluation (e.g. SimCLR's 1 % / 10 % label fine-tuning,
    Chen et al. 2020, section 6): with few labels the probe depends more on how well the representation
    already separates the classes. The labelled subsets are drawn without replacement, stratified, from
    the training split, ``draws`` times with a fixed seed; the mean accuracy is returned.

    Args:
        train_x, train_y, test_x, test_y: as in :func:`linear_probe_accuracy`.
        shots: labelled samples per class, >= 1; every class needs at least that many.
        draws: independent subsets to average over.
        seed: seed of the subset draws.
        C: inverse regularisation strength.
    """
    xtr, ytr = _as_numpy(train_x), _as_numpy(train_y)
    if ytr.ndim != 1:
        raise ValueError(f"train_y must be 1-D, got shape {ytr.shape}")
    if not (isinstance(shots, int) and shots >= 1) or not (isinstance(draws, int) and draws >= 1):
        raise ValueError(f"shots and draws must be positive ints, got shots={shots!r}, draws={draws!r}")
    classes, counts = np.unique(ytr, return_counts=True)
    if counts.min() < shots:
        raise ValueError(f"class {classes[counts.argmin()]} has {counts.min()} samples, fewer than shots={shots}")
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(draws):
        idx = np.concatenate([rng.choice(np.flatnonzero(ytr == c), shots, replace=False) for c in classes])
        accs.append(linear_probe_accuracy(xtr[idx], ytr[idx], test_x, test_y, C=C))
    return float(np.mean(accs))
