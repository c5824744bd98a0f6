r"""Verification metrics: ROC error rates, EER (interpolated on the ROC) and normalised minDCF.

For scores :math:`s` with target (same-speaker) and non-target trials, and the decision "accept when
:math:`s \ge t`":

.. math::
    \mathrm{FNR}(t) = \frac{\#\{\text{targets}: s < t\}}{n_\text{tar}}, \qquad
    \mathrm{FPR}(t) = \frac{\#\{\text{non-targets}: s \ge t\}}{n_\text{non}}

evaluated at every distinct score and at :math:`+\infty` (reject all).

* **EER** -- the point where the piecewise-linear ROC (FPR, FNR) crosses the diagonal FNR = FPR:
  linear interpolation between the last operating point with FNR < FPR and the next one (WeSpeaker's
  convention; sslsv instead reports max(FPR, FNR) at argmin |FNR - FPR| without interpolation).
* **minDCF** (normalised, Kaldi / WeSpeaker / sslsv convention; SpeechBrain reports it un-normalised):

.. math::
    \mathrm{minDCF} = \min_t \frac{C_\text{miss} P_\text{tar} \mathrm{FNR}(t)
        + C_\text{fa} (1 - P_\text{tar}) \mathrm{FPR}(t)}
        {\min(C_\text{miss} P_\text{tar}, C_\text{fa} (1 - P_\text{tar}))}

so 1.0 is the cost of the best trivial system (accept all or reject all).

* **AS-norm** (adaptive symmetric score normalisation, Matejka et al. 2017): with :math:`S_e` the top-N cosine
  scores of the enrolment side against a cohort (embeddings of training utterances), :math:`S_t` the test side's,

.. math::
    s' = \tfrac12 \left(\frac{s - \mu(S_e)}{\sigma(S_e)} + \frac{s - \mu(S_t)}{\sigma(S_t)}\right)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["error_rates", "eer", "min_dcf", "verification_metrics", "cosine_scores", "as_norm"]


def _check(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain non-finite values")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (non-target) or 1 (target)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("need both target and non-target trials")
    return s, y


def error_rates(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FNR, FPR) at every distinct score (ascending) and at +inf; FNR rises, FPR falls."""
    s, y = _check(scores, labels)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    n_tar, n_non = int(y.sum()), int((~y).sum())
    # cumulative counts of targets / non-targets strictly below each distinct score
    thr, first = np.unique(s, return_index=True)
    tar_below = np.concatenate([[0], np.cumsum(y)])[first]
    non_below = np.concatenate([[0], np.cumsum(~y)])[first]
    thr = np.append(thr, np.inf)
    fnr = np.append(tar_below, n_tar) / n_tar
    fpr = (n_non - np.append(non_below, n_non)) / n_non
    return thr, fnr, fpr


def eer(scores: ArrayLike, labels: ArrayLike) -> float:
    """Equal error rate, interpolated linearly on the ROC where FNR - FPR changes sign."""
    _, fnr, fpr = error_rates(scores, labels)
    d = fnr - fpr  # -1 at the first threshold (accept all), +1 at +inf (reject all)
    i = int(np.argmax(d >= 0))
    if d[i] == 0:
        return float(fnr[i])
    a = -d[i - 1] / (d[i] - d[i - 1])
    return float(fnr[i - 1] + a * (fnr[i] - fnr[i - 1]))


def min_dcf(scores: ArrayLike, labels: ArrayLike, p_target: float = 0.01, c_miss: float = 1.0,
            c_fa: float = 1.0) -> float:
    """Normalised minimum detection cost over every threshold (see the module docstring)."""
    if not 0 < p_target < 1 or c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"need 0 < p_target < 1 and positive costs, got {p_target}, {c_miss}, {c_fa}")
    _, fnr, fpr = error_rates(scores, labels)
    cost = c_miss * p_target * fnr + c_fa * (1 - p_target) * fpr
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def verification_metrics(scores: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """``eer`` (a fraction, not %), ``min_dcf_p01`` and ``min_dcf_p05`` (C_miss = C_fa = 1), ``n_trials``."""
    return {"eer": eer(scores, labels), "min_dcf_p01": min_dcf(scores, labels, 0.01),
            "min_dcf_p05": min_dcf(scores, labels, 0.05), "n_trials": int(np.asarray(labels).size)}


def cosine_scores(emb: np.ndarray, enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine similarity of the embedding rows ``enroll[i]`` and ``test[i]``."""
    e = np.asarray(emb, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", e[enroll], e[test])


def as_norm(emb: np.ndarray, cohort: np.ndarray, enroll: np.ndarray, test: np.ndarray, top_n: int) -> np.ndarray:
    """AS-norm of the cosine scores of the trials ``(enroll[i], test[i])`` (see the module docstring): each side
    normalised by the mean and standard deviation of its ``top_n`` highest cosine scores against the ``cohort`` rows
    (all of them when the cohort is smaller)."""
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    e = np.asarray(emb, dtype=np.float64)
    c = np.asarray(cohort, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != e.shape[1] or len(c) < 2:
        raise ValueError(f"the cohort must be (>= 2, {e.shape[1]}) embeddings, got shape {c.shape}")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    k = min(top_n, len(c))
    top = -np.sort(-(e @ c.T), axis=1)[:, :k]  # (N, k) highest cohort scores of every item
    mu, sd = top.mean(1), np.maximum(top.std(1), 1e-8)
    s = np.einsum("ij,ij->i", e[enroll], e[test])
    return 0.5 * ((s - mu[enroll]) / sd[enroll] + (s - mu[test]) / sd[test])
