"""Input validation shared by every loss: clear ``ValueError`` messages instead of silent wrong numbers.

**Dtypes.** float16 and bfloat16 inputs are computed in float32 (:func:`compute_dtype`, :func:`upcast`): logits,
log-sum-exps and reductions, so a low temperature cannot overflow or round the loss to 0; the loss comes back in
float32 (the gradient reaching a float16 input is float16 again, by autograd). float32 and float64 stay as they
are. Tensors that enter one loss together must agree after that mapping (float16 with float32 is fine, float32
with float64 raises a ``ValueError`` naming both): no silent downcast of float64 data.

**Value checks** (NaN / inf scans, rows with no direction, tensor temperatures) read data back to the host; they
run only under :func:`core.losses.validation` ``"full"`` (the default). Type, shape and dtype checks always run.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from core.negatives.validation import full_validation

_REDUCTIONS = ("mean", "sum", "none")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
#: cosine similarity: a row whose L2 norm is below this has no direction (``F.normalize`` would divide it by its
#: epsilon 1e-12, giving a near-zero vector, logits 0, a loss of ``log B`` and gradients ~1/norm); an error instead.
MIN_NORM = 1e-8


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss computes in for inputs of ``dtype``: float32 for float16 / bfloat16, else ``dtype``."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def upcast(x: Tensor) -> Tensor:
    """``x`` in its compute dtype (float16 / bfloat16 -> float32; differentiable)."""
    return x.to(torch.float32) if x.dtype in _LOW_PRECISION else x


def check_dtypes(**tensors: Tensor | None) -> torch.dtype:
    """Tensors entering one loss together: their compute dtypes must agree (see the module doc). Returns it."""
    named = [(n, t) for n, t in tensors.items() if isinstance(t, Tensor) and t.is_floating_point()]
    if not named:
        return torch.float32
    first_name, first = named[0]
    want = compute_dtype(first.dtype)
    for name, t in named[1:]:
        if compute_dtype(t.dtype) != want:
            raise ValueError(f"{first_name} has dtype {first.dtype} but {name} has dtype {t.dtype}: cast both to "
                             "one dtype (float16 / bfloat16 mix freely with float32, which the loss computes in; "
                             "float64 only with float64)")
    return want


def check_embeddings(name: str, x: Tensor, ndim: int = 2) -> None:
    """Require a non-empty, finite floating tensor with ``ndim`` dimensions (finiteness only under full validation)."""
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
    if full_validation() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.detach())).reshape(x.shape[0], -1).any(1).nonzero()[:, 0]
        raise ValueError(f"{name} contains NaN or infinite values (row(s) {bad[:5].tolist()}"
                         f"{' ...' if bad.numel() > 5 else ''})")


def normalize_rows(x: Tensor, name: str = "embeddings") -> Tensor:
    """L2-normalise the last dimension in the compute dtype; under full validation, a row with norm below
    :data:`MIN_NORM` raises a ``ValueError`` naming it (cosine similarity is undefined there)."""
    x = upcast(x)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if full_validation() and bool((norm < MIN_NORM).any()):
        flat = (norm.detach() < MIN_NORM).reshape(-1).nonzero()[:, 0]
        rows = [tuple(int(i) for i in torch.unravel_index(r, norm.shape[:-1])) for r in flat[:5]]
        rows = [r[0] if len(r) == 1 else r for r in rows]
        raise ValueError(f"{name} has {flat.numel()} row(s) with L2 norm below {MIN_NORM:g} (e.g. row(s) {rows}): "
                         "cosine similarity is undefined for a (near-)zero vector; check the encoder's output, "
                         "or use similarity='dot' where the loss has it")
    return x / norm.clamp_min(1e-12)


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
    check_dtypes(**{name_a: a, name_b: b})


def check_positive(name: str, value: float | Tensor) -> None:
    """A temperature, scale or window: a real number (not a bool or a string) or a one-element floating tensor,
    finite and > 0 (a tensor's value is read only under full validation)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise ValueError(f"{name} must be a number or a torch.Tensor, got {type(value).__name__}")
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {value.dtype}")
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        if not full_validation():
            return
        v = float(value.detach())
    else:
        v = float(value)
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
    if full_validation() and (not bool(torch.isfinite(v).all()) or not bool((v > 0).all())):
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
    if full_validation() and labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
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
