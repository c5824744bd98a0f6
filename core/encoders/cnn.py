"""A small convolutional encoder for low-resolution images (8x8 digits, 28x28 MNIST-like, 32x32)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN"]


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks (``width``, ``2 width``, ``4 width`` channels) and a linear read-out.

    ``conv-BN-ReLU -> maxpool -> conv-BN-ReLU -> maxpool -> conv-BN-ReLU -> adaptive avg-pool to
    pool_size x pool_size -> flatten -> linear(out_dim)``. The pools use ``ceil_mode`` so any input of at
    least 1x1 works; an 8x8 image reaches the read-out as 2x2, a 28x28 one as 7x7 averaged down to
    ``pool_size``. The output (no activation) is the representation ``h`` that a
    :class:`~core.encoders.ProjectionHead` maps to the contrastive space and a linear probe reads.

    Args:
        in_channels: image channels.
        width: channels of the first block.
        out_dim: representation size (``self.out_dim``).
        pool_size: side of the adaptive average pool before the read-out (keeps coarse spatial layout).
        batch_norm: use BatchNorm after each convolution.
    """

    def __init__(
        self, in_channels: int = 1, width: int = 32, out_dim: int = 128, pool_size: int = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("width", width), ("out_dim", out_dim),
                        ("pool_size", pool_size)):
            if not (isinstance(v, int) and v > 0):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels, self.out_dim = in_channels, out_dim
        self.features = nn.Sequential(
            *_conv_block(in_channels, width, batch_norm),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_block(width, 2 * width, batch_norm),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_block(2 * width, 4 * width, batch_norm),
            nn.AdaptiveAvgPool2d(pool_size),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width * pool_size * pool_size, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) images -> (B, out_dim) representations."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SmallCNN expects (batch, {self.in_channels}, height, width) images, got {tuple(x.shape)}"
            )
        return self.head(self.features(x))
