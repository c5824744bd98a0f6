r"""Circle loss (Sun et al. 2020) for query / key pairs, with index or class-label positives.

For anchor :math:`q_i`, cosine similarities :math:`s_p` to its positives (key i, or every key with the same
label) and :math:`s_n` to its negatives (every other key), margin :math:`m` and scale :math:`\gamma`:

.. math::
    \ell_i = \log\Big[1 + \sum_{n} e^{\gamma\,\alpha_n (s_n - \Delta_n)}
        \sum_{p} e^{-\gamma\,\alpha_p (s_p - \Delta_p)}\Big]
        = \mathrm{softplus}\Big(\mathrm{LSE}_n\big(\gamma \alpha_n (s_n - \Delta_n)\big)
        + \mathrm{LSE}_p\big(-\gamma \alpha_p (s_p - \Delta_p)\big)\Big),

with the self-paced weights :math:`\alpha_p = [1 + m - s_p]_+`, :math:`\alpha_n = [s_n + m]_+` (treated as
constants in the gradient, as in the paper's analysis: a similarity far from its optimum gets a larger
step) and the decision margins :math:`\Delta_p = 1 - m`, :math:`\Delta_n = m`. The two log-sum-exps are
engine statistics, so the loss runs dense, tiled and distributed.

Reference:
    Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei, "Circle Loss: A Unified Perspective of Pair Similarity
    Optimization", CVPR 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from core.losses._checks import check_pair, check_positive, check_reduction, full_validation, reduce
from core.losses._module import loss_module
from core.losses.engine import prepare, reduce_pairs
from core.negatives.distributed import agree_on_input_errors
from core.negatives.execution import Block, safe_logsumexp
from core.negatives.mode import execution_mode

__all__ = ["circle_loss", "CircleLoss"]


class _CircleBlock:
    def __init__(self, margin: float) -> None:
        self.margin = margin

    def __call__(self, a: Tensor, c: Tensor, params: Sequence[Tensor], blk: Block):
        s = a @ c.T
        if "label" in blk.row:
            pos = blk.row["label"][:, None] == blk.col["label"][None, :]
        else:
            pos = blk.row["pos_id"][:, None] == blk.col_ids[None, :]
        m, g = self.margin, params[0]
        sd = s.detach()
        lp = -g * (1.0 + m - sd).clamp_min(0.0) * (s - (1.0 - m))
        ln = g * (sd + m).clamp_min(0.0) * (s - m)
        ninf = float("-inf")
        return [safe_logsumexp(ln.masked_fill(pos, ninf), 1), safe_logsumexp(lp.masked_fill(~pos, ninf), 1),
                pos.sum(1).to(s.dtype), (~pos).sum(1).to(s.dtype)], []


def _check_settings(margin: float, gamma: float) -> None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be a number in [0, 1), got {margin!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, Tensor)):
        raise ValueError(f"gamma must be a number or a tensor, got {type(gamma).__name__}")
    check_positive("gamma", gamma)


@agree_on_input_errors
def circle_loss(
    query: Tensor,
    key: Tensor,
    labels: Tensor | None = None,
    *,
    margin: float = 0.25,
    gamma: float | Tensor = 256.0,
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """Circle loss of every query against every key (module docstring).

    Args:
        query, key: (B, D) unnormalised (cosine similarity).
        labels: ``None`` (the positive of query i is key i) or (B,) class labels shared by query i and key i
            (positives: every key with the query's label).
        margin: relaxation m in [0, 1) (the paper uses 0.25).
        gamma: scale > 0 (the paper uses 256 for face recognition, 80 for fine-grained retrieval); a 0-d
            tensor keeps the graph (learnable scale).
        reduction, tile_size, gather: as in :func:`core.losses.info_nce`.
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    check_pair("query", query, "key", key)
    B = query.shape[0]
    _check_settings(margin, gamma)
    check_reduction(reduction)
    if B * mode.world < 2:
        raise ValueError("the batch has no negatives: circle loss needs at least 2 samples")
    q, k = prepare(query, "cosine", "query"), prepare(key, "cosine", "key")
    col_meta = {}
    if labels is None:
        row_meta = {"pos_id": torch.arange(B, device=q.device)}
    else:
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != B:
            raise ValueError(f"labels must be a tensor of shape ({B},), got "
                             f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
        if full_validation() and labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
            raise ValueError("labels contains NaN or infinite values")
        row_meta = {"label": labels.to(q.device)}
        col_meta = {"label": labels.to(q.device)}
    g = gamma.reshape(()).to(q.dtype) if isinstance(gamma, Tensor) else torch.tensor(float(gamma), dtype=q.dtype,
                                                                                       device=q.device)
    row, _ = reduce_pairs(_CircleBlock(float(margin)), q, k, row_kinds=("lse", "lse", "count", "count"), params=(g,),
                          row_meta=row_meta, col_meta=col_meta, mode=mode)
    if full_validation() and bool((row[:, 3] == 0).any()):
        raise ValueError("an anchor has no negatives: every key has its label")
    z = row[:, 0] + row[:, 1]
    return reduce(torch.logaddexp(z, torch.zeros_like(z)), reduction)  # softplus, exact beyond 20 too


#: Module form of :func:`circle_loss`; ``forward(query, key, labels=None)``.
CircleLoss = loss_module(circle_loss, "CircleLoss",
                         check=lambda *, margin, gamma, **_: _check_settings(margin, gamma))
