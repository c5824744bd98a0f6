r"""Log-mel filterbanks and waveform augmentation without external corpora, batched on the model's device.

Features (sslsv / voxceleb_trainer front end): 16 kHz waveform -> mel spectrogram (n_fft 512, 25 ms Hamming
window = 400 samples, 10 ms hop = 160 samples, 40 or 80 bins from 20 Hz to ``f_max``) -> :math:`\log(x + 10^{-6})`
-> per-utterance normalisation, with a floor :data:`STD_FLOOR` on the standard deviation: ``"channel"`` = mean /
variance of every mel channel over time (instance normalisation, sslsv's choice), ``"global"`` = one mean / variance
over all channels and frames of the utterance, which removes the recording gain but keeps the long-term spectral
envelope (on one-word utterances such as FSDD's digits, per-channel normalisation removes most of the speaker
information that is left).

Augmentation (:class:`WaveAugment`, the "BOTH" strategy of sslsv: reverberation, then additive noise), each
applied to a sample with its own probability, with MUSAN / RIR replaced by synthetic sources:

* **reverberation** with a synthetic room impulse response: a direct-path impulse followed by Gaussian noise
  under an exponential envelope reaching -60 dB at :math:`RT_{60} \sim U[0.2, 0.8]` s,
  :math:`h(t) = \delta(t) + g\,n(t)\,10^{-3 t / RT_{60}}` (Polack's statistical model), normalised to unit
  energy; full convolution cropped to the input length;
* **additive noise** at a random SNR, one category per sample: *coloured noise* (white noise shaped to a
  :math:`1/f^{\beta}` power spectrum, :math:`\beta \sim U[0, 2]`; SNR ~ U[0, 15] dB, MUSAN-noise's range) or
  *babble* (the sum of 3-6 other utterances of the batch; SNR ~ U[13, 20] dB, MUSAN-speech's range). The noise is
  scaled by :math:`\sqrt{10^{(P_x - P_n - \mathrm{SNR})/10}}` with :math:`P = 10 \log_{10}(\overline{x^2} + 10^{-4})`;
* **band limitation** (a random low-pass; an addition for band-limited evaluation data such as the 8 kHz FSDD):
  the spectrum above a cut-off ~ U[``lowpass_hz``] (default 3.4-4 kHz) is zeroed;
* **codec** (telephone-like channel): band-pass 300-3400 Hz, then 8-bit mu-law companding (G.711's
  :math:`y = \mathrm{sign}(x) \ln(1 + \mu |x|) / \ln(1 + \mu)`, :math:`\mu = 255`, of the peak-normalised
  signal, rounded to 256 levels and expanded back).
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import Tensor, nn

from apps.speaker.data import SAMPLE_RATE

__all__ = ["LogMel", "WaveAugment", "synthetic_rir", "coloured_noise", "add_noise", "mu_law_codec", "band_limit",
           "STD_FLOOR"]

STD_FLOOR = 0.1  # in log-mel units; speech bands vary by ~1-3 over an utterance


class LogMel(nn.Module):
    """(B, samples) -> (B, n_mels, frames) normalised log-mel filterbanks (no gradient)."""

    def __init__(self, n_mels: int = 40, f_max: float = SAMPLE_RATE / 2, norm: str = "channel",
                 sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        if norm not in ("channel", "global"):
            raise ValueError(f"feature norm must be 'channel' or 'global', got {norm!r}")
        self.n_mels, self.norm = n_mels, norm
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=512, win_length=400, hop_length=160, f_min=20.0,
            f_max=f_max, window_fn=torch.hamming_window, n_mels=n_mels)

    @torch.no_grad()
    def forward(self, wave: Tensor) -> Tensor:
        x = (self.mel(wave.float()) + 1e-6).log()
        dims = -1 if self.norm == "channel" else (-2, -1)
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True) if x.shape[-1] > 1 else torch.ones_like(mean)
        # floor on the std: a band with no energy (above 4 kHz in up-sampled 8 kHz audio) would otherwise have its
        # numerical noise blown up to unit variance
        return (x - mean) / std.clamp_min(STD_FLOOR)


def synthetic_rir(n: int, *, rt60: Tensor, length: int, generator: torch.Generator | None = None) -> Tensor:
    """(n, length) unit-energy impulse responses with the -60 dB decay times ``rt60`` (s) of shape (n,)."""
    device = rt60.device
    t = torch.arange(length, device=device, dtype=torch.float32) / SAMPLE_RATE
    env = torch.pow(10.0, -3.0 * t[None, :] / rt60[:, None])
    tail = torch.randn(n, length, device=device, generator=generator) * env
    tail[:, 0] = 0.0
    h = tail * 0.3
    h[:, 0] = 1.0  # direct path
    return h / h.pow(2).sum(dim=1, keepdim=True).sqrt()


def coloured_noise(shape: tuple[int, int], beta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(B, T) noise with a power spectrum proportional to 1 / f^beta (beta (B,): 0 white, 1 pink, 2 brown)."""
    B, T = shape
    white = torch.randn(B, T, device=beta.device, generator=generator)
    spec = torch.fft.rfft(white, dim=1)
    f = torch.arange(spec.shape[1], device=beta.device, dtype=torch.float32).clamp_min(1.0)
    spec = spec * f[None, :].pow(-beta[:, None] / 2)
    return torch.fft.irfft(spec, n=T, dim=1)


def _power_db(x: Tensor) -> Tensor:
    return 10 * torch.log10(x.pow(2).mean(dim=1) + 1e-4)


def add_noise(x: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """``x + a * noise`` with ``a`` giving the signal-to-noise ratio ``snr_db`` (per row)."""
    scale = torch.sqrt(torch.pow(10.0, (_power_db(x) - _power_db(noise) - snr_db) / 10))
    return x + scale[:, None] * noise


def band_limit(x: Tensor, low_hz: Tensor | float, high_hz: Tensor) -> Tensor:
    """(B, T) signals with every FFT bin outside [low_hz, high_hz] (per row) zeroed."""
    B, T = x.shape
    spec = torch.fft.rfft(x, dim=1)
    freqs = torch.fft.rfftfreq(T, 1 / SAMPLE_RATE).to(x.device)
    low = torch.as_tensor(low_hz, device=x.device, dtype=torch.float32).expand(B)
    keep = (freqs[None, :] <= high_hz[:, None]) & (freqs[None, :] >= low[:, None])
    return torch.fft.irfft(spec * keep, n=T, dim=1)


def mu_law_codec(x: Tensor, mu: float = 255.0) -> Tensor:
    """8-bit mu-law quantisation of each row (peak-normalised, companded, rounded to 256 levels, expanded and
    scaled back)."""
    peak = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
    y = x / peak
    c = torch.sign(y) * torch.log1p(mu * y.abs()) / math.log1p(mu)
    c = torch.round((c + 1) * 127.5) / 127.5 - 1
    return torch.sign(c) * (torch.pow(1 + mu, c.abs()) - 1) / mu * peak


class WaveAugment(nn.Module):
    """Random reverberation, additive noise and band limitation of a (B, T) batch (see the module docstring).

    Args:
        reverb_prob, noise_prob, lowpass_prob, codec_prob: per-sample probabilities of each transform.
        babble_share: share of the noisy samples that get babble rather than coloured noise.
        rir_seconds: length of the synthetic impulse responses.
        snr_db: range of the coloured-noise SNR (dB).
        lowpass_hz: range of the random low-pass cut-off (Hz).
    """

    def __init__(self, reverb_prob: float = 0.5, noise_prob: float = 0.8, lowpass_prob: float = 0.25,
                 babble_share: float = 0.33, rir_seconds: float = 0.4, codec_prob: float = 0.0,
                 snr_db: tuple[float, float] = (0.0, 15.0), lowpass_hz: tuple[float, float] = (3400.0, 4000.0)) -> None:
        super().__init__()
        for name, p in (("reverb_prob", reverb_prob), ("noise_prob", noise_prob), ("lowpass_prob", lowpass_prob),
                        ("babble_share", babble_share), ("codec_prob", codec_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        for name, (lo, hi) in (("snr_db", snr_db), ("lowpass_hz", lowpass_hz)):
            if not lo <= hi:
                raise ValueError(f"{name} must be a range (low <= high), got {(lo, hi)}")
        self.reverb_prob, self.noise_prob, self.lowpass_prob = reverb_prob, noise_prob, lowpass_prob
        self.babble_share, self.rir_len = babble_share, int(rir_seconds * SAMPLE_RATE)
        self.codec_prob, self.snr_db, self.lowpass_hz = codec_prob, tuple(snr_db), tuple(lowpass_hz)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        B, T = x.shape
        dev = x.device
        out = x.clone()
        pick = torch.rand(B, device=dev) < self.reverb_prob
        if pick.any():
            n = int(pick.sum())
            rir = synthetic_rir(n, rt60=0.2 + 0.6 * torch.rand(n, device=dev), length=self.rir_len)
            out[pick] = torchaudio.functional.fftconvolve(out[pick], rir)[:, :T]
        pick = torch.rand(B, device=dev) < self.noise_prob
        if pick.any():
            babble = (torch.rand(B, device=dev) < self.babble_share) & pick & (B > 1)
            colour = pick & ~babble
            if colour.any():
                n = int(colour.sum())
                noise = coloured_noise((n, T), 2 * torch.rand(n, device=dev))
                lo, hi = self.snr_db
                out[colour] = add_noise(out[colour], noise, lo + (hi - lo) * torch.rand(n, device=dev))
            if babble.any():
                n_talkers = int(torch.randint(3, 7, ()).item())
                mix = torch.zeros_like(x)
                for _ in range(n_talkers):
                    mix += torch.roll(x, int(torch.randint(1, B, ()).item()), dims=0)
                n = int(babble.sum())
                out[babble] = add_noise(out[babble], mix[babble], 13 + 7 * torch.rand(n, device=dev))
        pick = torch.rand(B, device=dev) < self.lowpass_prob
        if pick.any():
            lo, hi = self.lowpass_hz
            out[pick] = band_limit(out[pick], 0.0, lo + (hi - lo) * torch.rand(int(pick.sum()), device=dev))
        if self.codec_prob > 0:  # drawn only when on, so that the other transforms' draws stay as they were
            pick = torch.rand(B, device=dev) < self.codec_prob
            if pick.any():
                n = int(pick.sum())
                out[pick] = mu_law_codec(band_limit(out[pick], 300.0, torch.full((n,), 3400.0, device=dev)))
        return out


def frames(seconds: float) -> int:
    return int(math.floor(seconds * SAMPLE_RATE))
