"""The base LightningModule of contrastive models, and SimCLR-style two-view training on top of it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from core.metrics.representation import alignment, uniformity

__all__ = ["ContrastiveModule", "SimCLRModule"]

_OPTIMIZERS = ("adamw", "adam", "sgd")
_SCHEDULERS = (None, "cosine", "constant")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    r"""Learning-rate multiplier: linear warm-up, then half-cosine decay to ``min_lr_ratio``.

    .. math::
        m(s) = \begin{cases} (s+1)/W & s < W \\
        r + (1-r)\,\tfrac12\big(1 + \cos(\pi\,\tfrac{s-W}{\max(1, T-W)})\big) & s \ge W \end{cases}

    (Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017; the warm-up
    of Goyal et al., "Accurate, Large Minibatch SGD", 2017.)
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ContrastiveModule(L.LightningModule):
    """Base module: an encoder ``f``, a projection head ``g``, and the shared training plumbing.

    Subclasses implement :meth:`contrastive_step`, which maps a batch to a dict with the scalar ``loss``
    and, when the model has two views, the projected embeddings ``z1`` and ``z2`` (row ``i`` of each is a
    positive pair). This class then

    * logs ``train/loss`` (``val/loss`` in validation), ``train/temperature`` when :attr:`temperature`
      is not ``None``, the learning rate, and, on the batch's detached projections, ``train/alignment``
      and ``train/uniformity`` (Wang & Isola 2020; see :mod:`core.metrics`; uniformity on the first
      :attr:`diagnostics_max_rows` rows);
    * configures AdamW / Adam / SGD with an optional warm-up + cosine schedule stepped every batch
      (total length from ``trainer.estimated_stepping_batches``).

    ``forward(x)`` returns the representation ``h = f(x)`` (what downstream tasks and linear probes use);
    :meth:`project` returns ``z = g(f(x))`` (what the loss sees). All constructor arguments except the
    modules are saved as hyperparameters.

    Args:
        encoder: ``f``; subclasses may build it themselves and pass it here.
        projection_head: ``g``; identity when ``None``.
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        lr: peak learning rate.
        weight_decay: decoupled (AdamW) or L2 (Adam, SGD) weight decay.
        momentum: SGD momentum.
        scheduler: ``"cosine"`` (warm-up + cosine), ``"constant"`` / ``None`` (fixed learning rate).
        warmup_steps: linear warm-up steps of the cosine schedule.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        log_diagnostics: log alignment and uniformity of the batch's projections.
    """

    #: constructor arguments not saved as hyperparameters (modules and callables; subclasses may extend)
    _hparams_ignore: tuple[str, ...] = ("encoder", "projection_head")
    #: uniformity is logged on at most this many rows of the batch (its cost is quadratic)
    diagnostics_max_rows: int = 1024

    def __init__(
        self,
        encoder: nn.Module | None = None,
        projection_head: nn.Module | None = None,
        *,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: str | None = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        log_diagnostics: bool = True,
    ) -> None:
        super().__init__()
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
        if scheduler not in _SCHEDULERS:
            raise ValueError(f"scheduler must be one of {_SCHEDULERS}, got {scheduler!r}")
        if not lr > 0 or weight_decay < 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got lr={lr}, "
                f"weight_decay={weight_decay}, warmup_steps={warmup_steps}, min_lr_ratio={min_lr_ratio}"
            )
        self.save_hyperparameters(ignore=list(self._hparams_ignore))
        # kept as attributes too: under LightningCLI, hparams hold only the CLI-visible (subclass) arguments
        self.optim_config = dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                 scheduler=scheduler, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
        self.log_diagnostics = log_diagnostics
        self.encoder = encoder
        self.projection_head = projection_head if projection_head is not None else nn.Identity()

    # ----------------------------------------------------------------------------------------- model
    def forward(self, x: Tensor) -> Tensor:
        """Representation ``h = f(x)``."""
        if self.encoder is None:
            raise RuntimeError(f"{type(self).__name__} has no encoder")
        return self.encoder(x)

    def project(self, x: Tensor) -> Tensor:
        """Projection ``z = g(f(x))``, the input of the contrastive loss."""
        return self.projection_head(self(x))

    @property
    def temperature(self) -> Tensor | float | None:
        """The loss temperature to log, or ``None`` for losses without one."""
        return None

    def contrastive_step(self, batch: Any) -> dict[str, Tensor]:
        """Map a batch to ``{"loss": scalar, "z1": (B, D), "z2": (B, D)}`` (``z1``/``z2`` optional)."""
        raise NotImplementedError(f"{type(self).__name__} must implement contrastive_step(batch)")

    # -------------------------------------------------------------------------------------- training
    def _log_step(self, stage: str, out: Mapping[str, Tensor]) -> Tensor:
        if "loss" not in out:
            raise KeyError("contrastive_step must return a dict with a 'loss' entry")
        loss = out["loss"]
        z1, z2 = out.get("z1"), out.get("z2")
        batch_size = int(z1.shape[0]) if z1 is not None else None
        on_step = stage == "train"
        kw = dict(on_step=on_step, on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)
        self.log(f"{stage}/loss", loss.detach(), prog_bar=True, **kw)
        temperature = self.temperature
        if temperature is not None:
            self.log(f"{stage}/temperature", float(temperature), **kw)
        if stage == "train" and self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], **kw)
        if self.log_diagnostics and z1 is not None and z2 is not None:
            with torch.no_grad():
                a, b = z1.detach().float(), z2.detach().float()
                if a.shape == b.shape and a.ndim == 2 and torch.isfinite(a).all() and torch.isfinite(b).all():
                    self.log(f"{stage}/alignment", alignment(a, b), **kw)
                    a, b = a[: self.diagnostics_max_rows], b[: self.diagnostics_max_rows]  # pdist is O(B^2)
                    if a.shape[0] >= 2:
                        self.log(f"{stage}/uniformity", (uniformity(a) + uniformity(b)) / 2, **kw)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._log_step("train", self.contrastive_step(batch))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._log_step("val", self.contrastive_step(batch))

    def configure_optimizers(self) -> Any:
        hp = SimpleNamespace(**self.optim_config)
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler in (None, "constant"):
            return opt
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("the cosine schedule needs a finite run: set trainer max_epochs or max_steps")
        total = int(total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, total, hp.warmup_steps, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SimCLRModule(ContrastiveModule):
    r"""Two views, one encoder, NT-Xent (Chen et al., "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020).

    .. math::
        z^{(1)} = g(f(t_1(x))),\quad z^{(2)} = g(f(t_2(x))),\quad
        L = \operatorname{NT\text{-}Xent}(z^{(1)}, z^{(2)}; \tau)

    Batches: with ``augment`` set, ``x`` or ``(x, ...)`` and the two views are ``augment(x)`` twice (on
    the batch's device, so augmentation runs on the GPU when training does); without it, ``(x1, x2, ...)``
    already holds the two views.

    Args:
        encoder, projection_head: ``f`` and ``g``.
        temperature: :math:`\tau` (initial value if learnable).
        learn_temperature: learn :math:`\log \tau` (clamped to [0.01, 1]) as in CLIP.
        augment: callable ``(B, ...) -> (B, ...)`` drawing one random view per sample.
        gather: under DDP, ``True`` (all-gather) or ``"ring"`` takes negatives from every GPU's batch, with
            gradients flowing back to the rank that produced them (see :func:`core.losses.nt_xent`).
        tile_size: compute the loss in tiles (memory ~ B x tile instead of B x 2B); ``None`` is dense.
        **kwargs: optimiser settings of :class:`ContrastiveModule`.
    """

    _hparams_ignore = ("encoder", "projection_head", "augment")

    def __init__(
        self,
        encoder: nn.Module,
        projection_head: nn.Module | None = None,
        *,
        temperature: float = 0.5,
        learn_temperature: bool = False,
        augment: Callable[[Tensor], Tensor] | None = None,
        gather: bool | str | None = None,
        tile_size: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder, projection_head, **kwargs)
        self.gather, self.tile_size = gather, tile_size
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.augment = augment
        if learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        else:
            self.register_buffer("log_temperature", torch.tensor(math.log(temperature)), persistent=False)

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.clamp(math.log(0.01), 0.0).exp()

    def contrastive_step(self, batch: Any) -> dict[str, Tensor]:
        from core.losses import nt_xent

        if self.augment is not None:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x1, x2 = self.augment(x), self.augment(x)
        else:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("without `augment`, a batch must be (view1, view2, ...)")
            x1, x2 = batch[0], batch[1]
        z = self.project(torch.cat([x1, x2]))  # one pass: BatchNorm sees both views
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, temperature=self.temperature, gather=self.gather, tile_size=self.tile_size)
        return {"loss": loss, "z1": z1, "z2": z2}
