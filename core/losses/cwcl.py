r"""Continuously weighted contrastive loss (CWCL).

Cross-modal alignment in which a frozen, pre-trained modality U tells how similar the samples of a
batch are: a weight :math:`w_{ij} \in [0, 1]` per pair (in the paper the similarity of the frozen
embeddings rescaled to [0, 1], :math:`w_{ij} = (1 + u_i \cdot u_j)/2`, so :math:`w_{ii} = 1`). Every
candidate is a positive in proportion to its weight; with :math:`p_i, q_j` the L2-normalised
embeddings of the two modalities:

.. math::
    \ell_i^{p \to q} = -\frac{1}{\sum_j w_{ij}} \sum_{j} w_{ij}
        \log \frac{e^{p_i \cdot q_j/\tau}}{\sum_{k} e^{p_i \cdot q_k/\tau}}

(the denominator runs over every candidate, as in InfoNCE). With :math:`w = I` this is InfoNCE.
The paper trains both directions (p -> q with :math:`w`, q -> p with :math:`w^\top`); ``symmetric=True``
(the default) returns their **mean** per sample, like CLIP's symmetric loss here, i.e. half the
paper's sum :math:`L_{U \to V} + L_{V \to U}`. ``symmetric=False`` gives the a -> b direction only.

The weights are constants (detached): no gradient reaches the frozen modality.

Reference:
    Srinivasa et al., "CWCL: Cross-Modal Transfer with Continuously Weighted Contrastive Loss",
    NeurIPS 2023.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.losses._checks import check_pair, check_reduction, check_temperature, compute_dtype, full_validation, reduce
from core.losses._module import loss_module
from core.losses.engine import ContrastSpec, prepare, run_contrast, to_scale
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode

__all__ = ["cwcl", "CWCL"]


def _check_weights(weights: Tensor, rows: int, cols: int) -> Tensor:
    if not isinstance(weights, Tensor):
        raise ValueError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if tuple(weights.shape) != (rows, cols):
        raise ValueError(f"weights must have shape ({rows}, {cols}), got {tuple(weights.shape)}")
    if not weights.is_floating_point():
        raise ValueError(f"weights must be a floating tensor, got dtype {weights.dtype}")
    w = weights.detach()
    if full_validation() and not bool(torch.isfinite(w).all()):
        raise ValueError("weights contains NaN or infinite values")
    # a tolerance for rounding: (1 + cos) / 2 of unit vectors can exceed 1 by an ulp
    if full_validation() and (bool((w < -1e-6).any()) or bool((w > 1 + 1e-6).any())):
        raise ValueError("weights must lie in [0, 1]")
    if full_validation() and bool((w.sum(1) <= 0).any()):
        raise ValueError("every row of weights needs a positive total weight (a row of zeros has no positive)")
    return w


@agree_on_input_errors
def cwcl(
    a: Tensor,
    b: Tensor,
    *,
    weights: Tensor,
    temperature: float | Tensor,
    symmetric: bool = True,
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """CWCL (Srinivasa et al. 2023) between ``a`` (B, D) and ``b`` (B, D) with intra-modal weights
    ``weights`` (B, B) in [0, 1]: ``l_i = -(1 / sum_j w_ij) sum_j w_ij log softmax_k(a_i . b_k / tau)[j]``.

    Args:
        a, b: unnormalised embeddings of the two modalities (row i of each is the same sample).
        weights: w_ij, the similarity of samples i and j in the frozen modality; ``weights[i, j]`` weights
            candidate ``b[j]`` of anchor ``a[i]``; the b -> a direction uses ``weights.T``. With ``gather``
            pass this rank's rows of the global matrix, shape (B, N_global) in rank order; the global
            matrix must then be symmetric (it is for cosine-derived weights), because the reverse
            direction reuses the same rows.
        temperature: tau > 0 (a tensor keeps the graph).
        symmetric: mean of the a -> b and b -> a directions (default) or a -> b only.
        reduction: ``"mean"`` over anchors, ``"sum"``, or ``"none"`` ((B,)).
        tile_size, gather: execution mode, as in :func:`core.losses.info_nce`.
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    check_pair("a", a, "b", b)
    check_temperature("temperature", temperature)
    check_reduction(reduction)
    B = a.shape[0]
    if gather:
        from core.negatives.distributed import gather_sizes

        n_cols = sum(gather_sizes(B))
    else:
        n_cols = B
    w = _check_weights(weights, B, n_cols).to(compute_dtype(a.dtype))
    if n_cols < 2:
        raise ValueError("the batch has no negatives: CWCL needs at least 2 samples")
    p, q = prepare(a, "cosine", "a"), prepare(b, "cosine", "b")
    scale = to_scale(temperature, p)
    spec = ContrastSpec(positive="pair_weights")
    row, _ = run_contrast(spec, p, q, scale, row_meta={"pair_weights": w}, mode=mode)
    per_anchor = row[:, 0] - row[:, 1] / row[:, 2]
    if symmetric:
        w_rev = w if gather else w.T.contiguous()
        row_r, _ = run_contrast(spec, q, p, scale, row_meta={"pair_weights": w_rev}, mode=mode)
        per_anchor = 0.5 * (per_anchor + row_r[:, 0] - row_r[:, 1] / row_r[:, 2])
    return reduce(per_anchor, reduction)


#: Module form of :func:`cwcl`; ``forward(a, b, weights)``.
CWCL = loss_module(cwcl, "CWCL", forward=("weights",),
                   check=lambda *, temperature, **_: check_temperature("temperature", temperature))
