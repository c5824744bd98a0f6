"""Where candidates come from and how the similarity is computed: dense, tiled, distributed, queue,
gradient cache."""

from core.negatives.execution import Block, pair_reduce, resolve_tile_size, safe_logsumexp

__all__ = ["Block", "pair_reduce", "resolve_tile_size", "safe_logsumexp"]
