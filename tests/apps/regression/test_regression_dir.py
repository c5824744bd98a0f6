"""DIR protocol: binning, shot groups, DIR split, LDS weights and FDS statistics vs hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.regression.dir import (
    FDS,
    bin_counts,
    bin_index,
    dir_split,
    kernel_window,
    lds_weights,
    scaled_shot_thresholds,
    shot_groups,
    smooth_histogram,
)


def test_bin_index_hand_cases():
    assert bin_index([0.0, 0.05, 0.1, 0.3, 0.29999, 4.99, 5.0], 0.1, 0.0).tolist() == [0, 0, 1, 3, 2, 49, 50]
    assert bin_index([1, 2, 2.5, 29], 1.0, 1.0).tolist() == [0, 1, 1, 28]
    with pytest.raises(ValueError):
        bin_index([1.0], 0.0, 0.0)


def test_shot_groups_hand_cases():
    counts = np.array([0, 19, 20, 100, 101, 500])
    assert shot_groups(counts, 100, 20).tolist() == ["few", "few", "medium", "medium", "many", "many"]
    assert shot_groups(np.array([3, 4, 10, 11]), many=10, few=4).tolist() == ["few", "medium", "medium", "many"]
    with pytest.raises(ValueError):
        shot_groups(counts, many=10, few=20)


def test_scaled_thresholds_rule():
    assert scaled_shot_thresholds(12208) == (100, 20)  # AgeDB-DIR
    assert scaled_shot_thresholds(5249) == (100, 20)  # STS-B-DIR
    assert scaled_shot_thresholds(2500) == (50, 10)
    assert scaled_shot_thresholds(3441) == (69, 14)  # abalone with the default DIR split
    assert scaled_shot_thresholds(10) == (1, 1)


def test_dir_split_is_balanced_and_disjoint():
    bins = np.repeat(np.arange(5), [200, 50, 10, 4, 1])
    tr, va, te = dir_split(bins, per_bin=20, max_fraction=0.25, seed=3)
    assert len(set(tr) | set(va) | set(te)) == len(bins) == len(tr) + len(va) + len(te)
    # k = min(20, floor(0.25 n)) = 20, 12, 2, 1, 0 per bin, for val and test alike
    assert np.bincount(bins[va], minlength=5).tolist() == [20, 12, 2, 1, 0]
    assert np.bincount(bins[te], minlength=5).tolist() == [20, 12, 2, 1, 0]
    assert np.bincount(bins[tr], minlength=5).tolist() == [160, 26, 6, 2, 1]
    tr2, va2, _ = dir_split(bins, per_bin=20, max_fraction=0.25, seed=3)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)


def test_kernel_window_values():
    w = kernel_window("gaussian", 5, 2.0)
    assert np.allclose(w, np.exp(-np.array([4, 1, 0, 1, 4]) / 8.0))
    assert np.allclose(kernel_window("laplace", 3, 1.0), [np.exp(-1), 1, np.exp(-1)])
    assert np.allclose(kernel_window("triang", 3, 1.0), [0.5, 1, 0.5])
    for bad in (dict(ks=4), dict(sigma=0.0), dict(kernel="box")):
        with pytest.raises(ValueError):
            kernel_window(**{"kernel": "gaussian", "ks": 5, "sigma": 1.0, **bad})


def _naive_smooth(counts, window):
    half = len(window) // 2
    out = np.zeros(len(counts))
    for b in range(len(counts)):
        for k in range(len(window)):
            j = b + k - half
            if 0 <= j < len(counts):
                out[b] += window[k] * counts[j]
    return out


def test_lds_matches_naive_reference():
    rng = np.random.default_rng(0)
    counts = np.array([0, 3, 50, 400, 120, 7, 0, 1, 2])
    train_bins = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(train_bins)
    for reweight, ks, sigma, kernel in (("sqrt_inv", 5, 2.0, "gaussian"), ("inverse", 3, 1.0, "laplace")):
        w = lds_weights(train_bins, len(counts), reweight, True, kernel, ks, sigma)
        base = np.sqrt(counts) if reweight == "sqrt_inv" else np.clip(counts, 5, 1000)
        window = kernel_window(kernel, ks, sigma)
        assert np.allclose(smooth_histogram(base, window), _naive_smooth(base, window))
        ref = 1.0 / _naive_smooth(base, window)[train_bins]
        ref *= len(ref) / ref.sum()
        assert np.allclose(w, ref)
        assert np.isclose(w.mean(), 1.0)
    # without LDS: plain (clipped) inverse frequency; rarer bins weigh more
    w = lds_weights(train_bins, len(counts), "inverse", False)
    ref = 1.0 / np.clip(counts, 5, 1000)[train_bins]
    assert np.allclose(w, ref * len(ref) / ref.sum())
    assert np.array_equal(lds_weights(train_bins, len(counts), "none", False), np.ones(len(train_bins)))
    with pytest.raises(ValueError):
        lds_weights(train_bins, len(counts), "none", True)


def test_bin_counts_range_check():
    assert bin_counts(np.array([0, 2, 2]), 4).tolist() == [1, 0, 2, 0]
    with pytest.raises(ValueError):
        bin_counts(np.array([5]), 4)


def test_fds_update_ema_and_smoothing():
    torch.manual_seed(0)
    fds = FDS(dim=3, n_bins=6, ks=3, sigma=1.0, momentum=0.9)
    f1, b1 = torch.randn(40, 3), torch.randint(0, 4, (40,))
    fds.update(f1, b1, epoch=0)
    for b in range(4):
        sel = f1[b1 == b]
        assert torch.allclose(fds.running_mean[b], sel.mean(0), atol=1e-6)  # first update copies
        assert torch.allclose(fds.running_var[b], sel.var(0), atol=1e-6)
    assert not bool(fds.seen[4]) and torch.equal(fds.running_mean[4], torch.zeros(3))
    m_prev, v_prev = fds.running_mean.clone(), fds.running_var.clone()
    f2, b2 = torch.randn(40, 3) + 1, torch.randint(0, 4, (40,))
    fds.update(f2, b2, epoch=1)
    for b in range(4):
        sel = f2[b2 == b]
        assert torch.allclose(fds.running_mean[b], 0.9 * m_prev[b] + 0.1 * sel.mean(0), atol=1e-6)
        assert torch.allclose(fds.running_var[b], 0.9 * v_prev[b] + 0.1 * sel.var(0), atol=1e-6)
    # smoothing = kernel (normalised to sum 1) over bins with reflect padding, vs a naive loop
    k = kernel_window("gaussian", 3, 1.0)
    k = k / k.sum()
    rm = fds.running_mean.numpy()
    padded = np.concatenate([rm[1:2], rm, rm[-2:-1]])
    ref = np.stack([sum(k[j] * padded[b + j] for j in range(3)) for b in range(6)])
    assert np.allclose(fds.smoothed_mean.numpy(), ref, atol=1e-6)


def test_fds_calibrate():
    fds = FDS(dim=2, n_bins=3, ks=1, sigma=1.0, start_smooth=1)
    x, b = torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([0, 0])
    assert torch.equal(fds.calibrate(x, b, epoch=5), x)  # no statistics yet
    fds.update(torch.tensor([[0.0, 0.0], [2.0, 4.0]]), torch.tensor([0, 0]), epoch=0)
    assert torch.equal(fds.calibrate(x, b, epoch=0), x)  # before start_smooth
    # ks = 1: smoothed == running, so calibration is the identity
    assert torch.allclose(fds.calibrate(x, b, epoch=1), x, atol=1e-5)
    # hand case: mu=1, var=2 (per feature 0); smoothed mu~=3, var~=8 -> z~ = (z - 1) * 2 + 3
    fds.smoothed_mean[0] = torch.tensor([3.0, 0.0])
    fds.smoothed_var[0, 0] = 8.0
    out = fds.calibrate(x, b, epoch=1)
    assert torch.allclose(out[:, 0], (x[:, 0] - 1) * 2 + 3, atol=1e-4)
    # a bin never seen is left alone
    assert torch.equal(fds.calibrate(x, torch.tensor([2, 2]), epoch=1), x)
