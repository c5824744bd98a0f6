r"""Per-sample temperatures for :func:`~core.losses.info_nce`, :func:`~core.losses.nt_xent` and
:func:`~core.losses.sup_con` (which accept a ``temperature`` tensor of shape (B,), one per anchor).

* :class:`TemperatureNet` predicts a bounded temperature from the embedding (TempNet):

  .. math::
      \tau(z) = \tau_{min} + (\tau_{max} - \tau_{min})\,\sigma\big(w_2^\top \mathrm{act}(W_1 \hat z + b_1) + b_2\big),
      \qquad \hat z = z / \lVert z \rVert

  trained jointly with the encoder by the contrastive loss itself (the gradient reaches it through
  :math:`\tau_i`). The sigmoid keeps every temperature inside :math:`(\tau_{min}, \tau_{max})`, so no anchor can
  drive its temperature to 0 or infinity.
* :class:`PerSampleTemperature` keeps one learnable temperature per training sample, looked up by index
  (iSogCLR's individualised temperatures), with the same bounded parametrisation.
* :func:`alignment_temperature` is MACL's model-aware temperature: one temperature per step from the batch's
  alignment magnitude (mean positive cosine similarity, no gradient),

  .. math::
      \tau_A = \tau_0\,\big(1 + \alpha\,(A - A_0)\big), \qquad A = \tfrac{1}{B}\textstyle\sum_i \cos(q_i, k_i),

  small while positives are still far apart (hard negatives weigh more), larger once the model aligns them
  (more tolerance to semantically close negatives). MACL's second part, a reweighting of the loss's gradient, is
  not implemented here.

References:
    Qiu, Hu, Yuan, Zhou, Zhang, Yang, "Not All Semantics are Created Equal: Contrastive Self-supervised
    Learning with Automatic Temperature Individualization" (iSogCLR), ICML 2023.
    Qiu, Wang, Wang, Lu, Hu, Yang, "To Cool or not to Cool? Temperature Network Meets Large Foundation
    Models via DRO" (TempNet), ICML 2024.
    Huang, Chen, Wen, Zhang, Li, Wang, Chen, "Model-Aware Contrastive Learning: Towards Escaping the Dilemmas"
    (MACL), ICML 2023.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.losses._checks import check_embeddings, check_pair

__all__ = ["TemperatureNet", "PerSampleTemperature", "alignment_temperature"]


def _check_finite(**values: float) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")


def _check_bounds(tau_min: float, tau_max: float, init: float) -> None:
    _check_finite(tau_min=tau_min, tau_max=tau_max, init=init)
    if not 0 < tau_min < tau_max:
        raise ValueError(f"need 0 < tau_min < tau_max, got tau_min={tau_min}, tau_max={tau_max}")
    if not tau_min < init < tau_max:
        raise ValueError(f"init must lie strictly between tau_min={tau_min} and tau_max={tau_max}, got {init}")


def _init_logit(tau_min: float, tau_max: float, init: float) -> float:
    p = (init - tau_min) / (tau_max - tau_min)
    return math.log(p / (1.0 - p))


class TemperatureNet(nn.Module):
    """TempNet-style temperature predictor: (B, D) embeddings -> (B,) temperatures in (tau_min, tau_max).

    Args:
        dim: embedding dimension D.
        hidden: width of the hidden layer.
        tau_min / tau_max: bounds of the output, 0 < tau_min < tau_max.
        init: temperature every sample starts with (the output layer starts at zero weight and the bias that
            maps to ``init``), so training starts from a plain fixed-temperature loss.
        normalize: L2-normalise the input first (the temperature depends on the direction only).
        detach_input: do not backpropagate the temperature's gradient into the encoder.
    """

    def __init__(self, dim: int, hidden: int = 256, tau_min: float = 0.01, tau_max: float = 1.0,
                 init: float = 0.1, normalize: bool = True, detach_input: bool = False) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        _check_bounds(tau_min, tau_max, init)
        self.dim, self.tau_min, self.tau_max = dim, float(tau_min), float(tau_max)
        self.normalize, self.detach_input = normalize, detach_input
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.fill_(_init_logit(tau_min, tau_max, init))

    def forward(self, z: Tensor) -> Tensor:
        check_embeddings("z", z)
        if z.shape[1] != self.dim:
            raise ValueError(f"z must have feature dimension {self.dim}, got {z.shape[1]}")
        x = z.detach() if self.detach_input else z
        if self.normalize:
            x = F.normalize(x, dim=1)
        x = x.to(self.hidden.weight.dtype)
        logit = self.out(F.gelu(self.hidden(x))).squeeze(1)
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(logit)


class PerSampleTemperature(nn.Module):
    """One learnable, bounded temperature per training sample (iSogCLR): ``forward(index)`` -> (B,).

    Args:
        n: number of training samples (indices 0 .. n-1).
        tau_min / tau_max / init: as in :class:`TemperatureNet`.
    """

    def __init__(self, n: int, tau_min: float = 0.01, tau_max: float = 1.0, init: float = 0.1) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        _check_bounds(tau_min, tau_max, init)
        self.n, self.tau_min, self.tau_max = n, float(tau_min), float(tau_max)
        self.logit = nn.Parameter(torch.full((n,), _init_logit(tau_min, tau_max, init)))

    def forward(self, index: Tensor) -> Tensor:
        if not isinstance(index, Tensor) or index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
            raise ValueError("index must be a 1-D integer tensor of sample indices")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.n):
            raise ValueError(f"index must lie in [0, {self.n}), got range [{int(index.min())}, {int(index.max())}]")
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(self.logit[index.to(self.logit.device)])


def alignment_temperature(query: Tensor, key: Tensor, *, tau0: float = 0.1, alpha: float = 0.5, a0: float = 0.0,
                          gather: bool | str | None = None) -> Tensor:
    """MACL's alignment-adaptive temperature ``tau0 * (1 + alpha * (A - a0))``, a 0-d tensor without gradient.

    ``A`` is the mean cosine similarity of the positive pairs ``(query[i], key[i])``; with ``gather`` (resolved as
    in the losses: ``None`` follows the runner's default) it is the mean over every rank's pairs (one all-reduce),
    so all ranks use the same temperature. Pass the result as any loss's ``temperature``. Requires ``tau0 > 0``,
    ``0 <= alpha <= 1``, ``-1 <= a0 <= 1`` and ``alpha * (1 + a0) < 1`` (then ``tau_A > 0`` for every ``A`` in
    [-1, 1])."""
    from core.negatives.mode import resolve_gather, world_size

    check_pair("query", query, "key", key)
    _check_finite(tau0=tau0, alpha=alpha, a0=a0)
    if tau0 <= 0:
        raise ValueError(f"tau0 must be > 0, got {tau0}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not -1 <= a0 <= 1:
        raise ValueError(f"a0 must lie in [-1, 1] (a cosine similarity), got {a0}")
    if alpha * (1 + a0) >= 1:
        raise ValueError(f"alpha * (1 + a0) must be < 1 so that the temperature stays positive at A = -1, got "
                         f"alpha={alpha}, a0={a0}")
    with torch.no_grad():
        cos = F.cosine_similarity(query.float(), key.float(), dim=1, eps=1e-12)
        total = torch.stack([cos.sum(), torch.tensor(float(cos.numel()), device=cos.device)])
        if resolve_gather(gather) and world_size() > 1:
            torch.distributed.all_reduce(total)
        a = total[0] / total[1]
        return tau0 * (1 + alpha * (a - a0))
