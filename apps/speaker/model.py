r"""Encoders (thin ResNet-34 with self-attentive pooling, small ECAPA-TDNN) and the self-supervised module.

Training (:class:`SpeakerSSLModule`): two random 2-s crops of each utterance (the positives, drawn in the training
step by :func:`random_crops`, so that they follow the step-seeded generators and a resumed fit repeats them),
augmented independently, encoded to L2-normalised embeddings; the loss is

* **symmetric** (SimCLR's NT-Xent, :func:`core.losses.nt_xent`): both views are anchors against the 2N - 2
  views of the other utterances;
* **non-symmetric** (:func:`core.losses.info_nce`): view-1 anchors against the N view-2 candidates;
  optionally MoCo: view-2 keys from an EMA key encoder and a FIFO queue (:class:`core.negatives.MemoryQueue`)
  of past keys as extra negatives;

with a positive-only margin: none (SimCLR), additive :math:`\cos\theta - m` (NT-Xent-AM) or angular
:math:`\cos(\theta + m)` (NT-Xent-AAM) (Lepage & Dehak, Interspeech 2023 / arXiv 2404.14913).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from apps.speaker.features import LogMel, WaveAugment
from core.losses import cpc, info_nce, nt_xent
from core.negatives.momentum import MomentumEncoder
from core.negatives.queue import MemoryQueue
from core.training import ContrastiveModule

__all__ = ["ThinResNet34", "SmallECAPA", "SpeakerEncoder", "build_encoder", "random_crops", "SpeakerSSLModule",
           "CPCModule"]


# --------------------------------------------------------------------------------------- thin ResNet-34
class _SE(nn.Module):
    """Squeeze-excitation: channel gates from the time-frequency average."""

    def __init__(self, c: int, reduction: int = 8) -> None:
        super().__init__()
        h = max(1, c // reduction)
        self.fc = nn.Sequential(nn.Linear(c, h), nn.ReLU(inplace=True), nn.Linear(h, c), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        w = self.fc(x.mean(dim=tuple(range(2, x.dim()))))
        return x * w.view(*w.shape, *([1] * (x.dim() - 2)))


class _BasicBlockSE(nn.Module):
    """conv3x3 -> ReLU -> BN -> conv3x3 -> BN -> SE, plus the (projected) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.se = _SE(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.short = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.relu(self.conv1(x)))
        y = self.se(self.bn2(self.conv2(y)))
        return self.relu(y + self.short(x))


class SelfAttentivePooling(nn.Module):
    r"""SAP: :math:`w_t = \mathrm{softmax}_t(v^\top \tanh(W h_t + b))`, output :math:`\sum_t w_t h_t`."""

    def __init__(self, c: int, hidden: int = 64) -> None:
        super().__init__()
        self.proj = nn.Linear(c, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, h: Tensor) -> Tensor:  # (B, C, T)
        h = h.transpose(1, 2)
        w = torch.softmax(self.v(torch.tanh(self.proj(h))), dim=1)
        return (w * h).sum(dim=1)


class ThinResNet34(nn.Module):
    """Thin / fast ResNet-34 (voxceleb_trainer's ResNetSE34L shape): stem 7x7 stride (2, 1), stages [3, 4, 6, 3]
    of widths [w, 2w, 4w, 8w] and strides [1, 2, 2, 1], SE in every block, frequency average, SAP, FC.

    Input (B, n_mels, frames); output (B, embed_dim).
    """

    def __init__(self, n_mels: int = 40, width: int = 16, embed_dim: int = 256) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 7, stride=(2, 1), padding=3, bias=False), nn.ReLU(inplace=True),
                                  nn.BatchNorm2d(w))
        layers, c_in = [], w
        for n_blocks, c, s in ((3, w, 1), (4, 2 * w, 2), (6, 4 * w, 2), (3, 8 * w, 1)):
            for i in range(n_blocks):
                layers.append(_BasicBlockSE(c_in, c, s if i == 0 else 1))
                c_in = c
        self.layers = nn.Sequential(*layers)
        self.pool = SelfAttentivePooling(c_in)
        # BN before the FC centres the pooled (all-positive, post-ReLU) features: without it every embedding of
        # the initial network points the same way (cosine ~ 1) and contrastive training can stall in that collapse
        self.bn = nn.BatchNorm1d(c_in)
        self.fc = nn.Linear(c_in, embed_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def frame_dim(self) -> int:
        return self.fc.in_features

    def frames(self, x: Tensor) -> Tensor:
        """Frame-level features (B, 8w, T / 4) before pooling."""
        return self.layers(self.stem(x.unsqueeze(1))).mean(dim=2)  # frequency average of (B, C, F', T')

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.bn(self.pool(self.frames(x))))


# ------------------------------------------------------------------------------------------ small ECAPA
class _SERes2Block(nn.Module):
    """1x1 conv -> Res2Net dilated 3-tap convs (``scale`` groups) -> 1x1 conv -> SE, with a residual."""

    def __init__(self, c: int, dilation: int, scale: int = 4, se_hidden: int = 64) -> None:
        super().__init__()
        if c % scale:
            raise ValueError(f"ECAPA channels {c} must be divisible by the Res2Net scale {scale}")
        self.scale, w = scale, c // scale
        self.inp = nn.Sequential(nn.Conv1d(c, c, 1), nn.ReLU(inplace=True), nn.BatchNorm1d(c))
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv1d(w, w, 3, dilation=dilation, padding=dilation), nn.ReLU(inplace=True),
                          nn.BatchNorm1d(w)) for _ in range(scale - 1))
        self.out = nn.Sequential(nn.Conv1d(c, c, 1), nn.ReLU(inplace=True), nn.BatchNorm1d(c))
        self.se = nn.Sequential(nn.Conv1d(c, se_hidden, 1), nn.ReLU(inplace=True), nn.Conv1d(se_hidden, c, 1),
                                nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        parts = self.inp(x).chunk(self.scale, dim=1)
        outs, y = [parts[0]], None
        for i, conv in enumerate(self.convs):
            y = conv(parts[i + 1] if y is None else parts[i + 1] + y)
            outs.append(y)
        h = self.out(torch.cat(outs, dim=1))
        return x + h * self.se(h.mean(dim=2, keepdim=True))


class SmallECAPA(nn.Module):
    """ECAPA-TDNN (Desplanques et al., Interspeech 2020) with ``channels`` C: conv k5 -> 3 SE-Res2 blocks
    (dilations 2, 3, 4) -> multi-layer aggregation (1x1 conv to 3C) -> attentive statistics pooling with
    global context -> BN -> FC."""

    def __init__(self, n_mels: int = 40, channels: int = 128, embed_dim: int = 192, attention: int = 64) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv1d(n_mels, c, 5, padding=2), nn.ReLU(inplace=True), nn.BatchNorm1d(c))
        self.blocks = nn.ModuleList(_SERes2Block(c, d) for d in (2, 3, 4))
        self.mfa = nn.Sequential(nn.Conv1d(3 * c, 3 * c, 1), nn.ReLU(inplace=True))
        self.att = nn.Sequential(nn.Conv1d(9 * c, attention, 1), nn.ReLU(inplace=True), nn.BatchNorm1d(attention),
                                 nn.Tanh(), nn.Conv1d(attention, 3 * c, 1))
        self.bn = nn.BatchNorm1d(6 * c)
        self.fc = nn.Linear(6 * c, embed_dim)

    @property
    def frame_dim(self) -> int:
        return self.mfa[0].out_channels

    def frames(self, x: Tensor) -> Tensor:
        """Frame-level features (B, 3C, T) before pooling (the multi-layer aggregation)."""
        h = self.stem(x)
        outs = []
        for b in self.blocks:
            h = b(h)
            outs.append(h)
        return self.mfa(torch.cat(outs, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.frames(x)  # (B, 3C, T)
        T = h.shape[2]
        mu, sd = h.mean(dim=2, keepdim=True), h.std(dim=2, keepdim=True).clamp_min(1e-4) if T > 1 else None
        if sd is None:
            sd = torch.full_like(mu, 1e-4)
        ctx = torch.cat([h, mu.expand(-1, -1, T), sd.expand(-1, -1, T)], dim=1)
        w = torch.softmax(self.att(ctx), dim=2)
        m = (w * h).sum(dim=2)
        s = ((w * h.pow(2)).sum(dim=2) - m.pow(2)).clamp_min(1e-6).sqrt()
        return self.fc(self.bn(torch.cat([m, s], dim=1)))


# -------------------------------------------------------------------------------------------- wrapper
class SpeakerEncoder(nn.Module):
    """Waveforms (B, samples) at 16 kHz -> log-mel features -> backbone -> embeddings (B, embed_dim)."""

    def __init__(self, arch: str = "resnet", n_mels: int = 40, width: int = 16, embed_dim: int = 256,
                 f_max: float = 8000.0, feature_norm: str = "channel") -> None:
        super().__init__()
        self.spec = dict(arch=arch, n_mels=n_mels, width=width, embed_dim=embed_dim, f_max=f_max,
                         feature_norm=feature_norm)
        self.features = LogMel(n_mels, f_max, feature_norm)
        if arch == "resnet":
            self.backbone: nn.Module = ThinResNet34(n_mels, width, embed_dim)
        elif arch == "ecapa":
            self.backbone = SmallECAPA(n_mels, width, embed_dim)
        else:
            raise ValueError(f"encoder must be 'resnet' or 'ecapa', got {arch!r}")

    def forward(self, wave: Tensor) -> Tensor:
        return self.backbone(self.features(wave))

    def frames(self, wave: Tensor) -> Tensor:
        """Frame-level features (B, D, T') of the backbone, before pooling."""
        return self.backbone.frames(self.features(wave))


def build_encoder(spec: dict[str, Any]) -> SpeakerEncoder:
    return SpeakerEncoder(**spec)


def random_crops(waves: Tensor, lengths: Tensor, n: int) -> Tensor:
    """(B, n) crops of the zero-padded utterances ``waves`` (B, T) of ``lengths`` (B,): each a window of ``n``
    samples starting uniformly at random in ``[0, length - n]``; an utterance shorter than ``n`` is repeated
    (wrapped) from its start. Draws from torch's global generator on the batch's device."""
    lengths = lengths.to(waves.device).long().clamp_min(1)
    hi = (lengths - n + 1).clamp_min(1)
    start = (torch.rand(len(lengths), device=waves.device) * hi).long().clamp_max(hi - 1)
    idx = (start[:, None] + torch.arange(n, device=waves.device)[None, :]) % lengths[:, None]
    return waves.gather(1, idx)


def _views(batch: Any, crop_samples: int | None) -> tuple[Tensor, Tensor]:
    """The two views of a batch: ``(x1, x2)`` as given, or two random crops of ``(waves, lengths)``."""
    if crop_samples is None:
        return batch[0], batch[1]
    waves, lengths = batch[0], batch[1]
    return random_crops(waves, lengths, crop_samples), random_crops(waves, lengths, crop_samples)


class SpeakerSSLModule(ContrastiveModule):
    """Self-supervised speaker encoder: two augmented crops per utterance, NT-Xent / InfoNCE with margins.

    Batches are ``(x1, x2)``: (B, samples) crops of the same B utterances; or, with ``crop_samples``, ``(waves,
    lengths)`` of whole zero-padded utterances, of which the step draws the two crops (:func:`random_crops`).

    Args:
        encoder_spec: arguments of :class:`SpeakerEncoder`.
        temperature: tau (the papers' scale s = 1 / tau).
        margin, margin_type: positive-only margin; ``"additive"`` (AM) or ``"angular"`` (AAM); 0 = SimCLR.
        symmetric: NT-Xent over the 2N views (True) or view-1 anchors against view-2 candidates (False).
        projector_dim: 0 = no projector (the margin papers' 2024 setting), else a 2-layer MLP to this size.
        queue_size: > 0 turns on MoCo (EMA key encoder with ``key_momentum`` + queue); needs symmetric=False.
        augment: the :class:`WaveAugment` applied to both views in training (None = no augmentation).
        crop_samples: batches are whole utterances, cropped to this many samples in the step (None: batches are
            the two views).
        **optim: optimiser settings of :class:`core.training.ContrastiveModule`.
    """

    def __init__(self, encoder_spec: dict[str, Any], *, temperature: float = 0.05, margin: float = 0.0,
                 margin_type: str = "additive", symmetric: bool = True, projector_dim: int = 0,
                 queue_size: int = 0, key_momentum: float = 0.999, augment: dict[str, float] | None = None,
                 crop_samples: int | None = None, **optim: Any) -> None:
        encoder = build_encoder(encoder_spec)
        head = None
        if projector_dim:
            d = encoder_spec["embed_dim"]
            head = nn.Sequential(nn.Linear(d, 4 * d), nn.BatchNorm1d(4 * d), nn.ReLU(inplace=True),
                                 nn.Linear(4 * d, projector_dim))
        super().__init__(encoder, head, **optim)
        self.save_hyperparameters(ignore=["encoder", "projection_head"])
        if queue_size and symmetric:
            raise ValueError("the MoCo queue runs with the non-symmetric loss (symmetric=False)")
        self.tau, self.margin, self.margin_type, self.symmetric = temperature, margin, margin_type, symmetric
        self.crop_samples = crop_samples
        self.augment = WaveAugment(**augment) if augment is not None else None
        self.queue = MemoryQueue(queue_size, projector_dim or encoder_spec["embed_dim"]) if queue_size else None
        self.key_encoder = None
        if queue_size:
            self.key_encoder = MomentumEncoder(nn.Sequential(self.encoder, self.projection_head), key_momentum)

    @property
    def temperature(self) -> float:
        return self.tau

    def contrastive_step(self, batch: Any) -> dict[str, Tensor]:
        x1, x2 = _views(batch, self.crop_samples)
        if self.training and self.augment is not None:
            x1, x2 = self.augment(x1), self.augment(x2)
        z1 = self.project(x1)
        # under the runner with several devices the losses' gather=None default makes the candidates of every rank
        # negatives (core.app.hardware); on one process nothing is gathered
        kw = dict(temperature=self.tau, margin=self.margin, margin_type=self.margin_type)
        if self.symmetric:
            z2 = self.project(x2)
            return {"loss": nt_xent(z1, z2, **kw), "z1": z1, "z2": z2}
        if self.key_encoder is None:
            z2 = self.project(x2)
            return {"loss": info_nce(z1, z2, symmetric=False, **kw), "z1": z1, "z2": z2}
        if self.training:
            self.key_encoder.update(nn.Sequential(self.encoder, self.projection_head))
        z2 = self.key_encoder(x2)
        loss = info_nce(z1, z2, symmetric=False, negatives=self.queue.negatives(), **kw)
        if self.training:
            self.queue.enqueue(z2)
        return {"loss": loss, "z1": z1, "z2": z2}


class CPCModule(ContrastiveModule):
    r"""Optional CPC pre-training of the encoder's frame level (van den Oord et al. 2018; :func:`core.losses.cpc`).

    Frame features :math:`z_t` of one crop per utterance (the backbone before pooling), a one-layer GRU context
    :math:`c_t`, and one linear predictor :math:`W_k` per step :math:`k = 1..K`; every frame of the batch is a
    candidate. Batches are like :class:`SpeakerSSLModule`'s (``crop_samples`` likewise); only the first view is
    used.
    """

    def __init__(self, encoder_spec: dict[str, Any], *, steps: int = 4, context_dim: int = 128,
                 crop_samples: int | None = None, **optim: Any) -> None:
        encoder = build_encoder(encoder_spec)
        super().__init__(encoder, None, **optim)
        self.save_hyperparameters(ignore=["encoder", "projection_head"])
        self.crop_samples = crop_samples
        d = encoder.backbone.frame_dim
        self.gru = nn.GRU(d, context_dim, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(context_dim, d) for _ in range(steps))

    def contrastive_step(self, batch: Any) -> dict[str, Tensor]:
        x = batch[0] if self.crop_samples is None else random_crops(batch[0], batch[1], self.crop_samples)
        z = self.encoder.frames(x).transpose(1, 2)  # (B, T, D)
        context, _ = self.gru(z)
        return {"loss": cpc(context, z, predictors=self.predictors)}
