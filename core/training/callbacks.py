"""Default callbacks and logger of every app: progress bar, resumable checkpoints, CSV logs."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

__all__ = ["checkpoint_dir", "default_callbacks", "csv_logger", "MovableCheckpoint"]


class MovableCheckpoint(ModelCheckpoint):
    """A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose state survives moving the run directory.

    Lightning drops ``best_model_score``, the top-k bookkeeping and ``last_model_path`` when the directory a
    checkpoint was saved from differs from the current one, and keeps ``best_model_path`` pointing into the old
    place: a run moved (or copied) elsewhere and resumed would then overwrite its best checkpoint with any later
    epoch, or load a file that no longer exists. Here paths under the old directory are re-rooted under the new one
    (a path whose file is not there is dropped, with its score) and the state is restored as if never moved. Its
    state is stored under ModelCheckpoint's key, so checkpoints of either class resume into the other."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def load_state_dict(self, state_dict):
        old = state_dict.get("dirpath")
        if old is not None and self.dirpath is not None and old != self.dirpath:
            state_dict = dict(state_dict, dirpath=self.dirpath)

            def moved(path):
                if not path:
                    return path
                p = Path(path)
                try:
                    new = Path(self.dirpath) / p.relative_to(old)
                except ValueError:
                    return path  # not under the old directory: left as it is
                return str(new) if new.exists() else ""

            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state_dict:
                    state_dict[key] = moved(state_dict[key])
            if "best_k_models" in state_dict:
                state_dict["best_k_models"] = {m: v for k, v in state_dict["best_k_models"].items()
                                               if (m := moved(k))}
            if not state_dict.get("best_model_path"):
                state_dict["best_model_score"] = None
        super().load_state_dict(state_dict)


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run keeps its checkpoints: ``run_dir/checkpoints`` (``last.ckpt`` is the resume point)."""
    return Path(run_dir) / "checkpoints"


def default_callbacks(
    run_dir: str | Path,
    *,
    every_n_train_steps: int | None = None,
    every_n_epochs: int | None = None,
    save_top_k: int = -1,
    progress_bar: bool = True,
    checkpoint: bool = True,
    refresh_rate: int = 10,
) -> list[Callback]:
    """Progress bar and checkpointing for a run living in ``run_dir``.

    Checkpoints go to ``run_dir/checkpoints``: ``last.ckpt`` (rewritten at every save, the point
    :func:`~core.training.fit_with_resume` resumes from) plus one ``epoch=E-step=S.ckpt`` per save. With
    the default ``save_top_k=-1`` no finished checkpoint is ever deleted.

    Args:
        run_dir: the run's directory.
        every_n_train_steps: save every this many optimiser steps (mid-epoch checkpoints); mutually
            exclusive with ``every_n_epochs``.
        every_n_epochs: save every this many epochs; the default when neither is given is 1.
        save_top_k: how many step/epoch checkpoints to keep (``-1``: all).
        progress_bar: include a :class:`~lightning.pytorch.callbacks.TQDMProgressBar`.
        checkpoint: include the :class:`~lightning.pytorch.callbacks.ModelCheckpoint`.
        refresh_rate: progress-bar refresh period in batches.
    """
    if every_n_train_steps is not None and every_n_epochs is not None:
        raise ValueError("every_n_train_steps and every_n_epochs are mutually exclusive")
    for name, v in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    callbacks: list[Callback] = []
    if progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=refresh_rate))
    if checkpoint:
        callbacks.append(
            MovableCheckpoint(
                dirpath=checkpoint_dir(run_dir),
                filename="{epoch}-{step}",
                save_last=True,
                save_top_k=save_top_k,
                every_n_train_steps=every_n_train_steps,
                every_n_epochs=every_n_epochs if every_n_train_steps is None else None,
                # save at the end of the training epoch even when validation runs less often (or never):
                # otherwise Lightning only checkpoints after validation and a kill loses finished epochs
                save_on_train_epoch_end=True,
            )
        )
    return callbacks


def csv_logger(run_dir: str | Path, name: str = "logs") -> CSVLogger:
    """A :class:`~lightning.pytorch.loggers.CSVLogger` writing ``run_dir/<name>/version_K/metrics.csv``.

    Each (re)start of a run gets the next ``version_K``, so the logs of an interrupted attempt are kept
    rather than overwritten.
    """
    return CSVLogger(save_dir=str(run_dir), name=name)
