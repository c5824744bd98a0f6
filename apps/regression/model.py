r"""The models of the regression app: one MLP encoder + linear regressor for every method.

:class:`DIRRegressor` trains ``f`` (:class:`TabularEncoder`: categorical embeddings + an MLP) and a linear
regressor ``r`` on
``L = mean_i w_i l(r(f(x_i)), y_i) + beta L_ConR``:

* ``l`` = L1 or squared error (in label units; the regressor predicts standardised targets that are
  mapped back with the training mean / std);
* ``w_i`` = 1, inverse or square-root-inverse frequency weights, optionally LDS-smoothed
  (:func:`apps.regression.dir.lds_weights`);
* FDS (:class:`apps.regression.dir.FDS`) re-calibrates ``f(x)`` before ``r`` during training;
* ConR (:func:`core.losses.con_r`, Keramati et al. 2024) on two augmented views of the batch (Gaussian
  noise and feature masking on standardised features), with the views' detached predictions choosing
  the negatives and ``w`` as the anchors' weights. The regression term uses the clean inputs (the paper
  uses a third augmented view of each image), and the views' passes leave BatchNorm's running statistics
  alone (:func:`frozen_bn_stats`): otherwise two noisy batches per clean one set the statistics used at
  test time, which measurably raised the test MAE of ConR on abalone.

:class:`SupReMixPretrainer` trains ``f`` with a projection head on :func:`core.losses.sup_re_mix` (Wu et
al. 2023) over two augmented views, with the label *bin* as the label (equal bins are positives; the
mix-pos window counts bins). The linear probe is then fitted in closed form (:func:`fit_linear_probe`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from apps.regression.dir import FDS
from core.encoders import MLPEncoder, ProjectionHead
from core.losses import con_r, sup_re_mix
from core.training import ContrastiveModule

__all__ = ["DIRRegressor", "SupReMixPretrainer", "TabularEncoder", "augment_view", "embedding_dim",
           "fit_linear_probe", "frozen_bn_stats"]


def augment_view(x: Tensor, noise: float, mask: float, n_num: int | None = None) -> Tensor:
    """One random view of tabular features (``x[:, :n_num]`` standardised numbers, the rest categorical codes):
    zero each number with probability ``mask`` and add Gaussian noise of std ``noise``; set each code to the
    unknown code 0 with probability ``mask``."""
    n_num = x.shape[1] if n_num is None else n_num
    num, codes = x[:, :n_num], x[:, n_num:]
    if mask > 0:
        num = num * (torch.rand_like(num) >= mask).to(x.dtype)
        if codes.shape[1]:
            codes = codes * (torch.rand_like(codes) >= mask).to(x.dtype)
    if noise > 0:
        num = num + noise * torch.randn_like(num)
    return torch.cat([num, codes], 1) if codes.shape[1] else num


def embedding_dim(cardinality: int, cap: int = 16) -> int:
    """Embedding size of a categorical column with ``cardinality`` codes: ``min(cap, max(2, round(1.6 K^0.56)))``
    with K the number of known values (the usual rule of thumb, capped for small tables)."""
    return int(min(cap, max(2, round(1.6 * max(1, cardinality - 1) ** 0.56))))


class TabularEncoder(nn.Module):
    """Learned embeddings of the categorical codes, concatenated with the numeric features, into an MLP.

    ``x[:, :n_num]`` are standardised numbers, ``x[:, n_num:]`` the codes of the categorical columns (0 = unknown,
    1..K known values). Column j has a table of K_j learned vectors; the unknown code maps to the mean of the
    column's K_j vectors (an unseen value is treated as the average value, and masked views in ConR / SupReMix use
    the same vector). Without categorical columns this is the plain :class:`core.encoders.MLPEncoder`.
    """

    def __init__(self, n_num: int, cardinalities: list[int], hidden: list[int], out_dim: int, *,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.n_num = int(n_num)
        self.cardinalities = [int(c) for c in cardinalities]
        self.embeddings = nn.ModuleList(nn.Embedding(c - 1 if c > 1 else 1, embedding_dim(c))
                                        for c in self.cardinalities)
        for e in self.embeddings:
            nn.init.normal_(e.weight, std=0.1)
        in_dim = self.n_num + sum(e.embedding_dim for e in self.embeddings)
        self.mlp = MLPEncoder(in_dim, hidden, out_dim, norm="batch", dropout=dropout)

    def embed(self, x: Tensor) -> Tensor:
        """The MLP's input: numbers, then each column's vector."""
        if not self.embeddings:
            return x
        parts = [x[:, : self.n_num]]
        codes = x[:, self.n_num :].round().long()
        for j, emb in enumerate(self.embeddings):
            table = torch.cat([emb.weight.mean(0, keepdim=True), emb.weight])  # row 0: unknown = mean
            parts.append(nn.functional.embedding(codes[:, j].clamp(0, table.shape[0] - 1), table))
        return torch.cat(parts, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.embed(x))


@contextmanager
def frozen_bn_stats(module: nn.Module):
    """Forward passes inside keep BatchNorm's running statistics unchanged (batch statistics are still used
    for normalisation): ConR's noisy views must not shift the statistics that clean test inputs see."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


class DIRRegressor(ContrastiveModule):
    """Encoder + linear regressor with optional re-weighting (weights come with the batch), FDS and ConR.

    Batches are ``(x, y, w, b)``: standardised features, targets, sample weights, label bins.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        feature_dim: int,
        n_bins: int,
        y_mean: float,
        y_std: float,
        *,
        cardinalities: list[int] | None = None,
        dropout: float = 0.0,
        loss: str = "l1",
        fds: dict[str, Any] | None = None,
        conr: dict[str, Any] | None = None,
        conr_weight: float = 1.0,
        use_conr_weights: bool = False,
        view_noise: float = 0.1,
        view_mask: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        cards = list(cardinalities or [])
        encoder = TabularEncoder(in_dim - len(cards), cards, hidden, feature_dim, dropout=dropout)
        super().__init__(encoder, None, optimizer="adam", lr=lr, weight_decay=weight_decay, scheduler="cosine",
                         log_diagnostics=False)
        self.regressor = nn.Linear(feature_dim, 1)
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))
        self.loss_kind = loss
        self.fds = FDS(feature_dim, n_bins, **fds) if fds is not None else None
        self.conr, self.conr_weight, self.use_conr_weights = conr, conr_weight, use_conr_weights
        self.view_noise, self.view_mask, self.n_num = view_noise, view_mask, in_dim - len(cards)
        self._epoch_features: list[tuple[Tensor, Tensor]] = []

    def head(self, h: Tensor) -> Tensor:
        """Prediction in label units from representations."""
        return self.regressor(h).squeeze(-1) * self.y_std + self.y_mean

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        """Predictions (eval mode, no FDS calibration)."""
        was = self.training
        self.eval()
        out = torch.cat([self.head(self(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out

    def contrastive_step(self, batch: Any) -> dict[str, Tensor]:
        x, y, w, b = batch
        h = self(x)
        if self.fds is not None and self.training:
            self._epoch_features.append((h.detach(), b))
            h = self.fds.calibrate(h, b, self.current_epoch)
        pred = self.head(h)
        err = (pred - y).abs() if self.loss_kind == "l1" else (pred - y) ** 2
        loss = (err * w).mean()
        out = {"loss": loss, "reg": loss.detach()}
        if self.conr is not None and self.training:
            B = x.shape[0]
            views = torch.cat([augment_view(x, self.view_noise, self.view_mask, self.n_num) for _ in range(2)])
            with frozen_bn_stats(self.encoder):
                hv = self(views)
            with torch.no_grad():
                pv = self.head(hv).view(2, B).T  # (B, 2) detached predictions of the views
            feats = hv.view(2, B, -1).transpose(0, 1)  # (B, 2, D), normalised inside con_r
            lc = con_r(feats, y, pv, sample_weights=w if self.use_conr_weights else None, **self.conr)
            out["conr"] = lc.detach()
            out["loss"] = loss + self.conr_weight * lc
        return out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        out = self.contrastive_step(batch)
        if "conr" in out:
            self.log("train/conr", out["conr"], on_step=True, on_epoch=False)
        return self._log_step("train", out)

    def on_train_epoch_end(self) -> None:
        if self.fds is not None and self._epoch_features:
            h = torch.cat([f for f, _ in self._epoch_features])
            b = torch.cat([bb for _, bb in self._epoch_features])
            if self._trainer is not None and self.trainer.world_size > 1:
                # every rank updates with the features of every rank (Lightning's sampler gives equal counts)
                h, b = self.all_gather(h).flatten(0, 1), self.all_gather(b).flatten(0, 1)
            self.fds.update(h, b, self.current_epoch)
        self._epoch_features = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _, _ = batch
        mae = (self.head(self(x)) - y).abs().mean()
        self.log("val/mae", mae, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)


class SupReMixPretrainer(ContrastiveModule):
    """Encoder + projection head trained with SupReMix on two augmented views; labels are bin indices."""

    def __init__(
        self, in_dim: int, hidden: list[int], feature_dim: int, *, cardinalities: list[int] | None = None,
        dropout: float = 0.0, projection_dim: int = 32,
        temperature: float = 0.5, window: float = 5.0, beta: tuple[float, float] = (2.0, 8.0),
        view_noise: float = 0.1, view_mask: float = 0.1, lr: float = 1e-3, weight_decay: float = 1e-4,
    ) -> None:
        cards = list(cardinalities or [])
        encoder = TabularEncoder(in_dim - len(cards), cards, hidden, feature_dim, dropout=dropout)
        head = ProjectionHead(feature_dim, 128, projection_dim)
        super().__init__(encoder, head, optimizer="adam", lr=lr, weight_decay=weight_decay, scheduler="cosine",
                         log_diagnostics=True)
        self.loss_kw = dict(temperature=temperature, window=window, beta=tuple(beta))
        self.view_noise, self.view_mask, self.n_num = view_noise, view_mask, in_dim - len(cards)

    def contrastive_step(self, batch: Any) -> dict[str, Tensor]:
        x, _, _, b = batch
        B = x.shape[0]
        views = torch.cat([augment_view(x, self.view_noise, self.view_mask, self.n_num) for _ in range(2)])
        z = nn.functional.normalize(self.project(views), dim=-1)
        z1, z2 = z[:B], z[B:]
        labels = b.to(z.dtype)
        if bool((labels == labels[0]).all()):  # a one-bin batch has no negatives: skip it
            return {"loss": z.sum() * 0.0, "z1": z1, "z2": z2}
        loss = sup_re_mix(torch.stack([z1, z2], 1), labels, **self.loss_kw)
        return {"loss": loss, "z1": z1, "z2": z2}

    def validation_step(self, batch: Any, batch_idx: int) -> None:  # no label-free validation loss needed
        return None


def fit_linear_probe(h: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, ridge: float = 1e-3) -> tuple[
        np.ndarray, float]:
    r"""Weighted ridge regression ``min_{a,c} sum_i w_i (h_i a + c - y_i)^2 + ridge * n * |a|^2`` in closed
    form (the bias is not penalised): the minimiser that the paper's SGD linear probe with MSE approaches.
    Returns ``(a, c)``."""
    h, y = np.asarray(h, np.float64), np.asarray(y, np.float64)
    n, d = h.shape
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    X = np.concatenate([h, np.ones((n, 1))], 1)
    XtW = X.T * w
    A = XtW @ X
    A[:d, :d] += ridge * n * np.eye(d)
    sol = np.linalg.solve(A, XtW @ y)
    return sol[:d], float(sol[d])
