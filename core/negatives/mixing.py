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

Because the synthetic negatives differ per query, they cannot go through ``info_nce(negatives=...)`` (shared by
all queries). :func:`info_nce_with_synthetic` adds them exactly: the engine returns, per query, the log-sum-exp
``D_i`` of its ordinary denominator and its positive logit ``P_i``; with
:math:`S_i = \log\sum_m e^{q_i\cdot h_{im}/\tau}` the loss is

.. math::
    \ell_i = \operatorname{logaddexp}(D_i, S_i) - P_i,

identical to concatenating the synthetic negatives to query i's candidates, for every execution mode of the
engine (dense, tiled, gathered) since only the per-row statistics are merged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hardest_negatives", "mix_hard_negatives", "synthetic_logits", "info_nce_with_synthetic",
           "info_nce_with_mixing"]


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


def synthetic_logits(query: Tensor, synthetic: Tensor, scale: Tensor, similarity: str = "cosine") -> Tensor:
    """Per-query logits (B, M) of the query against its own (B, M, D) synthetic negatives, times ``scale``."""
    if synthetic.dim() != 3 or synthetic.shape[0] != query.shape[0] or synthetic.shape[2] != query.shape[1]:
        raise ValueError(
            f"synthetic negatives must have shape (B, M, D) = ({query.shape[0]}, M, {query.shape[1]}), "
            f"got {tuple(synthetic.shape)}"
        )
    from core.losses.engine import prepare  # lazy: core.losses imports core.negatives

    q = prepare(query, similarity)
    h = prepare(synthetic.detach().to(q.dtype), similarity)
    return torch.einsum("bd,bmd->bm", q * scale, h)


def info_nce_with_synthetic(
    query: Tensor,
    key: Tensor,
    synthetic: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    negatives: Tensor | None = None,
    decoupled: bool = False,
    margin: float = 0.0,
    margin_type: str = "additive",
    similarity: str = "cosine",
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool = False,
) -> Tensor:
    """:func:`core.losses.info_nce` (query -> key direction) with per-query extra negatives ``synthetic`` (B, M, D).

    Equals the InfoNCE of query i against [keys, ``negatives``, ``synthetic[i]``]; the arguments shared with
    ``info_nce`` mean the same (``symmetric`` is not offered: the synthetic negatives belong to the queries).
    ``gather=True`` gathers keys from every rank; ``synthetic`` stays local to each rank's queries.
    """
    from core.losses._checks import (
        check_choice,
        check_dtypes,
        check_embeddings,
        check_pair,
        check_reduction,
        check_temperature,
    )
    from core.losses._checks import reduce as reduce_rows
    from core.losses.engine import ContrastSpec, prepare, run_contrast, to_scale
    from core.losses.info_nce import check_margin, world_size

    check_pair("query", query, "key", key)
    check_dtypes(query=query, key=key, negatives=negatives)
    check_temperature("temperature", temperature)
    check_margin(margin, margin_type)
    check_choice("similarity", similarity, ("cosine", "dot"))
    check_reduction(reduction)
    if gather not in (False, True):
        raise ValueError("info_nce_with_synthetic supports gather=False or True (not 'ring')")
    if negatives is not None:
        check_embeddings("negatives", negatives)
        if negatives.shape[1] != query.shape[1]:
            raise ValueError(
                f"negatives must have feature dimension {query.shape[1]}, got {negatives.shape[1]}"
            )
    q, k = prepare(query, similarity, "query"), prepare(key, similarity, "key")
    negs = prepare(negatives, similarity, "negatives") if negatives is not None else None
    scale = to_scale(temperature, q)
    extra = synthetic_logits(query, synthetic, scale, similarity)  # validates the shape
    B = query.shape[0]
    n_neg = B * (world_size() if gather else 1) - 1 + extra.shape[1] + (0 if negs is None else negs.shape[0])
    if n_neg < 1:
        raise ValueError("a query has no negatives: pass more keys, negatives or synthetic negatives")
    spec = ContrastSpec(positive="index", decoupled=decoupled, margin=margin, margin_type=margin_type)
    row, _ = run_contrast(spec, q, k, scale, row_meta={"pos_id": torch.arange(B, device=q.device)},
                          tile_size=tile_size, gather=gather, extra_candidates=negs)
    den = row[:, 0]
    if extra.shape[1] > 0:
        den = torch.logaddexp(den, torch.logsumexp(extra, dim=1))
    per_anchor = den - row[:, 1]
    return reduce_rows(per_anchor, reduction)


def info_nce_with_mixing(
    query: Tensor,
    key: Tensor,
    negatives: Tensor,
    *,
    n_hard: int,
    s: int,
    s_prime: int,
    temperature: float | Tensor = 0.1,
    generator: torch.Generator | None = None,
    **kwargs,
) -> Tensor:
    """MoCHi loss: :func:`info_nce_with_synthetic` with ``negatives`` (the queue) both as shared negatives and as
    the pool mined by :func:`mix_hard_negatives`. ``kwargs`` go to :func:`info_nce_with_synthetic`."""
    synthetic = mix_hard_negatives(query, negatives, n_hard=n_hard, s=s, s_prime=s_prime, generator=generator)
    return info_nce_with_synthetic(query, key, synthetic, temperature=temperature, negatives=negatives, **kwargs)
