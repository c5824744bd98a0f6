r"""Encoders, views and the two fine-tuning objectives of the anomaly app.

* :class:`MeanShiftedModule` -- MSC fine-tuning (Reiss & Hoshen, "Mean-Shifted Contrastive Loss for Anomaly
  Detection", AAAI 2023): with :math:`\phi(x) = f(x)/\lVert f(x)\rVert` and the fixed centre
  :math:`c = \operatorname{mean}_{x \in \text{normal train}} \phi_0(x)` of the *pre-trained* encoder,
  NT-Xent (:math:`\tau = 0.25`) over the mean-shifted views
  :math:`\theta(x) = (\phi(x) - c)/\lVert\phi(x) - c\rVert` of two augmentations of each normal image,
  optionally plus the angular centre term (:func:`core.losses.mean_shifted`); with ``freeze_bn`` the
  BatchNorm layers stay in eval mode (fixed statistics). :class:`HeldOutSelection` keeps the epoch with the lowest
  MSC loss on held-out normal samples and stops after ``patience`` epochs without a lower one.
* :class:`CompactnessModule` -- the Deep-SVDD / PANDA-style baseline: minimise
  :math:`\operatorname{mean}_x \lVert\phi(x) - c\rVert^2` on the normal training data (no views, no
  negatives, so it can collapse; kept short, like PANDA's early stopping).
* :class:`TabularCorruption` -- SCARF-style views of table rows (Bahri et al., "SCARF: Self-Supervised
  Contrastive Learning using Random Feature Corruption", ICLR 2022): a random share of each row's features
  is replaced by the same feature of a random row of the pool (``"resample"``) or set to 0, the standardised
  mean (``"mask"``).
* Image views: :class:`core.demo.DigitsAugment` scaled to 28x28 (affine jitter, brightness, cutout, noise).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.app import InputError, load_torch
from core.demo import DigitsAugment
from core.encoders import MLPEncoder, SmallCNN
from core.losses import mean_shifted
from core.training import ContrastiveModule

__all__ = [
    "TabularCorruption", "image_augment", "build_encoder", "load_encoder_checkpoint", "MeanShiftedModule",
    "CompactnessModule", "HeldOutSelection", "embed", "normal_center", "bn_adapted",
]


class TabularCorruption(nn.Module):
    """SCARF-style random feature corruption of (B, D) rows; ``pool`` (N, D) supplies replacement values."""

    def __init__(self, pool: Tensor, rate: float = 0.4, mode: str = "resample") -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"corruption rate must be in [0, 1), got {rate}")
        if mode not in ("resample", "mask"):
            raise ValueError(f"corruption mode must be 'resample' or 'mask', got {mode!r}")
        self.register_buffer("pool", pool.detach().float().clone(), persistent=False)
        self.rate, self.mode = rate, mode

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.pool.shape[1]:
            raise ValueError(f"expected (B, {self.pool.shape[1]}) rows, got {tuple(x.shape)}")
        mask = torch.rand_like(x) < self.rate
        if self.mode == "mask":
            return x.masked_fill(mask, 0.0)
        rows = torch.randint(0, self.pool.shape[0], x.shape, device=x.device)
        donor = self.pool.to(x.device).gather(0, rows)  # donor[i, j] = pool[rows[i, j], j]
        return torch.where(mask, donor, x)


def image_augment(height: int, strength: str = "strong") -> DigitsAugment:
    """Views for small images: the digits augmentation with shift and cutout scaled to the image size.

    ``"strong"`` (pre-training: affine jitter, brightness, 8x8 cutout on 28x28, noise) or ``"mild"``
    (fine-tuning: smaller jitter, no cutout). Fine-tuning on one class must not create views that look like
    another class (a cut-out stroke can turn an 8 into a 3), or the positive pairs teach the encoder to map
    anomaly-like images onto the normal ones.
    """
    s = height / 28.0
    if strength == "mild":
        return DigitsAugment(degrees=10.0, scale=(0.9, 1.1), shift=1.5 * s, brightness=(0.7, 1.3),
                             cutout=0, cutout_p=0.0, noise=0.05)
    if strength != "strong":
        raise ValueError(f"strength must be 'strong' or 'mild', got {strength!r}")
    return DigitsAugment(degrees=15.0, scale=(0.85, 1.15), shift=2.0 * s, brightness=(0.6, 1.4),
                         cutout=max(1, int(round(8 * s))), cutout_p=0.5, noise=0.1)


def build_encoder(kind: str, in_shape: tuple[int, ...], width: int, feature_dim: int,
                  hidden_dims: tuple[int, ...]) -> nn.Module:
    """SmallCNN for (C, H, W) images, MLPEncoder for (D,) rows."""
    if kind == "image":
        return SmallCNN(in_channels=in_shape[0], width=width, out_dim=feature_dim)
    return MLPEncoder(in_shape[0], hidden_dims=tuple(hidden_dims), out_dim=feature_dim, norm="batch")


def load_encoder_checkpoint(encoder: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``encoder`` from a state dict (``.pt``) or a Lightning checkpoint (``.ckpt``).

    The file is read with ``weights_only=True`` (:func:`core.app.load_torch`: tensors and plain containers only).
    Keys may be bare or prefixed ``encoder.`` (as in this project's Lightning modules). A missing, damaged or
    mismatching file raises :class:`core.app.InputError` naming the file (and the first offending keys).
    """
    path = Path(path)
    try:
        obj = load_torch(path)
    except struct.error as e:  # a file that is neither a zip nor a legacy torch pickle (not caught by load_torch)
        raise InputError(f"checkpoint {path} is damaged or not a torch file ({e})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict or a Lightning checkpoint")
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    try:
        result = encoder.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise InputError(f"{path}: does not fit the encoder ({str(e).splitlines()[1].strip()}); check --width / "
                         f"--feature-dim / --hidden-dims") from None
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"{path}: does not fit the encoder (missing {result.missing_keys[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}); check --width / --feature-dim / --hidden-dims")
    for k, v in state.items():
        if torch.is_floating_point(v) and not bool(torch.isfinite(v).all()):
            raise InputError(f"{path}: parameter {k} has NaN or infinite values")
    return encoder


@torch.no_grad()
def embed(encoder: nn.Module, x: np.ndarray | Tensor, normalize: bool = True, batch_size: int = 1024) -> Tensor:
    """Features of ``x`` in eval mode, L2-normalised (:math:`\\phi(x)`) unless ``normalize=False``; (N, D) on CPU."""
    was_training = encoder.training
    encoder.eval()
    x = torch.as_tensor(x)
    out = [encoder(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)]
    out = [F.normalize(o, dim=1) for o in out] if normalize else out
    encoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def bn_adapted(encoder: nn.Module, x_train: np.ndarray, batch_size: int = 256) -> nn.Module:
    """A copy of ``encoder`` whose BatchNorm statistics are re-estimated on ``x_train`` (weights unchanged).

    An ablation: MSC fine-tuning in train mode also moves the BatchNorm running statistics from the
    pre-training pool to the normal class; this isolates that effect from the loss's gradient.
    """
    import copy

    enc = copy.deepcopy(encoder)
    bns = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    enc.train()
    x = torch.as_tensor(x_train)
    for i in range(0, len(x), batch_size):
        if len(x[i:i + batch_size]) > 1:
            enc(x[i:i + batch_size])
    return enc.eval()


def normal_center(encoder: nn.Module, x_train: np.ndarray, normalize_center: bool) -> Tensor:
    """Mean of the normalised features of the normal training data (optionally re-normalised)."""
    c = embed(encoder, x_train).mean(0)
    return F.normalize(c, dim=0) if normalize_center else c


class MeanShiftedModule(ContrastiveModule):
    """MSC fine-tuning of a pre-trained encoder around the fixed ``center`` (see the module docstring).

    Batches are ``(x,)`` of normal training samples; the two views are ``augment(x)`` twice.
    """

    _hparams_ignore = ("encoder", "projection_head", "center", "augment")

    def __init__(self, encoder: nn.Module, center: Tensor, augment: nn.Module, *, temperature: float = 0.25,
                 angular_weight: float = 0.0, freeze_bn: bool = False, **kwargs: Any) -> None:
        super().__init__(encoder, None, **kwargs)
        if not temperature > 0 or not math.isfinite(angular_weight) or angular_weight < 0:
            raise ValueError(f"need temperature > 0 and angular_weight >= 0, got {temperature}, {angular_weight}")
        self.register_buffer("center", center.detach().clone().float())
        self.augment, self.msc_temperature, self.angular_weight = augment, temperature, angular_weight
        self.freeze_bn = freeze_bn

    @property
    def temperature(self) -> float:
        return self.msc_temperature

    def train(self, mode: bool = True) -> MeanShiftedModule:
        """Train mode; with ``freeze_bn`` every BatchNorm layer stays in eval mode (its running statistics are
        kept and not updated; its affine weights still train)."""
        super().train(mode)
        self._freeze_batchnorm()
        return self

    def _freeze_batchnorm(self) -> None:
        if getattr(self, "freeze_bn", False):
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning sets the modules' train/eval flags without calling ``train()``: re-freeze before every step
        self._freeze_batchnorm()

    def msc_loss(self, x: Tensor, gather: bool | None = None) -> Tensor:
        """The MSC loss of two views of the batch ``x`` (``gather=False``: this process's batch only)."""
        z1, z2 = self(torch.cat([self.augment(x), self.augment(x)])).chunk(2)
        return mean_shifted(z1, z2, self.center, temperature=self.msc_temperature,
                            angular_weight=self.angular_weight, gather=gather)

    def contrastive_step(self, batch: Any) -> dict[str, Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        z1, z2 = self(torch.cat([self.augment(x), self.augment(x)])).chunk(2)
        loss = mean_shifted(z1, z2, self.center, temperature=self.msc_temperature,
                            angular_weight=self.angular_weight)
        return {"loss": loss, "z1": z1, "z2": z2}


class HeldOutSelection(L.Callback):
    """Label-free epoch selection for MSC fine-tuning: after every epoch (and before the first), the MSC loss on
    held-out normal samples (fixed views drawn from ``seed``, this process's generators untouched); the encoder
    weights of the lowest loss are kept, and training stops after ``patience`` epochs without a lower one.

    Its state (best loss, epoch, weights, epochs without improvement) is part of every Lightning checkpoint, so a
    resumed fine-tune selects what the uninterrupted one would."""

    def __init__(self, x_holdout: np.ndarray, batch_size: int, patience: int, seed: int) -> None:
        self.x = torch.as_tensor(x_holdout)
        self.batch_size, self.patience, self.seed = max(2, batch_size), patience, seed
        self.best_loss = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, Tensor] | None = None
        self.since_best = 0
        self.history: list[float] = []

    @torch.no_grad()
    def held_out_loss(self, module: MeanShiftedModule) -> float:
        was = module.training
        module.eval()
        total, n = 0.0, 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for i in range(0, len(self.x), self.batch_size):
                xb = self.x[i:i + self.batch_size].to(module.device)
                if len(xb) < 2:
                    continue
                total += float(module.msc_loss(xb, gather=False)) * len(xb)
                n += len(xb)
        module.train(was)
        return total / max(n, 1)

    def _update(self, module: MeanShiftedModule, epoch: int) -> None:
        loss = self.held_out_loss(module)
        self.history.append(loss)
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.since_best = loss, epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in module.encoder.state_dict().items()}
        else:
            self.since_best += 1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.best_state is None:
            self._update(pl_module, 0)
        if self.since_best >= self.patience:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._update(pl_module, trainer.current_epoch + 1)
        if self.since_best >= self.patience:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "best_state": self.best_state,
                "since_best": self.since_best, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss, self.best_epoch = float(state["best_loss"]), int(state["best_epoch"])
        self.best_state, self.since_best = state["best_state"], int(state["since_best"])
        self.history = [float(v) for v in state["history"]]


class CompactnessModule(ContrastiveModule):
    """Compactness fine-tuning: ``mean ||phi(x) - c||^2`` over normal samples (Deep-SVDD-like baseline)."""

    _hparams_ignore = ("encoder", "projection_head", "center")

    def __init__(self, encoder: nn.Module, center: Tensor, **kwargs: Any) -> None:
        kwargs.setdefault("log_diagnostics", False)
        super().__init__(encoder, None, **kwargs)
        self.register_buffer("center", center.detach().clone().float())

    def contrastive_step(self, batch: Any) -> dict[str, Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        phi = F.normalize(self(x), dim=1)
        return {"loss": (phi - self.center).pow(2).sum(1).mean()}
