"""Metric functions vs hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import gmean

from apps.regression.metrics import correlations, geometric_mean, per_bin_error, shot_metrics


def test_geometric_mean_hand():
    assert geometric_mean(np.array([1.0, 4.0])) == pytest.approx(2.0)
    assert geometric_mean(np.array([-2.0, 8.0])) == pytest.approx(4.0)  # absolute errors
    assert geometric_mean(np.array([0.5, 2.0, 8.0])) == pytest.approx(gmean([0.5, 2.0, 8.0]))
    assert math.isnan(geometric_mean(np.array([])))
    assert geometric_mean(np.array([0.0, 1.0])) == pytest.approx(1e-6)  # floored at 1e-12


def test_shot_metrics_hand():
    groups = np.array(["many", "medium", "few"])
    labels = np.array([1.0, 1.0, 2.0, 3.0, 3.0])
    preds = np.array([2.0, 0.0, 4.0, 3.5, 1.0])  # errors 1, 1, 2, 0.5, 2
    bins = np.array([0, 0, 1, 2, 2])
    m = shot_metrics(preds, labels, bins, groups)
    assert m["mae_all"] == pytest.approx(6.5 / 5)
    assert m["mse_all"] == pytest.approx((1 + 1 + 4 + 0.25 + 4) / 5)
    assert m["gm_all"] == pytest.approx((1 * 1 * 2 * 0.5 * 2) ** (1 / 5))
    assert (m["mae_many"], m["mae_medium"], m["mae_few"]) == pytest.approx((1.0, 2.0, 1.25))
    assert (m["gm_many"], m["gm_medium"], m["gm_few"]) == pytest.approx((1.0, 2.0, 1.0))
    assert (m["mse_many"], m["mse_medium"], m["mse_few"]) == pytest.approx((1.0, 4.0, 2.125))
    assert (m["n_many"], m["n_medium"], m["n_few"]) == (2, 1, 2)
    empty = shot_metrics(preds[:2], labels[:2], bins[:2], groups)
    assert math.isnan(empty["mae_few"]) and math.isnan(empty["gm_medium"])


def test_correlations_and_per_bin():
    c = correlations(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 8.5]))
    assert c["spearman"] == pytest.approx(1.0) and 0.99 < c["pearson"] < 1.0
    assert math.isnan(correlations(np.ones(3), np.arange(3.0))["pearson"])
    e = per_bin_error(np.array([1.0, 2.0, 5.0]), np.array([0.0, 0.0, 4.0]), np.array([0, 0, 2]), 4)
    assert e[0] == pytest.approx(1.5) and math.isnan(e[1]) and e[2] == pytest.approx(1.0) and math.isnan(e[3])
