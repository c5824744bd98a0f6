r"""Representation diagnostics: alignment, uniformity (Wang & Isola 2020) and effective rank (Roy & Vetterli 2007).

All three take plain embedding matrices (rows are samples) and return a 0-d tensor, so they can be logged
during training or computed on a frozen encoder's output. :func:`alignment` and :func:`uniformity`
L2-normalise their inputs first: they are defined on the unit hypersphere.

References:
    Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and Uniformity on
    the Hypersphere", ICML 2020.
    Roy & Vetterli, "The effective rank: A measure of effective dimensionality", EUSIPCO 2007.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["alignment", "uniformity", "effective_rank"]


def _check_matrix(name: str, z: Tensor, min_rows: int = 1) -> None:
    if not isinstance(z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, dim), got shape {tuple(z.shape)}")
    if z.shape[0] < min_rows or z.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} row(s) and 1 column, got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {z.dtype}")
    if not torch.isfinite(z).all():
        raise ValueError(f"{name} contains NaN or infinite values")


_UNIF_ROWS = 1024


def _upcast(z: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32 (computed and returned in float32, as the losses do)."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    r"""Alignment of positive pairs (Wang & Isola 2020, eq. 4).

    .. math::
        \mathcal{L}_{\text{align}} = \frac{1}{N}\sum_{i=1}^{N} \lVert f(x_i) - f(y_i) \rVert_2^{\alpha},
        \qquad f(\cdot) = \frac{z}{\lVert z \rVert_2}

    Row ``i`` of ``z1`` and row ``i`` of ``z2`` are the two views of one positive pair. Lower is better:
    0 when every pair maps to the same direction, 2^alpha when every pair is antipodal.

    Args:
        z1, z2: (N, D) embeddings of the two views (normalised here).
        alpha: exponent of the distance, > 0 (the paper uses 2).

    Returns:
        0-d tensor (differentiable).
    """
    _check_matrix("z1", z1)
    _check_matrix("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    _check_positive("alpha", alpha)
    z1, z2 = _upcast(z1), _upcast(z2)
    d = (F.normalize(z1, dim=1) - F.normalize(z2, dim=1)).norm(dim=1)
    return d.pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    r"""Uniformity on the hypersphere (Wang & Isola 2020, eq. 5).

    The log of the average Gaussian potential over all distinct pairs :math:`i < j`:

    .. math::
        \mathcal{L}_{\text{uniform}} = \log \frac{2}{N(N-1)} \sum_{i<j} e^{-t \lVert f(x_i) - f(x_j) \rVert_2^2}

    Lower is better (more uniform); it lies in :math:`[-4t, 0]`, reaching 0 when all points coincide.
    Computed with a log-sum-exp for stability.

    Args:
        z: (N, D) embeddings, N >= 2 (normalised here).
        t: potential scale, > 0 (the paper uses 2).

    Returns:
        0-d tensor (differentiable).
    """
    _check_matrix("z", z, min_rows=2)
    _check_positive("t", t)
    u = F.normalize(z.double(), dim=1)
    # |u_i - u_j|^2 = 2 - 2 u_i . u_j on the unit sphere, in float64 (no cancellation error worth the name at any
    # t): smooth everywhere, where ``pdist`` (a square root, then squared) has a NaN gradient for two coinciding
    # points. Row blocks of _UNIF_ROWS x N keep the memory at pdist's level.
    n = u.shape[0]
    parts = []
    for r0 in range(0, n - 1, _UNIF_ROWS):
        r1 = min(r0 + _UNIF_ROWS, n - 1)
        rows = torch.arange(r0, r1, device=u.device)
        cols = torch.arange(r0 + 1, n, device=u.device)
        sq = (2.0 - 2.0 * (u[r0:r1] @ u[r0 + 1:].T)).clamp_min(0.0)  # pairs (i, j) with j >= r0 + 1
        x = (-t * sq).masked_fill(cols[None, :] <= rows[:, None], float("-inf"))  # keep j > i only
        parts.append(torch.logsumexp(x.reshape(-1), 0))
    n_pairs = n * (n - 1) // 2
    return (torch.logsumexp(torch.stack(parts), 0) - math.log(n_pairs)).to(_upcast(z).dtype)


def effective_rank(z: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Effective rank of a matrix (Roy & Vetterli 2007).

    With singular values :math:`\sigma_k` and :math:`p_k = \sigma_k / \sum_j \sigma_j`,

    .. math::
        \operatorname{erank}(Z) = \exp\Big(-\sum_k p_k \log p_k\Big)

    (with :math:`0 \log 0 = 0`). It is a real number between 1 and ``min(N, D)``: equal to ``r`` for a
    matrix with ``r`` equal non-zero singular values; a collapsed embedding gives a value near 1. The
    matrix is used as given; centre it first if the mean direction should not count.

    Args:
        z: (N, D) matrix, not all zeros.
        eps: singular values below ``eps * max`` are treated as exact zeros.

    Returns:
        0-d tensor.
    """
    _check_matrix("z", z)
    s = torch.linalg.svdvals(z.double())
    if s.max() <= 0:
        raise ValueError("effective_rank is undefined for an all-zero matrix")
    s = torch.where(s > eps * s.max(), s, torch.zeros_like(s))
    p = s / s.sum()
    entropy = -torch.special.xlogy(p, p).sum()
    return entropy.exp().to(z.dtype)
