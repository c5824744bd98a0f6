r"""Candidates from every rank, with gradients flowing back to the rank that produced them.

Two execution modes serve every loss of :mod:`core.losses` (``gather=True`` / ``gather="ring"``):

* :func:`gather_candidates` -- an autograd all-gather (:func:`all_gather_with_grad`) of the candidates
  plus a plain all-gather of their metadata (labels, predictions); the loss then runs dense or tiled
  (:func:`core.negatives.pair_reduce`) on the local anchors against the gathered candidates.
* :func:`ring_pair_reduce` -- the candidate shards travel around the ranks (point-to-point send/recv),
  so no rank ever holds more than its own shard and one visiting shard; each visiting shard is walked
  in tiles with a running log-sum-exp. The backward pass rotates the shards again together with a
  travelling gradient accumulator ``dC`` that arrives back at its owner after one full turn (the
  multi-level tiling of Inf-CL, Wang et al. 2024, "Breaking the Memory Barrier: Near Infinite Batch
  Size Scaling for Contrastive Loss").

Normalisation convention (identical for both modes)
---------------------------------------------------
Rank ``r`` holds ``B_r`` anchors and ``N_r`` candidates. Its loss is the **mean over its local anchors**
against the **global** candidates,

.. math::
    \ell_r = \frac{1}{B_r} \sum_{i \in \text{rank } r} \ell_i(a_i;\; C_0, \dots, C_{W-1}),

and its backward pass produces, for every local input ``x_r`` (anchor *or* candidate),
``sum_{r'} d l_{r'} / d x_r`` -- the gradients of the other ranks' losses with respect to this rank's
candidates are routed back (the all-gather's backward is a reduce-scatter; the ring's backward carries
``dC`` home). Shared parameters that enter the loss directly (a learnable temperature / logit scale)
get ``d l_r / d theta`` only: **no extra all-reduce**. Hence, with equal local batch sizes,

.. math::
    \frac{1}{W}\sum_r \ell_r = L, \qquad
    \frac{1}{W}\sum_r \nabla_\theta^{(r)} = \nabla_\theta L,

where ``L`` is the single-process loss on the concatenated global batch (mean over all anchors) and
``nabla^(r)`` what rank ``r``'s backward leaves in a parameter's ``.grad``. So:

* **DDP** (``torch.nn.parallel.DistributedDataParallel``, Lightning ``strategy="ddp"`` /
  ``"ddp_spawn"``): nothing to do -- DDP averages parameter gradients over ranks, which gives exactly
  ``grad L``. Log ``l_r`` (Lightning's ``sync_dist=True`` averages it to ``L``).
* **plain torch.distributed without DDP**: after ``loss.backward()``, all-reduce every parameter
  gradient and divide by the world size (``dist.all_reduce(p.grad); p.grad /= W``); the same for the
  learnable temperature. Do not multiply the loss by ``W`` and do not all-reduce a scalar's gradient
  on top of DDP (Inf-CL does, and its logit-scale gradient comes out ``W`` times too large).
* **unequal local batch sizes** are supported (sizes are exchanged, shards padded for the collective and
  trimmed). The averaged objective is then the mean of per-rank means, which differs from the global
  mean ``L`` unless every ``B_r`` is equal; for the exact global mean use ``reduction="sum"`` and
  multiply by ``W / sum_r B_r``.

Without an initialised process group, or with a single rank, every function here is the identity /
the single-process computation.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from core.negatives.execution import BlockFn, BlockWalk, _init, check_kinds, pair_reduce
from core.negatives.mode import (  # noqa: F401  (gather resolution lives in mode; re-exported here)
    _DEFAULT_GATHER,
    ExecutionMode,
    _rank_world,
    check_ring,
    default_gather,
    execution_mode,
    resolve_gather,
    world_size,
)
from core.negatives.validation import full_validation

__all__ = [
    "agree_on_input_errors",
    "default_gather",
    "resolve_gather",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "gather_candidates",
    "gather_sizes",
    "rank_offset",
    "ring_pair_reduce",
    "RingPairReduce",
]


def _global_rank(group, rank: int) -> int:
    """Rank in the default group of ``rank`` in ``group`` (P2P calls address global ranks)."""
    if group is None or group is dist.group.WORLD:
        return rank
    return dist.get_global_rank(group, rank)


def _backend_device(group=None) -> torch.device:
    """A device the backend can communicate from: the current CUDA device under NCCL, the CPU otherwise."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------ input errors agreed by every rank
#
# A loss with ``gather`` validates its local inputs and then enters a collective. If one rank's input is
# bad (NaN, wrong shape ...) and it raises before the collective, the other ranks would wait in that
# collective forever. :func:`agree_on_input_errors` wraps a loss so that the ranks first exchange one
# flag each: immediately before the loss's first collective (:func:`gather_sizes`, through which every
# gathering path passes) on ranks whose checks passed, or instead of it on a rank whose checks raised.
# Every rank then raises together: the failing one its own error, the others a ValueError naming it.

class PeerInputError(ValueError):
    """Raised on every rank when another rank's loss call failed (its own error is raised there)."""


_CHECKS_PENDING: contextvars.ContextVar[bool] = contextvars.ContextVar("core_checks_pending", default=False)


def _exchange_failure_flags(failed: bool) -> list[int]:
    """All-reduce one flag per rank (default group); returns the ranks that failed."""
    rank, world = _rank_world()
    flags = torch.zeros(world, dtype=torch.int32, device=_backend_device())
    flags[rank] = int(failed)
    dist.all_reduce(flags)
    return [r for r in range(world) if int(flags[r])]


def _settle_pending_checks() -> None:
    """Called before a collective: if the enclosing loss has not yet agreed with the other ranks that
    every rank's input passed its checks, do it now (a no-op outside :func:`agree_on_input_errors`)."""
    if not _CHECKS_PENDING.get():
        return
    _CHECKS_PENDING.set(False)
    failed = _exchange_failure_flags(False)
    if failed:
        raise PeerInputError(f"the input of rank(s) {failed} failed validation (see the error raised there); "
                             "this rank stops too rather than wait in a collective")


def agree_on_input_errors(fn: Callable) -> Callable:
    """Decorator for a loss taking ``gather=``: an error raised on one rank, before the first collective
    (bad input) or after the gathering (e.g. an anchor with no positive among the gathered candidates), is
    raised on every rank (see the comment above) instead of leaving the others hanging: the failing rank
    its own error, the others :class:`PeerInputError` naming it. Costs two all-reduces of ``world`` ints
    per call in distributed mode (one before the first collective, one at the end); nothing otherwise, and
    nothing under :func:`core.negatives.validation.validation` ``"shapes"`` (a failing rank then raises alone)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not kwargs.get("gather") or _CHECKS_PENDING.get() or world_size() == 1 or not full_validation():
            # single-process, nested inside a loss that already agrees, or validation("shapes") (no exchange)
            return fn(*args, **kwargs)
        token = _CHECKS_PENDING.set(True)
        try:
            out = fn(*args, **kwargs)
        except PeerInputError:
            raise  # every rank already knows (the exchange that raised it)
        except Exception:
            # before any collective: the others wait in the first one, which is this exchange; after the
            # collectives (e.g. an anchor with no positive in the gathered batch): the others wait in the
            # closing exchange below (else in backward's collectives, forever). Either way: tell them.
            _CHECKS_PENDING.set(False)
            _exchange_failure_flags(True)
            raise
        finally:
            pending = _CHECKS_PENDING.get()
            _CHECKS_PENDING.reset(token)
        if pending:  # finished without a collective: still take part in the exchange the others expect
            failed = _exchange_failure_flags(False)
            if failed:
                raise PeerInputError(f"the input of rank(s) {failed} failed validation (see the error raised there)")
        else:  # the second exchange, after the collectives, that a rank failing late takes part in
            failed = _exchange_failure_flags(False)
            if failed:
                raise PeerInputError(f"the loss failed on rank(s) {failed} after gathering (see the error raised "
                                     "there); this rank stops too rather than wait in backward's collectives")
        return out

    return wrapper


def gather_sizes(n: int, device: torch.device | None = None, group=None) -> list[int]:
    """Every rank's ``n`` (e.g. its local batch size), in rank order; ``[n]`` without a process group.

    ``device`` must suit the backend (a CUDA device for NCCL); by default the current CUDA device under
    NCCL, the CPU otherwise.
    """
    _, world = _rank_world(group)
    if world == 1:
        return [n]
    _settle_pending_checks()
    if device is None:
        device = _backend_device(group)
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s.item()) for s in sizes]


def rank_offset(n: int, device: torch.device | None = None, group=None) -> int:
    """Global index of this rank's first row when every rank holds ``n_r`` rows in rank order (the
    offset of its slot in :func:`all_gather_with_grad`'s output): ``sum_{r' < r} n_r'``. Use it, not
    ``rank * n``, to number samples globally: local batch sizes may differ between ranks."""
    rank, world = _rank_world(group)
    return 0 if world == 1 else sum(gather_sizes(n, device, group)[:rank])


def _to_wire(x: Tensor) -> Tensor:
    # gloo has no bool collectives / P2P; send booleans as bytes.
    x = x.to(torch.uint8) if x.dtype == torch.bool else x
    return x.contiguous()


def _gather_padded(x: Tensor, sizes: Sequence[int], group=None) -> Tensor:
    """All-gather of row blocks of possibly different lengths (pad to the longest, gather, trim)."""
    wire = _to_wire(x)
    longest = max(sizes)
    if wire.shape[0] < longest:
        pad = wire.new_zeros((longest - wire.shape[0], *wire.shape[1:]))
        wire = torch.cat([wire, pad], 0)
    parts = [torch.empty_like(wire) for _ in sizes]
    dist.all_gather(parts, wire, group=group)
    out = torch.cat([p[:n] for p, n in zip(parts, sizes)], 0)
    return out.to(torch.bool) if x.dtype == torch.bool else out


def _reduce_scatter_rows(g: Tensor, sizes: Sequence[int], rank: int, group=None) -> Tensor:
    """Sum ``g`` (the gradient of the gathered tensor) over ranks and return this rank's rows."""
    g = g.contiguous()
    longest = max(sizes)
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    if all(n == longest for n in sizes):
        stacked = g
    else:
        stacked = g.new_zeros((len(sizes) * longest, *g.shape[1:]))
        for r, (s, n) in enumerate(zip(starts, sizes)):
            stacked[r * longest: r * longest + n] = g[s: s + n]
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    out = g.new_empty((longest, *g.shape[1:]))
    try:
        reduce_scatter(out, stacked, group=group)
    except (RuntimeError, NotImplementedError, ValueError):
        # Backends without reduce-scatter (older gloo): all-reduce the whole buffer and slice.
        dist.all_reduce(stacked, group=group)
        out = stacked[rank * longest: (rank + 1) * longest]
    return out[: sizes[rank]]


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's rows. Backward: sum the gradient over ranks, keep own rows."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: tuple[int, ...], rank: int, group) -> Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, g: Tensor):
        return _reduce_scatter_rows(g, ctx.sizes, ctx.rank, ctx.group), None, None, None


def all_gather_with_grad(x: Tensor, group=None) -> Tensor:
    r"""Concatenate ``x`` (rows) from every rank, differentiably.

    Forward: ``[x_0; x_1; ...; x_{W-1}]`` (rank order). Backward: rank ``r`` receives
    ``sum_{r'} (d l_{r'} / d gathered)[rows of r]`` -- the reduce-scatter of the gathered gradient
    (all-reduce + slice where the backend has no reduce-scatter). Ranks may hold different numbers of
    rows. Identity without a process group or with one rank.
    """
    rank, world = _rank_world(group)
    if world == 1:
        return x
    sizes = tuple(gather_sizes(x.shape[0], x.device, group))
    return _AllGatherWithGrad.apply(x, sizes, rank, group)


def all_gather_no_grad(x: Tensor, group=None) -> Tensor:
    """Concatenate ``x`` (rows) from every rank without gradient (labels, queue keys ...)."""
    _, world = _rank_world(group)
    if world == 1:
        return x
    with torch.no_grad():
        return _gather_padded(x.detach(), gather_sizes(x.shape[0], x.device, group), group)


def gather_candidates(
    candidates: Tensor, col_meta: Mapping[str, Tensor] | None = None, group=None,
) -> tuple[Tensor, dict[str, Tensor], int]:
    """Gather the candidates of every rank (with gradient) and their metadata (without).

    Returns:
        ``(gathered (N_global, D), gathered_meta, offset)``; ``offset`` is the global index of this
        rank's first candidate, by which the caller shifts row metadata that indexes local candidates
        (``pos_id``, ``self_id``).
    """
    col_meta = dict(col_meta or {})
    rank, world = _rank_world(group)
    if world == 1:
        return candidates, col_meta, 0
    sizes = tuple(gather_sizes(candidates.shape[0], candidates.device, group))
    gathered = _AllGatherWithGrad.apply(candidates, sizes, rank, group)
    with torch.no_grad():
        meta = {k: _gather_padded(v.detach(), sizes, group) for k, v in sorted(col_meta.items())}
    return gathered, meta, sum(sizes[:rank])


@dataclasses.dataclass(frozen=True)
class _Ring:
    """Who this rank talks to, and the shape of every rank's shard."""

    group: object
    rank: int
    world: int
    sizes: tuple[int, ...]
    send_to: int  # global rank of the next rank
    recv_from: int  # global rank of the previous rank

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(sum(self.sizes[:r]) for r in range(self.world))

    def owner(self, step: int) -> int:
        """Rank whose shard this rank holds at ``step`` (shards move to the next rank each step)."""
        return (self.rank - step) % self.world

    def exchange(self, send: Sequence[Tensor], recv_rows: int, tag: int = 0):
        """Post sends of ``send`` to the next rank and receives of same-shaped tensors with
        ``recv_rows`` rows from the previous one. Returns (works, buffers); wait before reading."""
        ops, bufs = [], []
        for k, t in enumerate(send):
            wire = _to_wire(t)
            buf = torch.empty((recv_rows, *wire.shape[1:]), dtype=wire.dtype, device=wire.device)
            ops.append(dist.P2POp(dist.isend, wire, self.send_to, self.group, tag + k))
            ops.append(dist.P2POp(dist.irecv, buf, self.recv_from, self.group, tag + k))
            bufs.append(buf)
        works = dist.batch_isend_irecv(ops)
        return works, bufs

    @staticmethod
    def finish(works, bufs: Sequence[Tensor], like: Sequence[Tensor]) -> list[Tensor]:
        for w in works:
            w.wait()
        return [b.to(torch.bool) if t.dtype == torch.bool else b for b, t in zip(bufs, like)]


_DC_TAG = 1 << 10  # tags of the travelling gradient, distinct from the shard's


class RingPairReduce(torch.autograd.Function):
    """Row statistics of local anchors against every rank's candidate shard, passed around a ring.

    Inputs: ``walk`` (the block loops, row meta already in global candidate ids), ``ring``, the shard
    metadata keys, ``a`` (B, D), ``c`` (N_r, D), then the shard metadata tensors and ``*params``.
    """

    @staticmethod
    def forward(ctx, walk: BlockWalk, ring: _Ring, meta_keys, n_meta: int, a: Tensor, c: Tensor, *rest):
        meta, params = list(rest[:n_meta]), list(rest[n_meta:])
        row_tot = _init(a.shape[0], walk.row_kinds, a)
        shard = [c, *meta]
        for step in range(ring.world):
            owner = ring.owner(step)
            pending = None
            if step < ring.world - 1:  # start moving the shard on while this rank works on it
                pending = ring.exchange(shard, ring.sizes[ring.owner(step + 1)])
            walk_s = dataclasses.replace(walk, col_meta=dict(zip(meta_keys, shard[1:])))
            no_cols = a.new_zeros(shard[0].shape[0], 0)
            off = ring.offsets[owner]
            walk_s.forward(a, shard[0], params, row_tot, no_cols, col_offset=off, cols_base=off)
            if pending is not None:
                shard = _Ring.finish(*pending, like=shard)
        ctx.walk, ctx.ring, ctx.meta_keys, ctx.n_meta = walk, ring, meta_keys, n_meta
        ctx.save_for_backward(a, c, row_tot, *meta, *params)
        return row_tot

    @staticmethod
    def backward(ctx, g_row: Tensor):
        a, c, row_tot, *rest = ctx.saved_tensors
        meta, params = rest[: ctx.n_meta], rest[ctx.n_meta:]
        walk, ring = ctx.walk, ctx.ring
        need_a, need_c = ctx.needs_input_grad[4], ctx.needs_input_grad[5]
        need_p = ctx.needs_input_grad[6 + ctx.n_meta:]
        da = torch.zeros_like(a) if need_a else None
        dp = [torch.zeros_like(p) if n else None for p, n in zip(params, need_p)]
        g_row = g_row if g_row is not None else torch.zeros_like(row_tot)
        shard = [c, *meta]
        incoming_dc = None  # (works, bufs) of the partial dC of the shard held at this step
        dc_home = None
        for step in range(ring.world):
            owner = ring.owner(step)
            pending = None
            if step < ring.world - 1:
                pending = ring.exchange(shard, ring.sizes[ring.owner(step + 1)])
            # This rank's contribution to the visiting shard's gradient, computed while the partial sum
            # of the ranks before it is still on its way.
            dc = torch.zeros_like(shard[0]) if need_c else None
            walk_s = dataclasses.replace(walk, col_meta=dict(zip(ctx.meta_keys, shard[1:])))
            no_cols = a.new_zeros(shard[0].shape[0], 0)
            off = ring.offsets[owner]
            walk_s.backward(a, shard[0], params, row_tot, no_cols, g_row, no_cols, da, dc, dp,
                            col_offset=off, cols_base=off)
            if need_c:
                if incoming_dc is not None:
                    dc += _Ring.finish(*incoming_dc, like=[dc])[0]
                # Pass the accumulator on; after the last step the one arriving is this rank's own.
                incoming_dc = ring.exchange([dc], ring.sizes[ring.owner(step + 1)], tag=_DC_TAG)
            if pending is not None:
                shard = _Ring.finish(*pending, like=shard)
        if need_c:
            dc_home = _Ring.finish(*incoming_dc, like=[c])[0]
        return (None, None, None, None, da, dc_home, *([None] * ctx.n_meta), *dp)


def ring_pair_reduce(
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
    id_keys: Sequence[str] = ("pos_id", "self_id"),
    group=None,
) -> tuple[Tensor, Tensor]:
    """:func:`core.negatives.pair_reduce` of local anchors against the candidates of every rank,
    without ever gathering them: shard ``s`` visits rank ``r`` at step ``(r - s) mod W``.

    Same contract as :func:`~core.negatives.pair_reduce`, with these differences:

    * ``row_meta`` entries named in ``id_keys`` index the *local* candidates; they are shifted by this
      rank's offset in the global candidate order (rank order), in which each shard's ``Block.col_ids``
      and ``Block.cols`` are given -- the same order as ``gather=True``.
    * column statistics are not supported (``col_kinds`` must be empty); the returned column statistics
      are an empty (N_r, 0) tensor.
    * every block is reduced inside the ring's own autograd Function and recomputed in backward, also
      when ``tile_size`` is ``None`` (then a block is a whole shard). Each block's log-sum-exp is
      max-stabilised by the block function and merged with ``logaddexp``; the backward weights
      ``exp(block - total)`` are at most 1, so large logit scales cannot overflow.
    * parameters get the gradient of this rank's statistics only (see the module's convention);
      candidates get the gradient summed over every rank's statistics.

    Every rank must call it with the same ``row_kinds``, metadata keys, trailing shapes, dtypes and
    ``requires_grad`` of the candidates (the backward's point-to-point exchanges must pair up).
    """
    check_ring(column_stats=bool(col_kinds))
    mode = execution_mode(tile_size, "ring")
    check_kinds(*row_kinds)
    row_meta = dict(row_meta or {})
    col_meta = dict(col_meta or {})
    rank, world = _rank_world(group)
    if world == 1:
        return pair_reduce(anchors, candidates, block_fn, row_kinds=row_kinds, params=params,
                           row_meta=row_meta, col_meta=col_meta, tile_size=mode)
    sizes = tuple(gather_sizes(candidates.shape[0], candidates.device, group))
    ring = _Ring(group, rank, world, sizes, _global_rank(group, (rank + 1) % world),
                 _global_rank(group, (rank - 1) % world))
    for key in id_keys:
        if key in row_meta:
            row_meta[key] = row_meta[key] + ring.offsets[rank]
    B = anchors.shape[0]
    tiles = mode.tiles(B, max(sizes), anchors.dtype, anchors.device)
    tiles = tiles or (max(B, 1), max(max(sizes), 1))
    meta_keys = tuple(sorted(col_meta))
    walk = BlockWalk(block_fn, tuple(row_kinds), (), row_meta, {}, tiles)
    row = RingPairReduce.apply(walk, ring, meta_keys, len(meta_keys), anchors, candidates,
                               *(col_meta[k] for k in meta_keys), *params)
    return row, anchors.new_zeros(candidates.shape[0], 0)
