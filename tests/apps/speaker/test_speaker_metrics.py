"""EER and minDCF against a brute-force threshold sweep and a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest

from apps.speaker.metrics import cosine_scores, eer, error_rates, min_dcf, verification_metrics


def _brute_points(scores: np.ndarray, labels: np.ndarray) -> list[tuple[float, float]]:
    """(FPR, FNR) for 'accept if score >= t' at every candidate threshold, counted one trial at a time."""
    tar = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    non = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    pts = []
    for t in [*sorted(set(scores.tolist())), float("inf")]:
        fnr = sum(1 for s in tar if s < t) / len(tar)
        fpr = sum(1 for s in non if s >= t) / len(non)
        pts.append((fpr, fnr))
    return pts


def _brute_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Where the polyline through the operating points meets the diagonal FNR = FPR (solved per segment)."""
    pts = _brute_points(scores, labels)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if y0 - x0 < 0 <= y1 - x1:  # FNR - FPR changes sign on this segment
            # point (x0 + a (x1 - x0), y0 + a (y1 - y0)) with x = y
            a = (x0 - y0) / ((y1 - y0) - (x1 - x0))
            return y0 + a * (y1 - y0)
    raise AssertionError("no crossing")


def _brute_min_dcf(scores: np.ndarray, labels: np.ndarray, p: float) -> float:
    return min(p * fnr + (1 - p) * fpr for fpr, fnr in _brute_points(scores, labels)) / min(p, 1 - p)


TAR = [0.9, 0.6, 0.4]
NON = [0.7, 0.3, 0.2, 0.1]


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    return np.array(TAR + NON), np.array([1] * 3 + [0] * 4)


def test_hand_computed_case() -> None:
    # operating points (FPR, FNR): thresholds 0.1 .. 0.9, inf:
    # (1,0) (.75,0) (.5,0) (.25,0) (.25,1/3) (.25,2/3) (0,2/3) (0,1); the ROC meets the diagonal on the vertical
    # segment FPR = 0.25 between FNR 0 and 1/3, so EER = 0.25.
    s, y = _hand_case()
    assert eer(s, y) == pytest.approx(0.25)
    # p = 0.05: the cheapest point is (0, 2/3): 0.05 * 2/3 / 0.05 = 2/3; p = 0.5: (0.25, 0) gives 0.25 / 0.5 * 0.5
    assert min_dcf(s, y, 0.05) == pytest.approx(2 / 3)
    assert min_dcf(s, y, 0.01) == pytest.approx(2 / 3)
    assert min_dcf(s, y, 0.5) == pytest.approx(0.25)
    thr, fnr, fpr = error_rates(s, y)
    assert np.isinf(thr[-1]) and np.allclose(thr[:-1], sorted(s))
    assert np.allclose(fpr, [1, .75, .5, .25, .25, .25, 0, 0])
    assert np.allclose(fnr, [0, 0, 0, 0, 1 / 3, 2 / 3, 2 / 3, 1])


@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_t, n_n = rng.integers(5, 60, size=2)
    scores = np.concatenate([rng.normal(1.0, 1.0, n_t), rng.normal(0.0, 1.0, n_n)])
    if seed % 2:  # ties between and within classes
        scores = np.round(scores, 1)
    labels = np.array([1] * n_t + [0] * n_n)
    perm = rng.permutation(len(labels))
    scores, labels = scores[perm], labels[perm]
    assert eer(scores, labels) == pytest.approx(_brute_eer(scores, labels))
    for p in (0.01, 0.05, 0.3):
        assert min_dcf(scores, labels, p) == pytest.approx(_brute_min_dcf(scores, labels, p))


def test_limits_and_invariance() -> None:
    y = np.array([1, 1, 0, 0])
    assert eer([3.0, 2.0, 1.0, 0.0], y) == 0.0
    assert eer([0.0, 1.0, 2.0, 3.0], y) == 1.0
    assert min_dcf([3.0, 2.0, 1.0, 0.0], y) == 0.0
    s, lab = _hand_case()
    m = verification_metrics(s, lab)
    m2 = verification_metrics(3 * s - 1, lab)  # any increasing map of the scores leaves the metrics unchanged
    assert m == pytest.approx(m2) and set(m) == {"eer", "min_dcf_p01", "min_dcf_p05", "n_trials"}
    assert 0 <= m["min_dcf_p01"] <= 1  # normalised: never worse than the best trivial system


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="both target and non-target"):
        eer([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="non-finite"):
        eer([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="differ in length"):
        eer([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="p_target"):
        min_dcf([0.1, 0.2], [1, 0], p_target=1.0)


def test_cosine_scores_naive() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 4))
    en, te = np.array([0, 1, 5]), np.array([2, 1, 3])
    ref = [float(emb[i] @ emb[j] / np.linalg.norm(emb[i]) / np.linalg.norm(emb[j])) for i, j in zip(en, te,
                                                                                                  strict=True)]
    assert np.allclose(cosine_scores(emb, en, te), ref)


def test_as_norm_against_naive_loops() -> None:
    from apps.speaker.metrics import as_norm

    rng = np.random.default_rng(4)
    emb, coh = rng.normal(size=(6, 5)), rng.normal(size=(9, 5))
    enroll, test = np.array([0, 1, 2, 3]), np.array([4, 5, 0, 1])
    top = 4

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))

    def stats(i: int) -> tuple[float, float]:
        sc = sorted((cos(emb[i], c) for c in coh), reverse=True)[:top]
        m = sum(sc) / top
        return m, (sum((v - m) ** 2 for v in sc) / top) ** 0.5

    want = []
    for e, t in zip(enroll, test, strict=True):
        s = cos(emb[e], emb[t])
        (me, se), (mt, st) = stats(e), stats(t)
        want.append(0.5 * ((s - me) / se + (s - mt) / st))
    assert np.allclose(as_norm(emb, coh, enroll, test, top), want)
    # a cohort smaller than top_n: all of it; scaling the embeddings changes nothing (cosine)
    assert np.allclose(as_norm(emb, coh[:3], enroll, test, 50), as_norm(emb, coh[:3], enroll, test, 3))
    assert np.allclose(as_norm(3 * emb, coh, enroll, test, top), want)
    with pytest.raises(ValueError, match="cohort"):
        as_norm(emb, coh[:, :3], enroll, test, top)
    with pytest.raises(ValueError, match="top_n"):
        as_norm(emb, coh, enroll, test, 0)
