"""nt_xent against an independent loop reference, gradcheck and identities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _loss_refs import compare, ref_nt_xent

from core.losses import NTXent, info_nce, nt_xent

OPTIONS = {
    "plain": {},
    "decoupled": {"decoupled": True},
    "additive-margin": {"margin": 0.2},
    "angular-margin": {"margin": 0.25, "margin_type": "angular"},
    "decoupled-margin": {"decoupled": True, "margin": 0.1},
    "dot": {"similarity": "dot", "temperature": 3.0},
    "per-anchor": {"reduction": "none", "margin": 0.1, "margin_type": "angular"},
}


def _inputs(N, D, opts, seed=0):
    g = torch.Generator().manual_seed(seed)
    opts = dict(opts)
    return {"z1": torch.randn(N, D, generator=g, dtype=torch.float64),
            "z2": torch.randn(N, D, generator=g, dtype=torch.float64),
            "temperature": torch.tensor(opts.pop("temperature", 0.4), dtype=torch.float64)}, opts


@pytest.mark.parametrize("N,D", [(2, 3), (4, 5), (7, 8)])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_nt_xent_matches_loop_reference(N, D, name):
    x, opts = _inputs(N, D, OPTIONS[name], seed=N * 13 + D)
    compare(lambda **k: nt_xent(**k, **opts), lambda **k: ref_nt_xent(**k, **opts), x)


@pytest.mark.parametrize("name", ["plain", "decoupled-margin", "angular-margin"])
def test_nt_xent_gradcheck(name):
    x, opts = _inputs(3, 3, OPTIONS[name], seed=1)
    keys = list(x)
    inputs = tuple(x[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradcheck(lambda *t: nt_xent(**dict(zip(keys, t)), **opts), inputs)


@pytest.mark.parametrize("opts", [{}, {"margin": 0.2}, {"margin": 0.2, "margin_type": "angular"}])
def test_decoupled_differs_exactly_by_the_positive_term(opts):
    x, opts = _inputs(5, 4, opts, seed=2)
    standard = nt_xent(**x, **opts, reduction="none")
    decoupled = nt_xent(**x, **opts, decoupled=True, reduction="none")
    torch.testing.assert_close(standard, F.softplus(decoupled, threshold=100), rtol=1e-12, atol=1e-12)


def test_margin_zero_equals_no_margin():
    x, _ = _inputs(5, 4, {}, seed=4)
    plain = nt_xent(**x, reduction="none")
    for kind in ("additive", "angular"):
        torch.testing.assert_close(nt_xent(**x, margin=0.0, margin_type=kind, reduction="none"), plain,
                                   rtol=0, atol=0)
        torch.testing.assert_close(nt_xent(**x, margin=1e-9, margin_type=kind, reduction="none"), plain,
                                   rtol=1e-7, atol=1e-7)


def test_two_samples_is_info_nce_with_the_same_view_as_extra_negative():
    # with N = 2, anchor z1[0] has candidates z2[0] (pos), z2[1], z1[1]: InfoNCE with z1[1] as extra negative
    x, _ = _inputs(2, 4, {}, seed=6)
    per = nt_xent(**x, reduction="none")
    z1, z2, t = x["z1"], x["z2"], x["temperature"]
    first = info_nce(z1[:1], z2[:1], temperature=t, negatives=torch.cat([z2[1:], z1[1:]]))
    torch.testing.assert_close(per[0], first, rtol=1e-12, atol=1e-12)


def test_module_equals_function():
    x, _ = _inputs(4, 3, {}, seed=8)
    m = NTXent(temperature=0.4, decoupled=True, margin=0.1)
    torch.testing.assert_close(m(x["z1"], x["z2"]), nt_xent(x["z1"], x["z2"], temperature=0.4, decoupled=True,
                                                            margin=0.1))
