"""Shapes, configuration and input checks of core.encoders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.encoders import MLPEncoder, ProjectionHead, SmallCNN


@pytest.mark.parametrize("size", [8, 28, 32, 5])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_cnn_output_shape(size: int, in_channels: int) -> None:
    net = SmallCNN(in_channels=in_channels, width=8, out_dim=24)
    out = net(torch.randn(4, in_channels, size, size))
    assert out.shape == (4, 24)
    assert net.out_dim == 24


def test_small_cnn_gradients_reach_first_layer() -> None:
    net = SmallCNN(width=4, out_dim=6)
    net(torch.randn(3, 1, 8, 8)).sum().backward()
    first = net.features[0]
    assert isinstance(first, nn.Conv2d) and first.weight.grad is not None
    assert first.weight.grad.abs().sum() > 0


def test_small_cnn_keeps_spatial_layout_with_pool_size() -> None:
    # with pool_size=2 the read-out sees quadrants: a flipped image gives a different representation
    torch.manual_seed(0)
    net = SmallCNN(width=4, out_dim=8, pool_size=2).eval()
    x = torch.zeros(1, 1, 8, 8)
    x[..., :4, :4] = 1.0
    assert not torch.allclose(net(x), net(x.flip(-1)))


def test_small_cnn_rejects_wrong_input() -> None:
    net = SmallCNN(in_channels=3)
    with pytest.raises(ValueError):
        net(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError):
        net(torch.randn(2, 8, 8))
    with pytest.raises(ValueError):
        SmallCNN(width=0)


@pytest.mark.parametrize("norm", ["batch", "layer", None])
def test_mlp_encoder_shapes(norm: str | None) -> None:
    net = MLPEncoder(10, hidden_dims=(16, 8), out_dim=5, norm=norm, dropout=0.1)
    assert net(torch.randn(7, 10)).shape == (7, 5)
    n_linear = sum(isinstance(m, nn.Linear) for m in net.modules())
    assert n_linear == 3


def test_mlp_encoder_without_hidden_layers_is_linear() -> None:
    net = MLPEncoder(4, hidden_dims=(), out_dim=2)
    x = torch.randn(3, 4)
    lin = net.net[0]
    assert torch.allclose(net(x), x @ lin.weight.T + lin.bias)


def test_mlp_encoder_checks() -> None:
    with pytest.raises(ValueError):
        MLPEncoder(4, norm="group")
    with pytest.raises(ValueError):
        MLPEncoder(4, dropout=1.0)
    with pytest.raises(ValueError):
        MLPEncoder(4)(torch.randn(2, 5))


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_projection_head_layers_and_shape(num_layers: int) -> None:
    head = ProjectionHead(12, hidden_dim=20, out_dim=6, num_layers=num_layers)
    assert head(torch.randn(5, 12)).shape == (5, 6)
    assert sum(isinstance(m, nn.Linear) for m in head.modules()) == num_layers
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == num_layers - 1


def test_projection_head_simclr_structure() -> None:
    head = ProjectionHead(8, hidden_dim=16, out_dim=4)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    with pytest.raises(ValueError):
        head(torch.randn(2, 9))
    with pytest.raises(ValueError):
        ProjectionHead(8, num_layers=0)
