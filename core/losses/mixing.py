r"""MoCHi's loss (Kalantidis et al. 2020): InfoNCE with per-query synthetic hard negatives.

The mining and mixing of the synthetic negatives (:func:`core.negatives.mixing.mix_hard_negatives`) stay in
:mod:`core.negatives.mixing` with the formulas; the losses that consume them live here, on the engine. Because the
synthetic negatives differ per query, they cannot go through ``info_nce(negatives=...)`` (shared by all queries):
the engine returns, per query, the log-sum-exp ``D_i`` of its ordinary denominator and its positive logit ``P_i``;
with :math:`S_i = \log\sum_m e^{q_i\cdot h_{im}/\tau}` the loss is

.. math::
    \ell_i = \operatorname{logaddexp}(D_i, S_i) - P_i,

identical to concatenating the synthetic negatives to query i's candidates, for every execution mode of the
engine (dense, tiled, gathered) since only the per-row statistics are merged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.losses._checks import (
    check_choice,
    check_dtypes,
    check_embeddings,
    check_pair,
    check_reduction,
    check_temperature,
    reduce,
)
from core.losses.engine import ContrastSpec, prepare, run_contrast, to_scale
from core.losses.info_nce import check_margin
from core.negatives.mixing import mix_hard_negatives
from core.negatives.mode import execution_mode

__all__ = ["synthetic_logits", "info_nce_with_synthetic", "info_nce_with_mixing"]


def synthetic_logits(query: Tensor, synthetic: Tensor, scale: Tensor, similarity: str = "cosine") -> Tensor:
    """Per-query logits (B, M) of the query against its own (B, M, D) synthetic negatives, times ``scale``."""
    if synthetic.dim() != 3 or synthetic.shape[0] != query.shape[0] or synthetic.shape[2] != query.shape[1]:
        raise ValueError(
            f"synthetic negatives must have shape (B, M, D) = ({query.shape[0]}, M, {query.shape[1]}), "
            f"got {tuple(synthetic.shape)}"
        )
    q = prepare(query, similarity)
    h = prepare(synthetic.detach().to(q.dtype), similarity)
    return torch.einsum("bd,bmd->bm", q * scale, h)


def info_nce_with_synthetic(
    query: Tensor,
    key: Tensor,
    synthetic: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    negatives: Tensor | None = None,
    decoupled: bool = False,
    margin: float = 0.0,
    margin_type: str = "additive",
    similarity: str = "cosine",
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool = False,
) -> Tensor:
    """:func:`core.losses.info_nce` (query -> key direction) with per-query extra negatives ``synthetic`` (B, M, D).

    Equals the InfoNCE of query i against [keys, ``negatives``, ``synthetic[i]``]; the arguments shared with
    ``info_nce`` mean the same (``symmetric`` is not offered: the synthetic negatives belong to the queries).
    ``gather=True`` gathers keys from every rank; ``synthetic`` stays local to each rank's queries.
    """
    check_pair("query", query, "key", key)
    check_dtypes(query=query, key=key, negatives=negatives)
    check_temperature("temperature", temperature)
    check_margin(margin, margin_type)
    check_choice("similarity", similarity, ("cosine", "dot"))
    check_reduction(reduction)
    mode = execution_mode(tile_size, gather, ring=False, what="info_nce_with_synthetic")
    if negatives is not None:
        check_embeddings("negatives", negatives)
        if negatives.shape[1] != query.shape[1]:
            raise ValueError(
                f"negatives must have feature dimension {query.shape[1]}, got {negatives.shape[1]}"
            )
    q, k = prepare(query, similarity, "query"), prepare(key, similarity, "key")
    negs = prepare(negatives, similarity, "negatives") if negatives is not None else None
    scale = to_scale(temperature, q)
    extra = synthetic_logits(query, synthetic, scale, similarity)  # validates the shape
    B = query.shape[0]
    n_neg = B * mode.world - 1 + extra.shape[1] + (0 if negs is None else negs.shape[0])
    if n_neg < 1:
        raise ValueError("a query has no negatives: pass more keys, negatives or synthetic negatives")
    spec = ContrastSpec(positive="index", decoupled=decoupled, margin=margin, margin_type=margin_type)
    row, _ = run_contrast(spec, q, k, scale, row_meta={"pos_id": torch.arange(B, device=q.device)},
                          mode=mode, extra_candidates=negs)
    den = row[:, 0]
    if extra.shape[1] > 0:
        den = torch.logaddexp(den, torch.logsumexp(extra, dim=1))
    per_anchor = den - row[:, 1]
    return reduce(per_anchor, reduction)


def info_nce_with_mixing(
    query: Tensor,
    key: Tensor,
    negatives: Tensor,
    *,
    n_hard: int,
    s: int,
    s_prime: int,
    temperature: float | Tensor = 0.1,
    generator: torch.Generator | None = None,
    **kwargs,
) -> Tensor:
    """MoCHi loss: :func:`info_nce_with_synthetic` with ``negatives`` (the queue) both as shared negatives and as
    the pool mined by :func:`mix_hard_negatives`. ``kwargs`` go to :func:`info_nce_with_synthetic`."""
    synthetic = mix_hard_negatives(query, negatives, n_hard=n_hard, s=s, s_prime=s_prime, generator=generator)
    return info_nce_with_synthetic(query, key, synthetic, temperature=temperature, negatives=negatives, **kwargs)
