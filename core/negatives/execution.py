"""Execution of a pairwise row/column reduction: dense or tiled.

Every loss of :mod:`core.losses` is written as a *block function* that maps a block of anchors
``A[r0:r1]`` and candidates ``C[c0:c1]`` to per-row (and optionally per-column) statistics.
Each statistic is reduced over the other axis with one of three kinds:

* ``"lse"``   log-sum-exp (merged across blocks with ``logaddexp``),
* ``"sum"``   plain sum,
* ``"count"`` plain sum of a quantity with no gradient (numbers of positives, negatives ...).

Dense execution evaluates the block function once on the whole matrix under ordinary autograd.
Tiled execution (:class:`TiledPairReduce`) walks blocks of ``rows x cols``, keeps only the reduced
statistics, and in backward recomputes every block (as in Inf-CL, Wang et al. 2024, "Breaking the
Memory Barrier"), so memory grows with ``B x tile`` instead of ``B x N``.

For a ``"lse"`` statistic ``L_i = log sum_b exp(l_i^b)`` the upstream gradient ``g_i`` reaches block
``b`` as ``g_i * exp(l_i^b - L_i)``; for ``"sum"`` statistics it reaches each block unchanged. The
block's own autograd graph (rebuilt in backward) carries it to the inputs.

The two block loops live in :class:`BlockWalk` so that the ring of
:func:`core.negatives.distributed.ring_pair_reduce` runs exactly the same code on each visiting shard.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# tile resolution lives with the rest of the execution-mode decision (re-exported here, where it used to be)
from core.negatives.mode import (  # noqa: F401
    AUTO_MEMORY_SHARE,
    DEFAULT_TILE,
    DEFAULT_TILE_CUDA,
    DENSE_BUFFERS,
    SMALL_TILE,
    ExecutionMode,
    available_memory_bytes,
    check_tile_size,
    default_tile,
    execution_mode,
    resolve_tile_size,
)

__all__ = ["DEFAULT_TILE", "DEFAULT_TILE_CUDA", "Block", "BlockFn", "available_memory_bytes", "default_tile",
           "check_kinds", "check_tile_size", "pair_reduce", "resolve_tile_size", "safe_logsumexp"]

_KINDS = ("lse", "sum", "count")


@dataclass
class Block:
    """Metadata of one block handed to a block function.

    Attributes:
        row_ids: global ids of the anchors in this block (``row_offset + local index``), shape (T,).
        col_ids: global ids of the candidates in this block (``col_offset + local index``), shape (Tc,).
        row: per-anchor metadata sliced to the block (labels, positive ids, weights ...).
        col: per-candidate metadata sliced to the block.
        rows: the local row slice; cols: the column slice in the candidate order of the whole
            reduction (to slice user (B, N) pair matrices; under the ring of
            :mod:`core.negatives.distributed` this is the gathered order, as with ``gather=True``).
        full: the block is the whole matrix (dense execution): no row can be empty by construction
            of the caller's validation, so plain ``torch.logsumexp`` is safe.
    """

    row_ids: Tensor
    col_ids: Tensor
    row: Mapping[str, Tensor]
    col: Mapping[str, Tensor]
    rows: slice
    cols: slice
    full: bool = False  # True when the block is the whole matrix (dense execution)


# block_fn(a_block, c_block, params, block) -> (row_stats, col_stats)
BlockFn = Callable[[Tensor, Tensor, Sequence[Tensor], Block], tuple[Sequence[Tensor], Sequence[Tensor]]]


def safe_logsumexp(x: Tensor, dim: int) -> Tensor:
    """``logsumexp`` that returns ``-inf`` with a zero (not NaN) gradient for all-``-inf`` slices."""
    m = x.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(x - m).sum(dim=dim)
    m = m.squeeze(dim)
    pos = s > 0
    out = m + torch.log(torch.where(pos, s, torch.ones_like(s)))
    return torch.where(pos, out, torch.full_like(out, float("-inf")))


def check_kinds(*kinds: str) -> None:
    """Every statistic kind must be one of ``"lse"``, ``"sum"``, ``"count"``."""
    for k in kinds:
        if k not in _KINDS:
            raise ValueError(f"unknown statistic kind {k!r}; expected one of {_KINDS}")


def _slice_meta(meta: Mapping[str, Tensor], sl: slice) -> dict[str, Tensor]:
    return {k: v[sl] for k, v in meta.items()}


def _combine(total: Tensor, part: Tensor, kind: str) -> Tensor:
    if kind == "lse":
        return torch.logaddexp(total, part)
    return total + part


def _init(n: int, kinds: Sequence[str], like: Tensor) -> Tensor:
    out = torch.zeros(n, len(kinds), dtype=like.dtype, device=like.device)
    for k, kind in enumerate(kinds):
        if kind == "lse":
            out[:, k] = float("-inf")
    return out


def _block_weight(part: Tensor, total: Tensor, kind: str) -> Tensor:
    """d total / d part for one block's contribution."""
    if kind == "lse":
        w = torch.exp(part - total)
        return torch.where(torch.isfinite(part), w, torch.zeros_like(w))
    return torch.ones_like(part)


def _ids(n: int, offset: int, device: torch.device) -> Tensor:
    return torch.arange(offset, offset + n, device=device)


@dataclass(frozen=True)
class BlockWalk:
    """The block loops shared by tiled execution (:class:`TiledPairReduce`) and the ring of
    :func:`core.negatives.distributed.ring_pair_reduce`.

    ``forward`` accumulates the statistics of every ``rows x cols`` block of ``a x c`` into running
    totals without building a graph; ``backward`` recomputes each block (with the block function's own
    ``direct_grad`` when it has one for these settings, under autograd otherwise) and accumulates the
    input gradients. Both take the global id offsets of ``a`` and ``c``, and
    ``cols_base``: where ``c`` starts in the candidate order that ``Block.cols`` refers to (non-zero
    when ``c`` is one shard of a larger candidate set, as in the ring).
    """

    block_fn: BlockFn
    row_kinds: tuple[str, ...]
    col_kinds: tuple[str, ...]
    row_meta: Mapping[str, Tensor]
    col_meta: Mapping[str, Tensor]
    tiles: tuple[int, int]

    def _blocks(self, a: Tensor, c: Tensor, row_offset: int, col_offset: int, cols_base: int):
        rt, ct = self.tiles
        B, N = a.shape[0], c.shape[0]
        row_ids_all = _ids(B, row_offset, a.device)
        col_ids_all = _ids(N, col_offset, a.device)
        for r0 in range(0, B, rt):
            rs = slice(r0, min(r0 + rt, B))
            rmeta = _slice_meta(self.row_meta, rs)
            for c0 in range(0, N, ct):
                cs = slice(c0, min(c0 + ct, N))
                cols = cs if cols_base == 0 else slice(cs.start + cols_base, cs.stop + cols_base)
                yield rs, cs, Block(row_ids_all[rs], col_ids_all[cs], rmeta, _slice_meta(self.col_meta, cs), rs, cols)

    def forward(
        self, a: Tensor, c: Tensor, params: Sequence[Tensor], row_tot: Tensor, col_tot: Tensor, *,
        row_offset: int = 0, col_offset: int = 0, cols_base: int = 0,
    ) -> None:
        """Merge every block's statistics into ``row_tot`` (B, R) and ``col_tot`` (N, C), in place."""
        with torch.no_grad():
            for rs, cs, blk in self._blocks(a, c, row_offset, col_offset, cols_base):
                rstats, cstats = self.block_fn(a[rs], c[cs], params, blk)
                for k, s in enumerate(rstats):
                    row_tot[rs, k] = _combine(row_tot[rs, k], s, self.row_kinds[k])
                for k, s in enumerate(cstats):
                    col_tot[cs, k] = _combine(col_tot[cs, k], s, self.col_kinds[k])

    def backward(
        self, a: Tensor, c: Tensor, params: Sequence[Tensor], row_tot: Tensor, col_tot: Tensor,
        g_row: Tensor, g_col: Tensor, da: Tensor | None, dc: Tensor | None, dp: Sequence[Tensor | None], *,
        row_offset: int = 0, col_offset: int = 0, cols_base: int = 0,
    ) -> None:
        """Recompute every block and add its input gradients to ``da``, ``dc``, ``dp`` (in place).

        ``row_tot`` / ``col_tot`` are the final totals of the forward pass (they turn a block's
        log-sum-exp into its share of the gradient); ``g_row`` / ``g_col`` the upstream gradients.
        A ``None`` accumulator means that gradient is not needed.
        """
        need_a, need_c = da is not None, dc is not None
        need_p = [d is not None for d in dp]
        direct = getattr(self.block_fn, "direct_grad", None)
        for rs, cs, blk in self._blocks(a, c, row_offset, col_offset, cols_base):
            if direct is not None:
                # A block function may write its tile gradient out by hand (no graph, fewer passes); it
                # returns None for settings it does not cover, and we replay the tile under autograd.
                res = direct(a[rs], c[cs], params, blk, row_tot[rs], col_tot[cs], g_row[rs], g_col[cs],
                             (need_a, need_c, need_p))
                if res is not None:
                    g_a, g_c, g_p = res
                    if need_a:
                        da[rs] += g_a
                    if need_c:
                        dc[cs] += g_c
                    for j, n in enumerate(need_p):
                        if n and g_p[j] is not None:
                            dp[j] += g_p[j]
                    continue
            with torch.enable_grad():
                a_b = a[rs].detach().requires_grad_(need_a)
                c_b = c[cs].detach().requires_grad_(need_c)
                p_b = [p.detach().requires_grad_(n) for p, n in zip(params, need_p)]
                rstats, cstats = self.block_fn(a_b, c_b, p_b, blk)
                outs, gouts = [], []
                for k, s in enumerate(rstats):
                    kind = self.row_kinds[k]
                    if kind == "count" or not s.requires_grad:
                        continue
                    outs.append(s)
                    gouts.append(g_row[rs, k] * _block_weight(s.detach(), row_tot[rs, k], kind))
                for k, s in enumerate(cstats):
                    kind = self.col_kinds[k]
                    if kind == "count" or not s.requires_grad:
                        continue
                    outs.append(s)
                    gouts.append(g_col[cs, k] * _block_weight(s.detach(), col_tot[cs, k], kind))
                inputs = [t for t, n in [(a_b, need_a), (c_b, need_c)] if n]
                inputs += [p for p, n in zip(p_b, need_p) if n]
                if not outs or not inputs:
                    continue
                grads = torch.autograd.grad(outs, inputs, gouts, allow_unused=True)
            gi = iter(grads)
            if need_a:
                g = next(gi)
                if g is not None:
                    da[rs] += g
            if need_c:
                g = next(gi)
                if g is not None:
                    dc[cs] += g
            for j, n in enumerate(need_p):
                if n:
                    g = next(gi)
                    if g is not None:
                        dp[j] += g


class TiledPairReduce(torch.autograd.Function):
    """Blockwise reduction with recomputation in backward. Inputs: a (B, D), c (N, D), *params."""

    @staticmethod
    def forward(ctx, block_fn, row_kinds, col_kinds, row_meta, col_meta, tiles, offsets, a, c, *params):
        walk = BlockWalk(block_fn, row_kinds, col_kinds, row_meta, col_meta, tiles)
        row_tot = _init(a.shape[0], row_kinds, a)
        col_tot = _init(c.shape[0], col_kinds, a)
        walk.forward(a, c, params, row_tot, col_tot, row_offset=offsets[0], col_offset=offsets[1])
        ctx.walk, ctx.offsets = walk, offsets
        ctx.save_for_backward(a, c, row_tot, col_tot, *params)
        return row_tot, col_tot

    @staticmethod
    def backward(ctx, g_row, g_col):
        a, c, row_tot, col_tot, *params = ctx.saved_tensors
        need_a, need_c = ctx.needs_input_grad[7], ctx.needs_input_grad[8]
        need_p = ctx.needs_input_grad[9:]
        da = torch.zeros_like(a) if need_a else None
        dc = torch.zeros_like(c) if need_c else None
        dp = [torch.zeros_like(p) if n else None for p, n in zip(params, need_p)]
        g_row = g_row if g_row is not None else torch.zeros_like(row_tot)
        g_col = g_col if g_col is not None else torch.zeros_like(col_tot)
        ctx.walk.backward(a, c, params, row_tot, col_tot, g_row, g_col, da, dc, dp,
                          row_offset=ctx.offsets[0], col_offset=ctx.offsets[1])
        return (None, None, None, None, None, None, None, da, dc, *dp)


def pair_reduce(
    anchors: Tensor,
    candidates: Tensor,
    block_fn: BlockFn,
    *,
    row_kinds: Sequence[str],
    col_kinds: Sequence[str] = (),
    params: Sequence[Tensor] = (),
    row_meta: Mapping[str, Tensor] | None = None,
    col_meta: Mapping[str, Tensor] | None = None,
    tile_size: int | str | tuple[int, int] | ExecutionMode | None = None,
    row_offset: int = 0,
    col_offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Reduce ``block_fn`` over all (anchor, candidate) pairs.

    Returns ``(row_stats (B, R), col_stats (N, C))`` where column ``k`` of ``row_stats`` is the
    reduction (``row_kinds[k]``) of the k-th row statistic over all candidates.

    Args:
        anchors: (B, D) anchor embeddings (already normalised if the loss uses cosine similarity).
        candidates: (N, D) candidate embeddings.
        block_fn: computes the statistics of one block; must depend on the data only through its
            arguments (it is re-run in backward when tiled).
        row_kinds / col_kinds: ``"lse"``, ``"sum"`` or ``"count"`` per statistic.
        params: extra differentiable tensors (logit scale, bias) passed whole to every block.
        row_meta / col_meta: per-row / per-column tensors sliced to each block.
        tile_size: ``None`` (dense), an int, ``(rows, cols)`` or ``"auto"``, or the
            :class:`~core.negatives.mode.ExecutionMode` of the calling loss (its tiles, resolved once per call).
        row_offset / col_offset: global id of the first anchor / candidate (non-zero when the
            candidates are one rank's shard of a gathered set).
    """
    check_kinds(*row_kinds, *col_kinds)
    row_meta = dict(row_meta or {})
    col_meta = dict(col_meta or {})
    B, N = anchors.shape[0], candidates.shape[0]
    tiles = execution_mode(tile_size, False).tiles(B, N, anchors.dtype, anchors.device)
    if tiles is None or (tiles[0] >= B and tiles[1] >= N):
        dev = anchors.device
        blk = Block(_ids(B, row_offset, dev), _ids(N, col_offset, dev), row_meta, col_meta,
                    slice(0, B), slice(0, N), full=True)
        rstats, cstats = block_fn(anchors, candidates, list(params), blk)
        row = torch.stack(list(rstats), dim=1) if rstats else anchors.new_zeros(B, 0)
        col = torch.stack(list(cstats), dim=1) if cstats else anchors.new_zeros(N, 0)
        return row, col
    return TiledPairReduce.apply(
        block_fn, tuple(row_kinds), tuple(col_kinds), row_meta, col_meta, tiles,
        (row_offset, col_offset), anchors, candidates, *params,
    )
