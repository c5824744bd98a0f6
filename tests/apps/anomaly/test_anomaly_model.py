"""Views, fine-tuning modules, checkpoint loading and scoring of the anomaly app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apps.anomaly.model import (
    CompactnessModule,
    MeanShiftedModule,
    TabularCorruption,
    bn_adapted,
    build_encoder,
    embed,
    image_augment,
    load_encoder_checkpoint,
    normal_center,
)
from core.app import InputError
from core.losses import mean_shifted
from core.metrics.knn import knn_scores


def test_tabular_corruption_takes_values_from_the_same_column() -> None:
    pool = torch.arange(20.0).view(10, 2) * torch.tensor([1.0, 100.0])  # column 0: 0..18, column 1: 100..1900
    x = torch.full((50, 2), -1.0)
    out = TabularCorruption(pool, rate=0.5)(x)
    changed = out != -1
    assert 0.2 < changed.float().mean() < 0.8
    assert set(out[:, 0][changed[:, 0]].tolist()) <= set(pool[:, 0].tolist())
    assert set(out[:, 1][changed[:, 1]].tolist()) <= set(pool[:, 1].tolist())
    masked = TabularCorruption(pool, rate=0.5, mode="mask")(x)
    assert set(masked.unique().tolist()) <= {-1.0, 0.0}
    with pytest.raises(ValueError):
        TabularCorruption(pool, rate=1.0)


def test_msc_module_uses_core_loss_and_trains() -> None:
    torch.manual_seed(0)
    enc = build_encoder("image", (1, 12, 12), width=4, feature_dim=8, hidden_dims=())
    x = torch.rand(16, 1, 12, 12)
    c = normal_center(enc, x.numpy(), normalize_center=False)
    assert torch.allclose(c, embed(enc, x).mean(0))
    module = MeanShiftedModule(enc, c, torch.nn.Identity(), angular_weight=0.5)
    out = module.contrastive_step((x,))
    ref = mean_shifted(out["z1"], out["z2"], c, temperature=0.25, angular_weight=0.5)
    assert torch.isfinite(out["loss"]) and torch.allclose(out["loss"], ref)
    out["loss"].backward()
    assert all(p.grad is not None for p in enc.parameters())
    comp = CompactnessModule(enc, F.normalize(c, dim=0)).contrastive_step((x,))
    assert comp["loss"].item() >= 0


def test_image_augment_keeps_shape_and_range() -> None:
    x = torch.rand(4, 1, 28, 28)
    y = image_augment(28)(x)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1 and not torch.equal(x, y)


def test_load_encoder_checkpoint(tmp_path: Path) -> None:
    enc = build_encoder("table", (5,), width=4, feature_dim=3, hidden_dims=(7,))
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()}}, tmp_path / "a.ckpt")
    other = build_encoder("table", (5,), width=4, feature_dim=3, hidden_dims=(7,))
    load_encoder_checkpoint(other, tmp_path / "a.ckpt")
    for k, v in enc.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    wrong = build_encoder("table", (5,), width=4, feature_dim=3, hidden_dims=(9,))
    with pytest.raises(InputError, match="a.ckpt: does not fit the encoder"):
        load_encoder_checkpoint(wrong, tmp_path / "a.ckpt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(InputError, match="junk.pt is damaged"):
        load_encoder_checkpoint(other, tmp_path / "junk.pt")
    with pytest.raises(InputError, match="missing.pt does not exist"):
        load_encoder_checkpoint(other, tmp_path / "missing.pt")
    torch.save({"state_dict": {"encoder.w": torch.ones(1)}, "opaque": Path("x")}, tmp_path / "code.ckpt")
    with pytest.raises(InputError, match="code.ckpt: it holds objects other than tensors"):
        load_encoder_checkpoint(other, tmp_path / "code.ckpt")  # never unpickles arbitrary objects


def test_knn_auroc_on_separable_features() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    # normal features around one direction, anomalies around the opposite one
    train = rng.normal(size=(100, 8)) * 0.1 + np.eye(8)[0]
    e0 = np.eye(8)[0]
    test = np.concatenate([rng.normal(size=(30, 8)) * 0.1 + e0, rng.normal(size=(30, 8)) * 0.1 - e0])
    y = np.r_[np.zeros(30), np.ones(30)]
    assert roc_auc_score(y, knn_scores(test, train, k=2)) == 1.0
    assert roc_auc_score(y, -knn_scores(test, train, k=2)) == 0.0


def test_bn_adapted_reestimates_statistics_only() -> None:
    torch.manual_seed(0)
    enc = build_encoder("image", (1, 8, 8), width=4, feature_dim=8, hidden_dims=())
    x = (torch.rand(40, 1, 8, 8) * 3 + 2).numpy()
    adapted = bn_adapted(enc, x, batch_size=20)  # equal batches: the average of batch means is the mean
    assert not adapted.training
    for (k, v), (_, w) in zip(enc.state_dict().items(), adapted.state_dict().items()):
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, w), k
    first_bn = adapted.features[1]
    conv_out = adapted.features[0](torch.as_tensor(x))
    torch.testing.assert_close(first_bn.running_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
