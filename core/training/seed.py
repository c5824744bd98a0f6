"""Seeding for reproducible runs."""

from __future__ import annotations

import os

import lightning as L
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int, *, deterministic: bool = False, verbose: bool = False) -> int:
    """Seed Python, NumPy and torch (and DataLoader workers) through :func:`lightning.seed_everything`.

    Args:
        seed: the seed.
        deterministic: also ask torch for deterministic kernels (``torch.use_deterministic_algorithms``
            with ``warn_only=True``, cuDNN benchmark off, ``CUBLAS_WORKSPACE_CONFIG`` set). Slower on GPU;
            equivalent to ``Trainer(deterministic=True)`` for code that runs outside a Trainer.
        verbose: let Lightning print "Seed set to ...".

    Returns:
        The seed used.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    seed = L.seed_everything(seed, workers=True, verbose=verbose)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return seed
