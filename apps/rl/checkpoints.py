"""Checkpoints of the two Fabric loops (tensors and plain containers only) and the few collectives they need.

``save_rotating(path, obj)`` keeps the previous checkpoint as ``<name>.prev.pt`` before writing the new one
atomically; ``load_newest_intact(path)`` loads ``path`` or, when it is damaged, the previous one, with a one-line
warning. ``average_gradients`` registers an optimiser pre-step hook that averages the gradients of the
optimiser's parameters over every rank: the agent makes three backward passes per update through its
sub-modules (critic, actor, auxiliary loss), none of them through the wrapper's ``forward``, so DDP's own
reducer never fires; the hook gives the same mean gradient with any strategy name (``ddp`` included).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.app import CheckpointError, is_main_process, load_torch, save_torch
from core.app.hardware import global_rank
from core.negatives.distributed import world_size

__all__ = ["prev_path", "save_rotating", "load_newest_intact", "average_gradients", "gather_to_main", "all_agree",
           "check_in_sync"]


def prev_path(path: Path) -> Path:
    """``last.pt`` -> ``last.prev.pt``."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_rotating(path: Path, obj: Any) -> None:
    """Keep the current ``path`` as :func:`prev_path`, then write ``obj`` to ``path`` atomically (main process
    only)."""
    if not is_main_process():
        return
    path = Path(path)
    if path.is_file():
        os.replace(path, prev_path(path))
    save_torch(path, obj)


def load_newest_intact(path: Path, check: Callable[[Any], None] | None = None,
                       warn: Callable[[str], None] | None = None) -> tuple[Any, Path] | None:
    """``(checkpoint, its path)`` of ``path``, or of its previous version when ``path`` is damaged (or ``check``
    rejects it with :class:`CheckpointError`), warning in one line; ``None`` when neither exists. Raises
    :class:`CheckpointError` when every candidate is damaged."""
    path = Path(path)
    warn = warn or (lambda msg: print(msg, file=sys.stderr) if is_main_process() else None)
    candidates = [p for p in (path, prev_path(path)) if p.is_file()]
    errors = []
    for p in candidates:
        try:
            obj = load_torch(p)
            if check is not None:
                check(obj)
        except CheckpointError as e:
            errors.append(str(e))
            if p == path and len(candidates) > 1:
                warn(f"warning: {e}; resuming from the previous checkpoint {prev_path(path).name}")
            continue
        if p != path and not errors:
            warn(f"warning: {path.name} is missing; resuming from the previous checkpoint {p.name}")
        return obj, p
    if errors:
        raise CheckpointError("; ".join(errors) + "; delete the run's checkpoints to start over")
    return None


# ---- collectives (no-ops in one process) -------------------------------------------------------------------
def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on the main process (a list by rank); ``None`` on the others."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if global_rank() == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def all_agree(flag: bool, device: torch.device, how: str = "all") -> bool:
    """``flag`` combined over the ranks: ``how='all'`` (every rank's is true) or ``'any'``."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN if how == "all" else
                                 torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Before each ``optimizer.step()``, replace the gradients of its parameters by their mean over the ranks
    (one flattened all-reduce). No-op in one process."""
    if world_size() == 1:
        return

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world_size()
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    optimizer.register_step_pre_hook(hook)


def check_in_sync(module: torch.nn.Module, what: str) -> None:
    """Raise ``RuntimeError`` when ``module``'s parameters differ between the ranks (they must not: every rank
    applies the same averaged gradients). No-op in one process."""
    if world_size() == 1:
        return
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    ref = flat.clone()
    torch.distributed.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
    if diff.item() > 0:
        raise RuntimeError(f"{what}: the ranks' weights differ by up to {diff.item():.3g} after training")
