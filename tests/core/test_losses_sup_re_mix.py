"""sup_re_mix against a reference that builds every mixture explicitly, gradcheck, block-memory and RNG
properties, and its reduction to SupCon."""

from __future__ import annotations

import pytest
import torch
from _loss_refs import compare, ref_sup_re_mix

from core.losses import SupReMix, sup_con, sup_re_mix
from core.losses.sup_re_mix import sample_mix_alpha


def _inputs(B, V, D, seed=0, span=8):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, V, D, generator=g, dtype=torch.float64) if V else torch.randn(B, D, generator=g,
                                                                                    dtype=torch.float64)
    y = torch.randint(0, span, (B,), generator=g).double()
    N = B * max(V, 1)
    alpha = sample_mix_alpha(N, (2.0, 8.0), torch.Generator().manual_seed(seed), torch.float64)
    return f, y, alpha


@pytest.mark.parametrize("B,V,D", [(4, 2, 3), (6, 0, 4), (3, 3, 5)])
@pytest.mark.parametrize("weight", ["l1_inv", "l2_inv", "l1", "l2", "none"])
def test_sup_re_mix_matches_explicit_mixtures(B, V, D, weight):
    f, y, alpha = _inputs(B, V, D, seed=B * 5 + V)
    kw = {"distance_weight": weight, "window": 4.0, "reduction": "none"}
    compare(lambda features, temperature: sup_re_mix(features, y, temperature=temperature, mix_alpha=alpha, **kw),
            lambda features, temperature: ref_sup_re_mix(features, y, alpha, temperature=temperature, **kw),
            {"features": f, "temperature": 0.5}, grad=["features"])


@pytest.mark.parametrize("mix_neg,mix_pos", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("detach", [False, True])
def test_sup_re_mix_options_match_reference(mix_neg, mix_pos, detach):
    f, y, alpha = _inputs(4, 2, 4, seed=3)
    kw = {"mix_neg": mix_neg, "mix_pos": mix_pos, "detach_mixtures": detach, "temperature": 0.3}
    compare(lambda features: sup_re_mix(features, y, mix_alpha=alpha, **kw),
            lambda features: ref_sup_re_mix(features, y, alpha, **kw), {"features": f})


def test_detached_mixtures_match_reference_with_both_kinds():
    f, y, alpha = _inputs(5, 2, 3, seed=4)
    compare(lambda features: sup_re_mix(features, y, mix_alpha=alpha, detach_mixtures=True),
            lambda features: ref_sup_re_mix(features, y, alpha, detach_mixtures=True), {"features": f})


def test_sup_re_mix_gradcheck():
    f, y, alpha = _inputs(3, 2, 3, seed=5, span=4)
    assert torch.autograd.gradcheck(lambda x: sup_re_mix(x, y, mix_alpha=alpha, block_size=2),
                                    (f.clone().requires_grad_(),))


@pytest.mark.parametrize("block_size", [1, 3, 7])
def test_anchor_blocks_give_the_same_loss_and_gradient(block_size):
    f, y, alpha = _inputs(6, 2, 4, seed=6)
    compare(lambda features: sup_re_mix(features, y, mix_alpha=alpha, block_size=block_size),
            lambda features: sup_re_mix(features, y, mix_alpha=alpha, block_size=12), {"features": f},
            rtol=1e-12, atol=1e-13)


def test_blocks_keep_no_cubic_tensor_for_backward():
    """With anchor blocks, nothing of size T x N x N (let alone N^3) is kept for backward: the blocks are
    recomputed. Saved tensors are observed with autograd's saved-tensor hooks."""
    f, y, alpha = _inputs(20, 2, 4, seed=7, span=30)  # N = 40
    N = 40

    def largest_saved(block_size):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        x = f.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = sup_re_mix(x, y, mix_alpha=alpha, block_size=block_size)
        loss.backward()
        return max(sizes)

    assert largest_saved(N) >= N ** 3  # one block: the N x N x N mix-pos tensor is kept
    assert largest_saved(2) <= N * N  # blocks of 2 anchors: only inputs are kept


def test_generator_makes_draws_reproducible_and_leaves_global_rng_alone():
    f, y, _ = _inputs(5, 2, 3, seed=8)
    state = torch.get_rng_state()
    a = sup_re_mix(f, y, generator=torch.Generator().manual_seed(0))
    b = sup_re_mix(f, y, generator=torch.Generator().manual_seed(0))
    c = sup_re_mix(f, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert float(a) == float(b) and float(a) != float(c)
    # the default Beta(2, 8) draws have mean 0.2
    alpha = sample_mix_alpha(200, (2.0, 8.0), torch.Generator().manual_seed(2), torch.float64)
    assert abs(float(alpha.mean()) - 0.2) < 0.01


def test_without_mixtures_and_weights_it_is_sup_con_out():
    f, y, alpha = _inputs(6, 2, 4, seed=9, span=3)
    torch.testing.assert_close(
        sup_re_mix(f, y, temperature=0.4, mix_neg=False, mix_pos=False, distance_weight="none", reduction="none"),
        sup_con(f, y.long(), temperature=0.4, base_temperature=0.4, reduction="none"), rtol=1e-12, atol=1e-12)


def test_module_equals_function():
    f, y, alpha = _inputs(4, 2, 3, seed=10)
    m = SupReMix(temperature=0.3, seed=0)
    torch.testing.assert_close(m(f, y, alpha), sup_re_mix(f, y, temperature=0.3, mix_alpha=alpha))
