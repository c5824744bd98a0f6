"""Checkpoint writes that a kill cannot half-finish."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temporary file in the same directory, fsync it, then ``os.replace`` it.

    Lightning's own writer stages the bytes in the system temporary directory and moves them into place,
    which is a plain copy (not atomic) when that directory is on another file system, e.g. a local
    ``/tmp`` and a network run directory. Renaming within one directory is atomic on POSIX, so a run
    killed mid-write leaves the previous ``last.ckpt`` intact. Remote paths (``s3://`` ...) fall back to
    Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
