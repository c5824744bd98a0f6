r"""AUC (Mann-Whitney) contrastive loss.

For anchor :math:`q_i` with positive :math:`k_i`, every other key :math:`k_j` is a negative, and the loss is
the logistic surrogate of the fraction of negatives ranked above the positive (one minus the anchor's
AUC, the Wilcoxon-Mann-Whitney statistic of its similarities):

.. math::
    \ell_i = \frac{1}{N} \sum_{j \ne i} \log\big(1 + e^{(s_{ij} - s_{ii})/\tau}\big),

:math:`N` the number of negatives (:math:`B-1`, or the global count under ``gather``). Unlike InfoNCE,
each negative enters through its own pairwise term (a sum of softplus terms, no softmax), so the
hardest negatives do not dominate the gradient at low temperature.

Reference:
    Yan, Dodier, Mozer, Wolniewicz, "Optimizing Classifier Performance via an Approximation to the
    Wilcoxon-Mann-Whitney Statistic", ICML 2003 (the sigmoid / logistic surrogate of the WMW statistic).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from core.losses._checks import check_choice, check_pair, check_reduction, check_temperature, reduce
from core.losses._module import loss_module
from core.losses.engine import _index_fill, prepare, reduce_pairs, scale_anchors
from core.negatives.distributed import agree_on_input_errors
from core.negatives.execution import Block
from core.negatives.mode import execution_mode

__all__ = ["auc_contrastive", "AUCContrastive"]


def _auc_block(a: Tensor, c: Tensor, params: Sequence[Tensor], blk: Block):
    """Sum over the block's negatives of softplus(x_ij - x_ii), and their number. ``params``: (scale, the
    positive logits of every local anchor (B,), sliced here to the block's rows)."""
    scale, pos = params[0], params[1][blk.rows]
    x = (a * scale) @ c.T
    T = x.shape[0]
    neg = _index_fill(torch.ones_like(x, dtype=torch.bool), torch.arange(T, device=x.device),
                      blk.row["pos_id"] - blk.col_ids[0], False)
    d = x - pos[:, None]
    terms = torch.logaddexp(d, torch.zeros_like(d))  # softplus without F.softplus's linear cut-off at 20
    return [torch.where(neg, terms, torch.zeros_like(terms)).sum(1), neg.sum(1).to(x.dtype)], []


@agree_on_input_errors
def auc_contrastive(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    similarity: str = "cosine",
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """AUC contrastive loss ``l_i = mean_{j != i} log(1 + exp((s_ij - s_ii) / tau))`` (module docstring).

    Args:
        query, key: (B, D) unnormalised; row i of each is a positive pair, the other keys are negatives.
        temperature: tau > 0 (a tensor keeps the graph); a (B,) tensor gives each anchor its own.
        similarity, reduction, tile_size, gather: as in :func:`core.losses.info_nce`.
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    check_pair("query", query, "key", key)
    B = query.shape[0]
    per_t = check_temperature("temperature", temperature, (B,))
    check_choice("similarity", similarity, ("cosine", "dot"))
    check_reduction(reduction)
    if B * mode.world < 2:
        raise ValueError("the batch has no negatives: the AUC loss needs at least 2 samples")
    q, k = prepare(query, similarity, "query"), prepare(key, similarity, "key")
    qa, scale = scale_anchors(q, temperature, per_t)
    pos = (qa * k).sum(1) * scale
    row, _ = reduce_pairs(_auc_block, qa, k, row_kinds=("sum", "count"), params=(scale, pos),
                          row_meta={"pos_id": torch.arange(B, device=q.device)}, mode=mode)
    return reduce(row[:, 0] / row[:, 1], reduction)


#: Module form of :func:`auc_contrastive`; ``forward(query, key, temperature=None)``.
AUCContrastive = loss_module(auc_contrastive, "AUCContrastive", overrides=("temperature",),
                             check=lambda *, temperature, **_: check_temperature("temperature", temperature))
