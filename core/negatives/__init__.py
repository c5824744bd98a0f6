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
from core.negatives.execution import Block, pair_reduce, resolve_tile_size, safe_logsumexp
from core.negatives.grad_cache import GradCache, RngState, grad_cache_step
from core.negatives.mixing import (
    hardest_negatives,
    info_nce_with_mixing,
    info_nce_with_synthetic,
    mix_hard_negatives,
    synthetic_logits,
)
from core.negatives.momentum import MomentumEncoder, cosine_momentum, ema_update
from core.negatives.queue import MemoryQueue

__all__ = [
    "Block",
    "GradCache",
    "MemoryQueue",
    "MomentumEncoder",
    "RngState",
    "all_gather_no_grad",
    "cosine_momentum",
    "ema_update",
    "grad_cache_step",
    "hardest_negatives",
    "info_nce_with_mixing",
    "info_nce_with_synthetic",
    "mix_hard_negatives",
    "synthetic_logits",
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
