r"""One engine behind the InfoNCE family.

Every loss in this package is the same computation with different settings (see DESIGN.md):

* a **similarity** ``s_ij`` between anchor ``a_i`` and candidate ``c_j`` (cosine or dot product),
  multiplied by a scale ``1/tau``;
* a **pair structure** computed per block from ids and labels, never stored as a dense B x N mask:
  positives by matching id (InfoNCE, NT-Xent), by equal label (SupCon), by a label window (ConR),
  or by a user weight matrix (CWCL); excluded pairs (the anchor itself; positives under ``decoupled``;
  ConR's "neither positive nor negative" pairs); optional log-weights on denominator terms (ConR's
  pushing weights);
* a **row reduction** into statistics: the log-sum-exp of the denominator ``D_i``, the positive part
  ``P_i`` (sum of positive logits, or their log-sum-exp), and counts.

Writing the loss as ``loss_i = f(D_i, P_i, counts)`` lets :func:`core.negatives.pair_reduce` run it dense,
tiled (recomputed in backward), or over candidates gathered from every rank, with no change to the loss.
:func:`reduce_pairs` picks that execution mode for any block function (SigLIP's sigmoid sums use it
directly); :func:`run_contrast` is it for :func:`contrast_block`. In the dense mode the row log-sum-exp
uses the fused log-softmax / softmax kernels, and plain index positives are read off the logit matrix in
the same function, so a dense InfoNCE step costs what ``F.cross_entropy`` costs.

**Writing your own loss.** Everything a loss outside this package needs is exported here (see ``__all__``):
:func:`reduce_pairs` and its block contract (:class:`Block`, :data:`BlockFn`, :func:`safe_logsumexp`, named
statistics through :class:`Stats`), :func:`to_scale` / :func:`prepare`, the validators of
:mod:`core.losses._checks`, :func:`reduce`, :func:`resolve_gather` and :func:`agree_on_input_errors` (the
cross-rank error agreement), :func:`execution_mode` (``tile_size`` / ``gather`` validated once, handed to
:func:`reduce_pairs` as ``mode=``), :func:`loss_module` (the loss's ``nn.Module``, generated from its signature)
and :func:`validation`. ``docs/custom_loss.md`` builds a loss on them, step by step.

Logit with margin (positives only), ``m`` the margin and ``s`` the cosine:

* additive (NT-Xent-AM, CosFace-style): ``(s - m) / tau``;
* angular (AAM, ArcFace-style): ``cos(theta + m) / tau`` with ``theta = arccos s``, and the usual fallback
  ``s - m sin(pi - m)`` when ``s <= cos(pi - m)`` (i.e. ``theta + m > pi``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from core.losses._checks import (
    MIN_NORM,
    check_choice,
    check_dtypes,
    check_embeddings,
    check_labels,
    check_pair,
    check_positive,
    check_reduction,
    check_temperature,
    compute_dtype,
    normalize_rows,
    reduce,
    upcast,
)
from core.losses._module import loss_module
from core.negatives.distributed import PeerInputError, agree_on_input_errors, gather_candidates, ring_pair_reduce
from core.negatives.execution import Block, BlockFn, pair_reduce, safe_logsumexp
from core.negatives.mode import ExecutionMode, check_tile_size, execution_mode, resolve_gather, world_size
from core.negatives.validation import full_validation, validation, validation_mode

#: block reducers of :func:`run_contrast`: PyTorch ops, or the fused Triton kernels of :mod:`core.kernels`
BACKENDS = ("torch", "triton")

__all__ = [
    "BACKENDS",
    # the engine
    "reduce_pairs", "Block", "BlockFn", "Stats", "safe_logsumexp", "to_scale", "scale_anchors", "prepare",
    # the execution mode (tile_size / gather), decided once per call
    "ExecutionMode", "execution_mode",
    # the nn.Module form of a loss function, generated from its signature
    "loss_module",
    # the InfoNCE family's block function and its statistics
    "ContrastSpec", "ContrastBlockFn", "contrast_block", "run_contrast", "ROW_STATS", "RowStats", "row_stats",
    # validators (ValueError naming the argument) and the reduction
    "check_embeddings", "check_pair", "check_dtypes", "check_temperature", "check_positive", "check_reduction",
    "check_labels", "check_choice", "check_tile_size", "normalize_rows", "upcast", "compute_dtype", "MIN_NORM",
    "reduce",
    # distributed execution and the cross-rank error agreement
    "resolve_gather", "world_size", "agree_on_input_errors", "PeerInputError",
    # how much is validated
    "validation", "validation_mode", "full_validation",
]


@dataclass(frozen=True)
class ContrastSpec:
    """Settings of one InfoNCE-family loss.

    Attributes:
        positive: ``"index"`` (row meta ``pos_id``), ``"label"`` (equal ``label``), ``"window"``
            (``|y_i - y_j| <= window``), or ``"pair_weights"`` (row meta ``pair_weights`` (B, N)).
        exclude_self: drop the pair (i, ``self_id[i]``) everywhere (SimCLR's 2N formulation).
        decoupled: drop positives from the denominator (DCL).
        margin / margin_type: positive-only margin, ``"additive"`` or ``"angular"``.
        pos_stat: ``"sum"`` (sum of positive logits; mean over positives in the loss) or ``"lse"``
            (log-sum-exp of positive logits, SupCon "in").
        negatives_rule: ``"all"`` (every non-excluded candidate) or ``"conr"`` (positives plus pairs with
            distant labels but close predictions, ConR).
        window: label window (ConR).
        push: ``None``, ``"exp"`` or ``"linear"`` pushing weight on ConR negatives.
        push_scale: ``e`` in ``w_j exp(e |y_j - y_q|)`` or ``w_j e |y_j - y_q|``.
        count_non_positive: also count columns that are not positives (reproduces ConR's public code,
            which adds ``exp(0) = 1`` per such column to the denominator).
        column_stats: also reduce the denominator over rows (fused symmetric loss, square case only).
        neg_threshold: index positives only: keep in the denominator only the negatives whose logit exceeds
            the row meta ``neg_thr`` (B,) (the top-K hard negatives of ``info_nce(top_k=K)``); the positive
            always stays.
        col_log_weight: label positives only: add the column meta ``log_weight`` (N,) to every logit of that
            column, in the numerator and the denominator (the class-prior adjustment of ``sup_con``).
    """

    positive: str = "index"
    exclude_self: bool = False
    decoupled: bool = False
    margin: float = 0.0
    margin_type: str = "additive"
    pos_stat: str = "sum"
    negatives_rule: str = "all"
    window: float = 0.0
    push: str | None = None
    push_scale: float = 0.0
    count_non_positive: bool = False
    column_stats: bool = False
    neg_threshold: bool = False
    col_log_weight: bool = False

    @property
    def row_kinds(self) -> tuple[str, ...]:
        # den_lse, pos, n_pos, n_neg, n_non_positive. n_pos is the number (or, for pair weights, the total
        # weight) of positives; n_neg the number of negatives (columns that are neither positives nor
        # the anchor itself; ConR's selected negatives under negatives_rule="conr"; 0 for pair weights).
        return ("lse", "lse" if self.pos_stat == "lse" else "sum", "count", "count", "count")

    @property
    def col_kinds(self) -> tuple[str, ...]:
        return ("lse",) if self.column_stats else ()


def to_scale(temperature: float | Tensor, like: Tensor) -> Tensor:
    """``1 / temperature`` as a 0-d tensor (keeps the graph if the temperature is learnable)."""
    if isinstance(temperature, Tensor):
        return (1.0 / temperature.reshape(())).to(like.dtype)
    return torch.tensor(1.0 / float(temperature), dtype=like.dtype, device=like.device)


def scale_anchors(anchors: Tensor, temperature: float | Tensor, per_anchor: bool) -> tuple[Tensor, Tensor]:
    """``(anchors, scale)`` for the engine. A scalar temperature becomes the engine's scale ``1/tau``; a
    per-anchor temperature ``(n,)`` divides each anchor row by its own ``tau_i`` (so every logit of row ``i`` is
    ``s_ij / tau_i``, and the gradient reaches ``tau_i`` through the anchors) and the scale is 1. Anchors stay
    local under ``gather``, so each rank's anchors carry their own temperatures in every execution mode."""
    if not per_anchor:
        return anchors, to_scale(temperature, anchors)
    t = temperature.to(device=anchors.device, dtype=anchors.dtype)
    return anchors / t[:, None], torch.ones((), dtype=anchors.dtype, device=anchors.device)


def prepare(x: Tensor, similarity: str, name: str = "embeddings") -> Tensor:
    """Embeddings in the compute dtype (float16 / bfloat16 -> float32), L2-normalised for cosine similarity
    (a row with no direction raises, naming ``name`` and the row: see :func:`core.losses._checks.normalize_rows`);
    as they are for dot product."""
    if similarity == "cosine":
        return normalize_rows(x, name)
    if similarity == "dot":
        return upcast(x)
    raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")


def _margin_logits(sim: Tensor, scale: Tensor, spec: ContrastSpec) -> Tensor:
    """Positive logit with margin, elementwise on the similarity."""
    m = spec.margin
    if spec.margin_type == "additive":
        return (sim - m) * scale
    # cos(theta + m) = s cos m - sqrt(1 - s^2) sin m; fallback below cos(pi - m) (ArcFace "easy margin" off)
    sin_t = torch.sqrt((1.0 - sim * sim).clamp_min(1e-12))
    phi = sim * math.cos(m) - sin_t * math.sin(m)
    phi = torch.where(sim > math.cos(math.pi - m), phi, sim - m * math.sin(math.pi - m))
    return phi * scale


def _lse_forward(x: Tensor, dim: int) -> Tensor:
    """log-sum-exp over ``dim`` in two parallel passes (max, fused log-softmax) instead of the four of
    ``torch.logsumexp``: lse = max - log_softmax(x)[argmax], where log_softmax at the maximum is exactly
    -log(sum exp(x - max)). Along the first dimension (the column direction of a symmetric loss) ``max``
    with indices is slow on CPU, so ``torch.logsumexp`` is used there."""
    if dim % x.dim() != x.dim() - 1:
        return torch.logsumexp(x, dim)
    m, at = x.max(dim, keepdim=True)
    return (m - torch.log_softmax(x, dim).gather(dim, at)).squeeze(dim)


class _DenseLogSumExp(torch.autograd.Function):
    """``logsumexp`` of a dense block whose backward is the fused softmax kernel.

    Autograd's own backward of ``torch.logsumexp`` builds ``exp(x - lse)`` in unfused passes with two
    B x N temporaries, which made the dense InfoNCE step ~1.5x slower than ``F.cross_entropy`` on CPU.
    Along a non-last dimension (the column direction of a symmetric loss) the backward is ``exp(x - lse)``
    from the saved forward result instead: ``softmax`` over a strided dimension is 1.5-1.7x slower than that
    on the CPU (4096^2 and 8192^2, one thread) and walks the whole dimension in one thread per column on CUDA
    (pytorch/pytorch#195200), which made our dense CLIP loss 5x slower than open_clip's on an H200.
    Only for slices that cannot be all ``-inf`` (dense blocks, validated by the callers). The backward is
    differentiable (double backward works with ``create_graph=True``; it then uses ``softmax``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        ctx.dim = dim
        lse = _lse_forward(x, dim)
        ctx.save_for_backward(x, lse)
        return lse

    @staticmethod
    def backward(ctx, g: Tensor):
        x, lse = ctx.saved_tensors
        dim = ctx.dim
        g = g.unsqueeze(dim)
        if torch.is_grad_enabled():  # building a graph of the backward itself: softmax's backward needs p
            return torch.softmax(x, dim) * g, None
        if dim % x.dim() != x.dim() - 1:
            return (x - lse.unsqueeze(dim)).exp_().mul_(g), None
        return torch.softmax(x, dim).mul_(g), None


class _DenseLogSumExpPick(torch.autograd.Function):
    """Row log-sum-exp of a dense block together with one entry per row, ``x[i, idx[i]]`` (the positive
    logit): the gradient of both is one fused softmax plus an O(B) scatter, the cost of ``F.cross_entropy``."""

    @staticmethod
    def forward(ctx, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(x, idx)
        return _lse_forward(x, 1), x.gather(1, idx[:, None]).squeeze(1)

    @staticmethod
    def backward(ctx, g_lse: Tensor | None, g_pick: Tensor | None):
        x, idx = ctx.saved_tensors
        graph = torch.is_grad_enabled()
        if g_lse is not None:
            p = torch.softmax(x, 1)
            p = p * g_lse[:, None] if graph else p.mul_(g_lse[:, None])
        else:
            p = torch.zeros_like(x)
        if g_pick is not None:
            where = (torch.arange(x.shape[0], device=x.device), idx)
            p = p.index_put(where, g_pick, accumulate=True) if graph else p.index_put_(where, g_pick, accumulate=True)
        return p, None


def _dense_logsumexp(x: Tensor, dim: int) -> Tensor:
    return _DenseLogSumExp.apply(x, dim)


def _label_distance(yr: Tensor, yc: Tensor) -> Tensor:
    """|y_i - y_j| for scalar labels (N,); the Euclidean distance for vector labels (N, L).

    Vector distances are computed in float64 without the matrix-product shortcut of ``cdist``, whose
    cancellation error would move pairs across the window boundary, and returned as float64 (integer
    labels must not be truncated back to their dtype).
    """
    if yr.dim() == 1:
        return (yr[:, None] - yc[None, :]).abs()
    return torch.cdist(yr.to(torch.float64), yc.to(torch.float64), compute_mode="donot_use_mm_for_euclid_dist")


def _index_fill(x: Tensor, rows: Tensor, local_cols: Tensor, values: Tensor | float) -> Tensor:
    """Out-of-place ``x[rows[k], local_cols[k]] = values`` for the columns that fall in this block."""
    inside = (local_cols >= 0) & (local_cols < x.shape[1])
    if not isinstance(values, Tensor):
        values = torch.tensor(values, dtype=x.dtype, device=x.device)
    else:
        values = values[inside]
    return x.index_put((rows[inside], local_cols[inside]), values)


def contrast_block(spec: ContrastSpec, a: Tensor, c: Tensor, params: Sequence[Tensor], blk: Block):
    """Statistics of one (anchors x candidates) block; see :class:`ContrastSpec`.

    Returns ``([D, P, n_pos, n_neg, n_non_positive], [column D])`` where ``D`` is the log-sum-exp of the
    denominator terms and ``P`` the positive statistic.
    """
    scale = params[0]
    # Scale the (B x D) anchors rather than the (B x N) logits: one pass over the big matrix fewer.
    logits = (a * scale) @ c.T
    T, C = logits.shape
    dt = logits.dtype
    rows_t = torch.arange(T, device=logits.device)
    c0 = blk.col_ids[0]
    neg_inf = float("-inf")
    # A dense block has no empty row (callers validate that), so the fused logsumexp is safe there.
    if not torch.is_grad_enabled():
        den_lse_fn = torch.logsumexp  # forward pass of a tiled walk: no gradient, so an empty row is harmless
    elif blk.full and spec.negatives_rule == "all":
        den_lse_fn = _dense_logsumexp
    else:
        den_lse_fn = safe_logsumexp
    zeros = torch.zeros(T, dtype=dt, device=logits.device)
    n_neg = n_nonpos = zeros

    if spec.positive == "index":
        if spec.negatives_rule != "all":
            raise ValueError("index positives support only negatives_rule='all'")
        # One positive per row, found by id: O(T) work, no mask.
        li = blk.row["pos_id"] - c0
        inside = (li >= 0) & (li < C)
        n_pos = inside.to(dt)
        n_neg = C - n_pos
        den = logits
        if spec.exclude_self:
            l_self = blk.row["self_id"] - c0
            den = _index_fill(den, rows_t, l_self, neg_inf)
            n_neg = n_neg - ((l_self >= 0) & (l_self < C)).to(dt)
        if spec.neg_threshold:
            keep = _index_fill(logits > blk.row["neg_thr"][:, None], rows_t, li, True)
            den = den.masked_fill(~keep, neg_inf)
        if blk.full and spec.margin == 0.0 and not spec.decoupled:
            # Dense, no margin: every positive is in the block and its logit is read off the matrix inside
            # the fused log-sum-exp (one softmax + an O(B) scatter in backward, like F.cross_entropy).
            den_lse, pos_val = _DenseLogSumExpPick.apply(den, li)
            return [den_lse, pos_val, n_pos, n_neg, n_nonpos], ([den_lse_fn(den, 0)] if spec.column_stats else [])
        li_c = li.clamp(0, C - 1)
        # Positive similarity from the (T x D) rows directly: no gradient through a T x C gather.
        pos_sim = (a * c[li_c]).sum(1)
        pos_logit = _margin_logits(pos_sim, scale, spec) if spec.margin != 0.0 else pos_sim * scale
        pos_val = torch.where(inside, pos_logit, torch.zeros_like(pos_logit))
        if spec.decoupled:
            den = _index_fill(den, rows_t, li, neg_inf)
        elif spec.margin != 0.0:
            den = _index_fill(den, rows_t, li, pos_logit)
    else:
        pos_mask: Tensor | None = None
        pos_w: Tensor | None = None
        if spec.positive == "label":
            pos_mask = blk.row["label"][:, None] == blk.col["label"][None, :]
        elif spec.positive == "window":
            dist = _label_distance(blk.row["label"], blk.col["label"])
            pos_mask = dist <= spec.window
        elif spec.positive == "pair_weights":
            pos_w = blk.row["pair_weights"][:, blk.cols].to(dt)
        else:
            raise ValueError(f"unknown positive rule {spec.positive!r}")
        self_mask = blk.row["self_id"][:, None] == blk.col_ids[None, :] if spec.exclude_self else None
        if pos_mask is not None and self_mask is not None:
            pos_mask = pos_mask & ~self_mask
        if spec.margin != 0.0:
            if pos_mask is None:
                raise ValueError("margins need hard positives (index or label), not pair weights")
            logits = torch.where(pos_mask, _margin_logits(a @ c.T, scale, spec), logits)
        if spec.col_log_weight:
            logits = logits + blk.col["log_weight"].to(dt)[None, :]
        if pos_w is not None:
            n_pos = pos_w.sum(1)
            pos_val = (pos_w * logits).sum(1)
        else:
            n_pos = pos_mask.sum(1).to(dt)
            if spec.pos_stat == "lse":
                pos_val = safe_logsumexp(logits.masked_fill(~pos_mask, neg_inf), 1)
            else:
                pos_val = torch.where(pos_mask, logits, torch.zeros_like(logits)).sum(1)

        den = logits
        if spec.negatives_rule == "conr":
            if spec.positive != "window":
                raise ValueError("negatives_rule='conr' needs window positives")
            pdist = _label_distance(blk.row["pred"], blk.col["pred"])
            neg_mask = (dist > spec.window) & (pdist <= spec.window)
            if self_mask is not None:
                neg_mask = neg_mask & ~self_mask
            n_neg = neg_mask.sum(1).to(dt)
            if spec.push is not None:
                w = blk.row["weight"].to(dt)[:, None]
                d = dist.to(dt)
                if spec.push == "exp":
                    logw = torch.log(w) + spec.push_scale * d
                else:
                    logw = torch.log(w * spec.push_scale * d)
                den = torch.where(neg_mask, den + logw, den)
            den = den.masked_fill(~(pos_mask | neg_mask), neg_inf)
            if spec.count_non_positive:
                n_nonpos = (~pos_mask).sum(1).to(dt)
        elif spec.negatives_rule == "all":
            if pos_mask is not None:
                # every column that is neither a positive nor the anchor itself is a negative
                n_neg = C - n_pos - (self_mask.sum(1).to(dt) if self_mask is not None else 0.0)
            if self_mask is not None:
                den = den.masked_fill(self_mask, neg_inf)
            if spec.decoupled:
                if pos_mask is None:
                    raise ValueError("decoupled needs hard positives (index or label)")
                den = den.masked_fill(pos_mask, neg_inf)
        else:
            raise ValueError(f"unknown negatives rule {spec.negatives_rule!r}")

    row_stats = [den_lse_fn(den, 1), pos_val, n_pos, n_neg, n_nonpos]
    col_stats = [den_lse_fn(den, 0)] if spec.column_stats else []
    return row_stats, col_stats


class ContrastBlockFn:
    """:func:`contrast_block` bound to a spec, with a hand-derived tile gradient for the common case.

    For index positives over all candidates (InfoNCE, CLIP, NT-Xent, with ``decoupled``, additive margins and
    ``info_nce(top_k=)``'s threshold) the recomputed tile's gradient is written out instead of replaying the tile
    under autograd:
    with ``x = s a c^T`` the tile's logits and ``L`` the saved row (column) log-sum-exp totals,

        G = g_row * exp(x_den - L_row) [+ g_col * exp(x_den - L_col)],
        da = s G c,   dc = s G^T a,   ds = sum(a * (G c)) - m * sum_i G_{i, p(i)},

    plus the positive term ``P_i = s (a_i . c_p(i) - m)``. Other specs return ``None`` and the walk falls
    back to autograd (see :meth:`core.negatives.execution.BlockWalk.backward`).
    """

    def __init__(self, spec: ContrastSpec) -> None:
        self.spec = spec

    def __call__(self, a: Tensor, c: Tensor, params: Sequence[Tensor], blk: Block):
        return contrast_block(self.spec, a, c, params, blk)

    def direct_grad(
        self, a: Tensor, c: Tensor, params: Sequence[Tensor], blk: Block, row_tot: Tensor, col_tot: Tensor,
        g_row: Tensor, g_col: Tensor, need: tuple[bool, bool, Sequence[bool]],
    ) -> tuple[Tensor | None, Tensor | None, list[Tensor | None]] | None:
        spec = self.spec
        if (spec.positive != "index" or spec.negatives_rule != "all"
                or (spec.margin != 0.0 and spec.margin_type != "additive")):
            return None
        need_a, need_c, need_p = need
        scale = params[0].detach()
        T, C = a.shape[0], c.shape[0]
        rows_t = torch.arange(T, device=a.device)
        c0 = blk.col_ids[0]
        m = spec.margin
        with torch.no_grad():
            den = (a * scale) @ c.T
            li = blk.row["pos_id"] - c0
            inside = (li >= 0) & (li < C)
            li_c = li.clamp(0, C - 1)
            pos_sim = (a * c[li_c]).sum(1)
            r_in, l_in = rows_t[inside], li_c[inside]
            if spec.neg_threshold:  # top-K: the negatives at or below the row's threshold leave the denominator
                drop = den <= blk.row["neg_thr"][:, None]
                drop[r_in, l_in] = False
                den.masked_fill_(drop, float("-inf"))
                del drop
            if spec.decoupled:
                den[r_in, l_in] = float("-inf")
            elif m != 0.0:
                den[r_in, l_in] = scale * (pos_sim[inside] - m)
            if spec.exclude_self:
                ls = blk.row["self_id"] - c0
                s_in = (ls >= 0) & (ls < C)
                den[rows_t[s_in], ls[s_in]] = float("-inf")
            if spec.column_stats:
                G = torch.exp(den - col_tot[None, :, 0]).mul_(g_col[None, :, 0])
                G += den.sub_(row_tot[:, 0:1]).exp_().mul_(g_row[:, 0:1])
            else:
                G = den.sub_(row_tot[:, 0:1]).exp_().mul_(g_row[:, 0:1])
            gp = torch.where(inside, g_row[:, 1], torch.zeros_like(g_row[:, 1]))
            Gc = G @ c
            da = (Gc + gp[:, None] * c[li_c]).mul_(scale) if need_a else None
            dc = None
            if need_c:
                dc = (G.T @ a).mul_(scale)
                dc.index_add_(0, l_in, (scale * gp[inside])[:, None] * a[inside])
            ds = None
            if need_p[0]:
                ds = (a * Gc).sum() + (gp * (pos_sim - m)).sum()
                if m != 0.0 and not spec.decoupled:
                    ds = ds - m * G[r_in, l_in].sum()
                ds = ds.reshape(params[0].shape)
        return da, dc, [ds]


def reduce_pairs(
    block_fn: BlockFn,
    anchors: Tensor,
    candidates: Tensor,
    *,
    row_kinds: Sequence[str] | Mapping[str, str],
    col_kinds: Sequence[str] = (),
    params: Sequence[Tensor] = (),
    row_meta: Mapping[str, Tensor] | None = None,
    col_meta: Mapping[str, Tensor] | None = None,
    tile_size=None,
    gather: bool | str | None = None,
    extra_candidates: Tensor | None = None,
    id_keys: Sequence[str] = ("pos_id", "self_id"),
    mode: ExecutionMode | None = None,
) -> tuple[Tensor | Stats, Tensor]:
    """Run any block function in the execution mode asked for: dense / tiled (``tile_size``), over the
    candidates of every rank (``gather=True``: all-gather with gradient; ``"ring"``: shards passed around
    a ring), with optional ``extra_candidates`` (a queue) appended after the (gathered) candidates.

    ``tile_size`` / ``gather`` become an :class:`ExecutionMode` through :func:`execution_mode` (the one place
    that validates them and checks the restrictions of each mode: the ring takes no extra candidates and no
    column statistics); a loss that already made its mode at its entry passes ``mode=`` instead (then
    ``tile_size`` and ``gather`` must be left out).

    The block contract (:data:`BlockFn`): ``block_fn(a, c, params, blk)`` gets a block of anchors ``a`` (T, D)
    and candidates ``c`` (C, D), the ``params`` tensors (temperatures ...; they get gradients) and a
    :class:`Block` (global ``row_ids`` / ``col_ids``, ``row`` / ``col`` metadata sliced to the block), and
    returns ``(row_stats, col_stats)``: one (T,) tensor per entry of ``row_kinds`` and one (C,) per entry of
    ``col_kinds``. Kinds: ``"lse"`` (log-sum-exp; merged over blocks with ``logaddexp``; a row may see no
    term in a tile, so use :func:`safe_logsumexp`), ``"sum"`` and ``"count"`` (summed; counts carry no
    gradient). The result must not depend on how the columns are split into blocks. In the tiled and ring
    modes the forward pass runs without a graph and every block is recomputed under autograd in backward.

    The row-metadata entries named in ``id_keys`` index the *local* candidates; with ``gather`` they are
    shifted to this rank's slot of the gathered set. Extra candidates carry no column metadata.

    ``row_kinds`` may be a mapping ``{name: kind}`` (the block function still returns its statistics in that
    order): the row statistics then come back as a :class:`Stats` (``stats.neg_lse`` instead of
    ``row[:, 0]``); a sequence gives the (B, R) tensor.
    """
    names = tuple(row_kinds) if isinstance(row_kinds, Mapping) else None
    kinds = tuple(row_kinds.values()) if isinstance(row_kinds, Mapping) else tuple(row_kinds)
    mode = _mode_of(mode, tile_size, gather)
    row, col = _reduce_pairs(block_fn, anchors, candidates, row_kinds=kinds, col_kinds=col_kinds, params=params,
                             row_meta=row_meta, col_meta=col_meta, mode=mode,
                             extra_candidates=extra_candidates, id_keys=id_keys)
    if names is None:
        return row, col
    return Stats(zip(names, row.unbind(1))), col


class Stats(dict):
    """Named per-row statistics (a dict of (B,) tensors that also reads as attributes: ``stats.pos``)."""

    def __getattr__(self, name: str) -> Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no statistic {name!r}; have {list(self)}") from None


#: names of the five row statistics of :func:`run_contrast` / :func:`contrast_block`, in column order
ROW_STATS = ("den_lse", "pos", "n_pos", "n_neg", "n_non_positive")


class RowStats(NamedTuple):
    """The row statistics of :func:`run_contrast` by name: ``den_lse`` the log-sum-exp of the denominator, ``pos``
    the positive statistic (sum of positive logits, or their log-sum-exp for ``pos_stat="lse"``), ``n_pos`` the
    number (or total weight) of positives, ``n_neg`` the number of negatives, ``n_non_positive`` the columns that
    are not positives (ConR's "official" denominator)."""

    den_lse: Tensor
    pos: Tensor
    n_pos: Tensor
    n_neg: Tensor
    n_non_positive: Tensor


def row_stats(row: Tensor) -> RowStats:
    """Name the columns of :func:`run_contrast`'s (B, 5) row statistics."""
    return RowStats(*row.unbind(1))


def _reduce_pairs(
    block_fn: BlockFn,
    anchors: Tensor,
    candidates: Tensor,
    *,
    row_kinds: Sequence[str],
    col_kinds: Sequence[str],
    params: Sequence[Tensor],
    row_meta: Mapping[str, Tensor] | None,
    col_meta: Mapping[str, Tensor] | None,
    mode: ExecutionMode,
    extra_candidates: Tensor | None,
    id_keys: Sequence[str],
) -> tuple[Tensor, Tensor]:
    mode.require(extra_candidates=extra_candidates is not None, column_stats=bool(col_kinds))
    row_meta = dict(row_meta or {})
    col_meta = dict(col_meta or {})
    if mode.gather == "ring":
        return ring_pair_reduce(
            anchors, candidates, block_fn, row_kinds=row_kinds, col_kinds=(), params=params,
            row_meta=row_meta, col_meta=col_meta, tile_size=mode, id_keys=id_keys,
        )
    if mode.gather:
        candidates, col_meta, offset = gather_candidates(candidates, col_meta)
        for key in id_keys:
            if key in row_meta:
                row_meta[key] = row_meta[key] + offset
    if extra_candidates is not None:
        if col_meta:
            raise ValueError("extra negatives cannot be combined with per-candidate labels")
        candidates = torch.cat([candidates, extra_candidates.to(candidates.dtype)], 0)
    return pair_reduce(
        anchors, candidates, block_fn, row_kinds=row_kinds, col_kinds=col_kinds, params=params,
        row_meta=row_meta, col_meta=col_meta, tile_size=mode,
    )


def _mode_of(mode: ExecutionMode | None, tile_size, gather) -> ExecutionMode:
    if mode is None:
        return execution_mode(tile_size, gather)
    if not isinstance(mode, ExecutionMode):
        raise ValueError(f"mode must be an ExecutionMode from execution_mode(), got {type(mode).__name__}")
    if tile_size is not None or gather is not None:
        raise ValueError("pass either mode= or tile_size= / gather=, not both")
    return mode


def run_contrast(
    spec: ContrastSpec,
    anchors: Tensor,
    candidates: Tensor,
    scale: Tensor,
    *,
    row_meta: Mapping[str, Tensor] | None = None,
    col_meta: Mapping[str, Tensor] | None = None,
    tile_size=None,
    gather: bool | str | None = None,
    extra_candidates: Tensor | None = None,
    backend: str = "torch",
    mode: ExecutionMode | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the engine: returns (row_stats (B, 5), col_stats (N, k)).

    ``backend="triton"`` reduces each block with the fused kernels of :mod:`core.kernels`
    (:class:`~core.kernels.FusedContrastBlockFn`: the same statistics without writing the block's logits to
    memory; configurations the kernels do not cover fall back to the PyTorch block); it raises when Triton cannot
    run on the inputs' device.

    ``pos_id`` / ``self_id`` in ``row_meta`` index the *local* candidates; with ``gather`` they are
    shifted to this rank's slot of the gathered set. ``extra_candidates`` (a queue) are appended after
    the (gathered) candidates; they are never positives and carry no label metadata (so they only work
    with index positives).
    """
    mode = _mode_of(mode, tile_size, gather).require(fused_columns=spec.column_stats)
    if extra_candidates is not None and spec.positive != "index":
        raise ValueError("extra negatives are only supported with index positives (info_nce)")
    check_choice("backend", backend, BACKENDS)
    if backend == "triton":
        from core.kernels import FusedContrastBlockFn, check_triton

        check_triton(anchors.device)
        block_fn = FusedContrastBlockFn(spec)
    else:
        block_fn = ContrastBlockFn(spec)
    return reduce_pairs(
        block_fn, anchors, candidates,
        row_kinds=spec.row_kinds, col_kinds=spec.col_kinds, params=(scale,), row_meta=row_meta,
        col_meta=col_meta, mode=mode, extra_candidates=extra_candidates,
    )
