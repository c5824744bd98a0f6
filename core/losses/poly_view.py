r"""Poly-View contrastive loss: InfoNCE between one view and the *set* of a sample's other views.

For B samples with M >= 2 views each, L2-normalised :math:`z_{i,\alpha}` and :math:`s = z \cdot z' / \tau`,
view :math:`\alpha` of sample i is contrasted against the sets :math:`X_{j,\ne\alpha}` of the other M - 1
views of every sample j, through a one-vs-rest critic that aggregates the M - 1 pairwise critics:

.. math::
    F_{arith}(i\alpha, j) = \log \frac{1}{M-1} \sum_{\beta \ne \alpha} e^{s(z_{i\alpha}, z_{j\beta})}, \qquad
    F_{geo}(i\alpha, j) = \frac{1}{M-1} \sum_{\beta \ne \alpha} s(z_{i\alpha}, z_{j\beta}),

.. math::
    \ell_{i\alpha} = -F(i\alpha, i) + \log \sum_{j} e^{F(i\alpha, j)}, \qquad
    L = \frac{1}{BM} \sum_{i, \alpha} \ell_{i\alpha}

(``aggregation="arithmetic"``: the arithmetic mean of the exponentiated critics; ``"geometric"``: their
geometric mean). With M = 2 both are the symmetric cross-view InfoNCE (CLIP form). The arithmetic form is
a row log-sum-exp over every view :math:`\beta \ne \alpha` of every sample (positives: sample i's); the
geometric critic is a dot product with :math:`c_{j}^{(\alpha)} = \frac{1}{M-1}\sum_{\beta\ne\alpha} z_{j\beta}`,
so both run on the engine (dense, tiled, gathered), one pass per view :math:`\alpha`.

Reference:
    Shidani, Hjelm, Ramapuram, Webb, Dhekane, Busbridge, "Poly-View Contrastive Learning", ICLR 2024.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from core.losses._checks import check_choice, check_reduction, check_temperature, reduce
from core.losses._module import loss_module
from core.losses.engine import ContrastSpec, prepare, run_contrast, to_scale
from core.losses.multi_view import _stack_views
from core.losses.sup_con import flatten_views, instance_labels
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode

__all__ = ["poly_view_info_nce", "PolyViewInfoNCE"]


@agree_on_input_errors
def poly_view_info_nce(
    views: Tensor | Sequence[Tensor],
    *,
    temperature: float | Tensor = 0.1,
    aggregation: str = "arithmetic",
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """Poly-View InfoNCE (Shidani et al. 2024) over M >= 2 views per sample; formula in the module docstring.

    Args:
        views: (B, M, D) tensor or a sequence of M (B, D) tensors; unnormalised, M >= 2.
        temperature: tau > 0 (a tensor keeps the graph).
        aggregation: ``"arithmetic"`` or ``"geometric"`` mean of the M - 1 pairwise critics.
        reduction: ``"mean"`` over the B M anchors, ``"sum"``, or ``"none"`` ((M B,), view-major).
        tile_size, gather: execution mode, as in :func:`core.losses.info_nce`.
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    x = _stack_views(views)
    flatten_views(x, "views")  # validates (B, M, D)
    B, M = x.shape[0], x.shape[1]
    if M < 2:
        raise ValueError(f"Poly-View needs M >= 2 views per sample, got {M}")
    check_temperature("temperature", temperature)
    check_choice("aggregation", aggregation, ("arithmetic", "geometric"))
    check_reduction(reduction)
    if B * mode.world < 2:
        raise ValueError("the batch has no negatives: Poly-View needs at least 2 samples")
    z = prepare(x, "cosine", "views (rows are (sample, view))")
    scale = to_scale(temperature, z)
    ids = torch.arange(B, device=z.device)
    per_view = []
    if aggregation == "arithmetic":
        labels = instance_labels(B, 1, gather, z.device)
        spec = ContrastSpec(positive="label", pos_stat="lse")
        for a in range(M):
            others = torch.cat([z[:, b] for b in range(M) if b != a], 0)
            row, _ = run_contrast(spec, z[:, a], others, scale, row_meta={"label": labels},
                                  col_meta={"label": labels.repeat(M - 1)}, mode=mode)
            per_view.append(row[:, 0] - row[:, 1])
    else:
        total = z.sum(1)
        spec = ContrastSpec(positive="index")
        for a in range(M):
            rest = (total - z[:, a]) / (M - 1)
            row, _ = run_contrast(spec, z[:, a], rest, scale, row_meta={"pos_id": ids}, mode=mode)
            per_view.append(row[:, 0] - row[:, 1])
    return reduce(torch.cat(per_view), reduction)


def _check_options(*, temperature, aggregation, **_) -> None:
    check_temperature("temperature", temperature)
    check_choice("aggregation", aggregation, ("arithmetic", "geometric"))


#: Module form of :func:`poly_view_info_nce`; ``forward(views)``.
PolyViewInfoNCE = loss_module(poly_view_info_nce, "PolyViewInfoNCE", check=_check_options)
