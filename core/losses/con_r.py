r"""ConR: contrastive regulariser for deep imbalanced regression.

Anchors are the N L2-normalised views :math:`z_j` (for two augmentations of B images, N = 2B), with
continuous labels :math:`y_j` (scalars or vectors) and the model's (detached) predictions
:math:`\hat y_j`. With a window :math:`\omega`, :math:`d(\cdot,\cdot)` the absolute difference (the
Euclidean distance for vector labels) and :math:`s_{ab} = z_a \cdot z_b / \tau`:

* positives :math:`K^+_j = \{i \ne j : d(y_i, y_j) \le \omega\}` (the other view included);
* negatives :math:`K^-_j = \{q : d(y_q, y_j) > \omega \text{ and } d(\hat y_q, \hat y_j) \le \omega\}`:
  distant labels but close predictions, the samples about to collapse onto the anchor;
* pushing weights :math:`S_{j,q} = w_j\, e^{e\, d(y_j, y_q)}` (``push="exp"``, the AgeDB / IMDB-WIKI
  setting) or :math:`w_j\, e\, d(y_j, y_q)` (``push="linear"``, the NYUD2 setting), with
  :math:`e` = ``push_scale`` and :math:`w_j` the anchor's sample weight (e.g. LDS inverse-frequency
  weights; 1 when ``sample_weights`` is None);

.. math::
    \ell_j = -\frac{w_j}{|K^+_j|} \sum_{i \in K^+_j}
        \log \frac{e^{s_{ji}}}{\sum_{p \in K^+_j} e^{s_{jp}} + \sum_{q \in K^-_j} S_{j,q}\, e^{s_{jq}}},

and :math:`\ell_j = 0` for an anchor without negatives (only anchors whose predictions are about to
collapse contribute) or without positives. The loss is the **mean over all N anchors**, zeros
included (as in the public code). :math:`w_j` multiplies both the pushing weights and the anchor's term,
as in the paper's code.

``denominator="paper"`` (default) is the formula above. ``denominator="official"`` reproduces the public
code (BorealisAI/ConR, ``agedb-dir/loss.py``), whose positive sum is taken over the masked logit matrix,
so every column that is not a positive -- the anchor itself, the negatives and the ignored pairs --
adds :math:`e^0 = 1` to the denominator. The public code also hard-codes :math:`\tau = 0.07` whatever
``--temperature`` says (README and argparse: 0.2); pass ``temperature=0.07`` to reproduce it. The paper's
formula and :math:`\tau = 0.2` are the defaults here.

Reference:
    Keramati, Meng, Evans, "ConR: Contrastive Regularizer for Deep Imbalanced Regression", ICLR 2024
    (arXiv:2309.06651).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.losses._checks import (
    check_choice,
    check_embeddings,
    check_reduction,
    check_temperature,
    full_validation,
    reduce,
)
from core.losses._module import loss_module
from core.losses.engine import ContrastSpec, prepare, run_contrast, to_scale
from core.losses.sup_con import flatten_views
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode

__all__ = ["con_r", "ConR"]


def _check_targets(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    if full_validation() and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _per_view(name: str, x: Tensor, B: int, V: int, label_shape: tuple[int, ...]) -> Tensor:
    """Values given per sample (``label_shape``) or per view ((B, V, *label dims)) -> (V B, ...) view-major."""
    if tuple(x.shape) == label_shape:
        return x.repeat(V, *([1] * (x.dim() - 1)))
    if tuple(x.shape) == (B, V, *label_shape[1:]):
        return x.transpose(0, 1).reshape(V * B, *label_shape[1:])
    raise ValueError(
        f"{name} must have shape {label_shape} (one per sample) or {(B, V, *label_shape[1:])} (one per view), "
        f"got {tuple(x.shape)}"
    )


@agree_on_input_errors
def con_r(
    features: Tensor,
    labels: Tensor,
    preds: Tensor,
    *,
    temperature: float | Tensor = 0.2,
    window: float = 1.0,
    push: str = "exp",
    push_scale: float = 0.01,
    sample_weights: Tensor | None = None,
    denominator: str = "paper",
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """ConR (Keramati et al. 2024) over N views with continuous labels of any dimension:
    ``l_j = -(w_j / |K+|) sum_{i in K+} log(e^{s_ji} / (sum_{K+} e^{s_jp} + sum_{K-} S_jq e^{s_jq}))``, 0 without
    negatives or positives; mean over all anchors. Definitions in the module docstring.

    Args:
        features: (N, D) views, or (B, V, D) (flattened view-major: view 0 of every sample first).
        labels: (N,) or (N, L) targets; with (B, V, D) features one per sample, (B,) or (B, L).
        preds: predictions with the shape of ``labels`` (with (B, V, D) features also (B, V, ...): one per
            view). Used only to select negatives (no gradient).
        temperature: tau > 0 (the paper: 0.2; the public code: 0.07).
        window: omega >= 0, for labels and predictions alike (AgeDB / IMDB-WIKI: 1, NYUD2: 0.2).
        push: ``"exp"`` (S = w exp(e d)) or ``"linear"`` (S = w e d).
        push_scale: e (AgeDB: 0.01; NYUD2 linear: 0.2).
        sample_weights: per-sample weights w_j >= 0 ((N,), or (B,) with (B, V, D) features); None = 1.
        denominator: ``"paper"`` or ``"official"`` (+1 per non-positive column, see the module doc).
        reduction: ``"mean"`` over all N anchors (zeros included), ``"sum"``, or ``"none"`` ((N,)).
        tile_size, gather: execution mode, as in :func:`core.losses.info_nce`.
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    if isinstance(features, Tensor) and features.dim() == 3:
        z = flatten_views(features)
        B, V = features.shape[0], features.shape[1]
    else:
        check_embeddings("features", features)
        z, B, V = features, features.shape[0], 1
    _check_targets("labels", labels)
    _check_targets("preds", preds)
    if labels.dim() not in (1, 2) or labels.shape[0] != B:
        raise ValueError(f"labels must have shape ({B},) or ({B}, L) (one per sample), got {tuple(labels.shape)}")
    y = _per_view("labels", labels, B, V, tuple(labels.shape)) if V > 1 else labels
    if V > 1:
        p = _per_view("preds", preds, B, V, tuple(labels.shape))
    elif tuple(preds.shape) != tuple(labels.shape):
        raise ValueError(f"preds must have the shape of labels {tuple(labels.shape)}, got {tuple(preds.shape)}")
    else:
        p = preds
    check_temperature("temperature", temperature)
    if not math.isfinite(window) or window < 0:
        raise ValueError(f"window must be finite and >= 0, got {window}")
    check_choice("push", push, ("exp", "linear"))
    if not math.isfinite(push_scale) or push_scale < 0 or (push == "linear" and push_scale == 0):
        raise ValueError(f"push_scale must be finite and >= 0 (> 0 for push='linear'), got {push_scale}")
    check_choice("denominator", denominator, ("paper", "official"))
    check_reduction(reduction)
    N = z.shape[0]
    if sample_weights is None:
        w = torch.ones(N, dtype=z.dtype, device=z.device)
    else:
        _check_targets("sample_weights", sample_weights)
        if tuple(sample_weights.shape) != (B,):
            raise ValueError(f"sample_weights must have shape ({B},), got {tuple(sample_weights.shape)}")
        if full_validation() and bool((sample_weights < 0).any()):
            raise ValueError("sample_weights must be >= 0")
        w = sample_weights.detach().to(z.dtype).repeat(V)
    if N * mode.world < 2:
        raise ValueError("the batch has no negatives: ConR needs at least 2 views")
    z = prepare(z, "cosine", "features")
    y, p = y.to(z.device).detach(), p.to(z.device).detach()
    ids = torch.arange(N, device=z.device)
    spec = ContrastSpec(positive="window", exclude_self=True, negatives_rule="conr", window=float(window),
                        push=push, push_scale=float(push_scale), count_non_positive=denominator == "official")
    row, _ = run_contrast(spec, z, z, to_scale(temperature, z),
                          row_meta={"label": y, "pred": p, "weight": w, "self_id": ids},
                          col_meta={"label": y, "pred": p}, mode=mode)
    den, pos, n_pos, n_neg = row[:, 0], row[:, 1], row[:, 2], row[:, 3]
    if denominator == "official":
        den = torch.logaddexp(den, torch.log(row[:, 4]))
    valid = (n_pos > 0) & (n_neg > 0)
    term = den - pos / torch.where(n_pos > 0, n_pos, torch.ones_like(n_pos))
    per_anchor = torch.where(valid, w * term, torch.zeros_like(term))
    return reduce(per_anchor, reduction)


def _check_options(*, temperature, push, denominator, **_) -> None:
    check_temperature("temperature", temperature)
    check_choice("push", push, ("exp", "linear"))
    check_choice("denominator", denominator, ("paper", "official"))


#: Module form of :func:`con_r`; ``forward(features, labels, preds, sample_weights=None)``.
ConR = loss_module(con_r, "ConR", forward=("sample_weights",), check=_check_options)
