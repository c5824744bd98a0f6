"""mean_shifted against an independent loop reference, gradcheck, and identities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _loss_refs import compare, ref_mean_shifted

from core.losses import MeanShifted, mean_shifted, nt_xent


def _inputs(B, D, seed=0, unit_center=False):
    g = torch.Generator().manual_seed(seed)
    c = 0.4 * torch.randn(D, generator=g, dtype=torch.float64)
    if unit_center:
        c = F.normalize(c, dim=0)
    return {"z1": torch.randn(B, D, generator=g, dtype=torch.float64),
            "z2": torch.randn(B, D, generator=g, dtype=torch.float64),
            "center": c, "temperature": torch.tensor(0.25, dtype=torch.float64)}


@pytest.mark.parametrize("B,D", [(2, 3), (5, 4), (8, 16)])
@pytest.mark.parametrize("angular_weight", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_mean_shifted_matches_loop_reference(B, D, angular_weight, reduction):
    x = _inputs(B, D, seed=B + D, unit_center=angular_weight > 0)
    kw = {"angular_weight": angular_weight, "reduction": reduction}
    compare(lambda **k: mean_shifted(**k, **kw), lambda **k: ref_mean_shifted(**k, **kw), x)


@pytest.mark.parametrize("angular_weight", [0.0, 0.5])
def test_mean_shifted_gradcheck(angular_weight):
    x = _inputs(3, 3, seed=1)
    inputs = tuple(v.clone().requires_grad_() for v in x.values())
    assert torch.autograd.gradcheck(
        lambda a, b, c, t: mean_shifted(a, b, c, temperature=t, angular_weight=angular_weight), inputs)


def test_zero_center_is_nt_xent():
    x = _inputs(5, 4, seed=2)
    torch.testing.assert_close(mean_shifted(x["z1"], x["z2"], torch.zeros(4, dtype=torch.float64)),
                               nt_xent(x["z1"], x["z2"], temperature=0.25), rtol=1e-12, atol=1e-12)


def test_angular_term_is_the_official_code_form():
    # L = MSC + w (mean ||phi1 - c||^2 + mean ||phi2 - c||^2)
    x = _inputs(6, 5, seed=3, unit_center=True)
    c = x["center"]
    msc = mean_shifted(x["z1"], x["z2"], c)
    phi1, phi2 = F.normalize(x["z1"], dim=1), F.normalize(x["z2"], dim=1)
    code = msc + 0.7 * (((phi1 - c) ** 2).sum(1).mean() + ((phi2 - c) ** 2).sum(1).mean())
    torch.testing.assert_close(mean_shifted(x["z1"], x["z2"], c, angular_weight=0.7), code, rtol=1e-12, atol=1e-12)


def test_module_with_buffer_center():
    x = _inputs(4, 3, seed=4)
    m = MeanShifted(center=x["center"], angular_weight=0.5)
    assert "center" in dict(m.named_buffers())
    torch.testing.assert_close(m(x["z1"], x["z2"]),
                               mean_shifted(x["z1"], x["z2"], x["center"], angular_weight=0.5))
