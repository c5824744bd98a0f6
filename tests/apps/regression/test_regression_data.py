"""Data loading: tables, pre-split folders, embedded defaults, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from apps.regression.config import RegressionSettings
from apps.regression.data import load_data, read_table
from core.app import InputError


def _table(path, n=300, seed=0, sep=","):
    rng = np.random.default_rng(seed)
    y = np.round(rng.gamma(2.0, 2.0, n) + 1, 2)
    x1 = y + rng.normal(0, 0.5, n)
    x2 = rng.normal(size=n)
    cat = rng.choice(["a", "b", "c"], n)
    lines = [sep.join(["x1", "x2", "kind", "target"])]
    lines += [sep.join([f"{a:.4f}", f"{b:.4f}", c, f"{t}"]) for a, b, c, t in zip(x1, x2, cat, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_single_table_dir_split(tmp_path):
    f = _table(tmp_path / "toy.csv")
    d = load_data(RegressionSettings(data=str(f), target="target", bin_width=1.0))
    assert d.feature_names == ["x1", "x2", "kind"] and d.cardinalities == [4] and d.n_num == 2
    assert sum(len(d.y[s]) for s in ("train", "val", "test")) == 300
    assert np.allclose(d.x["train"][:, :2].mean(0), 0, atol=1e-5)
    assert set(np.unique(d.x["train"][:, 2])) == {1.0, 2.0, 3.0}  # codes a, b, c; 0 is unknown
    val_counts = np.bincount(d.bins["val"], minlength=d.n_bins)
    assert val_counts.max() <= 25 and np.array_equal(val_counts, np.bincount(d.bins["test"], minlength=d.n_bins))
    assert len(d.groups) == d.n_bins and d.train_counts.sum() == len(d.y["train"])
    s = len(d.y["train"]) / 5000
    assert (d.many, d.few) == (max(1, round(100 * s)), max(1, round(20 * s)))


def test_presplit_folder_and_parquet(tmp_path):
    import pandas as pd

    for i, s in enumerate(("train", "dev", "test")):
        _table(tmp_path / f"{s}.csv", n=80, seed=i)
    d = load_data(RegressionSettings(data=str(tmp_path), target="target", features=["x1", "x2"]))
    assert [len(d.y[s]) for s in ("train", "val", "test")] == [80, 80, 80] and d.in_dim == 2
    pq = tmp_path / "p" / "t.parquet"
    pq.parent.mkdir()
    pd.read_csv(tmp_path / "train.csv").to_parquet(pq)
    assert len(read_table(pq)) == 80


def test_embedded_defaults():
    d = load_data(RegressionSettings())
    assert d.name == "abalone" and d.bin_width == 1.0 and d.in_dim == 8 and d.cardinalities == [4]
    assert d.categorical_names == ["Sex"]
    s = load_data(RegressionSettings(data="sts_b_dir"))
    assert [len(s.y[k]) for k in ("train", "val", "test")] == [5249, 1000, 1000]
    assert s.in_dim == 769 and s.correlations and (s.many, s.few) == (100, 20)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("a,b,target\n1,2,3\n4,5,6,7\n", "line 3"),
        ("a,b,target\n1,2,3\n4,5,inf\n", r"line 3: target 'target' is not a finite number"),
        ("a,b,target\n1,2,3\n4,,6\n", r"line 3: feature 'b'"),
        ("a,b,other\n1,2,3\n", "no target column 'target'"),
        ("a,b,target\n", "no rows"),
    ],
)
def test_bad_tables(tmp_path, content, match):
    f = tmp_path / "bad.csv"
    if content is not None:
        f.write_text(content)
    with pytest.raises(InputError, match=match):
        load_data(RegressionSettings(data=str(f), target="target"))


def test_bad_parquet_and_binary(tmp_path):
    f = tmp_path / "x.parquet"
    f.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="x.parquet"):
        read_table(f)
    g = tmp_path / "x.csv"
    g.write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    with pytest.raises(InputError, match="x.csv"):
        read_table(g)
    with pytest.raises(InputError, match="unknown table format"):
        (tmp_path / "x.json").write_text("{}")
        read_table(tmp_path / "x.json")


def test_missing_split_file(tmp_path):
    _table(tmp_path / "train.csv", n=50)
    with pytest.raises(InputError, match="pre-split"):
        load_data(RegressionSettings(data=str(tmp_path), target="target"))


def test_sentence_pair_file(tmp_path):
    """A .npz of `prepare sts_b_dir` (int8 embeddings + scores) gives [|u - v|, u * v, cos] pair features."""
    from apps.regression.embed_sts import quantize

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 120), ("val", 30), ("test", 30)):
        for side in ("u", "v"):
            e = rng.normal(size=(n, 6)).astype(np.float32)
            arrays[f"{split}_{side}_q"], arrays[f"{split}_{side}_s"] = quantize(e / np.linalg.norm(e, axis=1)[:, None])
        arrays[f"{split}_y"] = rng.uniform(0, 5, n).astype(np.float32)
    np.savez(tmp_path / "pairs.npz", **arrays)
    d = load_data(RegressionSettings(data=str(tmp_path / "pairs.npz")))
    assert d.name == "pairs" and d.in_dim == 13 and d.correlations and len(d.y["val"]) == 30
    assert d.feature_names[-1] == "cosine" and np.isclose(d.bin_width, float(np.ptp(arrays["train_y"])) / 50)
    del arrays["test_y"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(InputError, match="missing arrays"):
        load_data(RegressionSettings(data=str(tmp_path / "broken.npz")))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        load_data(RegressionSettings(data=str(tmp_path / "junk.npz")))
