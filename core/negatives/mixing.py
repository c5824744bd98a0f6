r"""Hard negative mixing (MoCHi): synthetic hard negatives per query.

Kalantidis et al., "Hard Negative Mixing for Contrastive Learning", NeurIPS 2020. For a query :math:`q`
(L2-normalised) and a pool of negatives :math:`n_1 \dots n_K` (e.g. a MoCo queue), let
:math:`\tilde Q^N = \{n_{(1)}, \dots, n_{(N)}\}` be the ``N = n_hard`` negatives most similar to :math:`q`
(hardest first). MoCHi(N, s, s') adds, for this query only,

* ``s`` mixes of pairs of hard negatives,
  :math:`h_k = \tilde h_k / \lVert \tilde h_k \rVert`, :math:`\tilde h_k = \alpha_k n_i + (1 - \alpha_k) n_j`,
  :math:`\alpha_k \sim U(0, 1)`, :math:`n_i \ne n_j` drawn uniformly from :math:`\tilde Q^N`
  (``i = j`` only when ``N = 1``);
* ``s'`` mixes of the query with a hard negative ("harder" negatives),
  :math:`h'_k \propto \beta_k q + (1 - \beta_k) n_j`, :math:`\beta_k \sim U(0, 0.5)`, so the negative part
  always dominates.

Synthetic points are detached (no gradient flows through them, in particular not through the copy of the query
inside :math:`h'`), as in the paper; the query still receives the gradient of the extra logits
:math:`q \cdot h / \tau`. The paper starts mixing after a warm-up of a few epochs; that schedule is the caller's.

The loss on them, :func:`core.losses.info_nce_with_synthetic` / :func:`core.losses.info_nce_with_mixing`, is
defined in :mod:`core.losses.mixing` (it runs on the engine of ``core.losses``); this module holds the mining.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hardest_negatives", "mix_hard_negatives"]

#: the losses on the synthetic negatives moved to :mod:`core.losses.mixing` (they run on the engine of
#: ``core.losses``, which imports this package); the old names still resolve here, on first use
_MOVED_TO_LOSSES = ("synthetic_logits", "info_nce_with_synthetic", "info_nce_with_mixing")


def __getattr__(name: str):
    if name in _MOVED_TO_LOSSES:
        import core.losses.mixing

        return getattr(core.losses.mixing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@torch.no_grad()
def hardest_negatives(query: Tensor, negatives: Tensor, n_hard: int) -> Tensor:
    """Indices (B, n_hard) of the ``n_hard`` negatives with the highest cosine similarity to each query,
    hardest first. Materialises the (B, K) similarity matrix (no graph)."""
    if query.dim() != 2 or negatives.dim() != 2:
        raise ValueError(f"query and negatives must be 2-D, got {tuple(query.shape)} and {tuple(negatives.shape)}")
    if query.shape[1] != negatives.shape[1]:
        raise ValueError(
            f"query and negatives must have the same feature dimension, got {query.shape[1]} and {negatives.shape[1]}"
        )
    if not 1 <= n_hard <= negatives.shape[0]:
        raise ValueError(f"n_hard must be in [1, {negatives.shape[0]}] (the number of negatives), got {n_hard}")
    sim = F.normalize(query.detach(), dim=1) @ F.normalize(negatives.detach().to(query.dtype), dim=1).T
    return sim.topk(n_hard, dim=1, largest=True, sorted=True).indices


@torch.no_grad()
def mix_hard_negatives(
    query: Tensor,
    negatives: Tensor,
    *,
    n_hard: int,
    s: int,
    s_prime: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MoCHi synthetic negatives: (B, s + s_prime, D), L2-normalised, detached.

    The first ``s`` rows of each query mix two hard negatives, the last ``s_prime`` mix the query with one.

    Args:
        query: (B, D) queries (normalised inside).
        negatives: (K, D) pool to mine, e.g. ``MemoryQueue.negatives()`` (normalised inside).
        n_hard: N, the number of hardest negatives to mix from.
        s: number of negative-negative mixes per query.
        s_prime: number of query-negative mixes per query.
        generator: optional ``torch.Generator`` on the tensors' device, for reproducible draws.
    """
    if s < 0 or s_prime < 0:
        raise ValueError(f"s and s_prime must be >= 0, got {s} and {s_prime}")
    idx = hardest_negatives(query, negatives, n_hard)  # validates shapes
    B, D = query.shape
    dev, dt = query.device, query.dtype
    q = F.normalize(query.detach(), dim=1)
    pool = F.normalize(negatives.detach().to(dt), dim=1)
    out = []
    if s > 0:
        a = torch.randint(0, n_hard, (B, s), device=dev, generator=generator)
        if n_hard > 1:  # a distinct partner: shift by 1..N-1 modulo N
            b = (a + torch.randint(1, n_hard, (B, s), device=dev, generator=generator)) % n_hard
        else:
            b = a
        alpha = torch.rand(B, s, 1, device=dev, dtype=dt, generator=generator)
        ni, nj = pool[idx.gather(1, a)], pool[idx.gather(1, b)]
        out.append(F.normalize(alpha * ni + (1 - alpha) * nj, dim=-1))
    if s_prime > 0:
        c = torch.randint(0, n_hard, (B, s_prime), device=dev, generator=generator)
        beta = 0.5 * torch.rand(B, s_prime, 1, device=dev, dtype=dt, generator=generator)
        nj = pool[idx.gather(1, c)]
        out.append(F.normalize(beta * q[:, None, :] + (1 - beta) * nj, dim=-1))
    if not out:
        return query.new_zeros(B, 0, D)
    return torch.cat(out, 1)
