"""Data of the anomaly app: loaders for the standard formats and the one-class protocol splits.

Formats (``load_data(path)``):

* **images** -- a folder with MNIST IDX files (``*images-idx3-ubyte[.gz]`` + ``*labels-idx1-ubyte[.gz]``),
  a folder with one sub-folder of image files per class, or an ``.npz`` with ``X`` (N, H, W) or
  (N, H, W, C) and integer class labels ``y`` (N,);
* **tables** -- an ``.npz`` with ``X`` (N, D) and binary ``y`` (0 = normal, 1 = anomaly; the ADBench / ODDS
  convention), or a folder of such files (one table each).

The aliases ``mnist`` and ``adbench`` name the embedded defaults in ``shared_data/anomaly/``.

Protocols:

* images (:func:`image_protocol`): a stratified share ``pretrain_fraction`` of all images is the unlabelled
  pre-training pool; the rest is the evaluation pool. For normal class c, a share ``train_fraction`` of
  the evaluation pool's c images is the one-class training set; the test set is the remaining c images
  (label 0) plus every evaluation-pool image of the other classes (label 1). The pre-training pool is
  disjoint from every class's train and test split.
* tables (:func:`table_protocol`): a share ``train_fraction`` of the normal rows is the training set; the
  test set is the other normal rows plus every anomaly. No table has a spare unlabelled pool, so the
  encoder is pre-trained on the training normals only (never on a test row).
"""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.app import InputError

__all__ = [
    "ImageData", "Table", "SHARED", "ALIASES", "resolve_data_path", "load_data",
    "image_protocol", "table_protocol", "standardize",
]

SHARED = Path(__file__).resolve().parents[2] / "shared_data" / "anomaly"
ALIASES = {"mnist": SHARED / "mnist_test", "adbench": SHARED / "adbench"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class ImageData:
    """Images as float32 (N, C, H, W) in [0, 1] with integer class labels and class names."""

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: list[str]


@dataclass
class Table:
    """One tabular data set: float32 (N, D) features and binary labels (1 = anomaly)."""

    name: str
    x: np.ndarray
    y: np.ndarray


def resolve_data_path(data: str | Path) -> tuple[str, Path]:
    """``(dataset name, path)`` of an alias or a path; raises :class:`core.app.InputError` if it does not exist."""
    key = str(data)
    if key in ALIASES:
        return key, ALIASES[key]
    path = Path(data)
    if not path.exists():
        raise InputError(f"data path {path} does not exist (aliases of the embedded data: {sorted(ALIASES)})")
    return path.stem if path.is_file() else path.name, path


# --------------------------------------------------------------------------------------------- readers
def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("X", "y") if k not in f.files]
            if missing:
                raise InputError(f"{path}: missing array(s) {missing}; expected 'X' and 'y' (found {f.files})")
            x, y = f["X"], f["y"]
    except InputError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from e
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(x):
        raise InputError(f"{path}: y must have shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number):
        raise InputError(f"{path}: X and y must be numeric, got {x.dtype} and {y.dtype}")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise InputError(f"{path}: X has NaN or infinite values (first at index {tuple(int(i) for i in bad)})")
    if not np.isfinite(y).all():
        raise InputError(f"{path}: y has NaN or infinite values (first at row {int(np.argmax(~np.isfinite(y)))})")
    if len(x) == 0:
        raise InputError(f"{path}: empty (0 rows)")
    return x, y


def _int_labels(path: Path, y: np.ndarray) -> np.ndarray:
    frac = np.mod(y, 1) != 0
    if frac.any():
        raise InputError(f"{path}: labels y must be integers (row {int(np.argmax(frac))} is {y[frac][0]})")
    return y.astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise InputError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _load_idx_dir(path: Path) -> ImageData:
    imgs = sorted(p for p in path.iterdir() if "images-idx3-ubyte" in p.name)
    labs = sorted(p for p in path.iterdir() if "labels-idx1-ubyte" in p.name)
    if len(imgs) != 1 or len(labs) != 1:
        raise InputError(f"{path}: expected one *images-idx3-ubyte and one *labels-idx1-ubyte file, "
                        f"found {[p.name for p in imgs + labs]}")
    x, y = _read_idx(imgs[0]), _read_idx(labs[0])
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise InputError(f"{path}: images {x.shape} and labels {y.shape} do not match")
    return _make_images(path.name, x, y.astype(np.int64), None)


def _load_class_folders(path: Path, subdirs: list[Path]) -> ImageData:
    from PIL import Image, UnidentifiedImageError

    xs, ys, classes, size, mode = [], [], [], None, None
    for ci, d in enumerate(subdirs):
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{d}: class folder holds no image files ({sorted(IMAGE_SUFFIXES)})")
        classes.append(d.name)
        for f in files:
            try:
                with Image.open(f) as im:
                    if mode is None:
                        mode = "L" if im.mode in ("L", "1", "I", "I;16", "F") else "RGB"
                        size = im.size
                    im = im.convert(mode)
                    if im.size != size:
                        im = im.resize(size, Image.BILINEAR)
                    xs.append(np.asarray(im))
            except (UnidentifiedImageError, OSError) as e:
                raise InputError(f"{f}: not a readable image ({e})") from e
            ys.append(ci)
    return _make_images(path.name, np.stack(xs), np.array(ys, dtype=np.int64), classes)


def _make_images(name: str, x: np.ndarray, y: np.ndarray, classes: list[str] | None) -> ImageData:
    x = x.astype(np.float32)
    if x.max(initial=0.0) > 1.0:
        x = x / 255.0 if x.max() <= 255.0 else (x - x.min()) / (x.max() - x.min())
    x = x[:, None] if x.ndim == 3 else np.transpose(x, (0, 3, 1, 2))
    values = sorted(set(y.tolist()))
    if classes is None:
        classes = [str(v) for v in values]
        y = np.searchsorted(np.array(values), y)
    if len(classes) < 2:
        raise InputError(f"{name}: the one-class protocol needs at least 2 classes, found {len(classes)}")
    return ImageData(name, np.ascontiguousarray(x), y.astype(np.int64), classes)


def _table_from_npz(path: Path) -> Table:
    x, y = _read_npz(path)
    if x.ndim != 2:
        raise InputError(f"{path}: a table needs X of shape (N, D), got {x.shape}")
    y = _int_labels(path, y)
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise InputError(f"{path}: table labels must be 0 (normal) or 1 (anomaly); row {int(np.argmax(bad))} "
                        f"is {y[bad][0]}")
    if not (y == 0).any() or not (y == 1).any():
        raise InputError(f"{path}: needs both normal (0) and anomalous (1) rows, got {np.bincount(y, minlength=2)}")
    return Table(path.stem, x.astype(np.float32), y)


def load_data(data: str | Path) -> ImageData | list[Table]:
    """Load an alias or a path (see the module docstring): :class:`ImageData` or a list of :class:`Table`."""
    name, path = resolve_data_path(data)
    if path.is_file():
        if path.suffix != ".npz":
            raise InputError(f"{path}: unsupported file type; expected an .npz with X and y, or a folder")
        x, y = _read_npz(path)
        if x.ndim == 2:
            return [_table_from_npz(path)]
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3, 4)):
            raise InputError(f"{path}: X must be (N, D) for a table or (N, H, W[, C]) for images, got {x.shape}")
        return _make_images(name, x, _int_labels(path, y), None)
    entries = sorted(path.iterdir())
    if not entries:
        raise InputError(f"data folder {path} is empty")
    if any("images-idx3-ubyte" in p.name for p in entries):
        return _load_idx_dir(path)
    npz = [p for p in entries if p.suffix == ".npz"]
    if npz:
        tables = [_table_from_npz(p) for p in npz]
        return sorted(tables, key=lambda t: t.name)
    subdirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if subdirs:
        return _load_class_folders(path, subdirs)
    raise InputError(f"{path}: no data found; expected MNIST IDX files, .npz tables or one sub-folder per class")


# ------------------------------------------------------------------------------------------- protocol
def _check_fraction(name: str, v: float, allow_zero: bool = False) -> None:
    lo_ok = v >= 0 if allow_zero else v > 0
    if not (lo_ok and v < 1):
        raise InputError(f"{name} must be in {'[0, 1)' if allow_zero else '(0, 1)'}, got {v}")


def image_protocol(
    y: np.ndarray, pretrain_fraction: float, train_fraction: float, seed: int, max_images: int | None = None,
) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Split image indices into the pre-training pool and, per class, ``(train_idx, test_idx, test_label)``.

    ``max_images`` first keeps a stratified random subset (quick mode). Labels of the test split: 0 for
    the held-out normal images, 1 for the other classes.
    """
    _check_fraction("pretrain_fraction", pretrain_fraction, allow_zero=True)
    _check_fraction("train_fraction", train_fraction)
    rng = np.random.default_rng(seed)
    idx = np.arange(len(y))
    if max_images is not None:
        if max_images < 2 * int(y.max() + 1):
            raise InputError(f"max_images={max_images} is too small for {int(y.max() + 1)} classes")
        keep = min(1.0, max_images / len(y))
        idx = np.concatenate([rng.permutation(idx[y == c])[: max(2, int(round(keep * (y == c).sum())))]
                              for c in np.unique(y)])
    pool, evals = [], {}
    for c in np.unique(y[idx]):
        members = rng.permutation(idx[y[idx] == c])
        n_pre = int(round(pretrain_fraction * len(members)))
        pool.append(members[:n_pre])
        evals[int(c)] = members[n_pre:]
    split = {}
    for c, members in evals.items():
        n_train = int(round(train_fraction * len(members)))
        if n_train < 2 or len(members) - n_train < 1:
            raise InputError(f"class {c}: {len(members)} evaluation images cannot be split into >= 2 train and "
                            f">= 1 test image with train_fraction={train_fraction}")
        others = np.concatenate([m for o, m in evals.items() if o != c])
        test = np.concatenate([members[n_train:], others])
        label = np.concatenate([np.zeros(len(members) - n_train, np.int64), np.ones(len(others), np.int64)])
        split[c] = (np.sort(members[:n_train]), test, label)
    return np.sort(np.concatenate(pool)), split


def table_protocol(y: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)``: a share of the normal rows to train on; the rest and all anomalies to test."""
    _check_fraction("train_fraction", train_fraction)
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    n_train = int(round(train_fraction * len(normal)))
    if n_train < 2 or n_train == len(normal):
        raise InputError(f"{len(normal)} normal rows cannot be split with train_fraction={train_fraction}")
    return np.sort(normal[:n_train]), np.sort(np.concatenate([normal[n_train:], np.flatnonzero(y == 1)]))


def standardize(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """z-score with the training rows' mean and std (constant columns get std 1), clipped to +-10."""
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return [np.clip((a - mu) / sd, -10, 10).astype(np.float32) for a in (x_train, *others)]
