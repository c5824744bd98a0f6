r"""InfoNCE / CLIP loss with decoupled and margin variants.

For query :math:`q_i`, its key :math:`k_i` (the positive) and candidates :math:`k_j` (the other keys
plus optional extra negatives :math:`n_l`, e.g. a MoCo queue), with :math:`s` the cosine (or dot)
similarity and :math:`\tau` the temperature:

.. math::
    \ell_i = -\log \frac{e^{\phi(s_{ii})/\tau}}{e^{\phi(s_{ii})/\tau}\,[\text{not decoupled}]
        + \sum_{j \ne i} e^{s_{ij}/\tau} + \sum_l e^{s(q_i, n_l)/\tau}}

where :math:`\phi(s)=s` without margin, :math:`s-m` for the additive margin (NT-Xent-AM, Lepage &
Dehak 2023) and :math:`\cos(\arccos s + m)` for the angular margin (AAM, ArcFace-style).

**Per-anchor temperature** (iSogCLR, Qiu et al. 2023; TempNet, Qiu et al. 2024): ``temperature`` may be a
tensor of shape (B,), one :math:`\tau_i` per anchor (differentiable), replacing :math:`\tau` by
:math:`\tau_i` in row i (in the key -> query direction of the symmetric loss, key i uses :math:`\tau_i`).
See :class:`core.losses.TemperatureNet` for a network that predicts it.

**Top-K hard negatives** (``top_k=K``): only the K largest negative logits of each anchor stay in the
denominator (plus the positive unless decoupled),
:math:`\ell_i = -\phi_i + \log(e^{\phi_i} + \sum_{j \in \text{top}_K(i)} e^{x_{ij}})`; tiled and
distributed calls find the K largest with a running top-K merged over tiles / shards (no gradient), then
run the masked loss.

References:
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018 (InfoNCE).
    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", 2021
    (symmetric CLIP loss). Yeh et al., "Decoupled Contrastive Learning", ECCV 2022 (DCL).
    Lepage & Dehak, "Experimenting with Additive Margins for Contrastive Self-Supervised Speaker
    Verification", Interspeech 2023.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.losses._checks import (
    check_choice,
    check_dtypes,
    check_embeddings,
    check_pair,
    check_reduction,
    check_temperature,
    reduce,
)
from core.losses._module import loss_module
from core.losses._visit import top_negative_threshold
from core.losses.engine import BACKENDS, ContrastSpec, prepare, run_contrast, scale_anchors
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode

__all__ = ["info_nce", "InfoNCE", "check_margin", "check_top_k"]


def check_margin(margin: float, margin_type: str) -> None:
    check_choice("margin_type", margin_type, ("additive", "angular"))
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
    if margin_type == "angular" and margin >= math.pi:
        raise ValueError(f"angular margin must be < pi, got {margin}")


def check_top_k(top_k: int | None, n_neg: int | None = None) -> None:
    """``top_k``: ``None`` or an int with 1 <= top_k < n_neg (the number of negatives per anchor, when known)."""
    if top_k is None:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise ValueError(f"top_k must be an int or None, got {type(top_k).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if n_neg is not None and top_k >= n_neg:
        raise ValueError(f"top_k={top_k} must be smaller than the number of negatives per anchor ({n_neg}); "
                         "with top_k >= that it is plain InfoNCE")


@agree_on_input_errors
def info_nce(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    symmetric: bool = False,
    decoupled: bool = False,
    margin: float = 0.0,
    margin_type: str = "additive",
    similarity: str = "cosine",
    negatives: Tensor | None = None,
    top_k: int | None = None,
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
    backend: str = "torch",
) -> Tensor:
    """InfoNCE of ``query[i]`` against ``key[i]`` (positive) and every other key (+ ``negatives``).

    Args:
        query: (B, D) anchors, unnormalised.
        key: (B, D) positives; the other rows are negatives.
        temperature: > 0; a tensor keeps the graph (learnable temperature); a (B,) tensor gives each anchor
            its own temperature (not with a margin).
        symmetric: average the query->key and key->query directions (CLIP). Extra ``negatives`` only
            enter the query->key direction.
        decoupled: drop the positive from the denominator (DCL).
        margin / margin_type: positive-only margin, ``"additive"`` (cos - m) or ``"angular"`` (cos(theta + m)).
        similarity: ``"cosine"`` (normalise inside) or ``"dot"``.
        negatives: (K, D) extra negatives (e.g. a queue); no gradient flows into a detached queue.
        top_k: keep only the ``top_k`` largest negative logits per anchor in the denominator;
            1 <= top_k < number of negatives.
        reduction: ``"mean"`` over anchors, ``"sum"`` or ``"none"`` (per anchor, (B,)).
        tile_size: ``None`` dense; int / (rows, cols) tiled with recomputation; ``"auto"``.
        gather: ``True`` all-gather keys from every rank with gradient; ``"ring"`` pass key shards
            around a ring. Each rank returns the mean over its local anchors (DDP's mean of the
            per-rank losses is then the global loss).
        backend: ``"torch"`` (PyTorch ops per block) or ``"triton"`` (the fused kernels of :mod:`core.kernels`
            reduce each block without writing its logits to memory; CUDA, or Triton's CPU interpreter in tests).

    Returns:
        The loss (scalar unless ``reduction="none"``).
    """
    mode = execution_mode(tile_size, gather, extra_candidates=negatives is not None)
    gather = mode.gather
    check_choice("backend", backend, BACKENDS)
    check_pair("query", query, "key", key)
    check_dtypes(query=query, key=key, negatives=negatives)
    per_t = check_temperature("temperature", temperature, (query.shape[0],))
    check_margin(margin, margin_type)
    if per_t and margin != 0.0:
        raise ValueError("a per-anchor temperature cannot be combined with a margin")
    check_choice("similarity", similarity, ("cosine", "dot"))
    if margin_type == "angular" and margin != 0.0 and similarity != "cosine":
        raise ValueError("an angular margin needs cosine similarity (it acts on the angle); got similarity='dot'")
    check_reduction(reduction)
    if negatives is not None:
        check_embeddings("negatives", negatives)
        if negatives.shape[1] != query.shape[1]:
            raise ValueError(
                f"negatives must have feature dimension {query.shape[1]}, got {negatives.shape[1]}"
            )
    B = query.shape[0]
    n_neg = B * mode.world - 1 + (0 if negatives is None else negatives.shape[0])
    if n_neg < 1:
        raise ValueError("the batch has no negatives: InfoNCE needs at least 2 samples or extra negatives")
    check_top_k(top_k, None if gather else n_neg)
    if top_k is not None and symmetric and not gather:
        check_top_k(top_k, B - 1)  # the key -> query direction has no extra negatives
    q, k = prepare(query, similarity, "query"), prepare(key, similarity, "key")
    negs = prepare(negatives, similarity, "negatives") if negatives is not None else None
    qa, scale = scale_anchors(q, temperature, per_t)
    fused = symmetric and not gather and not per_t and top_k is None
    spec = ContrastSpec(positive="index", decoupled=decoupled, margin=margin, margin_type=margin_type,
                        column_stats=fused, neg_threshold=top_k is not None)
    ids = torch.arange(B, device=q.device)
    meta = {"pos_id": ids}
    if top_k is not None:
        meta["neg_thr"] = top_negative_threshold(qa, k, scale, top_k, pos_id=ids, extra=negs, mode=mode)
    row, col = run_contrast(spec, qa, k, scale, row_meta=meta, mode=mode, extra_candidates=negs, backend=backend)
    per_anchor = row[:, 0] - row[:, 1]
    if symmetric:
        if fused:
            reverse = col[:B, 0] - row[:, 1]
        else:
            spec_r = ContrastSpec(positive="index", decoupled=decoupled, margin=margin, margin_type=margin_type,
                                  neg_threshold=top_k is not None)
            ka, _ = scale_anchors(k, temperature, per_t)
            meta_r = {"pos_id": ids}
            if top_k is not None:
                meta_r["neg_thr"] = top_negative_threshold(ka, q, scale, top_k, pos_id=ids, mode=mode)
            row_r, _ = run_contrast(spec_r, ka, q, scale, row_meta=meta_r, mode=mode, backend=backend)
            reverse = row_r[:, 0] - row_r[:, 1]
        per_anchor = 0.5 * (per_anchor + reverse)
    return reduce(per_anchor, reduction)


def _check_options(*, temperature, margin, margin_type, top_k, backend, **_) -> None:
    check_choice("backend", backend, BACKENDS)
    check_temperature("temperature", temperature)
    check_margin(margin, margin_type)
    check_top_k(top_k)


#: Module form of :func:`info_nce`; ``forward(query, key, negatives=None, temperature=None)``, where a
#: ``temperature`` given to ``forward`` (e.g. a (B,) tensor from :class:`core.losses.TemperatureNet`) replaces the
#: constructor's for that call.
InfoNCE = loss_module(
    info_nce, "InfoNCE", forward=("negatives",), overrides=("temperature",), check=_check_options,
    options=("temperature", "symmetric", "decoupled", "margin", "margin_type", "similarity", "reduction",
             "tile_size", "gather", "top_k", "backend"),
)
