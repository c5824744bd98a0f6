"""The Lightning glue every app reuses.

- :class:`ContrastiveModule` — base LightningModule (optimiser + schedule, logging of loss, temperature,
  alignment, uniformity); :class:`SimCLRModule` — two-view NT-Xent training on top of it.
- :func:`default_callbacks`, :func:`csv_logger` — progress bar, resumable checkpoints, CSV logs;
  :class:`MovableCheckpoint` keeps its best score when the run directory is moved.
- :func:`fit_with_resume` — fit, continuing from ``run_dir/checkpoints/last.ckpt`` when it exists.
- :func:`seed_everything` — reproducible runs.
- :class:`StepSeedCallback`, :class:`EpochShuffleSampler` — exact resume; the app runner is :mod:`core.app`.
"""

from core.training.callbacks import MovableCheckpoint, checkpoint_dir, csv_logger, default_callbacks
from core.training.checkpoint_io import AtomicCheckpointIO
from core.training.module import ContrastiveModule, SimCLRModule, warmup_cosine
from core.training.resume import find_resume_checkpoint, fit_with_resume, stopped_by_deadline
from core.training.seed import seed_everything

__all__ = [
    "ContrastiveModule",
    "SimCLRModule",
    "warmup_cosine",
    "default_callbacks",
    "csv_logger",
    "checkpoint_dir",
    "MovableCheckpoint",
    "AtomicCheckpointIO",
    "find_resume_checkpoint",
    "fit_with_resume",
    "stopped_by_deadline",
    "seed_everything",
]
