"""core.metrics.knn against a brute-force double loop."""

from __future__ import annotations

import numpy as np
import pytest

from core.metrics.knn import _faiss_available, knn_scores


def brute_force(q: np.ndarray, b: np.ndarray, k: int, normalize: bool) -> np.ndarray:
    q, b = q.astype(np.float64), b.astype(np.float64)
    if normalize:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    out = []
    for row in q:
        d = sorted(float(((row - other) ** 2).sum()) for other in b)
        out.append(sum(d[:k]))
    return np.array(out)


BACKENDS = ["torch"] + (["faiss"] if _faiss_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_matches_brute_force(backend: str, normalize: bool, k: int) -> None:
    rng = np.random.default_rng(0)
    q, b = rng.normal(size=(37, 6)), rng.normal(size=(23, 6))
    got = knn_scores(q, b, k=k, normalize=normalize, backend=backend, batch_size=8)
    np.testing.assert_allclose(got, brute_force(q, b, k, normalize), rtol=1e-4, atol=1e-5)


def test_backends_agree_and_far_points_score_higher() -> None:
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(200, 4))
    q = np.concatenate([rng.normal(size=(20, 4)), rng.normal(size=(20, 4)) + 8.0])
    s = knn_scores(q, bank, normalize=False, backend="torch")
    assert s[20:].min() > s[:20].max()
    if _faiss_available():
        np.testing.assert_allclose(knn_scores(q, bank, normalize=False, backend="faiss"), s, rtol=1e-4)


def test_point_in_bank_scores_zero_with_k1() -> None:
    b = np.eye(3)
    assert knn_scores(b, b, k=1, backend="torch").max() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be"),
        (dict(k=4), "fewer than k"),
        (dict(backend="annoy"), "backend"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        knn_scores(np.ones((2, 3)), np.ones((3, 3)), **kwargs)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="dimension"):
        knn_scores(np.ones((2, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        knn_scores(np.array([[np.nan, 1.0]]), np.ones((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        knn_scores(np.ones(3), np.ones((3, 3)))
