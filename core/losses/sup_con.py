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

Reference:
    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.losses._checks import check_choice, check_embeddings, check_positive, check_reduction, reduce
from core.losses.engine import ContrastSpec, prepare, run_contrast, to_scale
from core.negatives.distributed import agree_on_input_errors, resolve_gather, world_size

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
        temperature: tau > 0 (a tensor keeps the graph).
        base_temperature: tau_b; the loss is scaled by tau / tau_b (1 when they are equal).
        variant: ``"out"`` (mean of log-probabilities over positives, the paper's L_out) or ``"in"``
            (log of the mean probability, L_in).
        similarity: ``"cosine"`` (normalise inside, the paper) or ``"dot"`` (raw dot products, e.g.
            DuoRec's supervised positives on sequence representations).
        anchor_mask: optional (B,) bool: only these samples' views are anchors; every view stays a
            candidate (positive or negative) for the anchors. Samples with no positive partner (noise,
            singletons) can so take part as negatives only.
        reduction: ``"mean"`` over the anchors, ``"sum"``, or ``"none"`` ((V B',), view-major, for the B'
            anchor samples in order).
        tile_size, gather: execution mode, as in :func:`core.losses.info_nce`; with ``gather`` the
            candidates (and their labels) come from every rank, the anchors stay local.

    Raises:
        ValueError: bad shapes, non-finite values, ``labels`` of the wrong length, an anchor with no
            positive (a class with one sample and V = 1), or a batch with no negatives (one class).
    """
    gather = resolve_gather(gather)
    z = flatten_views(features)
    B, V = features.shape[0], features.shape[1]
    check_positive("temperature", temperature)
    check_positive("base_temperature", base_temperature)
    check_choice("variant", variant, ("out", "in"))
    check_choice("similarity", similarity, ("cosine", "dot"))
    check_reduction(reduction)
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
        if labels.is_floating_point() and not torch.isfinite(labels).all():
            raise ValueError("labels contains NaN or infinite values")
        y = labels.to(z.device).repeat(V)
    if B * V * (world_size() if gather else 1) < 2:
        raise ValueError("the batch has no negatives: SupCon needs at least 2 views in total")
    z = prepare(z, similarity)
    ids = torch.arange(z.shape[0], device=z.device)
    anchors, a_label, a_ids = z, y, ids
    if anchor_mask is not None:
        keep = anchor_mask.to(z.device).repeat(V)
        anchors, a_label, a_ids = z[keep], y[keep], ids[keep]
    spec = ContrastSpec(positive="label", exclude_self=True, pos_stat="sum" if variant == "out" else "lse")
    row, _ = run_contrast(spec, anchors, z, to_scale(temperature, z), row_meta={"label": a_label, "self_id": a_ids},
                          col_meta={"label": y}, tile_size=tile_size, gather=gather)
    n_pos, n_neg = row[:, 2], row[:, 3]
    if bool((n_pos == 0).any()):
        k = int((n_pos == 0).sum())
        raise ValueError(f"{k} anchors have no positive (no other view with their label); use V >= 2 views "
                         "or at least two samples per class")
    if bool((n_neg == 0).any()):
        raise ValueError("the batch has no negatives: every sample has the same label")
    if variant == "out":
        per_anchor = row[:, 0] - row[:, 1] / n_pos
    else:
        per_anchor = row[:, 0] - row[:, 1] + torch.log(n_pos)
    factor = temperature / base_temperature
    if isinstance(factor, Tensor) or factor != 1.0:
        per_anchor = per_anchor * factor
    return reduce(per_anchor, reduction)


class SupCon(nn.Module):
    """Module form of :func:`sup_con`; ``forward(features, labels=None, anchor_mask=None)``."""

    def __init__(
        self,
        temperature: float = 0.07,
        base_temperature: float = 0.07,
        variant: str = "out",
        similarity: str = "cosine",
        reduction: str = "mean",
        tile_size: int | str | tuple[int, int] | None = None,
        gather: bool | str | None = None,
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        check_positive("base_temperature", base_temperature)
        check_choice("variant", variant, ("out", "in"))
        check_choice("similarity", similarity, ("cosine", "dot"))
        self.temperature, self.base_temperature, self.variant = temperature, base_temperature, variant
        self.similarity, self.reduction, self.tile_size, self.gather = similarity, reduction, tile_size, gather

    def forward(self, features: Tensor, labels: Tensor | None = None, anchor_mask: Tensor | None = None) -> Tensor:
        return sup_con(
            features, labels, temperature=self.temperature, base_temperature=self.base_temperature,
            variant=self.variant, similarity=self.similarity, anchor_mask=anchor_mask, reduction=self.reduction,
            tile_size=self.tile_size, gather=self.gather,
        )
