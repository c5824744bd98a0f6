"""Random-number-generator state in checkpoints, so that a resumed run continues exactly where it stopped."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["capture_rng_state", "restore_rng_state", "seed_all", "step_seed", "StepSeedCallback", "EpochShuffleSampler",
           "with_epoch_shuffle"]


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's (CPU and CUDA) generators as tensors and plain containers
    (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of optimiser step ``step`` on ``rank`` of a run seeded with ``seed`` (a 63-bit mix)."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + int(rank) * 0x94D049BB133111EB) \
        & ((1 << 64) - 1)
    x ^= x >> 31
    return x & ((1 << 63) - 1)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every device)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class StepSeedCallback(Callback):
    """Seed every generator at the start of each training batch from ``(seed, global_step, rank)``.

    Dropout, augmentation and noise then depend on the step only, not on what ran before it, so a run resumed
    from any checkpoint (end of epoch or mid-epoch) draws exactly what the uninterrupted run drew; each rank of a
    multi-process run draws its own masks. (Restoring a saved generator state is not enough: Lightning creates the
    data iterator of a resumed run at another point, and that creation draws from the global generator.) The
    data order must depend on (seed, epoch) only: :func:`~core.training.fit_with_resume` gives shuffling loaders
    an :class:`EpochShuffleSampler`, and under DDP Lightning's distributed sampler is seeded by epoch.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        import os

        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed_all(step_seed(seed, trainer.global_step * max(1, trainer.accumulate_grad_batches) + batch_idx
                           % max(1, trainer.accumulate_grad_batches), trainer.global_rank))


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A shuffled order that is a function of ``(seed, epoch)`` only (Lightning calls ``set_epoch``), so a resumed
    run draws the same order as an uninterrupted one."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def with_epoch_shuffle(loader: Any, seed: int) -> Any:
    """``loader`` with its ``RandomSampler`` (``shuffle=True``) replaced by an :class:`EpochShuffleSampler`, so its
    order depends on (seed, epoch) only; any other loader is returned as it is."""
    from torch.utils.data import DataLoader, RandomSampler

    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, RandomSampler):
        return loader
    if loader.sampler.replacement or loader.sampler._num_samples is not None:
        return loader
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=EpochShuffleSampler(len(loader.dataset), seed),
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        drop_last=loader.drop_last, timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers, prefetch_factor=loader.prefetch_factor if loader.num_workers
        else None)
