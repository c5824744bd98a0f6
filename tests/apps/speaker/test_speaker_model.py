"""Encoders, augmentation and the loss wiring of the self-supervised module, against naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from apps.speaker.features import (
    LogMel,
    WaveAugment,
    add_noise,
    band_limit,
    coloured_noise,
    mu_law_codec,
    synthetic_rir,
)
from apps.speaker.model import SpeakerEncoder, SpeakerSSLModule

SPEC = dict(arch="ecapa", n_mels=40, width=16, embed_dim=8)


def _naive_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float, m: float, kind: str | None, sym: bool) -> float:
    """Cross-entropy with a positive-only margin, written with explicit loops over anchors."""
    a = torch.nn.functional.normalize(z1.double(), dim=1)
    b = torch.nn.functional.normalize(z2.double(), dim=1)
    n = a.shape[0]

    def phi(c: float) -> float:
        if kind == "additive":
            return c - m
        if kind == "angular":
            return math.cos(math.acos(max(-1.0, min(1.0, c))) + m)
        return c

    losses = []
    if sym:
        z = torch.cat([a, b])
        for i in range(2 * n):
            p = (i + n) % (2 * n)
            logits = [phi(float(z[i] @ z[p])) / tau] + [float(z[i] @ z[k]) / tau for k in range(2 * n)
                                                         if k not in (i, p)]
            losses.append(-logits[0] + math.log(sum(math.exp(v) for v in logits)))
    else:
        for i in range(n):
            logits = [phi(float(a[i] @ b[i])) / tau] + [float(a[i] @ b[k]) / tau for k in range(n) if k != i]
            losses.append(-logits[0] + math.log(sum(math.exp(v) for v in logits)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("kind, sym", [(None, False), (None, True), ("additive", False), ("additive", True),
                                       ("angular", False), ("angular", True)])
def test_loss_variants_match_naive_formula(kind: str | None, sym: bool) -> None:
    torch.manual_seed(0)
    m = 0.0 if kind is None else 0.2
    mod = SpeakerSSLModule(SPEC, temperature=0.1, margin=m, margin_type=kind or "additive", symmetric=sym,
                           augment=None).eval()
    x1, x2 = torch.randn(5, 8000) * 0.1, torch.randn(5, 8000) * 0.1
    out = mod.contrastive_step((x1, x2))
    ref = _naive_loss(out["z1"].detach(), out["z2"].detach(), 0.1, m, kind, sym)
    assert float(out["loss"].detach()) == pytest.approx(ref, rel=1e-4)


def test_margin_raises_loss_and_moco_queue() -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 8000) * 0.1, torch.randn(4, 8000) * 0.1)
    plain = SpeakerSSLModule(SPEC, temperature=0.1, margin=0.0, symmetric=True).eval()
    am = SpeakerSSLModule(SPEC, temperature=0.1, margin=0.3, symmetric=True).eval()
    am.load_state_dict(plain.state_dict())
    assert float(am.contrastive_step(x)["loss"].detach()) > float(plain.contrastive_step(x)["loss"].detach())
    moco = SpeakerSSLModule(SPEC, temperature=0.1, symmetric=False, queue_size=6, augment={}).train()
    for step in range(3):
        out = moco.contrastive_step(x)
        out["loss"].backward()
        assert len(moco.queue) == min(6, 4 * (step + 1))
    assert not any(p.requires_grad for p in moco.key_encoder.parameters())
    with pytest.raises(ValueError, match="non-symmetric"):
        SpeakerSSLModule(SPEC, symmetric=True, queue_size=8)


@pytest.mark.parametrize("arch, width", [("resnet", 4), ("ecapa", 16)])
def test_encoders_variable_length(arch: str, width: int) -> None:
    enc = SpeakerEncoder(arch, n_mels=40, width=width, embed_dim=12).eval()
    for n in (8000, 16000, 40000):
        with torch.no_grad():
            assert enc(torch.randn(2, n) * 0.1).shape == (2, 12)


def test_logmel_is_instance_normalised() -> None:
    f = LogMel(40)(torch.randn(3, 16000) * 0.1)
    assert f.shape == (3, 40, 101)
    assert torch.allclose(f.mean(-1), torch.zeros(3, 40), atol=1e-4)
    assert torch.allclose(f.std(-1), torch.ones(3, 40), atol=1e-3)


def test_augmentation_pieces() -> None:
    torch.manual_seed(0)
    x, n = torch.randn(4, 16000), torch.randn(4, 16000)
    snr = torch.tensor([0.0, 5.0, 10.0, 20.0])
    y = add_noise(x, n, snr)
    p = lambda v: 10 * torch.log10(v.pow(2).mean(1) + 1e-4)  # noqa: E731 - the same power definition
    assert torch.allclose(p(x) - p(y - x), snr, atol=0.05)  # up to the 1e-4 floor inside P
    rir = synthetic_rir(3, rt60=torch.tensor([0.2, 0.5, 0.8]), length=8000)
    assert torch.allclose(rir.pow(2).sum(1), torch.ones(3), atol=1e-5)
    # longer RT60 -> more energy in the late tail (after 50 ms)
    late = rir[:, 800:].pow(2).sum(1)
    assert late[0] < late[1] < late[2]
    # coloured noise: beta = 2 puts far more power below 500 Hz than white noise does
    c = coloured_noise((2, 16000), torch.tensor([0.0, 2.0]))
    spec = torch.fft.rfft(c, dim=1).abs().pow(2)
    low = spec[:, :500].sum(1) / spec.sum(1)
    assert low[0] < 0.1 < 0.9 < low[1]
    aug = WaveAugment(reverb_prob=0.0, noise_prob=0.0, lowpass_prob=1.0)
    lp = aug(torch.randn(2, 16000))
    hi = torch.fft.rfft(lp, dim=1).abs()[:, 4001:]
    assert hi.max() < 1e-3  # nothing left above 4 kHz
    full = WaveAugment()(torch.randn(6, 32000) * 0.1)
    assert full.shape == (6, 32000) and torch.isfinite(full).all()
    with pytest.raises(ValueError, match="reverb_prob"):
        WaveAugment(reverb_prob=1.5)
    assert np.isfinite(float(full.std()))


def test_logmel_global_norm_keeps_envelope_and_removes_gain() -> None:
    torch.manual_seed(0)
    white = torch.randn(1, 16000) * 0.1
    low = torch.fft.irfft(torch.fft.rfft(white) * torch.linspace(1, 0.05, 8001), n=16000)  # a tilted spectrum
    for norm in ("channel", "global"):
        lm = LogMel(40, 8000, norm)
        assert torch.allclose(lm(3 * white), lm(white), atol=1e-3)  # the gain is removed either way
    g = LogMel(40, 8000, "global")
    f = g(torch.cat([white, low]))
    assert torch.allclose(f.mean((-2, -1)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(f.std((-2, -1)), torch.ones(2), atol=1e-3)
    # the channel means (the long-term spectral envelope) survive global normalisation and differ between the two
    tilt = f[1].mean(-1) - f[0].mean(-1)  # tilted minus white long-term log spectrum: falls with frequency
    assert tilt[-5:].mean() < tilt[:5].mean() - 1
    assert torch.allclose(LogMel(40, 8000, "channel")(low).mean(-1), torch.zeros(1, 40), atol=1e-4)
    with pytest.raises(ValueError, match="feature norm"):
        LogMel(40, 8000, "frame")


def test_band_limit_codec_and_snr_range() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 16000)  # 1 s: FFT bin k is k Hz
    y = band_limit(x, 300.0, torch.tensor([1000.0, 2000.0, 3400.0]))
    spec, ref = torch.fft.rfft(y, dim=1).abs(), torch.fft.rfft(x, dim=1).abs()
    for row, hi in enumerate((1000, 2000, 3400)):
        assert spec[row, :300].max() < 1e-3 and spec[row, hi + 1:].max() < 1e-3
        assert torch.allclose(spec[row, 300: hi + 1], ref[row, 300: hi + 1], atol=1e-3)  # the band is kept
    # mu-law: the expanded codes of the peak-normalised signal take at most 256 values; 8-bit mu-law keeps a
    # signal-to-quantisation-noise ratio of about 38 dB on a full-scale signal
    s = torch.sin(torch.linspace(0, 200, 16000))[None] * 0.3
    q = mu_law_codec(s)
    assert len(torch.unique((q / 0.3).round(decimals=6))) <= 256
    snr = 10 * torch.log10(s.pow(2).mean() / (q - s).pow(2).mean())
    assert 30 < float(snr) < 50
    aug = WaveAugment(reverb_prob=0, noise_prob=0, lowpass_prob=0, codec_prob=1.0)
    out = torch.fft.rfft(aug(x), dim=1).abs()
    assert out[:, 3600:].max() < 0.05 * ref[:, 3600:].max()  # band-limited before quantisation
    # coloured noise only (no babble): the SNR lies in the given range (up to the 1e-4 floor inside P, which lets
    # very low-power brown noise come out up to a few tenths of a dB quieter)
    p = lambda v: 10 * torch.log10(v.pow(2).mean(1) + 1e-4)  # noqa: E731
    x = torch.randn(16, 8000)
    for lo, hi in ((5.0, 7.0), (15.0, 17.0)):
        aug = WaveAugment(reverb_prob=0, noise_prob=1, lowpass_prob=0, babble_share=0, snr_db=(lo, hi))
        got = p(x) - p(aug(x) - x)
        assert (got > lo - 0.05).all() and (got < hi + 0.5).all() and float(got.std()) > 0.1
    with pytest.raises(ValueError, match="snr_db"):
        WaveAugment(snr_db=(10.0, 5.0))
