r"""Debiased (Chuang et al. 2020) and hard-negative (Robinson et al. 2021) InfoNCE.

Per anchor, with :math:`p` the positive logit and :math:`x_j` the :math:`N` negative logits
(similarity / :math:`\tau`), :math:`\tau^+` the class prior (probability that a "negative" is in fact of
the anchor's class) and :math:`\beta \ge 0` the hardness concentration:

.. math::
    N_g = \max\Big(\frac{N \frac{\sum_j e^{(1+\beta) x_j}}{\sum_j e^{\beta x_j}} - \tau^+ N e^{p}}{1 - \tau^+},\;
        N e^{-1/\tau}\Big), \qquad \ell = -p + \log\big(e^{p} + N_g\big).

:math:`\beta = 0` is the debiased loss (the negatives' mean :math:`\frac1N\sum_j e^{x_j}` corrected for
false negatives); :math:`\beta > 0` reweights every negative by :math:`e^{\beta x_j} / \mathrm{mean}_k e^{\beta x_k}`
(importance sampling towards hard negatives); :math:`\tau^+ = 0, \beta = 0` is InfoNCE with the floor
:math:`N e^{-1/\tau}`, the smallest value the sum can take with cosine similarity.

Pairs: ``two_n=False``: anchors ``query``, positive ``key[i]``, negatives the other keys (:math:`N = B-1`).
``two_n=True``: SimCLR's 2N form over ``cat([query, key])``: each view's positive is its partner, the
negatives are the other :math:`2B-2` views. Under ``gather`` the negatives come from every rank and
:math:`N` is the global count.

It is computed in log space from two log-sum-exps per row, :math:`\log\sum_j e^{(1+\beta)x_j}` and
:math:`\log\sum_j e^{\beta x_j}`, which merge over tiles and shards like every other engine statistic.

References:
    Chuang, Robinson, Lin, Torralba, Jegelka, "Debiased Contrastive Learning", NeurIPS 2020.
    Robinson, Chuang, Sra, Jegelka, "Contrastive Learning with Hard Negative Samples", ICLR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from core.losses._checks import check_choice, check_pair, check_reduction, check_temperature, reduce
from core.losses._module import loss_module
from core.losses.engine import _index_fill, prepare, reduce_pairs, scale_anchors
from core.negatives.distributed import agree_on_input_errors
from core.negatives.execution import Block, safe_logsumexp
from core.negatives.mode import execution_mode

__all__ = ["debiased_info_nce", "DebiasedInfoNCE"]

_ROW_KINDS = ("lse", "lse", "sum", "count")


class _DebiasedBlock:
    """Row statistics of one block: lse of (1+beta) x and of beta x over the negatives, the positive logit,
    the number of negatives."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def __call__(self, a: Tensor, c: Tensor, params: Sequence[Tensor], blk: Block):
        scale = params[0]
        x = (a * scale) @ c.T
        T, C = x.shape
        rows = torch.arange(T, device=x.device)
        c0 = blk.col_ids[0]
        li = blk.row["pos_id"] - c0
        inside = (li >= 0) & (li < C)
        pos = (a * scale * c[li.clamp(0, C - 1)]).sum(1)
        pos = torch.where(inside, pos, torch.zeros_like(pos))
        neg = _index_fill(torch.ones_like(x, dtype=torch.bool), rows, li, False)
        if "self_id" in blk.row:
            neg = _index_fill(neg, rows, blk.row["self_id"] - c0, False)
        ninf = float("-inf")
        l_hard = safe_logsumexp(((1.0 + self.beta) * x).masked_fill(~neg, ninf), 1)
        l_imp = safe_logsumexp((self.beta * x).masked_fill(~neg, ninf), 1)
        return [l_hard, l_imp, pos, neg.sum(1).to(x.dtype)], []


def _debiased_from_stats(row: Tensor, inv_t: Tensor, tau_plus: float) -> Tensor:
    """Per-anchor loss from the row statistics (log space, no overflow)."""
    l_hard, l_imp, p, n = row[:, 0], row[:, 1], row[:, 2], row[:, 3]
    log_n = torch.log(n)
    log_a = log_n + l_hard - l_imp  # log(N * sum e^{(1+b)x} / sum e^{bx})
    if tau_plus > 0.0:
        d = math.log(tau_plus) + log_n + p - log_a  # log(tau+ N e^p / A)
        ok = d < 0
        safe_d = torch.where(ok, d, torch.full_like(d, -1.0))
        val = log_a + torch.log(-torch.expm1(safe_d)) - math.log1p(-tau_plus)
        log_ng = torch.where(ok, val, torch.full_like(val, float("-inf")))
    else:
        log_ng = log_a
    log_ng = torch.maximum(log_ng, log_n - inv_t)
    return torch.logaddexp(p, log_ng) - p


def _check_settings(tau_plus: float, beta: float) -> None:
    if isinstance(tau_plus, bool) or not isinstance(tau_plus, (int, float)) or not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must be a number in [0, 1), got {tau_plus!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")


@agree_on_input_errors
def debiased_info_nce(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float | Tensor = 0.5,
    tau_plus: float = 0.1,
    beta: float = 0.0,
    two_n: bool = False,
    similarity: str = "cosine",
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """Debiased (``beta=0``) / hard-negative (``beta>0``) InfoNCE; formula in the module docstring.

    Args:
        query, key: (B, D) unnormalised embeddings; row i of each is a positive pair.
        temperature: tau > 0 (a tensor keeps the graph); per anchor: (B,) (or with ``two_n`` (B,) per sample /
            (2B,) per view). The floor is ``N e^{-1/tau_i}``.
        tau_plus: class prior tau+ in [0, 1).
        beta: hardness concentration >= 0 (0: debiased only).
        two_n: SimCLR's 2N form over ``cat([query, key])`` instead of query -> key.
        similarity, reduction, tile_size, gather: as in :func:`core.losses.info_nce` (``reduction="none"``
            gives (B,), or (2B,) with ``two_n``, query anchors first).
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    check_pair("query", query, "key", key)
    B = query.shape[0]
    per_t = check_temperature("temperature", temperature, (B, 2 * B) if two_n else (B,))
    _check_settings(tau_plus, beta)
    check_choice("similarity", similarity, ("cosine", "dot"))
    check_reduction(reduction)
    n_global = B * mode.world
    if n_global < 2:
        raise ValueError("the batch has no negatives: the debiased loss needs at least 2 samples")
    q, k = prepare(query, similarity, "query"), prepare(key, similarity, "key")
    ids = torch.arange(B, device=q.device)
    if two_n:
        anchors = cands = torch.cat([q, k], 0)
        idx = torch.arange(2 * B, device=q.device)
        meta = {"pos_id": (idx + B) % (2 * B), "self_id": idx}
        if per_t and temperature.shape[0] == B:
            temperature = temperature.repeat(2)
    else:
        anchors, cands, meta = q, k, {"pos_id": ids}
    anchors, scale = scale_anchors(anchors, temperature, per_t)
    row, _ = reduce_pairs(_DebiasedBlock(float(beta)), anchors, cands, row_kinds=_ROW_KINDS, params=(scale,),
                          row_meta=meta, mode=mode)
    if per_t:
        inv_t = 1.0 / temperature.to(device=row.device, dtype=row.dtype)
    else:
        inv_t = scale
    return reduce(_debiased_from_stats(row, inv_t, float(tau_plus)), reduction)


def _check_options(*, temperature, tau_plus, beta, similarity, **_) -> None:
    check_temperature("temperature", temperature)
    _check_settings(tau_plus, beta)
    check_choice("similarity", similarity, ("cosine", "dot"))


#: Module form of :func:`debiased_info_nce`; ``forward(query, key, temperature=None)``.
DebiasedInfoNCE = loss_module(debiased_info_nce, "DebiasedInfoNCE", overrides=("temperature",), check=_check_options)
