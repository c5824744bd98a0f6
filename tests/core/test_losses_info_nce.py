"""info_nce against an independent loop reference, gradcheck, and the identities of the InfoNCE family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _loss_refs import compare, ref_info_nce

from core.losses import InfoNCE, info_nce

OPTIONS = {
    "plain": {},
    "symmetric": {"symmetric": True},
    "decoupled": {"decoupled": True},
    "additive-margin": {"margin": 0.2},
    "angular-margin": {"margin": 0.3, "margin_type": "angular"},
    "dot": {"similarity": "dot", "temperature": 2.0},
    "negatives": {"negatives": 3},
    "symmetric-negatives-margin": {"symmetric": True, "negatives": 4, "margin": 0.1},
    "decoupled-angular-symmetric": {"decoupled": True, "margin": 0.2, "margin_type": "angular", "symmetric": True},
    "per-anchor": {"reduction": "none", "margin": 0.1},
    "sum": {"reduction": "sum", "decoupled": True},
}


def _inputs(B, D, opts, seed=0):
    g = torch.Generator().manual_seed(seed)
    opts = dict(opts)
    x = {"query": torch.randn(B, D, generator=g, dtype=torch.float64),
         "key": torch.randn(B, D, generator=g, dtype=torch.float64),
         "temperature": torch.tensor(opts.pop("temperature", 0.3), dtype=torch.float64)}
    if "negatives" in opts:
        x["negatives"] = torch.randn(opts.pop("negatives"), D, generator=g, dtype=torch.float64)
    return x, opts


@pytest.mark.parametrize("B,D", [(2, 3), (5, 4), (8, 16)])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_info_nce_matches_loop_reference(B, D, name):
    x, opts = _inputs(B, D, OPTIONS[name], seed=B * 31 + D)
    compare(lambda **k: info_nce(**k, **opts), lambda **k: ref_info_nce(**k, **opts), x)


@pytest.mark.parametrize("name", ["plain", "symmetric", "decoupled", "angular-margin", "negatives", "dot"])
def test_info_nce_gradcheck(name):
    x, opts = _inputs(3, 3, OPTIONS[name], seed=7)
    keys = list(x)
    inputs = tuple(x[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradcheck(lambda *t: info_nce(**dict(zip(keys, t)), **opts), inputs)


@pytest.mark.parametrize("name", ["plain", "symmetric"])
def test_info_nce_gradgradcheck(name):
    # second derivatives (create_graph=True, e.g. gradient penalties) through the fused dense log-sum-exp,
    # whose column direction (symmetric) has its own first-order backward
    x, opts = _inputs(4, 3, OPTIONS[name], seed=11)
    keys = list(x)
    inputs = tuple(x[k].clone().requires_grad_() for k in keys)
    assert torch.autograd.gradgradcheck(lambda *t: info_nce(**dict(zip(keys, t)), **opts), inputs)


def test_margin_zero_equals_no_margin_and_is_continuous():
    x, _ = _inputs(6, 5, {}, seed=3)
    plain = info_nce(x["query"], x["key"], temperature=0.2, reduction="none")
    for kind in ("additive", "angular"):
        zero = info_nce(x["query"], x["key"], temperature=0.2, margin=0.0, margin_type=kind, reduction="none")
        torch.testing.assert_close(zero, plain, rtol=0, atol=0)
        # the margin code path (positive logit rewritten in the denominator) tends to the plain loss
        tiny = info_nce(x["query"], x["key"], temperature=0.2, margin=1e-9, margin_type=kind, reduction="none")
        torch.testing.assert_close(tiny, plain, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("opts", [{}, {"margin": 0.2}, {"negatives": 3}, {"margin": 0.1, "margin_type": "angular"}])
def test_decoupled_differs_exactly_by_the_positive_term(opts):
    # l = -log(p / (p + N)) = log(1 + N/p) and l_dcl = -log(p / N) = log(N/p), so l = softplus(l_dcl)
    x, opts = _inputs(7, 5, opts, seed=11)
    standard = info_nce(**x, **opts, reduction="none")
    decoupled = info_nce(**x, **opts, decoupled=True, reduction="none")
    torch.testing.assert_close(standard, F.softplus(decoupled, threshold=100), rtol=1e-12, atol=1e-12)
    # and the difference is log(1 + e^{pos}/N): positive, so decoupling always lowers the loss
    assert bool((standard > decoupled).all())


@pytest.mark.parametrize("opts", [{}, {"decoupled": True}, {"margin": 0.2, "margin_type": "angular"}])
def test_symmetric_is_the_mean_of_the_two_directions(opts):
    x, opts = _inputs(6, 4, opts, seed=5)
    q, k, t = x["query"], x["key"], x["temperature"]
    sym = info_nce(q, k, temperature=t, symmetric=True, reduction="none", **opts)
    fwd = info_nce(q, k, temperature=t, reduction="none", **opts)
    bwd = info_nce(k, q, temperature=t, reduction="none", **opts)
    torch.testing.assert_close(sym, 0.5 * (fwd + bwd), rtol=1e-12, atol=1e-12)
    # extra negatives enter the query -> key direction only
    n = torch.randn(3, 4, dtype=torch.float64)
    sym_n = info_nce(q, k, temperature=t, symmetric=True, negatives=n, **opts)
    ref = 0.5 * (info_nce(q, k, temperature=t, negatives=n, **opts) + info_nce(k, q, temperature=t, **opts))
    torch.testing.assert_close(sym_n, ref, rtol=1e-12, atol=1e-12)


def _hard_negative_share(temperature: float) -> float:
    """Share of the negative-gradient weight that falls on the hardest negative (Wang & Liu 2021).

    With orthonormal keys and dot similarity, d l / d q = (sum_j p_j k_j - k_pos) / tau: the coefficient
    of negative key k_j in the anchor's gradient is p_j / tau, read off by projecting on k_j.
    """
    B = 8
    keys = torch.eye(B, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(1, B, generator=g, dtype=torch.float64), dim=1)
    q[0, 0] = 0.9  # the positive is key 0 (query row 0 pairs with key row 0)
    q = F.normalize(q, dim=1).requires_grad_()
    loss = info_nce(q, keys[:1], temperature=temperature, similarity="dot", negatives=keys[1:])
    (grad,) = torch.autograd.grad(loss, q)
    coef = (grad[0] @ keys.T)[1:] * temperature  # p_j of the negatives
    sims = q.detach()[0, 1:]
    hardest = int(sims.argmax())
    return float(coef[hardest] / coef.sum())


def test_gradient_concentrates_on_the_hardest_negative_as_temperature_drops():
    cold, warm = _hard_negative_share(0.01), _hard_negative_share(1.0)
    assert cold > 0.99
    assert warm < 0.3
    assert _hard_negative_share(0.1) > warm


def test_module_equals_function():
    x, _ = _inputs(5, 4, {}, seed=2)
    n = torch.randn(2, 4, dtype=torch.float64)
    m = InfoNCE(temperature=0.3, symmetric=True, margin=0.1)
    torch.testing.assert_close(m(x["query"], x["key"], n),
                               info_nce(x["query"], x["key"], temperature=0.3, symmetric=True, margin=0.1,
                                        negatives=n))


def test_dense_path_supports_double_backward():
    # the dense engine's fused log-sum-exp functions have differentiable backward passes
    g = torch.Generator().manual_seed(4)
    q = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: info_nce(a, b, temperature=0.3, symmetric=True), (q, k))
    assert torch.autograd.gradgradcheck(lambda a, b: info_nce(a, b, temperature=0.3, margin=0.1), (q, k))
