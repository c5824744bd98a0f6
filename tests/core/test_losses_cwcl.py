"""cwcl against an independent loop reference, gradcheck, and its reduction to InfoNCE."""

from __future__ import annotations

import pytest
import torch
from _loss_refs import compare, ref_cwcl

from core.losses import CWCL, cwcl, info_nce


def _inputs(B, D, seed=0, kind="cosine"):
    g = torch.Generator().manual_seed(seed)
    if kind == "cosine":  # the paper's weights: frozen-modality cosine similarity rescaled to [0, 1]
        u = torch.nn.functional.normalize(torch.randn(B, 6, generator=g, dtype=torch.float64), dim=1)
        w = 0.5 * (u @ u.T) + 0.5
    else:  # an arbitrary (asymmetric) weight matrix with some zeros
        w = torch.rand(B, B, generator=g, dtype=torch.float64)
        w = torch.where(w < 0.3, torch.zeros_like(w), w)
        w.fill_diagonal_(1.0)
    return {"a": torch.randn(B, D, generator=g, dtype=torch.float64),
            "b": torch.randn(B, D, generator=g, dtype=torch.float64),
            "temperature": torch.tensor(0.2, dtype=torch.float64)}, w


@pytest.mark.parametrize("B,D", [(2, 3), (5, 4), (8, 6)])
@pytest.mark.parametrize("kind", ["cosine", "asymmetric"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cwcl_matches_loop_reference(B, D, kind, symmetric, reduction):
    x, w = _inputs(B, D, seed=B * 7 + D, kind=kind)
    kw = {"weights": w, "symmetric": symmetric, "reduction": reduction}
    compare(lambda **k: cwcl(**k, **kw), lambda **k: ref_cwcl(**k, **kw), x)


def test_cwcl_gradcheck():
    x, w = _inputs(3, 3, seed=1, kind="asymmetric")
    inputs = tuple(v.clone().requires_grad_() for v in x.values())
    assert torch.autograd.gradcheck(lambda a, b, t: cwcl(a, b, weights=w, temperature=t), inputs)


@pytest.mark.parametrize("symmetric", [True, False])
def test_identity_weights_give_info_nce(symmetric):
    x, _ = _inputs(6, 5, seed=2)
    eye = torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(cwcl(**x, weights=eye, symmetric=symmetric),
                               info_nce(x["a"], x["b"], temperature=x["temperature"], symmetric=symmetric),
                               rtol=1e-12, atol=1e-12)


def test_weights_get_no_gradient():
    x, w = _inputs(4, 3, seed=3)
    w = w.clone().requires_grad_()
    a = x["a"].clone().requires_grad_()
    cwcl(a, x["b"], temperature=0.2, weights=w).backward()
    assert a.grad is not None and w.grad is None


def test_module_equals_function():
    x, w = _inputs(4, 3, seed=4)
    m = CWCL(temperature=0.2, symmetric=False)
    torch.testing.assert_close(m(x["a"], x["b"], w), cwcl(x["a"], x["b"], weights=w, temperature=0.2,
                                                          symmetric=False))
