"""Categorical columns (codes, the unknown code, learned embeddings) and the gradient-boosted trees baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.regression.baselines import LEARNING_RATE, MAX_ITER, hgb_baseline, hgb_inputs
from apps.regression.config import RegressionSettings
from apps.regression.data import load_data
from apps.regression.model import TabularEncoder, augment_view, embedding_dim
from core.app import InputError


def _write(path, rows, header="x,kind,code,target"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def _presplit(folder, n=120, seed=0, test_kind=None):
    """train / dev / test tables: numeric x, text column kind (a/b/c; y jumps by 5 per kind), integer code column."""
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for split in ("train", "dev", "test"):
        kinds = rng.choice(["a", "b", "c"], n)
        if split == "test" and test_kind:
            kinds[:5] = test_kind
        x = rng.normal(size=n)
        code = rng.integers(1, 4, n)
        y = np.round(x + 5 * (kinds == "b") + 10 * (kinds == "c") + 12, 1)
        _write(folder / f"{split}.csv", zip(np.round(x, 4), kinds, code, y))
    return folder


def test_text_columns_are_categories_and_unseen_values_unknown(tmp_path):
    f = _presplit(tmp_path / "d", test_kind="zzz")
    d = load_data(RegressionSettings(data=str(f), target="target"))
    assert d.feature_names == ["x", "code", "kind"] and d.categorical_names == ["kind"]
    assert d.n_num == 2 and d.cardinalities == [4] and d.in_dim == 3
    test_codes = d.x["test"][:, 2]
    assert np.all(test_codes[:5] == 0) and set(np.unique(test_codes[5:])) <= {1.0, 2.0, 3.0}  # zzz -> unknown
    # codes follow the sorted training values: a -> 1, b -> 2, c -> 3
    import pandas as pd

    raw = pd.read_csv(f / "train.csv")["kind"].map({"a": 1, "b": 2, "c": 3}).to_numpy()
    assert np.array_equal(d.x["train"][:, 2], raw)
    # a numeric column declared categorical is coded, not standardised
    e = load_data(RegressionSettings(data=str(f), target="target", categorical=["code"]))
    assert e.categorical_names == ["kind", "code"] and e.cardinalities == [4, 4] and e.n_num == 1
    assert set(np.unique(e.x["train"][:, 2])) == {1.0, 2.0, 3.0}
    with pytest.raises(InputError, match="--categorical names"):
        load_data(RegressionSettings(data=str(f), target="target", categorical=["nope"]))


def test_single_table_category_absent_from_train_is_unknown(tmp_path):
    """The vocabulary of one table covers every row, but a value that the DIR split leaves out of train is unknown."""
    rows = [(i % 7, "a" if i % 2 else "b", 0, 1 + i % 9) for i in range(200)]
    rows[0] = (0, "rare", 0, 1)  # code 3 (a, b, rare); the split puts this row in train, val or test
    f = _write(tmp_path / "t.csv", rows)
    for split_seed in range(20):
        d = load_data(RegressionSettings(data=str(f), target="target", bin_width=1.0, split_seed=split_seed))
        assert d.cardinalities == [4]
        if 3.0 not in d.x["train"][:, -1]:
            held_out = np.concatenate([d.x["val"][:, -1], d.x["test"][:, -1]])
            assert 3.0 not in held_out and np.sum(held_out == 0) == 1
            return
    pytest.fail("no split seed put the rare row outside train")


def test_too_many_categories_is_an_error(tmp_path):
    rows = [(i, f"v{i}", 0, i % 5 + 1) for i in range(300)]
    with pytest.raises(InputError, match="'kind' has 300 distinct values"):
        load_data(RegressionSettings(data=str(_write(tmp_path / "t.csv", rows)), target="target"))


def test_embedding_unknown_code_is_the_mean_vector():
    torch.manual_seed(0)
    enc = TabularEncoder(2, [4, 3], [8], 5)
    assert [e.embedding_dim for e in enc.embeddings] == [embedding_dim(4), embedding_dim(3)] == [3, 2]
    assert enc.mlp.net[0].in_features == 2 + 3 + 2  # round(1.6 * 3 ** 0.56) = 3, round(1.6 * 2 ** 0.56) = 2
    x = torch.tensor([[0.5, -1.0, 2.0, 0.0], [0.5, -1.0, 0.0, 1.0]])
    z = enc.embed(x)
    w0, w1 = enc.embeddings[0].weight, enc.embeddings[1].weight
    assert torch.allclose(z[0, :2], x[0, :2]) and torch.allclose(z[0, 2:5], w0[1])  # code 2 -> second vector
    assert torch.allclose(z[0, 5:], w1.mean(0)) and torch.allclose(z[1, 2:5], w0.mean(0))  # code 0 -> mean
    z.sum().backward()
    assert enc.embeddings[0].weight.grad.abs().sum() > 0
    assert embedding_dim(251) == 16 and embedding_dim(2) == 2  # the rule min(16, max(2, round(1.6 K^0.56)))


def test_views_mask_codes_to_unknown_and_noise_numbers_only():
    torch.manual_seed(0)
    x = torch.cat([torch.zeros(500, 3), torch.full((500, 2), 3.0)], 1)
    v = augment_view(x, noise=0.5, mask=0.3, n_num=3)
    assert v.shape == x.shape and v[:, :3].std() > 0.3
    codes = v[:, 3:]
    assert set(codes.unique().tolist()) == {0.0, 3.0} and 0.2 < (codes == 0).float().mean() < 0.4
    plain = augment_view(torch.zeros(10, 4), noise=0.0, mask=0.0)
    assert torch.equal(plain, torch.zeros(10, 4))


def test_hgb_baseline_matches_a_direct_fit_and_uses_categories(tmp_path):
    """The baseline equals sklearn's own fit with the round count of least validation MAE, and a step function of
    a text column (which a linear one-hot-free model could not fit) is learned through native categories."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    f = _presplit(tmp_path / "d", n=150, test_kind="zzz")
    d = load_data(RegressionSettings(data=str(f), target="target"))
    xs = {k: hgb_inputs(d, k) for k in ("train", "val", "test")}
    assert np.isnan(xs["test"][:5, 2]).all() and set(np.unique(xs["train"][:, 2])) == {0.0, 1.0, 2.0}
    out = hgb_baseline(d, threads=1, cache=tmp_path / "hgb.pt")
    ref = HistGradientBoostingRegressor(loss="absolute_error", learning_rate=LEARNING_RATE, max_iter=MAX_ITER,
                                        categorical_features=[False, False, True], early_stopping=False,
                                        random_state=0).fit(xs["train"], d.y["train"])
    val_mae = [np.abs(p - d.y["val"]).mean() for p in ref.staged_predict(xs["val"])]
    best = int(np.argmin(val_mae))
    assert out["iterations"] == best + 1 and np.allclose(out["val_curve"], val_mae)
    assert np.allclose(out["test"], list(ref.staged_predict(xs["test"]))[best])
    known = slice(5, None)
    assert np.abs(out["test"][known] - d.y["test"][known]).mean() < 1.0  # kinds are 5 apart: categories used
    again = hgb_baseline(d, threads=1, cache=tmp_path / "hgb.pt")  # read back from the cache
    assert again["iterations"] == out["iterations"] and np.array_equal(again["test"], out["test"])


def test_regressor_with_categories_trains_embeddings_through_conr_views():
    """A ConR step on inputs with a categorical column: finite loss, gradient reaches the embedding table."""
    from apps.regression.model import DIRRegressor

    torch.manual_seed(0)
    model = DIRRegressor(3, [8], 4, n_bins=5, y_mean=2.0, y_std=1.0, cardinalities=[3],
                         conr=dict(temperature=0.2, window=1.0), view_mask=0.5)
    x = torch.cat([torch.randn(16, 2), torch.randint(0, 3, (16, 1)).float()], 1)
    y = torch.arange(16).float() % 5
    out = model.contrastive_step((x, y, torch.ones(16), y.long()))
    assert torch.isfinite(out["loss"]) and "conr" in out
    out["loss"].backward()
    assert model.encoder.embeddings[0].weight.grad.abs().sum() > 0
    assert model.predict(x).shape == (16,)
