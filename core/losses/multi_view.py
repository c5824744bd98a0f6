r"""MV-InfoNCE: InfoNCE over V >= 2 views in one term per sample.

For M samples with V views each, L2-normalised :math:`u_{i,l}` (sample i, view l) and
:math:`s(u, v) = u \cdot v / \tau`, every sample contributes a single term that contains all of its
view-to-view interactions in the numerator and, in the denominator, the interactions of each of its
views with every other embedding of the batch (other views of the same sample included, the view itself
excluded):

.. math::
    \ell_i = -\log \frac{\sum_{l=1}^{V}\sum_{m \ne l} e^{s(u_{i,l},\,u_{i,m})}}
        {\sum_{l=1}^{V}\;\sum_{(j,m) \ne (i,l)} e^{s(u_{i,l},\,u_{j,m})}},
    \qquad L = \frac{1}{M}\sum_i \ell_i .

This is the definition of the authors' public implementation (``MVINFONCE`` in
pakoromilas/Multi-View-CL, ``models/losses.py``): numerator over the V(V-1) ordered pairs of views of
sample i, denominator over the V(MV-1) pairs of a view of sample i with any other embedding. Instead of
one cross-entropy per view pair (the pairwise aggregation the paper argues against), each sample's
views are aligned jointly.

It is computed from the engine's per-row statistics (one row per view, positives = same sample, self
excluded, log-sum-exp positive statistic), then reduced per sample with a log-sum-exp over its V rows,
so it runs dense, tiled or distributed like the other losses.

Reference:
    Koromilas, Georgiou, Bouritsas, Giannakopoulos, Nicolaou, Panagakis, "A Principled Framework for
    Multi-View Contrastive Learning", arXiv:2507.06979, 2025.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from core.losses._checks import check_embeddings, check_reduction, check_temperature, reduce
from core.losses._module import loss_module
from core.losses.engine import ContrastSpec, prepare, run_contrast, to_scale
from core.losses.sup_con import flatten_views, instance_labels
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode

__all__ = ["multi_view_info_nce", "MultiViewInfoNCE"]


def _stack_views(views: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(views, Tensor):
        return views
    views = list(views)
    if not views:
        raise ValueError("views is empty: MV-InfoNCE needs V >= 2 views")
    for v, x in enumerate(views):
        check_embeddings(f"views[{v}]", x)
    shapes = {tuple(x.shape) for x in views}
    if len(shapes) != 1:
        raise ValueError(f"every view must have the same shape (B, D), got {sorted(shapes)}")
    return torch.stack(views, 1)


@agree_on_input_errors
def multi_view_info_nce(
    views: Tensor | Sequence[Tensor],
    *,
    temperature: float | Tensor,
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """MV-InfoNCE (Koromilas et al. 2025) over the views of every sample:
    ``l_i = -log(sum_l sum_{m != l} e^{s(il, im)} / sum_l sum_{(j,m) != (i,l)} e^{s(il, jm)})``, mean over samples.

    Args:
        views: (B, V, D) tensor, or a sequence of V tensors (B, D); unnormalised, V >= 2.
        temperature: tau > 0 (a tensor keeps the graph).
        reduction: ``"mean"`` over the B samples, ``"sum"``, or ``"none"`` ((B,), one term per sample).
        tile_size, gather: execution mode, as in :func:`core.losses.info_nce`.
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    x = _stack_views(views)
    z = flatten_views(x, "views")
    B, V = x.shape[0], x.shape[1]
    check_temperature("temperature", temperature)
    check_reduction(reduction)
    if V < 2:
        raise ValueError(f"MV-InfoNCE needs V >= 2 views, got {V}")
    if B * mode.world < 2:
        raise ValueError("the batch has no negatives: MV-InfoNCE needs at least 2 samples")
    z = prepare(z, "cosine", "views (row v * B + i is view v of sample i)")
    y = instance_labels(B, V, gather, z.device)
    ids = torch.arange(z.shape[0], device=z.device)
    spec = ContrastSpec(positive="label", exclude_self=True, pos_stat="lse")
    row, _ = run_contrast(spec, z, z, to_scale(temperature, z), row_meta={"label": y, "self_id": ids},
                          col_meta={"label": y}, mode=mode)
    # rows are view-major: row l * B + i is view l of sample i
    den = torch.logsumexp(row[:, 0].reshape(V, B), dim=0)
    num = torch.logsumexp(row[:, 1].reshape(V, B), dim=0)
    return reduce(den - num, reduction)


#: Module form of :func:`multi_view_info_nce`; ``forward(views)``.
MultiViewInfoNCE = loss_module(multi_view_info_nce, "MultiViewInfoNCE",
                               check=lambda *, temperature, **_: check_temperature("temperature", temperature))
