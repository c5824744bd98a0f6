r"""MV-DHEL: multi-view contrastive loss with alignment decoupled from uniformity.

For B samples with V >= 2 views each, L2-normalised :math:`u_{i,l}` and :math:`s(u, v) = u \cdot v / \tau`,
every sample contributes one term: its alignment, over the :math:`V(V-1)/2` unordered pairs of its views,
and its energy, computed **within each view** against the other samples only (no cross-view pair and no
positive in any denominator):

.. math::
    \ell_i = -\log \sum_{l < m} e^{s(u_{i,l},\,u_{i,m})}
        + \sum_{l=1}^{V} \log \sum_{j \ne i} e^{s(u_{i,l},\,u_{j,l})},
    \qquad L = \frac{1}{B}\sum_i \ell_i .

(Minus the log of :math:`\sum_{l<m} e^{s_{i,lm}}` over :math:`\prod_l \sum_{j \ne i} e^{s(u_{i,l}, u_{j,l})}`:
the definition of the authors' public implementation.) With V = 2 it is DHEL (decoupled hyperspherical energy
loss), whose uniformity term is the intra-view energy of each view.

Each view's energy is an engine row statistic (one pass per view, dense / tiled / distributed); the alignment
is local to each sample.

References:
    Koromilas, Georgiou, Bouritsas, Giannakopoulos, Nicolaou, Panagakis, "A Principled Framework for
    Multi-View Contrastive Learning", arXiv:2507.06979, 2025 (MV-DHEL).
    Koromilas, Bouritsas, Giannakopoulos, Nicolaou, Panagakis, "Bridging Mini-Batch and Asymptotic Analysis in
    Contrastive Learning: From InfoNCE to Kernel-Based Losses", ICML 2024 (DHEL).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from core.losses._checks import check_reduction, check_temperature, reduce
from core.losses._module import loss_module
from core.losses.engine import ContrastSpec, prepare, run_contrast, to_scale
from core.losses.multi_view import _stack_views
from core.losses.sup_con import flatten_views
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode

__all__ = ["multi_view_dhel", "MultiViewDHEL"]


@agree_on_input_errors
def multi_view_dhel(
    views: Tensor | Sequence[Tensor],
    *,
    temperature: float | Tensor = 0.2,
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """MV-DHEL (Koromilas et al. 2025): ``l_i = -log sum_{l<m} e^{s(il, im)} + sum_l log sum_{j != i} e^{s(il, jl)}``.

    Args:
        views: (B, V, D) tensor or a sequence of V (B, D) tensors; unnormalised, V >= 2.
        temperature: tau > 0 (a tensor keeps the graph).
        reduction: ``"mean"`` over the B samples, ``"sum"``, or ``"none"`` ((B,)).
        tile_size, gather: execution mode, as in :func:`core.losses.info_nce` (each view's energy runs over
            the same view of every rank's samples).
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    x = _stack_views(views)
    flatten_views(x, "views")  # validates (B, V, D)
    B, V = x.shape[0], x.shape[1]
    if V < 2:
        raise ValueError(f"MV-DHEL needs V >= 2 views, got {V}")
    check_temperature("temperature", temperature)
    check_reduction(reduction)
    if B * mode.world < 2:
        raise ValueError("the batch has no negatives: MV-DHEL needs at least 2 samples")
    z = prepare(x, "cosine", "views (rows are (sample, view))")
    scale = to_scale(temperature, z)
    # energy of view l: log sum_{j != i} e^{s(il, jl)}; the "positive" is the anchor itself, dropped (decoupled)
    spec = ContrastSpec(positive="index", decoupled=True)
    ids = torch.arange(B, device=z.device)
    energy = 0
    for v in range(V):
        row, _ = run_contrast(spec, z[:, v], z[:, v], scale, row_meta={"pos_id": ids}, mode=mode)
        energy = energy + row[:, 0]
    a, b = torch.triu_indices(V, V, offset=1, device=z.device)
    align = torch.logsumexp((z[:, a] * z[:, b]).sum(-1) * scale, dim=1)
    return reduce(energy - align, reduction)


#: Module form of :func:`multi_view_dhel`; ``forward(views)``.
MultiViewDHEL = loss_module(multi_view_dhel, "MultiViewDHEL",
                            check=lambda *, temperature, **_: check_temperature("temperature", temperature))
