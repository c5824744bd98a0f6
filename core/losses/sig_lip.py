r"""Pairwise sigmoid loss (SigLIP).

For L2-normalised :math:`a_i, b_j` (i, j = 1..B), a logit scale :math:`t > 0` and a bias :math:`b`,
every pair is an independent binary classification, positive on the diagonal:

.. math::
    L = -\frac{1}{B}\sum_{i=1}^{B}\sum_{j=1}^{B} \log \sigma\big(z_{ij}\,(t\, a_i \cdot b_j + b)\big),
    \qquad z_{ij} = \begin{cases} 1 & i = j \\ -1 & i \ne j \end{cases}

Computed per row as :math:`\sum_j \operatorname{softplus}(x_{ij}) - x_{ii}` with
:math:`x_{ij} = t\,a_i \cdot b_j + b` (because :math:`-\log\sigma(-x) = \operatorname{softplus}(x)` and
:math:`-\log\sigma(x) = \operatorname{softplus}(x) - x`), a plain ``"sum"`` statistic of
:func:`core.negatives.pair_reduce`, so the loss runs dense, tiled (recomputed in backward, memory
``B x tile``) or over the candidates of every rank.

``logit_scale`` is the multiplier :math:`t` itself, **not** its logarithm: pass ``log_t.exp()`` when the
learnable parameter is :math:`t' = \log t` (as open_clip does, whose model returns ``logit_scale.exp()``;
the paper initialises :math:`t' = \log 10`, :math:`b = -10`). Both may be learnable tensors; they get
exact gradients in every execution mode. The module :class:`SigLIP` owns :math:`t'` and :math:`b` as
parameters.

Reference:
    Zhai, Mustafa, Kolesnikov, Beyer, "Sigmoid Loss for Language Image Pre-Training", ICCV 2023.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from core.losses._checks import check_pair, check_positive, check_reduction, compute_dtype, full_validation, reduce
from core.losses.engine import prepare, reduce_pairs
from core.negatives.distributed import agree_on_input_errors
from core.negatives.execution import Block
from core.negatives.mode import execution_mode

__all__ = ["sig_lip", "SigLIP", "sig_lip_block"]


def sig_lip_block(a: Tensor, c: Tensor, params, blk: Block):
    """Row sums of ``-log sigmoid(z_ij x_ij)`` over one block; the positive of row i is ``pos_id[i]``."""
    t, bias = params
    x = (a * t) @ c.T + bias
    # softplus(x) = log(1 + e^x), exact and stable for any x (F.softplus linearises above a threshold)
    row = torch.logaddexp(x, x.new_zeros(())).sum(1)
    C = c.shape[0]
    li = blk.row["pos_id"] - blk.col_ids[0]
    inside = (li >= 0) & (li < C)
    # the positive logit from the (T x D) rows directly: no gradient through a T x C gather
    pos = t * (a * c[li.clamp(0, C - 1)]).sum(1) + bias
    row = row - torch.where(inside, pos, torch.zeros_like(pos))
    return [row], []


def _as_scalar(name: str, value: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {value.dtype}")
        if full_validation() and not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(f"{name} must be finite, got {float(value.detach())}")
        return value.reshape(()).to(compute_dtype(like.dtype))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number or a torch.Tensor, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    return torch.tensor(float(value), dtype=compute_dtype(like.dtype), device=like.device)


@agree_on_input_errors
def sig_lip(
    a: Tensor,
    b: Tensor,
    *,
    logit_scale: float | Tensor,
    logit_bias: float | Tensor,
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """SigLIP loss (Zhai et al. 2023) of ``a[i]`` against every ``b[j]`` (positive iff i == j):
    ``L = -(1/B) sum_i sum_j log sigmoid(z_ij (t a_i . b_j + b))``, ``z_ij = +1`` if i == j else -1.

    Args:
        a, b: (B, D) unnormalised embeddings of the two modalities (cosine-normalised inside).
        logit_scale: t > 0, the multiplier of the cosine (``exp`` of a log-parameter).
        logit_bias: b, added to every logit.
        reduction: ``"mean"`` = (1/B) sum_i sum_j (the paper's normalisation), ``"sum"`` = sum over all
            pairs, ``"none"`` = the per-anchor row sums, shape (B,).
        tile_size: ``None`` dense; int / (rows, cols) tiled with recomputation; ``"auto"``.
        gather: ``True`` / ``"ring"``: ``b`` from every rank; each rank returns the mean over its local
            anchors of the sum over all global ``b`` (see :mod:`core.negatives.distributed`).
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    check_pair("a", a, "b", b)
    check_reduction(reduction)
    t = _as_scalar("logit_scale", logit_scale, a)
    bias = _as_scalar("logit_bias", logit_bias, a)
    check_positive("logit_scale", t)
    B = a.shape[0]
    if B * mode.world < 2:
        raise ValueError("the batch has no negatives: SigLIP needs at least 2 pairs")
    u, v = prepare(a, "cosine", "a"), prepare(b, "cosine", "b")
    row, _ = reduce_pairs(
        sig_lip_block, u, v, row_kinds=("sum",), params=(t, bias),
        row_meta={"pos_id": torch.arange(B, device=u.device)}, mode=mode,
        id_keys=("pos_id",),
    )
    return reduce(row[:, 0], reduction)


class SigLIP(nn.Module):
    """Module form of :func:`sig_lip` that owns the log-scale ``t' = log t`` and the bias as parameters.

    Args:
        logit_scale: initial t (the paper: 10, i.e. t' = log 10).
        logit_bias: initial b (the paper: -10).
        learnable: make t' and b ``nn.Parameter`` (otherwise buffers).
    """

    def __init__(
        self,
        logit_scale: float = 10.0,
        logit_bias: float = -10.0,
        learnable: bool = True,
        reduction: str = "mean",
        tile_size: int | str | tuple[int, int] | None = None,
        gather: bool | str | None = None,
    ) -> None:
        super().__init__()
        check_positive("logit_scale", logit_scale)
        log_t = torch.tensor(math.log(logit_scale))
        bias = torch.tensor(float(logit_bias))
        if learnable:
            self.log_logit_scale = nn.Parameter(log_t)
            self.logit_bias = nn.Parameter(bias)
        else:
            self.register_buffer("log_logit_scale", log_t)
            self.register_buffer("logit_bias", bias)
        self.reduction, self.tile_size, self.gather = reduction, tile_size, gather

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return sig_lip(
            a, b, logit_scale=self.log_logit_scale.exp(), logit_bias=self.logit_bias, reduction=self.reduction,
            tile_size=self.tile_size, gather=self.gather,
        )
