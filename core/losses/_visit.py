"""No-gradient passes over every candidate, in the execution mode of a loss call.

Some statistics are not log-sum-exps, sums or counts (the engine's reductions), e.g. the K largest negative
logits of each anchor used by ``info_nce(top_k=K)``. They are computed here in a separate pass without a
graph: dense, in column tiles, over the all-gathered candidates (``gather=True``) or over candidate shards
passed around a ring (``gather="ring"``, so no rank holds more than two shards), with the same global
candidate numbering as the engine (rank order, then the extra candidates).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from core.negatives.distributed import (
    _global_rank,
    _rank_world,
    _Ring,
    all_gather_no_grad,
    gather_sizes,
    rank_offset,
)
from core.negatives.mode import ExecutionMode, execution_mode
from core.negatives.validation import full_validation

__all__ = ["candidate_shards", "local_offset", "top_negative_threshold"]


def local_offset(n: int, gather: bool | str) -> int:
    """Global id of this rank's first candidate (0 without ``gather``)."""
    return rank_offset(n) if gather else 0


def candidate_shards(c: Tensor, gather: bool | str, extra: Tensor | None = None) -> Iterator[tuple[Tensor, int]]:
    """Yield ``(shard, global id of its first row)`` covering every candidate once, without gradient."""
    c = c.detach()
    if not gather:
        yield c, 0
        n = c.shape[0]
    elif gather == "ring":
        rank, world = _rank_world()
        sizes = tuple(gather_sizes(c.shape[0], c.device))
        if world == 1:
            yield c, 0
        else:
            ring = _Ring(None, rank, world, sizes, _global_rank(None, (rank + 1) % world),
                         _global_rank(None, (rank - 1) % world))
            shard = [c]
            for step in range(world):
                pending = ring.exchange(shard, ring.sizes[ring.owner(step + 1)]) if step < world - 1 else None
                yield shard[0], ring.offsets[ring.owner(step)]
                if pending is not None:
                    shard = _Ring.finish(*pending, like=shard)
        n = sum(sizes)
    else:
        allc = all_gather_no_grad(c)
        yield allc, 0
        n = allc.shape[0]
    if extra is not None:
        yield extra.detach().to(c.dtype), n


def top_negative_threshold(
    anchors: Tensor, candidates: Tensor, scale: Tensor, k: int, *, pos_id: Tensor,
    self_id: Tensor | None = None, extra: Tensor | None = None, tile_size=None, gather: bool | str | None = False,
    mode: ExecutionMode | None = None,
) -> Tensor:
    """Per anchor, a logit threshold that keeps exactly its ``k`` largest negative logits (``x > thr``).

    Logits are ``(anchors * scale) @ candidates.T``; negatives are every candidate but the positive
    (``pos_id``, local candidate index) and the anchor itself (``self_id``). The pass runs in the execution mode
    of the loss call (``mode``, or ``tile_size`` / ``gather`` through :func:`core.negatives.mode.execution_mode`),
    one row tile x column tile block at a time: each block's own top-(k+1) is taken first and merged into that
    row tile's running top-(k+1), so beside the block's logits only (rows, 2k + 2) values are alive. The
    threshold is the midpoint between the k-th and (k+1)-th largest, so the rounding of a recomputed tile cannot
    move a negative across it (negatives tied with the k-th largest are all kept). Raises ``ValueError`` when an
    anchor has no more than ``k`` negatives.
    """
    mode = execution_mode(tile_size, gather) if mode is None else mode
    gather = mode.gather
    with torch.no_grad():
        a = anchors.detach() * scale.detach()
        B, dev = a.shape[0], a.device
        N = candidates.shape[0]
        off = local_offset(N, gather)
        pos_g = pos_id.to(dev) + off
        self_g = self_id.to(dev) + off if self_id is not None else None
        n_extra = 0 if extra is None else extra.shape[0]
        # the shape of the loss pass's pair matrix (equal local batches), so "auto" decides alike for both passes
        n_cols = N if gather == "ring" else N * mode.world + n_extra
        tiles = mode.tiles(B, n_cols, a.dtype, dev)
        col_tile = tiles[1] if tiles is not None else None
        row_tile = max(tiles[0], 1) if tiles is not None else max(B, 1)
        rows = [(r0, min(r0 + row_tile, B)) for r0 in range(0, B, row_tile)]
        bests = [a.new_full((r1 - r0, 0), float("-inf")) for r0, r1 in rows]  # one running top-(k+1) per row tile
        for shard, start in candidate_shards(candidates, gather, extra):
            step = col_tile or max(shard.shape[0], 1)
            for c0 in range(0, shard.shape[0], step):
                part = shard[c0:c0 + step]
                first = start + c0
                for i, (r0, r1) in enumerate(rows):
                    x = a[r0:r1] @ part.T
                    _drop(x, pos_g[r0:r1] - first)
                    if self_g is not None:
                        _drop(x, self_g[r0:r1] - first)
                    top = x.topk(min(k + 1, x.shape[1]), dim=1).values
                    del x
                    both = torch.cat([bests[i], top], 1)
                    bests[i] = both.topk(min(k + 1, both.shape[1]), dim=1).values
        best = torch.cat(bests, 0) if bests else a.new_full((0, k + 1), float("-inf"))
        if best.shape[1] < k + 1 or (full_validation() and bool(torch.isinf(best[:, k]).any())):
            n = int(torch.isfinite(best).sum(1).min()) if best.numel() else 0
            raise ValueError(f"top_k={k} must be smaller than the number of negatives per anchor ({n})")
        vk, vk1 = best[:, k - 1], best[:, k]
        tied = vk <= vk1
        tol = 1e-6 * vk.abs().clamp_min(1.0)
        return torch.where(tied, vk - tol, 0.5 * (vk + vk1))


def _drop(x: Tensor, local_col: Tensor) -> None:
    """``x[i, local_col[i]] = -inf`` in place, for the rows whose column falls inside this block."""
    inside = (local_col >= 0) & (local_col < x.shape[1])
    rows = torch.arange(x.shape[0], device=x.device)[inside]
    x[rows, local_col[inside]] = float("-inf")
