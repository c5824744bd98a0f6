"""The one place that decides how a loss call executes: dense or tiled, and over whose candidates.

Every loss that takes ``tile_size=`` and ``gather=`` turns them into an :class:`ExecutionMode` with
:func:`execution_mode` once, at its entry (before any collective, so a bad value raises on every rank through
:func:`core.negatives.distributed.agree_on_input_errors`), and hands the mode to the engine
(:func:`core.losses.engine.reduce_pairs` / ``run_contrast`` ``mode=``), which runs it:

* ``tile_size`` -- ``None`` (dense), ``"auto"``, an int or a (rows, cols) pair: validated by
  :func:`check_tile_size`, turned into tiles by :func:`resolve_tile_size`; an :class:`ExecutionMode` resolves the
  tiles of each pair-matrix shape once and reuses them, so the passes of one call (e.g. ``info_nce(top_k=)``'s
  threshold pass and its loss pass) agree even under ``"auto"``;
* ``gather`` -- ``False``, ``True`` (all-gather with gradient), ``"ring"`` (shards passed around the ranks) or
  ``None`` (the default of :func:`default_gather`): validated and resolved by :func:`resolve_gather`;
* the restrictions of the modes, checked by :meth:`ExecutionMode.require` with one message each: the ring
  carries no extra candidates (a queue) and no column statistics; fused column statistics (the one-pass
  symmetric InfoNCE) are single-process only; a loss may refuse the ring altogether.

:func:`core.negatives.pair_reduce` and :func:`core.negatives.ring_pair_reduce` accept either a raw ``tile_size``
or an :class:`ExecutionMode` and go through the same functions.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = [
    "AUTO_MEMORY_SHARE", "DEFAULT_TILE", "DEFAULT_TILE_CUDA", "DENSE_BUFFERS", "GATHER_MODES", "SMALL_TILE",
    "ExecutionMode", "available_memory_bytes", "check_gather", "check_ring", "check_tile_size", "default_gather",
    "default_tile", "execution_mode", "resolve_gather", "resolve_tile_size", "world_size",
]

#: the accepted values of ``gather`` once resolved
GATHER_MODES = (False, True, "ring")


#: tile used by ``tile_size="auto"`` when the dense pass does not fit (rows, cols): large enough that the
#: per-tile overhead is small on CPU, small enough that tiled memory at B = 16384 stays a few % of dense.
DEFAULT_TILE = (1024, 8192)
#: the same on a GPU, where small tiles leave the device launch-bound: on an H200 the tiled pass took 1.8-2x less
#: time with 1024 x 8192 tiles than with 1024 x 4096 (B = 65536 and 262144), so CUDA gets 4x larger tiles
#: (256 MB of fp32 logits per tile; still < 1 % of a dense pass at B = 65536).
DEFAULT_TILE_CUDA = (4096, 16384)
#: B x N-sized buffers a dense pass keeps alive at its peak (measured 2.9-4.9 for the losses here, fp32, on the
#: CPU and on an H200 alike: CLIP 2.9, NT-Xent 2.9, SupCon 3.4-3.6, SigLIP 4.8).
DENSE_BUFFERS = 6
#: share of the free memory ``"auto"`` lets a dense pass use: half on the CPU, where running out kills the
#: process (and other work on the machine), 80 % of a GPU's free memory, where it raises a catchable error.
AUTO_MEMORY_SHARE = {"cpu": 0.5, "cuda": 0.8}


def available_memory_bytes(device: torch.device | None = None) -> int:
    """Free memory of ``device``: on CUDA the driver's free memory plus what PyTorch's caching allocator holds
    but does not use (without it, the memory a first dense pass left cached would make every later call look
    short of memory and switch to tiles: measured on an H200), ``MemAvailable`` of /proc/meminfo on the CPU
    (8 GiB assumed where it cannot be read)."""
    if device is not None and device.type == "cuda":
        cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached_unused))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def default_tile(device: torch.device | None = None) -> tuple[int, int]:
    """The tile ``"auto"`` uses on ``device`` when the dense pass does not fit."""
    return DEFAULT_TILE_CUDA if device is not None and device.type == "cuda" else DEFAULT_TILE


def resolve_tile_size(
    tile_size: int | str | tuple[int, int] | None, n_rows: int, n_cols: int, dtype: torch.dtype,
    memory_budget_bytes: int | None = None, device: torch.device | None = None,
) -> tuple[int, int] | None:
    """Turn the user's ``tile_size`` into (row_tile, col_tile), or ``None`` for dense.

    ``"auto"`` picks dense whenever the dense pass fits (``DENSE_BUFFERS`` buffers of n_rows x n_cols) in
    ``memory_budget_bytes`` (default: :data:`AUTO_MEMORY_SHARE` of the memory available now on ``device``), so
    nobody pays the recomputation cost for nothing; otherwise :func:`default_tile` for the device.
    """
    check_tile_size(tile_size)
    if tile_size is None:
        return None
    if isinstance(tile_size, str):
        kind = device.type if device is not None else "cpu"
        if memory_budget_bytes is not None:
            budget = memory_budget_bytes
        else:
            budget = int(available_memory_bytes(device) * AUTO_MEMORY_SHARE.get(kind, 0.5))
        itemsize = torch.finfo(dtype).bits // 8
        if DENSE_BUFFERS * n_rows * n_cols * itemsize <= budget:
            return None
        return default_tile(device)
    rt, ct = (int(tile_size[0]), int(tile_size[1])) if isinstance(tile_size, (tuple, list)) else (int(tile_size),) * 2
    if (rt < SMALL_TILE < n_rows or ct < SMALL_TILE < n_cols) and (rt, ct) not in _WARNED_SMALL_TILES:
        _WARNED_SMALL_TILES.add((rt, ct))
        warnings.warn(f"tile_size={tile_size!r} on a {n_rows} x {n_cols} pair matrix: tiles below {SMALL_TILE} run "
                      "many times slower than larger ones (tile_size=1 measured ~1,500x slower than dense); use "
                      "tiles of a few hundred or more, or tile_size='auto' (warned once per tile size)",
                      RuntimeWarning, stacklevel=3)
    return rt, ct


#: tiles below this many rows / columns on a larger pair matrix draw a (one-time) warning: per-tile overhead
#: dominates there.
SMALL_TILE = 64
_WARNED_SMALL_TILES: set[tuple[int, int]] = set()


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_tile_size(tile_size) -> None:
    """``tile_size``: ``None`` (dense), ``"auto"``, an int >= 1, or a (rows, cols) pair of ints >= 1 (tuple or
    list). Anything else (a bool, a float such as 2.7, a string other than "auto", ...) raises ``ValueError``."""
    if tile_size is None or (isinstance(tile_size, str) and tile_size == "auto"):
        return
    accepted = "tile_size must be None, 'auto', an int >= 1 or a (rows, cols) pair of ints >= 1"
    if isinstance(tile_size, (tuple, list)):
        if len(tile_size) != 2 or not all(_is_int(v) for v in tile_size):
            raise ValueError(f"{accepted}, got {tile_size!r}")
        if min(tile_size) < 1:
            raise ValueError(f"{accepted}, got {tile_size!r} (must be positive)")
        return
    if not _is_int(tile_size):
        raise ValueError(f"{accepted}, got {tile_size!r} ({type(tile_size).__name__})")
    if tile_size < 1:
        raise ValueError(f"{accepted}, got {tile_size!r} (must be positive)")


def _rank_world(group=None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def world_size(group=None) -> int:
    """Number of ranks in ``group`` (the default group); 1 without an initialised process group."""
    return _rank_world(group)[1]


_DEFAULT_GATHER: contextvars.ContextVar[bool | str] = contextvars.ContextVar("core_default_gather", default=False)


def check_gather(gather) -> None:
    """``gather``: ``None``, ``False``, ``True`` (or 0 / 1) or ``"ring"``; anything else raises ``ValueError``."""
    if gather is None or (isinstance(gather, str) and gather == "ring"):
        return
    if not (isinstance(gather, numbers.Integral) and gather in (0, 1)):
        raise ValueError(f"gather must be False, True or 'ring', got {gather!r}")


@contextlib.contextmanager
def default_gather(gather: bool | str = True) -> Iterator[None]:
    """Inside, a loss called with ``gather=None`` (every loss's default) gathers candidates from every rank as
    ``gather`` says (``True`` or ``"ring"``) whenever a process group of more than one rank exists. The app runner
    enters it for multi-device runs, so no app code decides it."""
    if gather is None:
        raise ValueError(f"gather must be False, True or 'ring', got {gather!r}")
    check_gather(gather)
    token = _DEFAULT_GATHER.set(gather)
    try:
        yield
    finally:
        _DEFAULT_GATHER.reset(token)


def resolve_gather(gather: bool | str | None) -> bool | str:
    """``gather`` as given (validated: ``False``, ``True`` or ``"ring"``), or for ``None`` the default of
    :func:`default_gather` (``False`` outside it, and always ``False`` without a process group of more than one
    rank)."""
    check_gather(gather)
    if gather is not None:
        return "ring" if gather == "ring" else bool(gather)
    return _DEFAULT_GATHER.get() if world_size() > 1 else False


@dataclass(frozen=True, eq=False)
class ExecutionMode:
    """How one loss call runs (made by :func:`execution_mode`; see the module doc).

    Attributes:
        tile_size: the validated ``tile_size`` (``None``, ``"auto"``, an int or a (rows, cols) pair).
        gather: ``False``, ``True`` or ``"ring"`` (resolved: never ``None``).
        world: the number of ranks whose candidates enter (1 without ``gather``).
    """

    tile_size: int | str | tuple[int, int] | list[int] | None
    gather: bool | str
    world: int
    _tiles: dict = field(default_factory=dict, repr=False, compare=False)

    def tiles(self, n_rows: int, n_cols: int, dtype: torch.dtype,
              device: torch.device | None = None) -> tuple[int, int] | None:
        """(row_tile, col_tile) for an ``n_rows x n_cols`` pair matrix, or ``None`` for dense: the
        :func:`resolve_tile_size` of ``tile_size``, resolved once per shape and reused within the call."""
        key = (n_rows, n_cols, dtype, None if device is None else str(device))
        if key not in self._tiles:
            self._tiles[key] = resolve_tile_size(self.tile_size, n_rows, n_cols, dtype, device=device)
        return self._tiles[key]

    def n_global(self, n_local: int) -> int:
        """The number of candidates every rank's anchors see when each rank holds ``n_local`` (equal shards)."""
        return n_local * self.world

    def require(self, *, extra_candidates: bool = False, column_stats: bool = False, fused_columns: bool = False,
                ring: bool = True, what: str = "this loss") -> ExecutionMode:
        """Check the restrictions of this mode for a reduction with ``extra_candidates`` (a queue appended to the
        candidates), ``column_stats`` (statistics reduced over the rows), ``fused_columns`` (column statistics
        that stand for a whole reverse direction, e.g. the one-pass symmetric InfoNCE: they need every anchor,
        so single-process only) and ``ring=False`` (``what`` does not run on the ring). Returns ``self``."""
        if self.gather == "ring":
            if not ring:
                raise ValueError(f"{what} supports gather=False or True (not 'ring')")
            check_ring(extra_candidates=extra_candidates, column_stats=column_stats)
        if fused_columns and self.gather:
            raise ValueError("fused column statistics are single-process only")
        return self


def check_ring(*, extra_candidates: bool = False, column_stats: bool = False) -> None:
    """The ring's restrictions (see :meth:`ExecutionMode.require`): no extra candidates, no column statistics."""
    if extra_candidates:
        raise ValueError("gather='ring' does not support extra negatives; use gather=True")
    if column_stats:
        raise ValueError("gather='ring' computes row statistics only; column statistics are not supported")


def execution_mode(
    tile_size: int | str | tuple[int, int] | list[int] | ExecutionMode | None = None,
    gather: bool | str | None = None, **require,
) -> ExecutionMode:
    """Validate ``tile_size`` and ``gather`` once and return the :class:`ExecutionMode` of a loss call.

    An :class:`ExecutionMode` passed as ``tile_size`` comes back as it is (``gather`` is then ignored: it is
    part of the mode). Keyword arguments are the restrictions of :meth:`ExecutionMode.require`, checked here.
    Raises ``ValueError`` (naming the argument) for a bad ``tile_size`` or ``gather``.
    """
    if isinstance(tile_size, ExecutionMode):
        mode = tile_size
    else:
        check_tile_size(tile_size)
        g = resolve_gather(gather)
        mode = ExecutionMode(tile_size, g, world_size() if g else 1)
    return mode.require(**require) if require else mode
