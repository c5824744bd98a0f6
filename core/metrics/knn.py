r"""k-nearest-neighbour anomaly scores: distance of each query to its k nearest points of a reference bank.

The deep one-class detectors of Bergman et al. ("Deep Nearest Neighbor Anomaly Detection", 2020), PANDA
(Reiss et al., CVPR 2021) and MSC (Reiss & Hoshen, AAAI 2023) all score a test point by

.. math::
    s(q) = \sum_{j=1}^{k} \lVert q - b_{(j)}(q) \rVert_2^2

where :math:`b_{(1)}(q), \dots, b_{(k)}(q)` are the k nearest bank points (the normal training features)
and larger means more anomalous. With ``normalize=True`` queries and bank are L2-normalised first, so
:math:`\lVert q - b \rVert^2 = 2 - 2\cos(q, b)` and the ranking equals a cosine kNN.

Two exact backends give the same numbers up to float rounding: ``"faiss"`` (``IndexFlatL2``, exhaustive
and deterministic; used when faiss is installed) and ``"torch"`` (blocked ``cdist``: memory grows with
``batch_size x len(bank)``, not ``len(queries) x len(bank)``).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = ["knn_scores"]

_BACKENDS = ("auto", "faiss", "torch")


def _as_float_tensor(name: str, x: ArrayLike | torch.Tensor) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def knn_scores(
    queries: ArrayLike | torch.Tensor,
    bank: ArrayLike | torch.Tensor,
    *,
    k: int = 2,
    normalize: bool = True,
    backend: str = "auto",
    batch_size: int = 2048,
) -> np.ndarray:
    """Sum of squared L2 distances from each query to its ``k`` nearest bank rows (higher = more anomalous).

    Args:
        queries: (M, D) points to score.
        bank: (N, D) reference points (e.g. normal training features), N >= k.
        k: neighbours summed over (MSC / PANDA use 2).
        normalize: L2-normalise queries and bank first (the MSC convention; zero rows stay zero).
        backend: ``"faiss"``, ``"torch"`` or ``"auto"`` (faiss when installed).
        batch_size: queries per block of the torch backend.

    Returns:
        (M,) float64 scores.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    q, b = _as_float_tensor("queries", queries), _as_float_tensor("bank", bank)
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"queries and bank differ in dimension: {q.shape[1]} vs {b.shape[1]}")
    if b.shape[0] < k:
        raise ValueError(f"the bank has {b.shape[0]} rows, fewer than k={k}")
    if normalize:
        q, b = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(b, dim=1)
    if q.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    if backend == "faiss" or (backend == "auto" and _faiss_available()):
        import faiss

        index = faiss.IndexFlatL2(b.shape[1])
        index.add(np.ascontiguousarray(b.numpy()))
        dist, _ = index.search(np.ascontiguousarray(q.numpy()), k)
        return np.maximum(dist, 0.0).astype(np.float64).sum(1)
    out = []
    bd = b.double()
    for start in range(0, q.shape[0], batch_size):
        d2 = torch.cdist(q[start:start + batch_size].double(), bd).pow(2)
        out.append(d2.topk(k, dim=1, largest=False).values.sum(1))
    return torch.cat(out).numpy()
