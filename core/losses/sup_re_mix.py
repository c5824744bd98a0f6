r"""SupReMix: supervised contrastive regression with mixtures as hard negatives and hard positives.

Anchors are the N L2-normalised views :math:`z_a` (for (B, V, D) features, view-major) with scalar
labels :math:`y_a`; :math:`s(u, v) = u \cdot v / \tau`. On top of SupCon (positives = equal labels),
two kinds of mixtures join the candidates of anchor :math:`a` (they are not re-normalised):

* **mix-neg** (anchor-inclusive, hard negatives): for every view :math:`k` with :math:`y_k \ne y_a`,
  :math:`m^-_{ak} = \alpha_{ak} z_a + (1 - \alpha_{ak}) z_k`, :math:`\alpha_{ak} \sim \mathrm{Beta}(\beta_1,
  \beta_2)` (default Beta(2, 8): mostly close to the negative), label
  :math:`\alpha y_a + (1 - \alpha) y_k`. Because :math:`\lVert z_a \rVert = 1`,
  :math:`z_a \cdot m^-_{ak} = \alpha_{ak} + (1 - \alpha_{ak})\, z_a \cdot z_k`: no mixture is built.
* **mix-pos** (anchor-exclusive, hard positives): for every pair :math:`(j, k)` with
  :math:`y_j < y_a < y_k`, :math:`y_a - y_j < n` and :math:`y_k - y_a < n` (the ``window`` n),
  :math:`m^+_{ajk} = \alpha z_j + (1 - \alpha) z_k` with :math:`\alpha = (y_k - y_a)/(y_k - y_j)`, whose
  interpolated label is exactly :math:`y_a`;
  :math:`z_a \cdot m^+ = \alpha\, z_a \cdot z_j + (1-\alpha)\, z_a \cdot z_k`.

With :math:`P(a)` = the other views with label :math:`y_a` plus the mix-pos mixtures, :math:`A(a)` =
every other view plus all mixtures of :math:`a`, and the distance weight
:math:`\omega_{ak} = f(|y_a - y_k|)` (the mixture's label for mixtures, so :math:`\omega = f(0) = 1`
for positives):

.. math::
    \ell_a = -\frac{1}{|P(a)|}\sum_{p \in P(a)} \log
        \frac{e^{s(z_a, p)}}{\sum_{k \in A(a)} \omega_{ak}\, e^{s(z_a, k)}}

with :math:`f` = ``distance_weight``: ``"l1_inv"`` :math:`|\Delta| + 1` (default, "distance
magnifying"), ``"l2_inv"`` :math:`\Delta^2 + 1`, ``"l1"`` :math:`1/(|\Delta| + 1)`, ``"l2"``
:math:`1/(\Delta^2 + 1)`, ``"none"`` 1. Anchors without any positive contribute 0; the loss is the
mean over all N anchors.

Memory: the mix-pos terms are N x N per anchor, so anchors are processed in blocks of ``block_size``
(T x N x N at a time) and every block is recomputed in backward (activation checkpointing): memory
O(T N^2 + N D), never N^3. Tiling of the candidates (``tile_size``) and ``gather`` are not offered.

Deviations from the public code (Dingyijiang1/Mixup-Your-Own-Pairs, ``agedb-dir``), all deliberate:
it detaches the mixtures (gradient only through the anchor; ``detach_mixtures=True`` reproduces that,
the default lets the gradient reach the mixed views too); it builds the mixtures within sub-batches
(``--pool``) where this computes them over the whole batch; it subtracts a different row maximum from the
view logits and from the mixture logits before concatenating them, which re-weights the mixtures by
:math:`e^{\max_{views} - \max_{mixtures}}` (not reproduced); its ``L2_inv`` weight for mixtures is
:math:`(\Delta + 1)^2 + 1` (here :math:`\Delta^2 + 1` for every candidate); it scales the loss by
:math:`\tau/\tau_{base}` with :math:`\tau_{base} = \tau` in the training script (factor 1, omitted).

Reference:
    Wu, Dong, Chen, Zhou, Zhou, "Mixup Your Own Pairs" (SupReMix), arXiv:2309.16633.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from core.losses._checks import (
    check_choice,
    check_embeddings,
    check_positive,
    check_reduction,
    check_temperature,
    full_validation,
    reduce,
    upcast,
)
from core.losses.engine import prepare
from core.losses.sup_con import flatten_views

__all__ = ["sup_re_mix", "SupReMix", "sample_mix_alpha"]

_WEIGHTS = ("l1_inv", "l2_inv", "l1", "l2", "none")


def _log_weight(delta: Tensor, kind: str) -> Tensor:
    """log f(|delta|) for the distance weight ``kind`` (f(0) = 1 for every kind)."""
    if kind == "l1_inv":
        return torch.log1p(delta.abs())
    if kind == "l2_inv":
        return torch.log1p(delta * delta)
    if kind == "l1":
        return -torch.log1p(delta.abs())
    if kind == "l2":
        return -torch.log1p(delta * delta)
    return torch.zeros_like(delta)


def sample_mix_alpha(
    n: int, beta: tuple[float, float] = (2.0, 8.0), generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
) -> Tensor:
    """An (n, n) matrix of mixing coefficients alpha ~ Beta(beta) (entry [a, k] mixes anchor a with view k).

    With ``generator`` the draw is reproducible and leaves the global RNG untouched (the Beta sampler
    runs on a forked CPU RNG seeded from ``generator``).
    """
    a, b = (float(v) for v in beta)
    dist = torch.distributions.Beta(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    if generator is None:
        x = dist.sample((n, n))
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            x = dist.sample((n, n))
    return x.to(device=device, dtype=dtype)


def _block_loss(
    z: Tensor, y: Tensor, alpha: Tensor | None, r0: int, r1: int, scale: float, window: float,
    weight: str, mix_pos: bool, detach_mixtures: bool,
) -> Tensor:
    """Per-anchor SupReMix loss of anchors r0:r1 (all N views and their mixtures as candidates)."""
    N = z.shape[0]
    za = z[r0:r1]
    sim = za @ z.T  # (T, N) cosine similarities
    sim_m = za @ z.detach().T if detach_mixtures else sim  # similarities that enter the mixtures
    ya = y[r0:r1]
    dy = y[None, :] - ya[:, None]  # y_k - y_a, (T, N)
    cols = torch.arange(N, device=z.device)
    is_self = cols[None, :] == torch.arange(r0, r1, device=z.device)[:, None]
    neg_inf = torch.tensor(float("-inf"), dtype=z.dtype, device=z.device)
    logits = sim * scale

    same = (dy == 0) & ~is_self
    terms = [torch.where(is_self, neg_inf, logits + _log_weight(dy, weight))]
    pos_sum = torch.where(same, logits, torch.zeros_like(logits)).sum(1)
    n_pos = same.sum(1).to(z.dtype)

    if alpha is not None:  # mix-neg: anchor-inclusive mixtures with every view of another label
        al = alpha[r0:r1]
        mix_logit = (al + (1 - al) * sim_m) * scale
        terms.append(torch.where(dy != 0, mix_logit + _log_weight((1 - al) * dy, weight), neg_inf))

    if mix_pos:  # mix-pos: pairs y_j < y_a < y_k within the window, label exactly y_a (weight f(0) = 1)
        left = (dy < 0) & (-dy < window)  # candidate j
        right = (dy > 0) & (dy < window)  # candidate k
        valid = left[:, :, None] & right[:, None, :]  # (T, N_j, N_k)
        gap = dy[:, None, :] - dy[:, :, None]  # y_k - y_j > 0 where valid
        a_jk = dy[:, None, :] / torch.where(valid, gap, torch.ones_like(gap))
        mp = (a_jk * sim_m[:, :, None] + (1 - a_jk) * sim_m[:, None, :]) * scale
        terms.append(torch.where(valid, mp, neg_inf).flatten(1))
        pos_sum = pos_sum + torch.where(valid, mp, torch.zeros_like(mp)).sum((1, 2))
        n_pos = n_pos + valid.sum((1, 2)).to(z.dtype)

    den = torch.logsumexp(torch.cat(terms, 1), dim=1)  # never empty: every anchor has another view
    has_pos = n_pos > 0
    term = den - pos_sum / torch.where(has_pos, n_pos, torch.ones_like(n_pos))
    return torch.where(has_pos, term, torch.zeros_like(term))


def sup_re_mix(
    features: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.5,
    window: float = 5.0,
    beta: tuple[float, float] = (2.0, 8.0),
    distance_weight: str = "l1_inv",
    mix_neg: bool = True,
    mix_pos: bool = True,
    detach_mixtures: bool = False,
    mix_alpha: Tensor | None = None,
    generator: torch.Generator | None = None,
    block_size: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """SupReMix ("Mixup Your Own Pairs", Wu et al. 2023):
    ``l_a = -(1/|P(a)|) sum_{p in P(a)} log(e^{s(z_a, p)} / sum_{k in A(a)} w_ak e^{s(z_a, k)})`` where the
    candidates include mix-neg and the positives mix-pos mixtures (module docstring).

    Args:
        features: (B, V, D) views of B samples (flattened view-major), or (N, D).
        labels: (B,) (resp. (N,)) scalar regression targets.
        temperature: tau > 0 (AgeDB: 0.5, IMDB-WIKI: 0.3).
        window: n > 0, the label window of mix-pos pairs (strict: y_a - y_j < n and y_k - y_a < n).
        beta: (beta_1, beta_2) of the Beta distribution of the mix-neg coefficients.
        distance_weight: ``"l1_inv"``, ``"l2_inv"``, ``"l1"``, ``"l2"`` or ``"none"`` (see the module doc).
        mix_neg / mix_pos: include the mix-neg / mix-pos mixtures (both off = SupCon "out" with
            distance-weighted denominators).
        detach_mixtures: no gradient through the mixtures (the public code's behaviour).
        mix_alpha: (N, N) mix-neg coefficients to use instead of sampling (entry [a, k] for anchor a
            and view k, in the flattened order); for tests and exact reproduction.
        generator: RNG for the mix-neg coefficients (reproducible draws); ignored with ``mix_alpha``.
        block_size: anchors per block (T); default: as many as keep T N^2 <= 2^22 elements.
        reduction: ``"mean"`` over all N anchors, ``"sum"``, or ``"none"`` ((N,)).
    """
    if isinstance(features, Tensor) and features.dim() == 3:
        z = flatten_views(features)
        B, V = features.shape[0], features.shape[1]
    else:
        check_embeddings("features", features)
        z, B, V = features, features.shape[0], 1
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != B:
        raise ValueError(f"labels must have shape ({B},) (one scalar per sample), got {tuple(labels.shape)}")
    if labels.dtype == torch.bool or (labels.is_floating_point() and full_validation()
                                      and not bool(torch.isfinite(labels).all())):
        raise ValueError("labels must be finite real numbers")
    check_temperature("temperature", temperature)
    check_positive("window", window)
    check_positive("beta[0]", beta[0])
    check_positive("beta[1]", beta[1])
    check_choice("distance_weight", distance_weight, _WEIGHTS)
    check_reduction(reduction)
    z = upcast(z)  # labels, mixing coefficients and logits in float32 for float16 / bfloat16 features
    N = z.shape[0]
    if N < 2:
        raise ValueError("the batch has no negatives: SupReMix needs at least 2 views")
    y = labels.detach().to(device=z.device, dtype=z.dtype).repeat(V)
    if bool((y == y[0]).all()):
        raise ValueError("the batch has no negatives: every sample has the same label")
    alpha = None
    if mix_neg:
        if mix_alpha is not None:
            if not isinstance(mix_alpha, Tensor) or tuple(mix_alpha.shape) != (N, N):
                raise ValueError(f"mix_alpha must be a tensor of shape ({N}, {N})")
            if not bool(((mix_alpha >= 0) & (mix_alpha <= 1)).all()):
                raise ValueError("mix_alpha must lie in [0, 1]")
            alpha = mix_alpha.detach().to(device=z.device, dtype=z.dtype)
        else:
            alpha = sample_mix_alpha(N, beta, generator, z.dtype, z.device)
    if block_size is None:
        block_size = max(1, min(N, (1 << 22) // (N * N))) if mix_pos else N
    if int(block_size) < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    block_size = int(block_size)
    z = prepare(z, "cosine", "features")
    scale = 1.0 / float(temperature)
    args = (scale, float(window), distance_weight, mix_pos, detach_mixtures)
    recompute = torch.is_grad_enabled() and z.requires_grad and block_size < N
    parts = []
    for r0 in range(0, N, block_size):
        r1 = min(r0 + block_size, N)
        if recompute:
            # keep only the inputs of each block; its T x N x N intermediates are rebuilt in backward
            parts.append(checkpoint(_block_loss, z, y, alpha, r0, r1, *args, use_reentrant=False))
        else:
            parts.append(_block_loss(z, y, alpha, r0, r1, *args))
    return reduce(torch.cat(parts), reduction)


class SupReMix(nn.Module):
    """Module form of :func:`sup_re_mix`; ``forward(features, labels, mix_alpha=None)``.

    ``seed`` (optional) makes the mix-neg draws reproducible across runs (a private generator).
    """

    def __init__(
        self,
        temperature: float = 0.5,
        window: float = 5.0,
        beta: tuple[float, float] = (2.0, 8.0),
        distance_weight: str = "l1_inv",
        mix_neg: bool = True,
        mix_pos: bool = True,
        detach_mixtures: bool = False,
        block_size: int | None = None,
        reduction: str = "mean",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        check_temperature("temperature", temperature)
        check_choice("distance_weight", distance_weight, _WEIGHTS)
        self.temperature, self.window, self.beta, self.distance_weight = temperature, window, beta, distance_weight
        self.mix_neg, self.mix_pos, self.detach_mixtures = mix_neg, mix_pos, detach_mixtures
        self.block_size, self.reduction = block_size, reduction
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def forward(self, features: Tensor, labels: Tensor, mix_alpha: Tensor | None = None) -> Tensor:
        return sup_re_mix(
            features, labels, temperature=self.temperature, window=self.window, beta=self.beta,
            distance_weight=self.distance_weight, mix_neg=self.mix_neg, mix_pos=self.mix_pos,
            detach_mixtures=self.detach_mixtures, mix_alpha=mix_alpha, generator=self.generator,
            block_size=self.block_size, reduction=self.reduction,
        )

