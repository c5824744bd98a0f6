r"""Supervised contrastive loss (SupCon).

The ``B x V`` views are flattened view-major into anchors :math:`z_a` (view 0 of every sample, then
view 1, ...; the order of ``torch.cat([z1, z2])`` in :func:`core.losses.nt_xent`), L2-normalised. The
candidates are the same set without the anchor itself, :math:`A(a) = \{k \ne a\}`, and the positives
:math:`P(a) = \{p \in A(a): y_p = y_a\}`. With :math:`s_{ak} = z_a \cdot z_k / \tau`:

.. math::
    \ell^{out}_a = -\frac{\tau}{\tau_b}\,\frac{1}{|P(a)|}\sum_{p \in P(a)}
        \log\frac{e^{s_{ap}}}{\sum_{k \in A(a)} e^{s_{ak}}}, \qquad
    \ell^{in}_a = -\frac{\tau}{\tau_b}\,\log\Big(\frac{1}{|P(a)|}\sum_{p \in P(a)}
        \frac{e^{s_{ap}}}{\sum_{k \in A(a)} e^{s_{ak}}}\Big)

(:math:`\tau_b` the ``base_temperature``), averaged over the ``B V`` anchors. "out" (the mean of the
log-probabilities, Eq. 2 of the paper) is the variant the paper recommends; "in" (the log of the mean
probability, Eq. 3) is its upper bound by Jensen. ``labels=None`` makes every sample its own class
(SimCLR; with V = 2 this is exactly :func:`core.losses.nt_xent`).

**Per-anchor temperature**: ``temperature`` of shape (B,) (one per sample, all its views) or (V B,) (one
per anchor view, view-major) replaces :math:`\tau` by :math:`\tau_a` in row a, the factor included
(:math:`\tau_a / \tau_b`).

**Class prior** (``class_prior`` :math:`\pi`, (C,)): every logit of candidate k gets the additive
log-weight :math:`-\log \pi_{y_k}`, :math:`s_{ak} = z_a \cdot z_k / \tau - \log \pi_{y_k}`, in the
numerator and the denominator: each candidate counts with weight :math:`1/\pi_{y_k}`, so under a long-tailed
label distribution every class carries about the same mass in the denominator (the per-class logit
adjustment of Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, applied to the
candidates' classes; cf. the class-averaged denominator of Zhu et al., "Balanced Contrastive Learning for
Long-Tailed Visual Recognition", CVPR 2022).

Reference:
    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.losses._checks import (
    check_choice,
    check_embeddings,
    check_positive,
    check_reduction,
    check_temperature,
    full_validation,
    reduce,
)
from core.losses._module import loss_module
from core.losses.engine import ContrastSpec, prepare, run_contrast, scale_anchors
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode, resolve_gather

__all__ = ["sup_con", "SupCon", "flatten_views", "instance_labels"]


def flatten_views(features: Tensor, name: str = "features") -> Tensor:
    """(B, V, D) -> (V B, D) in view-major order (view 0 of every sample first)."""
    check_embeddings(name, features, ndim=3)
    if features.shape[1] == 0:
        raise ValueError(f"{name} has no views (shape {tuple(features.shape)})")
    B, V, D = features.shape
    return features.transpose(0, 1).reshape(V * B, D)


def instance_labels(B: int, V: int, gather: bool | str, device: torch.device) -> Tensor:
    """One class per sample, repeated over the V views; ids are made globally unique under ``gather``
    (rank r numbers its samples from the sum of the lower ranks' batch sizes, so unequal local batches
    work)."""
    gather = resolve_gather(gather)
    offset = 0
    if gather:
        from core.negatives.distributed import rank_offset

        offset = rank_offset(B)
    return (torch.arange(B, device=device) + offset).repeat(V)


def _check_class_prior(class_prior: Tensor, labels: Tensor | None) -> None:
    if not isinstance(class_prior, Tensor) or class_prior.dim() != 1 or class_prior.numel() == 0:
        got = tuple(class_prior.shape) if isinstance(class_prior, Tensor) else type(class_prior).__name__
        raise ValueError(f"class_prior must be a 1-D tensor (C,) of class frequencies, got {got}")
    if not class_prior.is_floating_point():
        raise ValueError(f"class_prior must be a floating tensor, got dtype {class_prior.dtype}")
    if not bool(torch.isfinite(class_prior).all()) or not bool((class_prior > 0).all()):
        raise ValueError("class_prior must be finite and > 0 for every class")
    if labels is None:
        return
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError("class_prior needs integer class labels (0 .. C-1)")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= class_prior.numel()):
        raise ValueError(f"labels must lie in [0, {class_prior.numel()}) to index class_prior, got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")


@agree_on_input_errors
def sup_con(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float | Tensor = 0.07,
    base_temperature: float = 0.07,
    variant: str = "out",
    similarity: str = "cosine",
    anchor_mask: Tensor | None = None,
    class_prior: Tensor | None = None,
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """SupCon (Khosla et al. 2020) over the ``B x V`` views of ``features``:
    ``l_a = -(tau / tau_b) mean_{p in P(a)} log softmax_{k != a}(z_a . z_k / tau)[p]`` ("out"; "in" takes the
    log of the mean probability), averaged over anchors. Formula in full in the module docstring.

    Args:
        features: (B, V, D) unnormalised embeddings, V views of each of B samples.
        labels: (B,) class labels (any dtype comparable with ``==``), or ``None`` for SimCLR (each
            sample its own class).
        temperature: tau > 0 (a tensor keeps the graph); per anchor: a tensor of shape (B,) (one per sample)
            or (V B,) (one per view, view-major).
        base_temperature: tau_b; the loss is scaled by tau / tau_b (1 when they are equal).
        variant: ``"out"`` (mean of log-probabilities over positives, the paper's L_out) or ``"in"``
            (log of the mean probability, L_in).
        similarity: ``"cosine"`` (normalise inside, the paper) or ``"dot"`` (raw dot products, e.g.
            DuoRec's supervised positives on sequence representations).
        anchor_mask: optional (B,) bool: only these samples' views are anchors; every view stays a
            candidate (positive or negative) for the anchors. Samples with no positive partner (noise,
            singletons) can so take part as negatives only.
        class_prior: optional (C,) class frequencies pi (> 0; need not sum to 1); adds ``-log pi[y_k]`` to every
            logit of candidate k. Needs integer ``labels`` in [0, C).
        reduction: ``"mean"`` over the anchors, ``"sum"``, or ``"none"`` ((V B',), view-major, for the B'
            anchor samples in order).
        tile_size, gather: execution mode, as in :func:`core.losses.info_nce`; with ``gather`` the
            candidates (and their labels) come from every rank, the anchors stay local.

    Raises:
        ValueError: bad shapes, non-finite values, ``labels`` of the wrong length, an anchor with no
            positive (a class with one sample and V = 1), or a batch with no negatives (one class).
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    z = flatten_views(features)
    B, V = features.shape[0], features.shape[1]
    per_t = check_temperature("temperature", temperature, (B, V * B))
    check_positive("base_temperature", base_temperature)
    check_choice("variant", variant, ("out", "in"))
    check_choice("similarity", similarity, ("cosine", "dot"))
    check_reduction(reduction)
    if class_prior is not None:
        if labels is None:
            raise ValueError("class_prior needs class labels (labels=None makes every sample its own class)")
        _check_class_prior(class_prior, labels)
    if anchor_mask is not None:
        if not isinstance(anchor_mask, Tensor) or anchor_mask.dtype != torch.bool or anchor_mask.shape != (B,):
            raise ValueError(f"anchor_mask must be a bool tensor of shape ({B},), got "
                             f"{getattr(anchor_mask, 'dtype', type(anchor_mask).__name__)} "
                             f"{tuple(getattr(anchor_mask, 'shape', ()))}")
        if not bool(anchor_mask.any()):
            raise ValueError("anchor_mask selects no anchor")
    if labels is None:
        y = instance_labels(B, V, gather, z.device)
    else:
        if not isinstance(labels, Tensor):
            raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.dim() != 1 or labels.shape[0] != B:
            raise ValueError(f"labels must have shape ({B},) (one per sample), got {tuple(labels.shape)}")
        if full_validation() and labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
            raise ValueError("labels contains NaN or infinite values")
        y = labels.to(z.device).repeat(V)
    if B * V * mode.world < 2:
        raise ValueError("the batch has no negatives: SupCon needs at least 2 views in total")
    z = prepare(z, similarity, "features (row v * B + i is view v of sample i)")
    ids = torch.arange(z.shape[0], device=z.device)
    if per_t and temperature.shape[0] == B:
        temperature = temperature.repeat(V)
    anchors, a_label, a_ids, a_temp = z, y, ids, temperature
    if anchor_mask is not None:
        keep = anchor_mask.to(z.device).repeat(V)
        anchors, a_label, a_ids = z[keep], y[keep], ids[keep]
        if per_t:
            a_temp = temperature[keep.to(temperature.device)]
    anchors, scale = scale_anchors(anchors, a_temp, per_t)
    col_meta = {"label": y}
    if class_prior is not None:
        col_meta["log_weight"] = -torch.log(class_prior.detach().to(device=z.device, dtype=z.dtype))[y.long()]
    spec = ContrastSpec(positive="label", exclude_self=True, pos_stat="sum" if variant == "out" else "lse",
                        col_log_weight=class_prior is not None)
    row, _ = run_contrast(spec, anchors, z, scale, row_meta={"label": a_label, "self_id": a_ids},
                          col_meta=col_meta, mode=mode)
    n_pos, n_neg = row[:, 2], row[:, 3]
    if full_validation() and bool((n_pos == 0).any()):
        k = int((n_pos == 0).sum())
        raise ValueError(f"{k} anchors have no positive (no other view with their label); use V >= 2 views "
                         "or at least two samples per class")
    if full_validation() and bool((n_neg == 0).any()):
        raise ValueError("the batch has no negatives: every sample has the same label")
    if variant == "out":
        per_anchor = row[:, 0] - row[:, 1] / n_pos
    else:
        per_anchor = row[:, 0] - row[:, 1] + torch.log(n_pos)
    factor = a_temp.to(per_anchor.dtype) / base_temperature if per_t else temperature / base_temperature
    if isinstance(factor, Tensor) or factor != 1.0:
        per_anchor = per_anchor * factor
    return reduce(per_anchor, reduction)


def _check_options(*, temperature, base_temperature, variant, similarity, class_prior, **_) -> None:
    check_temperature("temperature", temperature)
    check_positive("base_temperature", base_temperature)
    check_choice("variant", variant, ("out", "in"))
    check_choice("similarity", similarity, ("cosine", "dot"))
    if class_prior is not None:
        _check_class_prior(class_prior, None)


#: Module form of :func:`sup_con`; ``forward(features, labels=None, anchor_mask=None, temperature=None)`` (a
#: ``temperature`` given to ``forward``, e.g. per sample, replaces the constructor's for that call); ``class_prior``
#: is kept as a buffer.
SupCon = loss_module(
    sup_con, "SupCon", forward=("anchor_mask",), overrides=("temperature",), buffers=("class_prior",),
    check=_check_options,
    options=("temperature", "base_temperature", "variant", "similarity", "reduction", "tile_size", "gather",
             "class_prior"),
)
