"""Multi-layer perceptrons: a generic feature encoder and the SimCLR projection head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLPEncoder", "ProjectionHead"]


def _check_dims(**dims: int) -> None:
    for name, v in dims.items():
        if not (isinstance(v, int) and v > 0):
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def _norm(kind: str | None, dim: int) -> nn.Module | None:
    if kind is None:
        return None
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    raise ValueError(f"norm must be 'batch', 'layer' or None, got {kind!r}")


class MLPEncoder(nn.Module):
    """``in_dim -> [Linear -> norm -> ReLU -> dropout] * len(hidden_dims) -> Linear -> out_dim``.

    For tabular or pre-extracted features (spectra, embeddings, state vectors).

    Args:
        in_dim: input features.
        hidden_dims: widths of the hidden layers (may be empty: a single linear map).
        out_dim: representation size (``self.out_dim``).
        norm: ``"batch"``, ``"layer"`` or ``None`` after each hidden linear layer.
        dropout: dropout probability after each hidden activation.
    """

    def __init__(
        self, in_dim: int, hidden_dims: Sequence[int] = (256, 256), out_dim: int = 128,
        norm: str | None = "batch", dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_dims(in_dim=in_dim, out_dim=out_dim, **{f"hidden_dims[{i}]": h for i, h in enumerate(hidden_dims)})
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        _norm(norm, 1)  # validate the name even when there are no hidden layers
        self.in_dim, self.out_dim = in_dim, out_dim
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden_dims:
            layers.append(nn.Linear(d, h, bias=norm != "batch"))
            if (n := _norm(norm, h)) is not None:
                layers.append(n)
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"MLPEncoder expects (batch, {self.in_dim}) inputs, got {tuple(x.shape)}")
        return self.net(x)


class ProjectionHead(nn.Module):
    r"""SimCLR's non-linear projection head :math:`g(h) = W_2\,\mathrm{ReLU}(\mathrm{BN}(W_1 h))`.

    The contrastive loss is applied to :math:`z = g(h)`; downstream tasks use :math:`h`, which keeps
    information the loss would otherwise discard (Chen et al., "A Simple Framework for Contrastive
    Learning of Visual Representations", ICML 2020, section 4.2). ``num_layers`` counts linear layers:
    1 gives a linear head, 3 the SimCLRv2 head.

    Args:
        in_dim: size of ``h``.
        hidden_dim: width of the hidden layers.
        out_dim: size of ``z``.
        num_layers: number of linear layers, >= 1.
        batch_norm: BatchNorm after each hidden linear layer.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, num_layers: int = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        _check_dims(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers)
        self.in_dim, self.out_dim = in_dim, out_dim
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(d, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            d = hidden_dim
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        if h.ndim != 2 or h.shape[1] != self.in_dim:
            raise ValueError(f"ProjectionHead expects (batch, {self.in_dim}) inputs, got {tuple(h.shape)}")
        return self.net(h)
