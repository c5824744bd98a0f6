"""Loaders of the anomaly app and the one-class protocol splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apps.anomaly.data import ImageData, image_protocol, load_data, standardize, table_protocol
from core.app import InputError


def test_embedded_mnist() -> None:
    d = load_data("mnist")
    assert isinstance(d, ImageData)
    assert d.x.shape == (10000, 1, 28, 28) and d.x.dtype == np.float32
    assert 0.0 <= d.x.min() and d.x.max() <= 1.0
    assert d.classes == [str(i) for i in range(10)]
    assert np.bincount(d.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_embedded_adbench() -> None:
    tables = load_data("adbench")
    assert len(tables) == 13
    cardio = {t.name: t for t in tables}["6_cardio"]
    assert cardio.x.shape == (1831, 21) and int(cardio.y.sum()) == 176


def test_image_npz_and_class_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", X=rng.integers(0, 255, (12, 8, 8, 3)).astype(np.uint8), y=np.arange(12) % 3)
    d = load_data(tmp_path / "img.npz")
    assert d.x.shape == (12, 3, 8, 8) and d.classes == ["0", "1", "2"]

    from PIL import Image

    root = tmp_path / "folders"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (6, 6)).astype(np.uint8)).save(root / cls / f"{i}.png")
    d = load_data(root)
    assert d.x.shape == (6, 1, 6, 6) and d.classes == ["cat", "dog"] and d.y.tolist() == [0, 0, 0, 1, 1, 1]


def test_single_table_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "t.npz", X=np.ones((5, 3)), y=np.array([0, 0, 0, 1, 0]))
    (t,) = load_data(tmp_path / "t.npz")
    assert t.name == "t" and t.x.shape == (5, 3) and t.y.tolist() == [0, 0, 0, 1, 0]


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(X=np.ones((4, 2))), r"missing array\(s\) \['y'\]"),
        (dict(X=np.array([[1.0, np.nan], [0, 0]]), y=np.array([0, 1])), "X has NaN"),
        (dict(X=np.ones((2, 2)), y=np.array([0.0, np.inf])), "y has NaN"),
        (dict(X=np.ones((3, 2)), y=np.array([0, 2, 1])), "must be 0 \\(normal\\) or 1"),
        (dict(X=np.ones((3, 2)), y=np.array([0, 0, 0])), "both normal"),
        (dict(X=np.ones((3, 2)), y=np.array([0, 1])), "y must have shape"),
    ],
)
def test_bad_npz(tmp_path: Path, arrays: dict, match: str) -> None:
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)
    with pytest.raises(InputError, match=match) as e:
        load_data(f)
    assert "bad.npz" in str(e.value)


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        load_data(tmp_path / "empty")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="x.csv: unsupported"):
        load_data(tmp_path / "x.csv")
    (tmp_path / "fake.npz").write_text("not a zip")
    with pytest.raises(InputError, match="fake.npz: not a readable"):
        load_data(tmp_path / "fake.npz")


def test_image_protocol_is_disjoint_and_complete() -> None:
    y = np.repeat(np.arange(4), 50)
    pool, split = image_protocol(y, pretrain_fraction=0.4, train_fraction=0.6, seed=0)
    assert len(pool) == 80 and np.bincount(y[pool]).tolist() == [20] * 4  # stratified
    evaluation = np.setdiff1d(np.arange(len(y)), pool)
    for c, (train, test, label) in split.items():
        assert len(np.intersect1d(pool, train)) == 0 and len(np.intersect1d(pool, test)) == 0
        assert len(np.intersect1d(train, test)) == 0 and len(np.unique(test)) == len(test)
        assert (y[train] == c).all() and len(train) == 18
        np.testing.assert_array_equal(label, (y[test] != c).astype(int))
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), evaluation)


def test_image_protocol_subset_and_errors() -> None:
    y = np.repeat(np.arange(2), 100)
    pool, split = image_protocol(y, 0.5, 0.5, seed=1, max_images=40)
    kept = np.union1d(pool, np.union1d(split[0][0], split[0][1]))  # class 0's train + test = the evaluation pool
    assert len(kept) == 40 and np.bincount(y[kept]).tolist() == [20, 20]
    with pytest.raises(InputError, match="train_fraction"):
        image_protocol(y, 0.5, 1.0, seed=0)
    with pytest.raises(InputError, match="cannot be split"):
        image_protocol(np.array([0, 0, 1, 1]), 0.5, 0.5, seed=0)


def test_table_protocol() -> None:
    y = np.array([0] * 30 + [1] * 5)
    train, test = table_protocol(y, 0.5, seed=0)
    assert len(train) == 15 and (y[train] == 0).all()
    assert len(np.intersect1d(train, test)) == 0 and set(np.flatnonzero(y == 1)) <= set(test)
    assert len(train) + len(test) == len(y)
    xtr, xte = standardize(np.array([[1.0, 5.0], [3.0, 5.0]]), np.array([[2.0, 6.0]]))
    np.testing.assert_allclose(xtr, [[-1, 0], [1, 0]])
    np.testing.assert_allclose(xte, [[0, 1]])
