r"""The DIR protocol of Yang et al. (ICML 2021, "Delving into Deep Imbalanced Regression"): label bins,
balanced evaluation splits, shot groups, label-distribution smoothing (LDS) and feature-distribution
smoothing (FDS).

* **Bins**: ``b(y) = floor((y - origin) / width)`` (a tiny tolerance absorbs float noise such as 0.3/0.1).
* **Shot groups** (from the *training* histogram ``n_b``): a bin is *many* if ``n_b > many``, *few* if
  ``n_b < few``, *medium* otherwise (Yang et al.: 100 / 20). :func:`scaled_shot_thresholds` gives the
  rule used for small data sets: ``s = min(1, n_train / 5000)``, ``many = max(1, round(100 s))``,
  ``few = max(1, round(20 s))``.
* **LDS**: the effective density :math:`\tilde p(b) = \sum_k k(b - b') p(b')` (zero padding) of the
  (square-rooted for ``sqrt_inv``, clipped to [5, 1000] for ``inverse``) histogram with a symmetric
  kernel of size ``ks`` normalised to a peak of 1; sample weights :math:`w_i \propto 1/\tilde p(b_i)`
  rescaled to mean 1 over the training samples.
* **FDS**: running per-bin feature mean :math:`\mu_b` and (diagonal) variance :math:`\sigma^2_b`
  (EMA with ``momentum``), smoothed across bins with the kernel normalised to sum 1 (reflect padding):
  :math:`\tilde\mu = k \star \mu`, :math:`\tilde\sigma^2 = k \star \sigma^2`; training features are
  re-calibrated as :math:`\tilde z = (z - \mu_b)\,\sqrt{\tilde\sigma^2_b / \sigma^2_b} + \tilde\mu_b`.
  Like the public DIR code the variance is per feature (the paper writes a full covariance) and the
  scale factor is clipped to [0.1, 10].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "bin_index",
    "bin_counts",
    "scaled_shot_thresholds",
    "shot_groups",
    "dir_split",
    "kernel_window",
    "lds_weights",
    "smooth_histogram",
    "FDS",
]

SHOTS = ("many", "medium", "few")


def bin_index(y: np.ndarray | Sequence[float], width: float, origin: float) -> np.ndarray:
    """Label bin of every value: ``floor((y - origin) / width)`` with a 1e-6 relative tolerance."""
    if not width > 0:
        raise ValueError(f"bin width must be > 0, got {width}")
    y = np.asarray(y, dtype=np.float64)
    return np.floor((y - origin) / width + 1e-6).astype(np.int64)


def bin_counts(bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Histogram of bin indices in ``[0, n_bins)``."""
    bins = np.asarray(bins)
    if bins.size and (bins.min() < 0 or bins.max() >= n_bins):
        raise ValueError(f"bin indices must lie in [0, {n_bins}), got [{bins.min()}, {bins.max()}]")
    return np.bincount(bins, minlength=n_bins).astype(np.int64)


def scaled_shot_thresholds(n_train: int, many: int = 100, few: int = 20, reference: int = 5000) -> tuple[int, int]:
    """Shot thresholds scaled for small training sets: ``s = min(1, n_train / reference)``,
    ``(max(1, round(many s)), max(1, round(few s)))``. STS-B-DIR (5,249) and larger keep 100 / 20."""
    s = min(1.0, n_train / reference)
    m, f = max(1, round(many * s)), max(1, round(few * s))
    if f > m:
        raise ValueError(f"few threshold {f} exceeds many threshold {m}")
    return m, f


def shot_groups(train_counts: np.ndarray, many: int = 100, few: int = 20) -> np.ndarray:
    """Group of every bin: ``"many"`` (count > many), ``"few"`` (count < few), else ``"medium"``."""
    if few > many:
        raise ValueError(f"few threshold ({few}) must not exceed many threshold ({many})")
    c = np.asarray(train_counts)
    return np.where(c > many, "many", np.where(c < few, "few", "medium"))


def dir_split(
    bins: np.ndarray, per_bin: int, max_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A long-tailed train split and balanced val / test splits (indices), by label bin.

    Every bin with ``n`` samples gives ``k = min(per_bin, floor(max_fraction * n))`` random samples to
    validation and ``k`` others to test; the rest (at least ``1 - 2 max_fraction`` of it) stays in
    training. Bins large enough contribute exactly ``per_bin`` each, so val and test are balanced
    over the head and body of the distribution; the rarest bins stay in training only.
    """
    if per_bin < 1 or not 0 < max_fraction < 0.5:
        raise ValueError(f"need per_bin >= 1 and 0 < max_fraction < 0.5, got {per_bin}, {max_fraction}")
    rng = np.random.default_rng(seed)
    bins = np.asarray(bins)
    train, val, test = [], [], []
    for b in np.unique(bins):
        idx = rng.permutation(np.flatnonzero(bins == b))
        k = min(per_bin, int(math.floor(max_fraction * len(idx))))
        val.append(idx[:k])
        test.append(idx[k : 2 * k])
        train.append(idx[2 * k :])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64)  # noqa: E731
    return cat(train), cat(val), cat(test)


def kernel_window(kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0) -> np.ndarray:
    """Symmetric smoothing window of odd size ``ks`` with peak 1 (offsets ``x = -(ks-1)/2 .. (ks-1)/2``):
    gaussian ``exp(-x^2 / (2 sigma^2))``, laplace ``exp(-|x| / sigma)``, triang ``1 - |x| / ((ks+1)/2)``."""
    if ks < 1 or ks % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd int, got {ks}")
    if not sigma > 0:
        raise ValueError(f"kernel sigma must be > 0, got {sigma}")
    x = np.arange(ks, dtype=np.float64) - (ks - 1) / 2
    if kernel == "gaussian":
        w = np.exp(-(x**2) / (2 * sigma**2))
    elif kernel == "laplace":
        w = np.exp(-np.abs(x) / sigma)
    elif kernel == "triang":
        w = 1 - np.abs(x) / ((ks + 1) / 2)
    else:
        raise ValueError(f"kernel must be 'gaussian', 'laplace' or 'triang', got {kernel!r}")
    return w / w.max()


def smooth_histogram(counts: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``sum_k window[k] counts[b + k - half]`` with zeros outside the histogram."""
    return np.convolve(np.asarray(counts, dtype=np.float64), window[::-1], mode="same")


def lds_weights(
    train_bins: np.ndarray, n_bins: int, reweight: str = "sqrt_inv", lds: bool = True,
    kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0, clip: tuple[float, float] = (5, 1000),
) -> np.ndarray:
    """Per-sample training weights (mean 1) for ``reweight`` in ``none``, ``inverse``, ``sqrt_inv``,
    optionally with LDS smoothing of the (transformed) histogram (Yang et al. 2021, section 3.1)."""
    train_bins = np.asarray(train_bins)
    if reweight == "none":
        if lds:
            raise ValueError("LDS needs a re-weighting scheme: reweight='sqrt_inv' or 'inverse'")
        return np.ones(len(train_bins))
    counts = bin_counts(train_bins, n_bins).astype(np.float64)
    if reweight == "sqrt_inv":
        counts = np.sqrt(counts)
    elif reweight == "inverse":
        counts = np.clip(counts, *clip)
    else:
        raise ValueError(f"reweight must be 'none', 'inverse' or 'sqrt_inv', got {reweight!r}")
    if lds:
        counts = smooth_histogram(counts, kernel_window(kernel, ks, sigma))
    w = 1.0 / counts[train_bins]
    return w * (len(w) / w.sum())


class FDS(nn.Module):
    """Feature-distribution smoothing over ``n_bins`` label bins of ``dim``-d features (module doc).

    Call :meth:`update` once per epoch with the epoch's (detached) training features and their bins,
    and :meth:`calibrate` on training features from epoch ``start_smooth`` on. Statistics are buffers,
    so they are saved in (and restored from) checkpoints.
    """

    def __init__(
        self, dim: int, n_bins: int, kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0,
        momentum: float = 0.9, start_update: int = 0, start_smooth: int = 1, eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"FDS momentum must be in [0, 1), got {momentum}")
        self.dim, self.n_bins, self.momentum, self.eps = dim, n_bins, momentum, eps
        self.start_update, self.start_smooth = start_update, start_smooth
        w = kernel_window(kernel, ks, sigma)
        self.register_buffer("kernel", torch.tensor(w / w.sum(), dtype=torch.float32))
        self.register_buffer("running_mean", torch.zeros(n_bins, dim))
        self.register_buffer("running_var", torch.ones(n_bins, dim))
        self.register_buffer("smoothed_mean", torch.zeros(n_bins, dim))
        self.register_buffer("smoothed_var", torch.ones(n_bins, dim))
        self.register_buffer("seen", torch.zeros(n_bins, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def _smooth(self, stats: Tensor) -> Tensor:
        half = (self.kernel.numel() - 1) // 2
        x = stats.T[:, None, :]  # (dim, 1, n_bins)
        if half:
            mode = "reflect" if self.n_bins > half else "replicate"
            x = nn.functional.pad(x, (half, half), mode=mode)
        return nn.functional.conv1d(x, self.kernel.flip(0)[None, None, :].to(stats.dtype))[:, 0, :].T

    @torch.no_grad()
    def update(self, features: Tensor, bins: Tensor, epoch: int) -> None:
        """EMA of the per-bin mean / variance with this epoch's features (bins present in ``bins`` only;
        the first update copies), then re-smooth. No-op before ``start_update``."""
        if epoch < self.start_update:
            return
        features, bins = features.detach().float(), bins.long()
        for b in torch.unique(bins).tolist():
            f = features[bins == b]
            mean = f.mean(0)
            var = f.var(0, unbiased=True) if f.shape[0] > 1 else torch.ones_like(mean)
            m = self.momentum if bool(self.seen[b]) else 0.0
            self.running_mean[b] = m * self.running_mean[b] + (1 - m) * mean
            self.running_var[b] = m * self.running_var[b] + (1 - m) * var
            self.seen[b] = True
        self.smoothed_mean.copy_(self._smooth(self.running_mean))
        self.smoothed_var.copy_(self._smooth(self.running_var))
        self.updates += 1

    def calibrate(self, features: Tensor, bins: Tensor, epoch: int) -> Tensor:
        """Re-calibrated features (unchanged before ``start_smooth``, before any update, or for bins
        never seen)."""
        if epoch < self.start_smooth or int(self.updates) == 0:
            return features
        bins = bins.long()
        mu, var = self.running_mean[bins], self.running_var[bins]
        smu, svar = self.smoothed_mean[bins], self.smoothed_var[bins]
        scale = torch.sqrt((svar + self.eps) / (var + self.eps)).clamp(0.1, 10.0)
        out = (features - mu) * scale + smu
        return torch.where(self.seen[bins][:, None], out, features)
