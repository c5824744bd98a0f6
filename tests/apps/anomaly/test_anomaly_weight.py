"""The label-free weight of ``msc_raw``'s two terms: ``(1 - w) z(raw kNN) + w z(MSC kNN)`` with ``w`` chosen on
held-out normal training samples against Gaussian-perturbed copies of them (no test data, no labels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apps.anomaly.__main__ import main
from apps.anomaly.config import AnomalySettings
from apps.anomaly.evaluate import COPIES, WEIGHT_GRID, choose_msc_weight, synthetic_anomalies, zscore_knn_sum
from apps.anomaly.train import holdout_split
from core.app import InputError
from tests.apps.anomaly.test_anomaly_cli import TINY, separable_table


def _naive_knn(q: np.ndarray, bank: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    d = ((q[:, None, :] - bank[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].sum(1)


def _naive_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(pos > neg) + P(tie) / 2 over all pairs."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_weighted_zscore_sum_equals_the_formula() -> None:
    rng = np.random.default_rng(0)
    a_tr, a_te, b_tr, b_te = (rng.normal(size=s) for s in ((25, 3), (9, 3), (25, 4), (9, 4)))
    want = np.zeros(9)
    for (te, tr), w in zip(((a_te, a_tr), (b_te, b_tr)), (0.25, 0.75)):
        loo = _naive_knn(tr, tr, 2, exclude_self=True)
        want += w * (_naive_knn(te, tr, 2) - loo.mean()) / loo.std()
    got = zscore_knn_sum([(a_te, a_tr, False), (b_te, b_tr, False)], k=2, weights=(0.25, 0.75))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="weights"):
        zscore_knn_sum([(a_te, a_tr, False)], k=2, weights=(0.5, 0.5))


def test_synthetic_anomalies_noise_scale_is_set_by_the_nearest_neighbour_distance() -> None:
    # bank on a line at 0, 1, 3, 3 (one duplicate): nearest-other squared distances 1, 1, 0, 0 -> the median of
    # the positive ones is 1, D = 1, so sigma = scale * 1
    bank = np.array([[0.0], [1.0], [3.0], [3.0]])
    x = np.zeros((1000, 1))
    out = synthetic_anomalies(x, bank, seed=0, scale=2.0, copies=4)
    assert out.shape == (4000, 1) and out.dtype == np.float32
    assert abs(float(out.std()) - 2.0) < 0.05 and abs(float(out.mean())) < 0.1
    np.testing.assert_array_equal(out, synthetic_anomalies(x, bank, seed=0, scale=2.0, copies=4))  # seeded
    # D = 4 values per sample: sigma = scale * sqrt(median d / D); here d = 4 for every row -> sigma = 1 * 1
    bank4 = np.array([[0.0, 0, 0, 0], [1.0, 1, 1, 1], [2.0, 2, 2, 2]])
    noise = synthetic_anomalies(np.zeros((3000, 4)), bank4, seed=1, scale=1.0)
    assert abs(float(noise.std()) - 1.0) < 0.03
    clipped = synthetic_anomalies(np.full((50, 2), 0.5), np.array([[0.0, 0], [1.0, 1]]), 0, 3.0, clip=(0.0, 1.0))
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0 and (clipped == 1.0).any()


def _normals(n: int = 240, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_the_weight_goes_to_the_informative_term_when_the_other_is_pure_noise() -> None:
    x = _normals()
    _, hold = holdout_split(len(x), 0.25, seed=0)
    noise = np.random.default_rng(5)

    def pure_noise(a: np.ndarray) -> np.ndarray:  # features that ignore the input entirely
        return noise.normal(size=(len(a), 4))

    w, aucs = choose_msc_weight(x, pure_noise, hold, k=2, normalize=False, seed=0)
    assert w == 0.0 and list(aucs) == list(WEIGHT_GRID)
    assert aucs[0.0] > 0.7 and abs(aucs[1.0] - 0.5) < 0.1  # the raw term finds the copies; the noise does not
    assert all(aucs[0.0] > aucs[v] for v in WEIGHT_GRID[1:])



def test_identical_terms_tie_and_the_tie_keeps_equal_weights() -> None:
    x = _normals(seed=2)
    _, hold = holdout_split(len(x), 0.2, seed=1)
    w, aucs = choose_msc_weight(x, lambda a: np.asarray(a), hold, k=2, normalize=False, seed=0)
    assert w == 0.5 and max(aucs.values()) - min(aucs.values()) < 1e-9
    # the same held-out AUC, by hand: held-out normals vs their perturbed copies, raw kNN against the others
    keep = np.setdiff1d(np.arange(len(x)), hold)
    syn = synthetic_anomalies(x[hold], x[keep], seed=0, copies=COPIES)
    neg, pos = _naive_knn(x[hold], x[keep], 2), _naive_knn(syn, x[keep], 2)
    assert aucs[0.0] == pytest.approx(_naive_auc(neg, pos), abs=1e-9)


def test_no_held_out_samples_keeps_equal_weights_and_bad_grids_fail() -> None:
    x = _normals(40)
    assert choose_msc_weight(x, lambda a: a, np.arange(0), k=2, normalize=False, seed=0) == (0.5, {})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        choose_msc_weight(x, lambda a: a, np.arange(5), k=2, normalize=False, seed=0, grid=(0.0, 1.5))


def test_msc_weight_setting() -> None:
    assert AnomalySettings().fixed_msc_weight() is None  # default: auto
    assert AnomalySettings(msc_weight="0.25").fixed_msc_weight() == 0.25
    assert AnomalySettings(msc_weight="1").fixed_msc_weight() == 1.0
    for bad in ("1.5", "-0.1", "half", "nan"):
        with pytest.raises(InputError, match="msc_weight must be 'auto' or a number in"):
            AnomalySettings(msc_weight=bad).fixed_msc_weight()


def test_report_records_the_weight_and_a_fixed_weight_is_used(tmp_path: Path) -> None:
    data = separable_table(tmp_path / "t.npz")
    runs = tmp_path / "runs"
    assert main(["run", "--data", str(data), "--run-dir", str(runs), "--no-pyod", *TINY]) == 0
    report = json.loads((runs / "report.json").read_text())
    chosen = report["extra"]["msc_weight"]
    assert set(chosen) == {"t"} and chosen["t"] in WEIGHT_GRID
    assert set(report["extra"]["msc_weight_selection_roc_auc"]["t"]) == {f"{w:g}" for w in WEIGHT_GRID}
    # evaluation-only: a fixed weight re-scores the same fit; w = 0 is raw kNN exactly
    assert main(["evaluate", "--data", str(data), "--run-dir", str(runs), "--no-pyod", "--msc-weight", "0",
                 *TINY]) == 0
    report = json.loads((runs / "report.json").read_text())
    auc = {r["method"]: r["metrics"]["roc_auc"] for r in report["rows"]}
    assert report["extra"]["msc_weight"] == {"t": 0.0} and report["extra"]["msc_weight_selection_roc_auc"] == {"t": {}}
    assert auc["msc_raw"] == pytest.approx(auc["knn_raw"], abs=1e-12)
