"""sig_lip against an independent loop reference (logsigmoid per pair), gradcheck, and properties."""

from __future__ import annotations

import math

import pytest
import torch
from _loss_refs import compare, ref_sig_lip

from core.losses import SigLIP, sig_lip


def _inputs(B, D, seed=0, scale=10.0, bias=-10.0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(B, D, generator=g, dtype=torch.float64),
            "b": torch.randn(B, D, generator=g, dtype=torch.float64),
            "logit_scale": torch.tensor(scale, dtype=torch.float64),
            "logit_bias": torch.tensor(bias, dtype=torch.float64)}


@pytest.mark.parametrize("B,D", [(2, 3), (5, 4), (9, 8)])
@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (1.0, 0.0), (50.0, 3.0)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sig_lip_matches_loop_reference(B, D, scale, bias, reduction):
    x = _inputs(B, D, seed=B + D, scale=scale, bias=bias)
    compare(lambda **k: sig_lip(**k, reduction=reduction), lambda **k: ref_sig_lip(**k, reduction=reduction), x)


def test_sig_lip_gradcheck():
    x = _inputs(3, 3, seed=1, scale=3.0, bias=-1.0)
    inputs = tuple(v.clone().requires_grad_() for v in x.values())
    assert torch.autograd.gradcheck(lambda a, b, s, c: sig_lip(a, b, logit_scale=s, logit_bias=c), inputs)


def test_sig_lip_is_symmetric_in_its_two_inputs():
    # the pairwise sigmoid loss sums over all (i, j): swapping the modalities transposes the pair matrix
    x = _inputs(6, 5, seed=2)
    torch.testing.assert_close(sig_lip(**x), sig_lip(x["b"], x["a"], logit_scale=x["logit_scale"],
                                                     logit_bias=x["logit_bias"]), rtol=1e-12, atol=1e-12)


def test_sig_lip_large_logits_are_finite_and_exact():
    # softplus is evaluated exactly (no threshold linearisation) and without overflow
    a = torch.eye(3, dtype=torch.float64)
    loss = sig_lip(a, a, logit_scale=1e4, logit_bias=0.0, reduction="none")
    # positives: softplus(-1e4) ~ e^-1e4 = 0; negatives (cos 0): softplus(0) = log 2
    torch.testing.assert_close(loss, torch.full((3,), 2 * math.log(2), dtype=torch.float64))


def test_module_owns_log_scale_and_bias():
    m = SigLIP(logit_scale=10.0, logit_bias=-10.0)
    assert {n for n, _ in m.named_parameters()} == {"log_logit_scale", "logit_bias"}
    x = _inputs(4, 3, seed=3)
    out = m(x["a"].float(), x["b"].float())
    ref = sig_lip(x["a"].float(), x["b"].float(), logit_scale=10.0, logit_bias=-10.0)
    torch.testing.assert_close(out, ref)
    out.backward()
    assert m.log_logit_scale.grad is not None and m.logit_bias.grad is not None
