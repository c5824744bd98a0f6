"""The anomaly app's default method (``msc_raw``: MSC fine-tuning that cannot drift, scored by the z-normalised sum
of the raw-input and MSC-feature kNN scores), its PyOD baselines, and ADBench's image-embedding ``.npz`` layout."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from apps.anomaly.__main__ import main
from apps.anomaly.data import Table, load_data
from apps.anomaly.evaluate import HEADLINE, pyod_scores, zscore_knn_sum
from apps.anomaly.model import HeldOutSelection, MeanShiftedModule, TabularCorruption, build_encoder, normal_center
from apps.anomaly.train import holdout_split

TINY = ["--feature-dim", "8", "--projection-dim", "8", "--hidden-dims", "16", "--pretrain-epochs", "1",
        "--epochs", "2", "--compact-epochs", "1", "--batch-size", "16", "--pretrain-batch-size", "32", "--no-progress",
        "--threads", "1"]


def _naive_knn(q: np.ndarray, bank: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Sum of the k smallest squared distances, by brute force (optionally without the query's own row)."""
    d = ((q[:, None, :] - bank[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].sum(1)


def test_zscore_knn_sum_equals_the_formula() -> None:
    rng = np.random.default_rng(0)
    raw_tr, raw_te = rng.normal(size=(30, 4)), rng.normal(size=(12, 4)) * 2
    f_tr, f_te = rng.normal(size=(30, 3)), rng.normal(size=(12, 3))
    got = zscore_knn_sum([(raw_te, raw_tr, False), (f_te, f_tr, True)], k=2)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    want = np.zeros(12)
    for te, tr in ((raw_te, raw_tr), (unit(f_te), unit(f_tr))):
        loo = _naive_knn(tr, tr, 2, exclude_self=True)
        want += (_naive_knn(te, tr, 2) - loo.mean()) / loo.std()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        zscore_knn_sum([], k=2)


def test_pyod_baselines_fit_on_training_rows_and_score_the_test_rows() -> None:
    pytest.importorskip("pyod")
    rng = np.random.default_rng(1)
    x_tr, x_te = rng.normal(size=(40, 3)), rng.normal(size=(15, 3)) * 3
    scores = pyod_scores(x_tr, x_te)
    assert set(scores) == {"pyod_knn", "pyod_lof", "pyod_ocsvm", "pyod_ecod", "pyod_copod"}
    assert all(v.shape == (15,) and np.isfinite(v).all() for v in scores.values())
    # PyOD's kNN ("largest", 5 neighbours): the distance of each test row to its 5th nearest training row
    d = np.sqrt(((x_te[:, None] - x_tr[None]) ** 2).sum(-1))
    np.testing.assert_allclose(scores["pyod_knn"], np.sort(d, axis=1)[:, 4], rtol=1e-6)
    # a far-away row is more anomalous than the training mean under every detector
    far = pyod_scores(x_tr, np.array([[0.0, 0.0, 0.0], [8.0, -8.0, 8.0]]))
    assert all(v[1] > v[0] for v in far.values())


def test_holdout_split() -> None:
    fit, hold = holdout_split(50, 0.2, seed=3)
    assert len(hold) == 10 and len(fit) == 40 and not set(fit) & set(hold)
    assert sorted([*fit, *hold]) == list(range(50))
    np.testing.assert_array_equal(hold, holdout_split(50, 0.2, seed=3)[1])
    assert not np.array_equal(hold, holdout_split(50, 0.2, seed=4)[1])
    assert len(holdout_split(50, 0.0, seed=3)[1]) == 0 and len(holdout_split(5, 0.2, seed=3)[1]) == 0


def test_held_out_selection_keeps_the_lowest_loss_and_stops_after_patience(monkeypatch) -> None:
    sel = HeldOutSelection(np.zeros((4, 2), np.float32), batch_size=4, patience=2, seed=0)
    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0])
    monkeypatch.setattr(sel, "held_out_loss", lambda module: next(losses))
    module = SimpleNamespace(encoder=torch.nn.Linear(2, 2))
    trainer = SimpleNamespace(current_epoch=0, should_stop=False)
    sel.on_train_start(trainer, module)
    for epoch in range(3):
        assert not trainer.should_stop
        with torch.no_grad():
            module.encoder.weight.fill_(float(epoch + 1))  # the weights "after epoch e + 1"
        trainer.current_epoch = epoch
        sel.on_train_epoch_end(trainer, module)
    assert trainer.should_stop and sel.history == [3.0, 2.0, 2.5, 2.6]
    assert sel.best_epoch == 1 and sel.best_loss == 2.0 and bool((sel.best_state["weight"] == 1.0).all())
    restored = HeldOutSelection(np.zeros((4, 2), np.float32), 4, 2, 0)
    restored.load_state_dict(sel.state_dict())
    trainer2 = SimpleNamespace(current_epoch=3, should_stop=False)
    restored.on_train_start(trainer2, module)  # a resumed run that had already run out of patience stops at once
    assert trainer2.should_stop and restored.best_epoch == 1 and restored.history == sel.history


def test_msc_fine_tune_with_frozen_batchnorm_and_held_out_selection(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(96, 6)
    enc = build_encoder("table", (6,), width=4, feature_dim=8, hidden_dims=(16,))
    with torch.no_grad():  # non-trivial pre-trained statistics
        enc.train()
        enc(x * 3 + 1)
    bn_before = {k: v.clone() for k, v in enc.state_dict().items() if "running" in k}
    assert bn_before
    center = normal_center(enc, x.numpy(), normalize_center=True)
    module = MeanShiftedModule(enc, center, TabularCorruption(x[:64], 0.4), angular_weight=1.0, freeze_bn=True,
                               optimizer="adam", lr=1e-2, scheduler="constant", log_diagnostics=False)
    sel = HeldOutSelection(x[64:].numpy(), batch_size=16, patience=10, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:64]), batch_size=16, shuffle=True)
    L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[sel], default_root_dir=tmp_path).fit(module, loader)
    for k, v in bn_before.items():  # frozen: the running statistics are still the pre-trained ones
        assert torch.equal(enc.state_dict()[k], v), k
    assert len(sel.history) == 4 and sel.best_epoch == int(np.argmin(sel.history))
    enc.load_state_dict(sel.best_state)
    assert sel.held_out_loss(module) == pytest.approx(sel.history[sel.best_epoch], rel=1e-5)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_the_running_statistics_without_any_callback(tmp_path: Path, freeze: bool) -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 6) * 2 + 1
    enc = build_encoder("table", (6,), width=4, feature_dim=8, hidden_dims=(16,))
    before = {k: v.clone() for k, v in enc.state_dict().items() if "running" in k}
    module = MeanShiftedModule(enc, normal_center(enc, x.numpy(), True), TabularCorruption(x, 0.4), freeze_bn=freeze,
                               optimizer="adam", lr=1e-3, scheduler="constant", log_diagnostics=False)
    L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(
        module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16))
    unchanged = [torch.equal(enc.state_dict()[k], v) for k, v in before.items()]
    assert all(unchanged) if freeze else not any(unchanged)


def _embedding_npz(path: Path, n: int = 150, d: int = 512, seed: int = 0) -> Path:
    """ADBench's image-embedding layout (its ``CV_by_ResNet18`` files): ``X`` (N, 512) float32 pooled ReLU
    features (non-negative), ``y`` (N,) with 1 = anomaly; anomalies here have a shifted block of features."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(0.5, 0.5, size=(n, d)), 0).astype(np.float32)
    y = np.zeros(n, dtype=np.int64)
    y[-25:] = 1
    x[y == 1, :64] += 1.5
    np.savez(path, X=x, y=y)
    return path


def test_adbench_image_embedding_npz_loads_and_runs(tmp_path: Path) -> None:
    folder = tmp_path / "cv"
    folder.mkdir()
    _embedding_npz(folder / "MVTec-AD_bottle.npz")
    _embedding_npz(folder / "MVTec-AD_cable.npz", seed=1)
    tables = load_data(folder)
    assert [t.name for t in tables] == ["MVTec-AD_bottle", "MVTec-AD_cable"]
    assert all(isinstance(t, Table) and t.x.shape == (150, 512) and int(t.y.sum()) == 25 for t in tables)
    runs = tmp_path / "runs"
    assert main(["run", "--data", str(folder / "MVTec-AD_bottle.npz"), "--run-dir", str(runs), *TINY]) == 0
    report = json.loads((runs / "report.json").read_text())
    assert report["headline"] == HEADLINE and HEADLINE not in report["baselines"]
    auc = {r["method"]: r["metrics"]["roc_auc"] for r in report["rows"]}
    assert auc[HEADLINE] > 0.9 and auc["knn_raw"] > 0.9  # separable by construction
    versus = {v["baseline"]: v for v in report["versus"]}
    assert set(versus) == set(report["baselines"]) and "knn_raw" in versus
    assert versus["knn_raw"]["difference"] == pytest.approx(auc[HEADLINE] - auc["knn_raw"])
    assert report["extra"]["mean"][HEADLINE]["roc_auc"] == pytest.approx(auc[HEADLINE])
