"""core.metrics against naive loop references and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.metrics import alignment, effective_rank, few_shot_probe_accuracy, linear_probe_accuracy, uniformity


def _normalise_rows(z: torch.Tensor) -> list[list[float]]:
    out = []
    for row in z.tolist():
        n = math.sqrt(sum(v * v for v in row))
        out.append([v / n for v in row])
    return out


def naive_alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float) -> float:
    a, b = _normalise_rows(z1), _normalise_rows(z2)
    total = 0.0
    for x, y in zip(a, b):
        total += math.sqrt(sum((u - v) ** 2 for u, v in zip(x, y))) ** alpha
    return total / len(a)


def naive_uniformity(z: torch.Tensor, t: float) -> float:
    a = _normalise_rows(z)
    total, count = 0.0, 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            total += math.exp(-t * sum((u - v) ** 2 for u, v in zip(a[i], a[j])))
            count += 1
    return math.log(total / count)


def naive_effective_rank(z: torch.Tensor) -> float:
    s = np.linalg.svd(z.double().numpy(), compute_uv=False)
    p = s / s.sum()
    return math.exp(-sum(pk * math.log(pk) for pk in p if pk > 0))


# ------------------------------------------------------------------------------------------ alignment
@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
def test_alignment_matches_naive_loop(alpha: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(13, 5, generator=g), torch.randn(13, 5, generator=g)
    assert alignment(z1, z2, alpha=alpha).item() == pytest.approx(naive_alignment(z1, z2, alpha), rel=1e-5)


def test_alignment_hand_computed_cases() -> None:
    z = torch.randn(6, 4)
    assert alignment(z, z).item() == pytest.approx(0.0, abs=1e-6)  # identical pairs
    assert alignment(z, 3.0 * z).item() == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    assert alignment(z, -z).item() == pytest.approx(4.0, rel=1e-5)  # antipodal: ||2u||^2 = 4
    # orthogonal unit vectors: distance sqrt(2), alpha=2 -> 2
    e = torch.eye(2)
    assert alignment(e[:1], e[1:]).item() == pytest.approx(2.0, rel=1e-6)


def test_alignment_is_differentiable() -> None:
    z1 = torch.randn(4, 3, requires_grad=True)
    alignment(z1, torch.randn(4, 3)).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


# ----------------------------------------------------------------------------------------- uniformity
@pytest.mark.parametrize("t", [0.5, 2.0, 5.0])
def test_uniformity_matches_naive_loop(t: float) -> None:
    z = torch.randn(17, 6, generator=torch.Generator().manual_seed(1))
    assert uniformity(z, t=t).item() == pytest.approx(naive_uniformity(z, t), rel=1e-5, abs=1e-6)


def test_uniformity_hand_computed_cases() -> None:
    # all points equal: every distance 0 -> log(mean(1)) = 0
    assert uniformity(torch.ones(5, 3)).item() == pytest.approx(0.0, abs=1e-6)
    # two antipodal points: squared distance 4 -> log(exp(-2 * 4)) = -8
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).item() == pytest.approx(-8.0, rel=1e-6)
    # the 4 vertices of a regular simplex in 3-D: squared distance 8/3 for every pair
    simplex = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    assert uniformity(simplex, t=2).item() == pytest.approx(-16 / 3, rel=1e-5)


def test_uniformity_lower_for_spread_than_clustered_points() -> None:
    g = torch.Generator().manual_seed(2)
    spread = torch.randn(200, 8, generator=g)
    clustered = torch.ones(200, 8) + 0.05 * torch.randn(200, 8, generator=g)
    assert uniformity(spread) < uniformity(clustered) - 1.0


def test_uniformity_is_stable_for_large_t() -> None:
    z = torch.randn(10, 4)
    v = uniformity(z, t=500.0)
    assert torch.isfinite(v)
    assert v.item() == pytest.approx(naive_uniformity_logspace(z, 500.0), rel=1e-6)


def naive_uniformity_logspace(z: torch.Tensor, t: float) -> float:
    a = _normalise_rows(z)
    logs = [-t * sum((u - v) ** 2 for u, v in zip(a[i], a[j])) for i in range(len(a)) for j in range(i + 1, len(a))]
    m = max(logs)
    return m + math.log(sum(math.exp(x - m) for x in logs) / len(logs))


# ------------------------------------------------------------------------------------- effective rank
def test_effective_rank_matches_svd_reference() -> None:
    z = torch.randn(30, 7, generator=torch.Generator().manual_seed(3))
    assert effective_rank(z).item() == pytest.approx(naive_effective_rank(z), rel=1e-5)


def test_effective_rank_known_matrices() -> None:
    # r equal non-zero singular values -> exactly r
    assert effective_rank(torch.eye(5)).item() == pytest.approx(5.0, rel=1e-6)
    assert effective_rank(torch.diag(torch.tensor([2.0, 2.0, 2.0, 0.0]))).item() == pytest.approx(3.0, rel=1e-6)
    # rank one -> 1, whatever the scale
    u, v = torch.randn(20, 1), torch.randn(1, 6)
    assert effective_rank(10 * u @ v).item() == pytest.approx(1.0, abs=1e-4)
    # singular values (3, 1): p = (3/4, 1/4), H = -(3/4 log 3/4 + 1/4 log 1/4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))).item() == pytest.approx(math.exp(h), rel=1e-6)


def test_effective_rank_invariant_to_rotation() -> None:
    z = torch.randn(25, 6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert effective_rank(z @ q).item() == pytest.approx(effective_rank(z).item(), rel=1e-9)


# ------------------------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    "call",
    [
        lambda: alignment(torch.randn(3, 2), torch.randn(4, 2)),
        lambda: alignment(torch.randn(3), torch.randn(3)),
        lambda: alignment(torch.randn(3, 2), torch.randn(3, 2), alpha=0),
        lambda: alignment(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2)),
        lambda: uniformity(torch.randn(1, 4)),
        lambda: uniformity(torch.randn(5, 4), t=-1.0),
        lambda: uniformity(torch.tensor([[1.0, float("inf")], [0.0, 1.0]])),
        lambda: uniformity(torch.ones(3, 2, dtype=torch.long)),
        lambda: effective_rank(torch.zeros(3, 3)),
        lambda: effective_rank(torch.randn(2, 3, 4)),
    ],
)
def test_bad_inputs_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


# -------------------------------------------------------------------------------------- linear probe
def test_linear_probe_separable_vs_noise() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    centres = np.array([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    x = centres[y] + rng.normal(size=(300, 4))
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.97
    noise = rng.normal(size=(300, 4))
    assert linear_probe_accuracy(noise[:200], y[:200], noise[200:], y[200:]) < 0.6


def test_linear_probe_accepts_tensors_and_is_scale_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (120,), generator=g)
    x = torch.randn(120, 3, generator=g) + y[:, None].float() * 1.5
    a = linear_probe_accuracy(x[:80], y[:80], x[80:], y[80:])
    b = linear_probe_accuracy(1000 * x[:80], y[:80], 1000 * x[80:], y[80:])  # standardised inside
    assert a == pytest.approx(b)


def test_few_shot_probe_uses_k_per_class_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 30)
    x = np.eye(4)[y] * 4 + rng.normal(size=(120, 4))
    a = few_shot_probe_accuracy(x, y, x, y, shots=3, draws=4, seed=7)
    assert a == few_shot_probe_accuracy(x, y, x, y, shots=3, draws=4, seed=7)
    assert a > 0.8
    with pytest.raises(ValueError):
        few_shot_probe_accuracy(x, y, x, y, shots=31)


def test_linear_probe_bad_inputs() -> None:
    x, y = np.zeros((10, 2)), np.array([0, 1] * 5)
    with pytest.raises(ValueError):
        linear_probe_accuracy(x, y, np.zeros((4, 3)), y[:4])  # dimension mismatch
    with pytest.raises(ValueError):
        linear_probe_accuracy(x, np.zeros(10), x, y)  # one class
    with pytest.raises(ValueError):
        linear_probe_accuracy(x, y[:9], x, y)  # label count
    with pytest.raises(ValueError):
        linear_probe_accuracy(np.full((10, 2), np.nan), y, x, y)
