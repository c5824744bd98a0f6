"""Fit a model, resuming from the run directory's last checkpoint when there is one."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from core.training.callbacks import checkpoint_dir, csv_logger, default_callbacks
from core.training.checkpoint_io import AtomicCheckpointIO
from core.training.rng import StepSeedCallback, with_epoch_shuffle

__all__ = ["DeadlineCallback", "find_resume_checkpoint", "fit_with_resume", "stopped_by_deadline"]


def _step_of(path: Path) -> tuple[int, float]:
    m = re.search(r"step=(\d+)", path.name)
    return (int(m.group(1)) if m else -1, path.stat().st_mtime)


def find_resume_checkpoint(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The checkpoint a run resumes from: ``run_dir/checkpoints/last.ckpt`` when it loads, else the newest intact
    ``*.ckpt`` beside it (by step, then time), with a one-line warning naming the damaged file; ``None`` when the
    run has no checkpoint."""
    from core.app.files import CheckpointError, load_torch

    folder = checkpoint_dir(run_dir)
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"), key=_step_of, reverse=True) \
        if folder.is_dir() else []
    candidates = ([last] if last.is_file() else []) + others
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    damaged: list[str] = []
    for path in candidates:
        try:
            load_torch(path)
        except CheckpointError:
            damaged.append(path.name)
            continue
        if damaged:
            warn(f"warning: damaged checkpoint(s) {', '.join(damaged)} in {folder}; resuming from {path.name}")
        return path
    if damaged:
        warn(f"warning: every checkpoint in {folder} is damaged ({', '.join(damaged)}); starting afresh")
    return None


class DeadlineCallback(Callback):
    """Stop training at the first epoch end past the runner's ``--max-minutes`` deadline (every rank agrees).

    Lightning's ``max_time`` stops mid-epoch and a resumed run then skips the rest of that epoch; stopping at an
    epoch end keeps resume exact, at the cost of overrunning the cap by up to one epoch per fit (every fit trains
    at least one epoch, so a re-run always makes progress). ``stopped`` tells whether
    this fit ended because of the deadline (:func:`stopped_by_deadline`)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.stopped = False

    def _check(self, trainer: Any) -> None:
        import time

        last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
        last_step = trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step
        if last_epoch or last_step:  # the fit is done anyway: not stopped by the deadline (same on every rank)
            return
        late = time.monotonic() >= self.deadline
        late = bool(trainer.strategy.reduce_boolean_decision(late, all=False))
        if late and not trainer.should_stop:
            from core.app.hardware import note_deadline_stop

            trainer.should_stop = True
            self.stopped = True
            note_deadline_stop()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._check(trainer)


def stopped_by_deadline(trainer: L.Trainer) -> bool:
    """True when the last fit of ``trainer`` was stopped by ``--max-minutes`` (re-run with a larger cap to
    continue)."""
    return any(isinstance(c, DeadlineCallback) and c.stopped for c in trainer.callbacks)


def _fit_data_kwargs(data: Any) -> dict[str, Any]:
    if isinstance(data, L.LightningDataModule):
        return {"datamodule": data}
    if isinstance(data, Mapping):
        unknown = set(data) - {"train_dataloaders", "val_dataloaders", "datamodule"}
        if unknown:
            raise ValueError(f"unknown data keys {sorted(unknown)}; use train_dataloaders / val_dataloaders")
        return dict(data)
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError("pass loaders as (train_loader, val_loader); a single loader on its own")
        return {"train_dataloaders": data[0], "val_dataloaders": data[1]}
    return {"train_dataloaders": data}


def fit_with_resume(
    trainer_kwargs: Mapping[str, Any],
    module: L.LightningModule,
    datamodule_or_loaders: Any,
    run_dir: str | Path,
    *,
    checkpoint_every_n_steps: int | None = None,
    extra_callbacks: Sequence[Callback] = (),
) -> L.Trainer:
    """Build a :class:`lightning.Trainer` for ``run_dir`` and fit, resuming if the run was interrupted.

    If ``run_dir/checkpoints/last.ckpt`` exists, training continues from it (``ckpt_path``): weights,
    optimiser and scheduler state, and the loop counters (``global_step``, epoch), so ``max_steps`` /
    ``max_epochs`` count the whole run, not the attempt. Otherwise it starts fresh. A run that already
    reached its target re-loads the checkpoint and returns at once.

    The hardware of the running verb (:func:`core.app.hardware.current`: accelerator, devices, nodes, strategy,
    precision, ``sync_batchnorm`` when distributed; ``--max-minutes`` as a :class:`DeadlineCallback`) fills the
    Trainer arguments that ``trainer_kwargs`` does not set. Every training batch seeds the generators from
    (seed, step, rank)
    (:class:`~core.training.rng.StepSeedCallback`) and a shuffling loader's order depends on (seed, epoch) only,
    so a resumed run continues exactly as the uninterrupted one would; checkpoints load with
    ``weights_only=True``; a damaged ``last.ckpt`` falls back to the newest intact checkpoint
    (:func:`find_resume_checkpoint`).

    Unless given in ``trainer_kwargs``: ``default_root_dir=run_dir``, ``callbacks=default_callbacks(...)``
    (progress bar and checkpoints in ``run_dir/checkpoints``), ``logger=csv_logger(run_dir)`` and
    ``plugins=[AtomicCheckpointIO()]``. Callbacks you pass replace the defaults, so include a
    ``ModelCheckpoint(dirpath=checkpoint_dir(run_dir), save_last=True)`` if the run should be resumable.

    Args:
        trainer_kwargs: keyword arguments of :class:`lightning.Trainer`.
        module: the LightningModule.
        datamodule_or_loaders: a LightningDataModule, a train DataLoader, a ``(train, val)`` pair, or a
            dict of ``train_dataloaders`` / ``val_dataloaders``.
        run_dir: the run's directory.
        checkpoint_every_n_steps: checkpoint every this many steps instead of every epoch (default
            callbacks only).
        extra_callbacks: appended to the callbacks (the defaults or those in ``trainer_kwargs``).

    Returns:
        The fitted trainer (``trainer.global_step``, ``trainer.callback_metrics``, ...).
    """
    from core.app.hardware import current

    run_dir = Path(run_dir)
    kwargs = {**current().trainer_kwargs(), **dict(trainer_kwargs)}
    kwargs.setdefault("default_root_dir", str(run_dir))
    if "callbacks" not in kwargs:
        kwargs["callbacks"] = default_callbacks(
            run_dir,
            every_n_train_steps=checkpoint_every_n_steps,
            progress_bar=kwargs.get("enable_progress_bar", True) is not False,
            checkpoint=kwargs.get("enable_checkpointing", True) is not False,
        )
    kwargs["callbacks"] = list(kwargs["callbacks"] or []) + list(extra_callbacks)
    if not any(isinstance(c, StepSeedCallback) for c in kwargs["callbacks"]):
        kwargs["callbacks"].append(StepSeedCallback())
    hardware = current()
    if hardware.deadline is not None and "max_time" not in kwargs:
        kwargs["callbacks"].append(DeadlineCallback(hardware.deadline))
    if kwargs.get("logger") in (None, True):
        kwargs["logger"] = csv_logger(run_dir)
    if not kwargs.get("plugins"):
        kwargs["plugins"] = [AtomicCheckpointIO()]
    trainer = L.Trainer(**kwargs)
    data_kwargs = _fit_data_kwargs(datamodule_or_loaders)
    if not current().distributed and "train_dataloaders" in data_kwargs:  # DDP: Lightning's sampler, epoch-seeded
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        data_kwargs["train_dataloaders"] = with_epoch_shuffle(data_kwargs["train_dataloaders"], seed)
    trainer.fit(module, ckpt_path=find_resume_checkpoint(run_dir), weights_only=True, **data_kwargs)
    return trainer
