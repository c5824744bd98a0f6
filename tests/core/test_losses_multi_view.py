"""multi_view_info_nce against an independent loop reference, gradcheck, and its V = 2 form."""

from __future__ import annotations

import pytest
import torch
from _loss_refs import compare, ref_multi_view

from core.losses import MultiViewInfoNCE, multi_view_info_nce


def _inputs(B, V, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"views": torch.randn(B, V, D, generator=g, dtype=torch.float64),
            "temperature": torch.tensor(0.3, dtype=torch.float64)}


@pytest.mark.parametrize("B,V,D", [(2, 2, 3), (4, 3, 5), (5, 4, 4), (3, 6, 8)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_multi_view_matches_loop_reference(B, V, D, reduction):
    x = _inputs(B, V, D, seed=B * V + D)
    compare(lambda **k: multi_view_info_nce(**k, reduction=reduction),
            lambda **k: ref_multi_view(**k, reduction=reduction), x)


def test_multi_view_gradcheck():
    x = _inputs(3, 3, 3, seed=1)
    inputs = tuple(v.clone().requires_grad_() for v in x.values())
    assert torch.autograd.gradcheck(lambda v, t: multi_view_info_nce(v, temperature=t), inputs)


def test_list_of_views_equals_stacked_tensor():
    x = _inputs(4, 3, 5, seed=2)
    views = [x["views"][:, v] for v in range(3)]
    torch.testing.assert_close(multi_view_info_nce(views, temperature=0.3),
                               multi_view_info_nce(x["views"], temperature=0.3))


def test_two_views_closed_form():
    # V = 2: l_i = -log(2 e^{s_i}) + log(D_i1 + D_i2) with D the NT-Xent denominators of the two views
    x = _inputs(5, 2, 4, seed=3)
    v, t = x["views"], 0.3
    z = torch.nn.functional.normalize(torch.cat([v[:, 0], v[:, 1]]), dim=1)
    s = z @ z.T / t
    s.fill_diagonal_(float("-inf"))
    den = torch.logsumexp(s, dim=1)
    pos = (z[:5] * z[5:]).sum(1) / t
    expected = -(torch.log(torch.tensor(2.0, dtype=torch.float64)) + pos) + torch.logaddexp(den[:5], den[5:])
    torch.testing.assert_close(multi_view_info_nce(v, temperature=t, reduction="none"), expected,
                               rtol=1e-12, atol=1e-12)


def test_module_equals_function():
    x = _inputs(4, 3, 5, seed=4)
    torch.testing.assert_close(MultiViewInfoNCE(temperature=0.3)(x["views"]),
                               multi_view_info_nce(x["views"], temperature=0.3))
