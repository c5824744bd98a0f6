"""Writes a kill cannot half-finish, and reads whose errors name the file.

Every write goes to a temporary file in the target's directory, is flushed and ``fsync``-ed, then renamed over
the target (atomic on POSIX), and the directory entry is synced too. Only the main process (global rank 0)
writes; the other ranks of a multi-process run return without touching the disk.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from core.app.errors import InputError
from core.app.hardware import is_main_process

__all__ = ["atomic_write", "write_text", "write_json", "save_torch", "save_figure", "read_json", "load_torch",
           "CheckpointError"]


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded safely (damaged, or holding objects other than tensors and plain
    containers)."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, all_ranks: bool = False) -> Path:
    """Write ``path`` through ``write(file)`` atomically (temporary file, fsync, rename, directory fsync)."""
    path = Path(path)
    if not all_ranks and not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:
            fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return path
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` atomically. Store tensors and plain containers only: :func:`load_torch` refuses the rest."""
    import torch

    def write(f: BinaryIO) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        f.write(buf.getbuffer())

    return atomic_write(path, write)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (main process only) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def read_json(path: str | Path, what: str = "") -> Any:
    """Read a JSON file; a missing or corrupt file raises :class:`InputError` naming it."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{label} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot read {label}: {e.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise InputError(f"{label} is not valid JSON ({e}); delete it or restore it") from None


def load_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)``: tensors and plain containers only, never code. A damaged file or
    one that holds other objects raises :class:`CheckpointError` with a one-line message naming the file."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln or "GLOBAL" in ln), "")
        if not why:  # not a reference to code: a damaged file or not a checkpoint at all
            detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "")
            raise CheckpointError(f"checkpoint {path} is damaged or not a torch file ({detail})") from None
        raise CheckpointError(f"refused to load {path}: it holds objects other than tensors and plain containers"
                              + (f" ({why})" if why else "") + "; only weights_only checkpoints are loaded") from None
    except Exception as e:  # a truncated zip, a foreign file (struct.error, KeyError, ...): damaged
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is damaged or not a torch file ({msg})") from None
