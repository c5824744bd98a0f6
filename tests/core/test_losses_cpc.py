"""cpc against an independent loop reference, gradcheck and reductions."""

from __future__ import annotations

import pytest
import torch
from _loss_refs import compare, ref_cpc
from torch import nn

from core.losses import CPC, cpc


def _inputs(B, T, Dc, Dz, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    preds = nn.ModuleList(nn.Linear(Dc, Dz, bias=k % 2 == 1) for k in range(K)).double()
    return (torch.randn(B, T, Dc, generator=g, dtype=torch.float64),
            torch.randn(B, T, Dz, generator=g, dtype=torch.float64), preds)


@pytest.mark.parametrize("B,T,Dc,Dz,K", [(1, 2, 3, 2, 1), (2, 5, 4, 3, 3), (3, 6, 3, 5, 4)])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cpc_matches_loop_reference(B, T, Dc, Dz, K, temperature, reduction):
    ctx, fut, preds = _inputs(B, T, Dc, Dz, K, seed=B * T + K)
    params = {f"w{i}": p for i, p in enumerate(preds.parameters())}

    def run(fn):
        def call(context, future):
            return fn(context, future, predictors=preds, temperature=temperature, reduction=reduction)
        return call

    compare(run(cpc), run(ref_cpc), {"context": ctx, "future": fut})
    # and the gradient of every predictor weight
    for p in params.values():
        p.grad = None
    cpc(ctx, fut, predictors=preds, temperature=temperature, reduction=reduction).backward()
    ours = [p.grad.clone() for p in params.values()]
    for p in params.values():
        p.grad = None
    ref_cpc(ctx, fut, preds, temperature, reduction).backward()
    for a, b in zip(ours, [p.grad for p in params.values()]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_cpc_per_prediction_layout():
    ctx, fut, preds = _inputs(2, 5, 3, 4, 3, seed=1)
    per = cpc(ctx, fut, predictors=preds, reduction="none")
    assert per.shape == (2, 5, 3)
    for k in range(1, 4):
        assert bool((per[:, 5 - k:, k - 1] == 0).all()) and bool((per[:, : 5 - k, k - 1] > 0).all())
    mean = sum(per[:, : 5 - k, k - 1].mean() for k in range(1, 4))
    torch.testing.assert_close(cpc(ctx, fut, predictors=preds), mean)
    torch.testing.assert_close(cpc(ctx, fut, predictors=preds, reduction="sum"), per.sum())


def test_cpc_gradcheck():
    ctx, fut, preds = _inputs(2, 3, 2, 2, 2, seed=2)
    assert torch.autograd.gradcheck(lambda c, z: cpc(c, z, predictors=preds, temperature=0.7),
                                    (ctx.clone().requires_grad_(), fut.clone().requires_grad_()))


def test_module_owns_k_linear_predictors():
    m = CPC(context_dim=3, future_dim=4, steps=2).double()
    assert len(m.predictors) == 2 and all(p.bias is None for p in m.predictors)
    ctx, fut, _ = _inputs(2, 4, 3, 4, 2, seed=3)
    torch.testing.assert_close(m(ctx, fut), cpc(ctx, fut, predictors=m.predictors))
