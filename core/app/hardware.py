"""Hardware flags -> Lightning Trainer / Fabric arguments, the process launch, and the process-wide defaults that
make a multi-process run correct with no app code: negatives gathered from every rank and BatchNorm synchronised.

The runner launches the processes once, at the start of a verb (Lightning's own launcher: the command is started
again in one process per extra device, with ``LOCAL_RANK`` / ``WORLD_SIZE`` set; ``torchrun`` or SLURM start them
instead on several nodes). Every Trainer or Fabric made afterwards in these processes joins the same process group.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Hardware", "current", "use", "global_rank", "is_main_process", "barrier", "note_deadline_stop",
           "deadline_stopped"]

_CURRENT: Hardware | None = None
_STOPPED_BY_DEADLINE: list[bool] = [False]


def note_deadline_stop() -> None:
    """Record that ``--max-minutes`` stopped some training of the running verb (the runner then exits with
    :data:`CAPPED`). Lightning fits record it through :class:`core.training.resume.DeadlineCallback`; a custom loop
    (Fabric) calls this when it stops on the deadline."""
    _STOPPED_BY_DEADLINE[0] = True


def deadline_stopped() -> bool:
    return _STOPPED_BY_DEADLINE[0]


@dataclass(frozen=True)
class Hardware:
    """Where a verb trains: Lightning's ``accelerator`` / ``devices`` / ``num_nodes`` / ``strategy`` /
    ``precision``, and an optional wall-clock ``deadline`` (``time.monotonic()`` seconds) for its training."""

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deadline: float | None = None

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def on_cpu(self) -> bool:
        return self.accelerator == "cpu" or (self.accelerator == "auto" and not torch.cuda.is_available())

    @property
    def sync_batchnorm(self) -> bool:
        """Synchronise BatchNorm statistics across ranks: when distributed on GPUs (torch's SyncBatchNorm has no
        CPU kernel; on CPU each process keeps its own statistics)."""
        return self.distributed and not self.on_cpu

    def resolved_strategy(self) -> str:
        return "ddp" if self.strategy == "auto" and self.distributed else self.strategy

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`lightning.Trainer` for this hardware (plus ``sync_batchnorm`` when
        distributed on GPUs). The deadline is not Lightning's ``max_time``, which stops mid-epoch and then counts
        the cut epoch as done on resume: :class:`core.training.resume.DeadlineCallback` stops at an epoch end."""
        kw: dict[str, Any] = dict(accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes,
                                  strategy=self.resolved_strategy(), precision=self.precision)
        if self.sync_batchnorm:
            kw["sync_batchnorm"] = True
        return kw

    def fabric_kwargs(self) -> dict[str, Any]:
        return dict(accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes,
                    strategy=self.resolved_strategy(), precision=self.precision)

    def remaining_seconds(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def fabric(self) -> Any:
        """A launched :class:`lightning.Fabric` for this hardware (joins the runner's process group)."""
        from lightning import Fabric

        fabric = Fabric(**self.fabric_kwargs())
        fabric.launch()
        return fabric

    def setup_module(self, fabric: Any, module: torch.nn.Module, *optimizers: Any) -> Any:
        """``fabric.setup`` with BatchNorm layers converted to SyncBatchNorm when distributed on GPUs."""
        if self.sync_batchnorm:
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return fabric.setup(module, *optimizers)


def current() -> Hardware:
    """The hardware of the running verb (one CPU process outside the runner)."""
    return _CURRENT if _CURRENT is not None else Hardware(accelerator="cpu")


@contextmanager
def use(hardware: Hardware) -> Iterator[Hardware]:
    """Make ``hardware`` the process's current hardware; when distributed, core's losses gather negatives from
    every rank by default (``gather=None``) while inside."""
    from core.negatives.distributed import default_gather

    global _CURRENT
    previous = _CURRENT
    _CURRENT = hardware
    _STOPPED_BY_DEADLINE[0] = False
    try:
        with default_gather(hardware.distributed):
            yield hardware
    finally:
        _CURRENT = previous


def global_rank() -> int:
    """This process's rank: from the process group when it exists, else from the launcher's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * current().devices + local


def is_main_process() -> bool:
    """True on global rank 0 (the process that writes run directories and reports)."""
    return global_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
