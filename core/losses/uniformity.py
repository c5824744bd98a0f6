r"""Uniformity objectives: kernel (decoupled) uniformity and the alignment + uniformity training loss.

* :func:`kernel_uniformity` (Dufumier et al. 2023, the decoupled uniformity of "Integrating Prior Knowledge
  in Contrastive Learning with Kernel"): with :math:`\mu_i = \frac1V \sum_v z_{i,v} / \lVert z_{i,v} \rVert`
  the centroid of sample i's L2-normalised views,

  .. math::
      \mathcal{L}_{unif} = \log \frac{1}{B(B-1)} \sum_{i \ne j} e^{-\gamma \lVert \mu_i - \mu_j \rVert^2}.

  The centroids repel each other while each sample's views are free to align (the repulsion is on the
  centroids, not on the views). With V = 1 it is the uniformity of Wang & Isola 2020 (with t = gamma).
  It runs dense, tiled (``tile_size``) and over every rank's centroids (``gather``): then each rank returns
  the global value, with a gradient scaled so that DDP's mean of the ranks' gradients is the gradient of
  the global loss (the convention of :mod:`core.negatives.distributed`).
* :func:`align_uniform` (Wang & Isola 2020): the training loss
  :math:`\mathcal{L}_{align}(\alpha) + w\,\big(\mathcal{L}_{unif}(z_1; t) + \mathcal{L}_{unif}(z_2; t)\big)/2`,
  built from :func:`core.metrics.alignment` and :func:`core.metrics.uniformity` (dense).

References:
    Dufumier, Barbano, Louiset, Duchesnay, Gori, "Integrating Prior Knowledge in Contrastive Learning with
    Kernel", ICML 2023.
    Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and Uniformity on
    the Hypersphere", ICML 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from core.losses._checks import check_embeddings, normalize_rows
from core.losses._module import loss_module
from core.losses.engine import _index_fill, reduce_pairs
from core.negatives.distributed import agree_on_input_errors, all_gather_no_grad
from core.negatives.execution import Block, safe_logsumexp
from core.negatives.mode import execution_mode

__all__ = ["kernel_uniformity", "KernelUniformity", "align_uniform", "AlignUniform"]


def _check_number(name: str, value: float, low: float = 0.0, strict: bool = True) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")


class _GaussianBlock:
    """Row log-sum-exp of -gamma ||a_i - c_j||^2 over j != i, and the number of such j."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def __call__(self, a: Tensor, c: Tensor, params: Sequence[Tensor], blk: Block):
        d2 = (a * a).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * (a @ c.T)
        x = -self.gamma * d2
        keep = _index_fill(torch.ones_like(x, dtype=torch.bool), torch.arange(x.shape[0], device=x.device),
                           blk.row["self_id"] - blk.col_ids[0], False)
        return [safe_logsumexp(x.masked_fill(~keep, float("-inf")), 1), keep.sum(1).to(x.dtype)], []


@agree_on_input_errors
def kernel_uniformity(
    views: Tensor,
    *,
    gamma: float = 2.0,
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """Kernel (decoupled) uniformity ``log(1/(B(B-1)) sum_{i != j} exp(-gamma ||mu_i - mu_j||^2))`` of the
    centroids ``mu_i`` of each sample's L2-normalised views (module docstring).

    Args:
        views: (B, V, D) unnormalised embeddings, V >= 1 views of B >= 2 samples (or a (B, D) matrix: V = 1).
        gamma: kernel scale > 0.
        tile_size, gather: execution mode, as in :func:`core.losses.info_nce`.

    Returns:
        0-d tensor (lower is more uniform); under ``gather`` the global value on every rank.
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    if isinstance(views, Tensor) and views.dim() == 2:
        views = views[:, None]
    check_embeddings("views", views, ndim=3)
    if views.shape[1] == 0:
        raise ValueError(f"views has no views (shape {tuple(views.shape)})")
    _check_number("gamma", gamma)
    B = views.shape[0]
    W = mode.world
    if B * W < 2:
        raise ValueError("kernel uniformity needs at least 2 samples")
    mu = normalize_rows(views, "views (rows are (sample, view))").mean(1)
    row, _ = reduce_pairs(_GaussianBlock(float(gamma)), mu, mu, row_kinds=("lse", "count"),
                          row_meta={"self_id": torch.arange(B, device=mu.device)}, mode=mode)
    local = torch.logsumexp(row[:, 0], 0)
    n_pairs = row[:, 1].sum()
    if W == 1:
        return local - torch.log(n_pairs)
    both = all_gather_no_grad(torch.stack([local.detach(), n_pairs])[None])
    total = torch.logsumexp(both[:, 0], 0)
    share = torch.exp(local - total)  # this rank's part of the global sum; its gradient is W/S dS_r
    return (total - torch.log(both[:, 1].sum())) + W * (share - share.detach())


def align_uniform(z1: Tensor, z2: Tensor, *, alpha: float = 2.0, t: float = 2.0, weight: float = 1.0) -> Tensor:
    """Wang & Isola's training loss ``align(z1, z2; alpha) + weight * (unif(z1; t) + unif(z2; t)) / 2``.

    Args:
        z1, z2: (B, D) two views, unnormalised (normalised inside), B >= 2.
        alpha: exponent of the alignment distance (> 0; the paper uses 2).
        t: uniformity kernel scale (> 0; the paper uses 2).
        weight: weight of the uniformity term (>= 0; the paper's lambda, 1 by default).
    """
    from core.metrics.representation import alignment, uniformity

    check_embeddings("z1", z1)
    check_embeddings("z2", z2)
    _check_number("weight", weight, strict=False)
    return alignment(z1, z2, alpha) + weight * 0.5 * (uniformity(z1, t) + uniformity(z2, t))


#: Module form of :func:`kernel_uniformity`; ``forward(views)``.
KernelUniformity = loss_module(kernel_uniformity, "KernelUniformity",
                               check=lambda *, gamma, **_: _check_number("gamma", gamma))




def _check_align_uniform(*, alpha, t, weight) -> None:
    _check_number("alpha", alpha)
    _check_number("t", t)
    _check_number("weight", weight, strict=False)


#: Module form of :func:`align_uniform`; ``forward(z1, z2)``.
AlignUniform = loss_module(align_uniform, "AlignUniform", check=_check_align_uniform)
