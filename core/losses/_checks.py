"""Input validation shared by every loss: clear ``ValueError`` messages instead of silent wrong numbers."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def check_embeddings(name: str, x: Tensor, ndim: int = 2) -> None:
    """Require a non-empty, finite floating tensor with ``ndim`` dimensions."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has zero feature dimension (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor, same_batch: bool = True) -> None:
    """Both embeddings valid, same feature dimension and (optionally) the same batch size."""
    check_embeddings(name_a, a)
    check_embeddings(name_b, b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same feature dimension, got {a.shape[-1]} and {b.shape[-1]}"
        )
    if same_batch and a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same batch size, got {a.shape[0]} and {b.shape[0]}")


def check_positive(name: str, value: float | Tensor) -> None:
    """A temperature, scale or window: finite and > 0."""
    v = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))
    if v.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(v.shape)}")
    v = float(v)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {v}")


def check_temperature(name: str, value: float | Tensor, sizes: tuple[int, ...] = ()) -> bool:
    """A temperature: a finite number > 0, a one-element tensor, or (when ``sizes`` is given) a 1-D tensor with
    one entry per anchor, ``(n,)`` for some ``n`` in ``sizes``, every entry finite and > 0.

    Returns ``True`` for a per-anchor tensor, ``False`` for a scalar. Raises ``ValueError`` with the
    accepted shapes otherwise (a string, a bool, an integer tensor, a wrong shape, a value <= 0 ...).
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise ValueError(f"{name} must be a number or a torch.Tensor, got {type(value).__name__}")
    if not isinstance(value, Tensor):
        check_positive(name, value)
        return False
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if value.numel() == 1:  # 0-d, or one entry: the same number for every anchor
        check_positive(name, value)
        return False
    if not sizes:
        raise ValueError(f"{name} must be a scalar here, got shape {tuple(value.shape)}")
    if value.dim() != 1 or value.shape[0] not in sizes:
        shapes = " or ".join(f"({n},)" for n in sizes)
        raise ValueError(f"{name} must be a scalar or a per-anchor tensor of shape {shapes}, "
                         f"got shape {tuple(value.shape)}")
    v = value.detach()
    if not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
        raise ValueError(f"{name} must be finite and > 0 for every anchor, got min {float(v.min())}")
    return True


def check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def check_labels(name: str, labels: Tensor, n: int) -> None:
    """Labels: a tensor whose first dimension matches the number of samples, finite values."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() == 0 or labels.shape[0] != n:
        raise ValueError(f"{name} has length {labels.shape[0] if labels.dim() else 0} but the batch has {n} samples")
    if labels.is_floating_point() and not torch.isfinite(labels).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def reduce(per_anchor: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` (``mean`` over anchors, ``sum`` or ``none``)."""
    if reduction == "mean":
        return per_anchor.mean()
    if reduction == "sum":
        return per_anchor.sum()
    return per_anchor
