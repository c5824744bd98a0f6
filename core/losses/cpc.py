r"""Contrastive Predictive Coding (CPC): InfoNCE summed over K future steps.

For sequences :math:`b = 1..B` with encodings :math:`z_{b,t}` (``future``) and context vectors
:math:`c_{b,t}` (``context``, the autoregressive summary of :math:`z_{b, \le t}`), one linear predictor
:math:`W_k` per step :math:`k = 1..K` scores a candidate by the log-bilinear density ratio
:math:`f_k(z, c_t) = \exp(z^\top W_k c_t / \tau)`. The candidates of a prediction are the encodings
at **every** position :math:`(b', t')` of the batch (other time steps and other sequences, the
positive :math:`z_{b, t+k}` included):

.. math::
    \ell_{b,t,k} = -\log \frac{e^{z_{b,t+k}^\top W_k c_{b,t}/\tau}}
        {\sum_{b'=1}^{B}\sum_{t'=1}^{T} e^{z_{b',t'}^\top W_k c_{b,t}/\tau}}, \qquad
    L = \sum_{k=1}^{K} \frac{1}{B\,(T-k)} \sum_{b}\sum_{t=1}^{T-k} \ell_{b,t,k}

(dot-product logits, no normalisation; :math:`\tau = 1` is the paper's form). Each step is an InfoNCE
with index positives run through :func:`core.losses.engine.run_contrast`, so it can be tiled or use
the candidates of every rank.

Reference:
    van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive Coding",
    arXiv:1807.03748, 2018.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.losses._checks import (
    check_dtypes,
    check_embeddings,
    check_reduction,
    check_temperature,
    full_validation,
    upcast,
)
from core.losses.engine import ContrastSpec, run_contrast, to_scale
from core.negatives.distributed import agree_on_input_errors
from core.negatives.mode import execution_mode

__all__ = ["cpc", "CPC"]


@agree_on_input_errors
def cpc(
    context: Tensor,
    future: Tensor,
    *,
    predictors: Sequence[Callable[[Tensor], Tensor]],
    temperature: float | Tensor = 1.0,
    reduction: str = "mean",
    tile_size: int | str | tuple[int, int] | None = None,
    gather: bool | str | None = None,
) -> Tensor:
    """CPC loss (van den Oord et al. 2018) of ``context`` (B, T, Dc) predicting ``future`` (B, T, Dz) 1..K
    steps ahead: ``sum_k mean_{b,t} -log softmax_{(b',t')}(z_{b't'} . W_k c_{bt} / tau)[(b, t+k)]``.

    Args:
        context: c_{b,t}, shape (B, T, Dc).
        future: z_{b,t}, shape (B, T, Dz) (the encodings to predict; all B T of them are candidates).
        predictors: K maps Dc -> Dz (``nn.Linear``, an ``nn.ModuleList`` ...), the k-th predicting step
            k = 1..K; K < T.
        temperature: tau > 0 dividing the dot-product logits.
        reduction: ``"mean"`` = the sum over k of the mean over the B (T - k) predictions of step k;
            ``"sum"`` = the sum over every prediction; ``"none"`` = (B, T, K) tensor whose [b, t, k-1]
            entry is the loss of predicting z_{b,t+k} from c_{b,t} (0 where t + k >= T).
        tile_size, gather: execution mode of each step, as in :func:`core.losses.info_nce`; with
            ``gather`` the candidates come from every rank.
    """
    mode = execution_mode(tile_size, gather)
    gather = mode.gather
    check_embeddings("context", context, ndim=3)
    check_embeddings("future", future, ndim=3)
    check_dtypes(context=context, future=future)
    check_temperature("temperature", temperature)
    check_reduction(reduction)
    B, T = context.shape[0], context.shape[1]
    if tuple(future.shape[:2]) != (B, T):
        raise ValueError(f"context and future must share (batch, time), got {tuple(context.shape[:2])} and "
                         f"{tuple(future.shape[:2])}")
    predictors = list(predictors)
    K = len(predictors)
    if K < 1:
        raise ValueError("predictors is empty: CPC needs at least one prediction step")
    if T < 2 or K >= T:
        raise ValueError(f"CPC needs T > K (at least one prediction per step): T = {T}, K = {K}")
    Dz = future.shape[2]
    z = upcast(future).reshape(B * T, Dz)
    scale = to_scale(temperature, z)
    spec = ContrastSpec(positive="index")
    steps = []
    for k, predictor in enumerate(predictors, start=1):
        pred = predictor(context[:, : T - k])
        if not isinstance(pred, Tensor) or tuple(pred.shape) != (B, T - k, Dz):
            shape = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
            raise ValueError(f"predictor {k} must map (B, T-k, Dc) to (B, T-k, {Dz}), got {shape}")
        if not pred.is_floating_point():
            raise ValueError(f"predictor {k} returned a {pred.dtype} tensor; it must be floating")
        check_dtypes(future=future, **{f"predictor {k}'s output": pred})
        if full_validation() and not bool(torch.isfinite(pred).all()):
            raise ValueError(f"predictor {k} returned NaN or infinite values (step k = {k}); check its weights "
                             "and the context")
        pred = upcast(pred)
        pos_id = (torch.arange(B, device=z.device)[:, None] * T
                  + torch.arange(k, T, device=z.device)[None, :]).reshape(-1)
        row, _ = run_contrast(spec, pred.reshape(B * (T - k), Dz), z, scale, row_meta={"pos_id": pos_id},
                              mode=mode)
        steps.append((row[:, 0] - row[:, 1]).reshape(B, T - k))
    if reduction == "mean":
        return torch.stack([s.mean() for s in steps]).sum()
    if reduction == "sum":
        return torch.stack([s.sum() for s in steps]).sum()
    return torch.stack([F.pad(s, (0, k)) for k, s in enumerate(steps, start=1)], dim=2)


class CPC(nn.Module):
    """CPC loss with its own K linear predictors ``W_k`` (Dc -> Dz); ``forward(context, future)``.

    Args:
        context_dim, future_dim: Dc and Dz.
        steps: K (the paper: 12).
        temperature, reduction, tile_size, gather: as in :func:`cpc`.
        bias: give the predictors a bias (the paper's W_k have none).
    """

    def __init__(
        self,
        context_dim: int,
        future_dim: int,
        steps: int = 12,
        temperature: float = 1.0,
        reduction: str = "mean",
        tile_size: int | str | tuple[int, int] | None = None,
        gather: bool | str | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        check_temperature("temperature", temperature)
        self.predictors = nn.ModuleList(nn.Linear(context_dim, future_dim, bias=bias) for _ in range(steps))
        self.temperature, self.reduction, self.tile_size, self.gather = temperature, reduction, tile_size, gather

    def forward(self, context: Tensor, future: Tensor) -> Tensor:
        return cpc(context, future, predictors=self.predictors, temperature=self.temperature,
                   reduction=self.reduction, tile_size=self.tile_size, gather=self.gather)
