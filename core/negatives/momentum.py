r"""Momentum (EMA) encoders for MoCo / BYOL-style key or target networks.

The target parameters follow the online ones by an exponential moving average
(He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020):

.. math::
    \theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q, \qquad m \in [0, 1]

``m = 1`` freezes the target, ``m = 0`` copies the online encoder. Buffers (batch-norm running statistics,
counters) are copied, not averaged. The target never receives gradients (``requires_grad=False``).

A cosine schedule raises ``m`` from ``base`` to ``final`` over training (Grill et al., "Bootstrap Your Own
Latent", NeurIPS 2020; Chen et al., MoCo v3, ICCV 2021):

.. math::
    m_t = \text{final} - (\text{final} - \text{base}) \cdot \frac{1 + \cos(\pi t / T)}{2}
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

__all__ = ["ema_update", "MomentumEncoder", "cosine_momentum"]


def _check_momentum(momentum: float) -> float:
    m = float(momentum)
    if not math.isfinite(m) or not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return m


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """In place: ``target.p = momentum * target.p + (1 - momentum) * source.p``; buffers are copied.

    Parameters and buffers are matched by name; both modules must have the same structure. A
    ``DistributedDataParallel``-wrapped source is unwrapped.
    """
    m = _check_momentum(momentum)
    if isinstance(source, nn.parallel.DistributedDataParallel):
        source = source.module
    t_params, s_params = dict(target.named_parameters()), dict(source.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(s_params) ^ set(t_params))
        raise ValueError(f"target and source parameters differ: {missing[:5]}")
    for name, tp in t_params.items():
        sp = s_params[name]
        if tp.shape != sp.shape:
            raise ValueError(f"parameter {name!r}: target shape {tuple(tp.shape)} != source {tuple(sp.shape)}")
        tp.mul_(m).add_(sp.detach().to(tp.dtype), alpha=1.0 - m)
    t_bufs, s_bufs = dict(target.named_buffers()), dict(source.named_buffers())
    if t_bufs.keys() != s_bufs.keys():
        missing = sorted(set(s_bufs) ^ set(t_bufs))
        raise ValueError(f"target and source buffers differ: {missing[:5]}")
    for name, tb in t_bufs.items():
        tb.copy_(s_bufs[name])


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Cosine schedule from ``base`` (step 0) to ``final`` (step ``total_steps``); clamped beyond."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    _check_momentum(base)
    _check_momentum(final)
    t = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (1.0 + math.cos(math.pi * t)) / 2.0


class MomentumEncoder(nn.Module):
    """A frozen copy of an encoder, updated by :func:`ema_update`.

    ``forward`` runs under ``torch.no_grad()`` (keys / targets carry no gradient). The copy follows the parent
    module's train/eval mode like any submodule (MoCo's key encoder runs in train mode).

    Args:
        encoder: the online encoder; it is deep-copied (not kept as a submodule, so its parameters are not
            registered twice).
        momentum: default ``m`` for :meth:`update`.

    Example::

        key_encoder = MomentumEncoder(encoder, momentum=0.999)
        key_encoder.update(encoder)          # once per step, before encoding the keys
        k = key_encoder(x)
    """

    def __init__(self, encoder: nn.Module, momentum: float = 0.999) -> None:
        super().__init__()
        self.momentum = _check_momentum(momentum)
        self.encoder = copy.deepcopy(encoder)
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def update(self, source: nn.Module, momentum: float | None = None) -> None:
        """EMA step towards ``source`` with ``momentum`` (default: the constructor's)."""
        ema_update(self.encoder, source, self.momentum if momentum is None else momentum)

    def forward(self, *args, **kwargs) -> Tensor:
        with torch.no_grad():
            return self.encoder(*args, **kwargs)
