"""Where candidates come from and how the similarity is computed: dense, tiled, distributed, queue,
gradient cache."""

from core.negatives.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    gather_candidates,
    gather_sizes,
    rank_offset,
    ring_pair_reduce,
    world_size,
)
from core.negatives.execution import Block, pair_reduce, safe_logsumexp
from core.negatives.grad_cache import GradCache, RngState, grad_cache_step
from core.negatives.mixing import hardest_negatives, mix_hard_negatives
from core.negatives.mode import ExecutionMode, execution_mode, resolve_gather, resolve_tile_size
from core.negatives.momentum import MomentumEncoder, cosine_momentum, ema_update
from core.negatives.queue import MemoryQueue

__all__ = [
    "Block",
    "ExecutionMode",
    "execution_mode",
    "resolve_gather",
    "GradCache",
    "MemoryQueue",
    "MomentumEncoder",
    "RngState",
    "all_gather_no_grad",
    "cosine_momentum",
    "ema_update",
    "grad_cache_step",
    "hardest_negatives",
    "mix_hard_negatives",
    "world_size",
    "all_gather_with_grad",
    "gather_candidates",
    "gather_sizes",
    "pair_reduce",
    "rank_offset",
    "resolve_tile_size",
    "ring_pair_reduce",
    "safe_logsumexp",
]


def __getattr__(name: str):
    """``core.negatives.info_nce_with_mixing`` (and ``info_nce_with_synthetic``, ``synthetic_logits``) still
    resolve: those losses are defined in :mod:`core.losses.mixing` now."""
    from core.negatives import mixing

    if name in mixing._MOVED_TO_LOSSES:
        return getattr(mixing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
