r"""CACR: contrastive attraction and contrastive repulsion (Zheng et al. 2021).

For anchor :math:`q_i` (a query) and candidates :math:`k_j` (the keys), with the point-to-point cost
:math:`d_{ij} = \lVert f(q_i) - f(k_j) \rVert^2` (``similarity="cosine"``: :math:`f` L2-normalises, so
:math:`d_{ij} = 2 - 2\cos(q_i, k_j)`; ``"dot"``: the raw embeddings), positives :math:`P(i)` (key ``i``, or every
key with the anchor's label) and negatives :math:`N(i)` (every other key), CACR weighs both sets by conditional
distributions that favour the distant positives and the close negatives:

.. math::
    \pi^+_{ij} = \frac{e^{t_+ d_{ij}}}{\sum_{l \in P(i)} e^{t_+ d_{il}}}, \qquad
    \pi^-_{ij} = \frac{e^{-t_- d_{ij}}}{\sum_{l \in N(i)} e^{-t_- d_{il}}},

.. math::
    \ell_i = \underbrace{\sum_{j \in P(i)} \pi^+_{ij}\, d_{ij}}_{\text{contrastive attraction}}
           \; - \; \underbrace{\sum_{j \in N(i)} \pi^-_{ij}\, d_{ij}}_{\text{contrastive repulsion}} .

With one positive per anchor (``labels=None``) the attraction is :math:`d_{ii}` whatever :math:`t_+`. The gradient
is that of :math:`\ell_i` as written (through the weights too). ``t_pos = t_neg = 0`` gives plain means.

**On the engine.** Each weighted mean is a ratio of two log-sum-exps over the candidates, so every execution mode
(dense, tiled, ``gather``) merges it exactly: with :math:`R_i = \mathrm{LSE}_{j \in N(i)}(-t_- d_{ij})` and
:math:`R'_i = \mathrm{LSE}_{j \in N(i)}(-t_- d_{ij} + \log(1 + d_{ij}))`,
:math:`\sum_j \pi^-_{ij} d_{ij} = e^{R'_i - R_i} - 1` (``expm1``; the shift by 1 keeps the log finite and its
gradient bounded at :math:`d = 0`), and the same for the attraction with :math:`+t_+`. On the whole matrix (dense)
the two are one fused log-sum-exp and one softmax; a tile's gradient in the tiled / ring walks is written out by
hand (:meth:`_CACRBlock.direct_grad`), so a tile costs a few tile-sized buffers instead of an autograd graph.

Reference:
    Zheng, Chen, Yao, Yang, Li, Zhang, Zhang, Tsang, Zhou, Zhou, "Contrastive Attraction and Contrastive Repulsion
    for Representation Learning", TMLR 2023 (arXiv:2105.03746, 2021).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from core.losses._checks import check_choice, check_labels, check_pair, check_reduction, full_validation, reduce
from core.losses._module import loss_module
from core.losses.engine import prepare, reduce_pairs
from core.negatives.distributed import agree_on_input_errors
from core.negatives.execution import Block, safe_logsumexp
from core.negatives.mode import execution_mode

__all__ = ["cacr", "CACR"]

#: per-row statistics with index positives / with label positives
_INDEX_STATS = {"pos_d": "sum", "neg": "lse", "neg_d": "lse", "n_neg": "count"}
_LABEL_STATS = {"pos": "lse", "pos_d": "lse", "n_pos": "count", "neg": "lse", "neg_d": "lse", "n_neg": "count"}


class _CACRBlock:
    """Block function of :func:`cacr` (statistics as in the module doc)."""

    def __init__(self, t_pos: float, t_neg: float, cosine: bool) -> None:
        self.t_pos, self.t_neg, self.cosine = t_pos, t_neg, cosine

    def __call__(self, a: Tensor, c: Tensor, params: Sequence[Tensor], blk: Block):
        s = a @ c.T
        if self.cosine:
            d = (2.0 - 2.0 * s).clamp_min(0.0)
        else:
            d = ((a * a).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * s).clamp_min(0.0)
        ninf = float("-inf")
        if blk.full and "label" not in blk.row:
            # the whole matrix, one positive per row: index it instead of building masks, fused reductions
            rows = torch.arange(d.shape[0], device=d.device)
            li = blk.row["pos_id"] - blk.col_ids[0]
            neg_x = ((-self.t_neg) * d).index_put((rows, li), torch.tensor(ninf, dtype=d.dtype, device=d.device))
            n_neg = torch.full(li.shape, d.shape[1] - 1, dtype=d.dtype, device=d.device)
            return [d[rows, li], *_weighted_lse(neg_x, d), n_neg], []
        if "label" in blk.row:
            pos = blk.row["label"][:, None] == blk.col["label"][None, :]
        else:
            pos = blk.row["pos_id"][:, None] == blk.col_ids[None, :]
        n_neg = (~pos).sum(1).to(s.dtype)
        neg_x = (-self.t_neg * d).masked_fill(pos, ninf)
        pos_x = (self.t_pos * d).masked_fill(~pos, ninf) if "label" in blk.row else None
        if blk.full:
            neg_stats = [*_weighted_lse(neg_x, d), n_neg]
            return [*_weighted_lse(pos_x, d), pos.sum(1).to(s.dtype), *neg_stats], []
        log1p_d = torch.log1p(d)
        neg_stats = [safe_logsumexp(neg_x, 1), safe_logsumexp(neg_x + log1p_d, 1), n_neg]
        if pos_x is None:  # one positive: its distance, summed over the single block that holds it
            return [torch.where(pos, d, torch.zeros_like(d)).sum(1), *neg_stats], []
        return [safe_logsumexp(pos_x, 1), safe_logsumexp(pos_x + log1p_d, 1), pos.sum(1).to(s.dtype),
                *neg_stats], []


    def direct_grad(self, a: Tensor, c: Tensor, params: Sequence[Tensor], blk: Block, row_tot: Tensor,
                    col_tot: Tensor, g_row: Tensor, g_col: Tensor, need) -> tuple[Tensor | None, Tensor | None, list]:
        """The tile's input gradients written out (no graph; see :meth:`core.negatives.execution.BlockWalk.backward`).

        With ``L`` a row's total of a log-sum-exp statistic over every tile and ``g`` its upstream gradient, an
        entry ``x_ij`` of it gets ``g_i e^{x_ij - L_i}``; the entries are ``-t_- d`` and ``-t_- d + log(1 + d)``
        over the negatives (``+t_+`` over the positives with labels), so ``dl/dd_ij`` collects
        ``g e^{x - L} (-t_-)`` and ``g' e^{x' - L'} (-t_- + 1 / (1 + d))`` (the index positive's distance gets its
        upstream gradient unchanged). Then ``d = 2 - 2 a.c`` (cosine) or ``|a|^2 + |c|^2 - 2 a.c`` (dot),
        clamped at 0 as in the forward pass.
        """
        need_a, need_c, _ = need
        with torch.no_grad():
            s = a @ c.T
            if self.cosine:
                raw = s.mul(-2.0).add_(2.0)
            else:
                raw = ((a * a).sum(1)[:, None] + (c * c).sum(1)[None, :]).sub_(s, alpha=2.0)
            del s
            inside = raw >= 0  # clamp_min's gradient mask
            d = raw.clamp_min_(0.0)
            labels = "label" in blk.row
            if labels:
                pos = blk.row["label"][:, None] == blk.col["label"][None, :]
            else:
                pos = blk.row["pos_id"][:, None] == blk.col_ids[None, :]
            inv = torch.reciprocal(d + 1.0)
            log1p_d = torch.log1p(d)
            k = 3 if labels else 1  # column of the "neg" statistic
            x = (-self.t_neg * d).masked_fill_(pos, float("-inf"))
            G = torch.exp(x - row_tot[:, k, None]).mul_(-self.t_neg * g_row[:, k, None])
            w2 = x.add_(log1p_d).sub_(row_tot[:, k + 1, None]).exp_().mul_(g_row[:, k + 1, None])
            G += w2.mul_(inv - self.t_neg)
            del x, w2
            if labels:
                y = (self.t_pos * d).masked_fill_(~pos, float("-inf"))
                G += torch.exp(y - row_tot[:, 0, None]).mul_(self.t_pos * g_row[:, 0, None])
                u2 = y.add_(log1p_d).sub_(row_tot[:, 1, None]).exp_().mul_(g_row[:, 1, None])
                G += u2.mul_(inv + self.t_pos)
                del y, u2
            else:
                G += pos * g_row[:, 0, None]
            G.mul_(inside)
            if self.cosine:
                da = G @ c * -2.0 if need_a else None
                dc = G.T @ a * -2.0 if need_c else None
            else:
                da = (2.0 * a * G.sum(1)[:, None] - 2.0 * (G @ c)) if need_a else None
                dc = (2.0 * c * G.sum(0)[:, None] - 2.0 * (G.T @ a)) if need_c else None
        return da, dc, []


def _weighted_lse(x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """On the whole matrix: ``(LSE_j x_ij, LSE_j (x_ij + log(1 + d_ij)))`` as one fused log-sum-exp and
    ``LSE + log(1 + sum_j softmax(x)_ij d_ij)`` (every row has a finite entry: callers check for anchors without
    negatives / positives), instead of two masked log-sum-exps. :func:`cacr` uses only their difference
    ``log(1 + E_softmax(x)[d])``, so the first is returned without a graph: its gradient would cancel in the
    difference, and leaving it out saves the log-sum-exp's backward over the matrix."""
    with torch.no_grad():
        lse = torch.logsumexp(x, 1)
    return lse, lse + torch.log1p((torch.softmax(x, 1) * d).sum(1))


def _check_t(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_options(*, t_pos: float, t_neg: float, similarity: str, **_) -> None:
    _check_t("t_pos", t_pos)
    _check_t("t_neg", t_neg)
    check_choice("similarity", similarity, ("cosine", "dot"))


@agree_on_input_errors
def cacr(
    query: Tensor,
    key: Tensor,
    labels: Tensor | None = None,
    *,
    t_pos: float = 1.0,
    t_neg: float = 1.0,
    similarity: str = "cosine",
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    r"""CACR loss of every query against every key (formula in the module docstring):
    :math:`\ell_i = \sum_{P(i)} \pi^+_{ij} d_{ij} - \sum_{N(i)} \pi^-_{ij} d_{ij}`,
    :math:`\pi^+ \propto e^{t_+ d}`, :math:`\pi^- \propto e^{-t_- d}`, :math:`d_{ij} = \lVert f(q_i) - f(k_j)\rVert^2`.

    Args:
        query, key: (B, D) unnormalised embeddings; key ``i`` is query ``i``'s positive view.
        labels: ``None`` (one positive per anchor: key i) or (B,) labels shared by query i and key i (positives:
            every key with the anchor's label, weighted by :math:`\pi^+`; negatives: the keys of other labels).
        t_pos: :math:`t_+ \ge 0`, how much the attraction favours distant positives (no effect with one positive).
        t_neg: :math:`t_- \ge 0`, how much the repulsion favours close negatives (0: the plain mean distance).
        similarity: ``"cosine"`` (distances of L2-normalised embeddings, :math:`d \in [0, 4]`) or ``"dot"`` (of the
            raw embeddings).
        reduction, tile_size, gather: as in :func:`core.losses.info_nce` (under ``gather`` the keys, and their
            labels, of every rank are candidates; each rank returns the mean over its own queries).

    Returns:
        The loss (lower is better; it can be negative: the repulsion term is subtracted).
    """
    mode = execution_mode(tile_size, gather)
    check_pair("query", query, "key", key)
    _check_options(t_pos=t_pos, t_neg=t_neg, similarity=similarity)
    check_reduction(reduction)
    B = query.shape[0]
    if B * mode.world < 2:
        raise ValueError("the batch has no negatives: CACR needs at least 2 samples")
    q, k = prepare(query, similarity, "query"), prepare(key, similarity, "key")
    block = _CACRBlock(float(t_pos), float(t_neg), similarity == "cosine")
    if labels is None:
        ids = torch.arange(B, device=q.device)
        stats, _ = reduce_pairs(block, q, k, row_kinds=_INDEX_STATS, row_meta={"pos_id": ids}, mode=mode)
        attraction = stats.pos_d
    else:
        check_labels("labels", labels, B)
        if labels.dim() != 1:
            raise ValueError(f"labels must have shape ({B},), got {tuple(labels.shape)}")
        y = labels.to(q.device)
        stats, _ = reduce_pairs(block, q, k, row_kinds=_LABEL_STATS, row_meta={"label": y}, col_meta={"label": y},
                                mode=mode)
        attraction = torch.expm1(stats.pos_d - stats.pos)
    if full_validation() and bool((stats.n_neg == 0).any()):
        raise ValueError("an anchor has no negatives: every key has its label")
    repulsion = torch.expm1(stats.neg_d - stats.neg)
    return reduce(attraction - repulsion, reduction)


#: Module form of :func:`cacr`; ``forward(query, key, labels=None)``.
CACR = loss_module(cacr, "CACR", check=_check_options)
