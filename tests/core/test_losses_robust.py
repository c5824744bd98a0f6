"""Robustness of every loss to the inputs a fuzzer finds: low-precision dtypes, mixed dtypes, embeddings with no
direction, bad ``tile_size`` / ``temperature`` values, NaN from a CPC predictor, and the ``validation`` switch.

The low-precision tests compare a float16 / bfloat16 call with the float32 call on the *same* (rounded) values:
every loss computes in float32 inside, so the two agree to float32 rounding; before, logits and reductions ran in
the input dtype (a near-aligned batch at a low temperature gave exactly 0 dense and 0.0117 tiled in float16).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import core.negatives.mode as execution_mode_module
from core.losses import (
    align_uniform,
    auc_contrastive,
    circle_loss,
    con_r,
    cpc,
    cwcl,
    debiased_info_nce,
    info_nce,
    kernel_uniformity,
    mean_shifted,
    multi_view_dhel,
    multi_view_info_nce,
    nt_xent,
    poly_view_info_nce,
    sig_lip,
    sup_con,
    sup_re_mix,
    validation,
    validation_mode,
)
from core.metrics import uniformity

B, D = 12, 6
_g = torch.Generator().manual_seed(7)
X = torch.randn(B, D, generator=_g)
Y = X + 0.05 * torch.randn(B, D, generator=_g)  # near-aligned positives: the case float16 rounded to 0
LAB = torch.arange(B) % 3
REG = torch.arange(B, dtype=torch.float64)


def _v(a, b):
    return torch.stack([a, b], 1)


# every loss as fn(a, b, tile_size) with a, b two (B, D) views; low temperatures where the loss has one
LOSSES = {
    "info_nce": lambda a, b, ts: info_nce(a, b, temperature=0.02, tile_size=ts),
    "info_nce_symmetric": lambda a, b, ts: info_nce(a, b, temperature=0.02, symmetric=True, tile_size=ts),
    "info_nce_top_k": lambda a, b, ts: info_nce(a, b, temperature=0.02, top_k=3, tile_size=ts),
    "info_nce_dot": lambda a, b, ts: info_nce(a, b, similarity="dot", temperature=0.002, tile_size=ts),
    "nt_xent": lambda a, b, ts: nt_xent(a, b, temperature=0.02, tile_size=ts),
    "sup_con": lambda a, b, ts: sup_con(_v(a, b), LAB, temperature=0.02, tile_size=ts),
    "sig_lip": lambda a, b, ts: sig_lip(a, b, logit_scale=50.0, logit_bias=-10.0, tile_size=ts),
    "cwcl": lambda a, b, ts: cwcl(a, b, weights=torch.eye(B) * 0.9 + 0.05, temperature=0.02, tile_size=ts),
    "multi_view": lambda a, b, ts: multi_view_info_nce(_v(a, b), temperature=0.02, tile_size=ts),
    "mean_shifted": lambda a, b, ts: mean_shifted(a, b, torch.zeros(D), temperature=0.02, tile_size=ts),
    "con_r": lambda a, b, ts: con_r(_v(a, b), REG, REG + 0.5, temperature=0.02, tile_size=ts),
    "sup_re_mix": lambda a, b, ts: sup_re_mix(a, REG, temperature=0.05,
                                              generator=torch.Generator().manual_seed(0)),
    "debiased": lambda a, b, ts: debiased_info_nce(a, b, temperature=0.05, tile_size=ts),
    "debiased_hard": lambda a, b, ts: debiased_info_nce(a, b, temperature=0.05, beta=1.0, tile_size=ts),
    "auc": lambda a, b, ts: auc_contrastive(a, b, temperature=0.02, tile_size=ts),
    "kernel_uniformity": lambda a, b, ts: kernel_uniformity(_v(a, b), gamma=8.0, tile_size=ts),
    "align_uniform": lambda a, b, ts: align_uniform(a, b, t=8.0),
    "poly_view": lambda a, b, ts: poly_view_info_nce(_v(a, b), temperature=0.02, tile_size=ts),
    "poly_view_geometric": lambda a, b, ts: poly_view_info_nce(_v(a, b), temperature=0.02, aggregation="geometric",
                                                               tile_size=ts),
    "circle": lambda a, b, ts: circle_loss(a, b, gamma=256.0, tile_size=ts),
    "mv_dhel": lambda a, b, ts: multi_view_dhel(_v(a, b), temperature=0.02, tile_size=ts),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tile", [None, (5, 4)], ids=["dense", "tiled"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_low_precision_inputs_compute_in_float32(name, tile, dtype):
    a, b = X.to(dtype), Y.to(dtype)
    got = LOSSES[name](a, b, tile)
    want = LOSSES[name](a.float(), b.float(), tile)  # the same values, float32 all the way
    assert got.dtype == torch.float32
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients_match_float32(dtype):
    a = X.to(dtype).requires_grad_()
    b = Y.to(dtype).requires_grad_()
    info_nce(a, b, temperature=0.02, tile_size=(5, 4)).backward()
    a32, b32 = X.to(dtype).float().requires_grad_(), Y.to(dtype).float().requires_grad_()
    info_nce(a32, b32, temperature=0.02).backward()
    assert a.grad.dtype == dtype  # autograd casts the float32 gradient back to the input's dtype
    torch.testing.assert_close(a.grad.float(), a32.grad, rtol=1e-2, atol=1e-3 * float(a32.grad.abs().max()))
    torch.testing.assert_close(b.grad.float(), b32.grad, rtol=1e-2, atol=1e-3 * float(b32.grad.abs().max()))


def test_tiny_temperature_in_float16_is_finite_and_equals_float32():
    """The issue's case: ``info_nce(x, x.flip(0), temperature=1e-5)`` in float16, logits ~1e5 (float16 max 65504)."""
    x = X.half()
    got = info_nce(x, x.flip(0), temperature=1e-5)
    ref = info_nce(x.double(), x.flip(0).double(), temperature=1e-5)  # float64 reference on the same values
    assert torch.isfinite(got)
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
    assert float(info_nce(x, x.flip(0), temperature=1e-5, tile_size=4)) == pytest.approx(float(ref), rel=1e-5)


def test_near_aligned_float16_is_not_rounded_to_zero():
    """Hand-computed: three orthonormal anchors, each its own positive (cosine 1) and cosine 0 with the two
    negatives, tau = 1/8: every anchor's loss is log(1 + 2 e^-8) = 6.7e-4 (-8 + log 2 decoupled), which
    float16 arithmetic rounds to 0 (8.00067 -> 8.0)."""
    q = torch.eye(3, dtype=torch.float16)
    for kw in ({}, {"tile_size": 1}, {"tile_size": (2, 1)}, {"symmetric": True}, {"decoupled": True},
               {"similarity": "dot"}):
        want = math.log1p(2 * math.exp(-8.0)) if "decoupled" not in kw else math.log(2.0) - 8.0
        # float32 cancellation in lse - pos: ulp(8) / 6.7e-4 = 1.4e-3 relative
        assert float(info_nce(q, q, temperature=0.125, **kw)) == pytest.approx(want, rel=5e-3), kw


def test_cpc_dot_products_do_not_overflow_in_float16():
    """|z| ~ 300: z . z ~ 9e4 overflows float16 (max 65504); the float32 computation does not."""
    ctx = (30 * torch.randn(2, 4, 100, generator=torch.Generator().manual_seed(1))).half()
    fut = ctx.roll(1, dims=1)

    def step(c):
        return c

    got = cpc(ctx, fut, predictors=[step], temperature=1000.0)
    want = cpc(ctx.double(), fut.double(), predictors=[step], temperature=1000.0)
    assert torch.isfinite(got)
    assert float(got) == pytest.approx(float(want), rel=1e-4)
    assert float(info_nce(ctx[0], fut[0], similarity="dot", temperature=1000.0)) == pytest.approx(
        float(info_nce(ctx[0].double(), fut[0].double(), similarity="dot", temperature=1000.0)), rel=1e-4)


# ---------------------------------------------------------------------------------------------- mixed dtypes
MIXED = {
    "info_nce": lambda a, b: info_nce(a, b),
    "info_nce_negatives": lambda a, b: info_nce(a, a, negatives=b),
    "sig_lip": lambda a, b: sig_lip(a, b, logit_scale=10.0, logit_bias=-10.0),
    "cwcl": lambda a, b: cwcl(a, b, weights=torch.eye(B), temperature=0.1),
    "nt_xent": lambda a, b: nt_xent(a, b),
    "debiased": lambda a, b: debiased_info_nce(a, b),
    "auc": lambda a, b: auc_contrastive(a, b),
    "circle": lambda a, b: circle_loss(a, b),
    "mean_shifted": lambda a, b: mean_shifted(a, b, torch.zeros(D)),
    "cpc": lambda a, b: cpc(a[:, None].expand(-1, 3, -1), b[:, None].expand(-1, 3, -1), predictors=[lambda c: c]),
}


@pytest.mark.parametrize("name", list(MIXED))
def test_float32_with_float64_is_one_clear_error(name):
    with pytest.raises(ValueError, match=r"float32.*float64"):
        MIXED[name](X, Y.double())


@pytest.mark.parametrize("name", ["info_nce", "sig_lip", "cwcl", "nt_xent"])
def test_float16_with_float32_computes_in_float32(name):
    got = MIXED[name](X.half(), Y)
    want = MIXED[name](X.half().float(), Y)
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------- CPC predictors' output
def test_cpc_predictor_returning_nan_raises_naming_the_step():
    ctx = torch.randn(2, 5, 3)
    bad = nn.Linear(3, 3)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="predictor 2 returned NaN"):
        cpc(ctx, ctx, predictors=[nn.Linear(3, 3), bad])


def test_cpc_predictor_of_another_dtype_raises():
    ctx = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="predictor 1's output has dtype torch.float64"):
        cpc(ctx, ctx, predictors=[lambda c: c.double()])


# ------------------------------------------------------------------------------- embeddings with no direction
@pytest.mark.parametrize("name", ["info_nce", "nt_xent", "sig_lip", "cwcl", "debiased", "auc", "circle",
                                  "mean_shifted"])
def test_a_zero_row_under_cosine_similarity_raises_naming_it(name):
    a = X.clone()
    a[4] *= 1e-20
    with pytest.raises(ValueError, match=r"row\(s\) \[4\]"):
        MIXED[name](a, Y)


@pytest.mark.parametrize("name", ["multi_view", "poly_view", "mv_dhel", "kernel_uniformity", "sup_con"])
def test_a_zero_view_raises(name):
    a = X.clone()
    a[2] = 0.0
    with pytest.raises(ValueError, match="L2 norm below"):
        LOSSES[name](X, a, None)


def test_small_but_valid_rows_still_work_and_dot_similarity_accepts_zero_rows():
    a = X * 1e-6  # norm ~1e-6 > MIN_NORM: cosine is well defined, and scale-free
    torch.testing.assert_close(info_nce(a, Y), info_nce(X, Y))
    z = X.clone()
    z[0] = 0.0
    assert torch.isfinite(info_nce(z, Y, similarity="dot"))


def test_uniformity_metric_gradient_is_finite_for_coinciding_points():
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = torch.cat([z, z[:2]]).requires_grad_()  # two pairs of identical points
    uniformity(z).backward()
    assert torch.isfinite(z.grad).all()
    # the gradient against a float64 finite difference on a direction that keeps the pair together
    z0 = z.detach()
    d = torch.randn_like(z0)
    eps = 1e-6
    fd = (uniformity(z0 + eps * d) - uniformity(z0 - eps * d)) / (2 * eps)
    assert float((z.grad * d).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_uniformity_metric_in_row_blocks_equals_the_pdist_formula(monkeypatch):
    import core.metrics.representation as rep

    z = torch.randn(40, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sq = torch.pdist(z / z.norm(dim=1, keepdim=True)).pow(2)
    want = torch.logsumexp(-2.0 * sq, 0) - math.log(sq.numel())
    monkeypatch.setattr(rep, "_UNIF_ROWS", 7)  # 40 rows in blocks of 7, the last one partial
    torch.testing.assert_close(uniformity(z), want, rtol=1e-12, atol=1e-12)
    assert uniformity(z.half()).dtype == torch.float32


# -------------------------------------------------------------------------------------------------- tile_size
@pytest.mark.parametrize("tile", [True, False, 2.7, "big", 0, -3, (4, 0), (4,), (4, 2.5), [4, True]])
def test_bad_tile_sizes_raise(tile):
    with pytest.raises(ValueError, match="tile_size must be None, 'auto', an int >= 1"):
        info_nce(X, Y, tile_size=tile)


def test_a_list_tile_size_works_like_a_tuple():
    torch.testing.assert_close(info_nce(X, Y, tile_size=[5, 4]), info_nce(X, Y, tile_size=(5, 4)))
    torch.testing.assert_close(info_nce(X, Y, tile_size=[5, 4]), info_nce(X, Y), rtol=1e-5, atol=1e-6)


def test_small_tiles_on_a_larger_input_warn_once(monkeypatch):
    monkeypatch.setattr(execution_mode_module, "_WARNED_SMALL_TILES", set())
    a, b = torch.randn(80, 4), torch.randn(80, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info_nce(a, b, tile_size=16)
        info_nce(a, b, tile_size=16)
        info_nce(a[:40], b[:40], tile_size=33)  # 40 rows: not larger than 64, no warning
        info_nce(a, b, tile_size=(80, 128))  # large enough
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "tile_size=16" in msgs[0]


# ------------------------------------------------------------------------------------------------ temperature
TEMPERATURE_LOSSES = {
    "multi_view": lambda t: multi_view_info_nce(_v(X, Y), temperature=t),
    "poly_view": lambda t: poly_view_info_nce(_v(X, Y), temperature=t),
    "mv_dhel": lambda t: multi_view_dhel(_v(X, Y), temperature=t),
    "cwcl": lambda t: cwcl(X, Y, weights=torch.eye(B), temperature=t),
    "con_r": lambda t: con_r(X, REG, REG, temperature=t),
    "mean_shifted": lambda t: mean_shifted(X, Y, torch.zeros(D), temperature=t),
    "cpc": lambda t: cpc(_v(X, Y), _v(Y, X), predictors=[lambda c: c], temperature=t),
    "info_nce": lambda t: info_nce(X, Y, temperature=t),
    "sup_re_mix": lambda t: sup_re_mix(X, REG, temperature=t, generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("t,match", [(None, "NoneType"), ("0.1", "str"), (True, "bool"),
                                     (torch.tensor(1), "floating tensor"), (torch.tensor([0.1, 0.2]), "scalar")])
@pytest.mark.parametrize("name", list(TEMPERATURE_LOSSES))
def test_bad_temperatures_name_the_parameter(name, t, match):
    with pytest.raises(ValueError, match=f"temperature must .*{match}"):
        TEMPERATURE_LOSSES[name](t)


@pytest.mark.parametrize("name", list(TEMPERATURE_LOSSES))
def test_an_int_temperature_is_a_number(name):
    torch.testing.assert_close(TEMPERATURE_LOSSES[name](1), TEMPERATURE_LOSSES[name](1.0))


# ---------------------------------------------------------------------------------------- validation switch
def test_validation_switch_is_a_context_manager_and_a_setter():
    assert validation_mode() == "full"
    nan = X.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        info_nce(nan, Y)
    with validation("shapes"):
        assert validation_mode() == "shapes"
        assert math.isnan(float(info_nce(nan, Y)))  # no scan: the NaN reaches the loss
        with pytest.raises(ValueError, match="same batch size"):  # shape checks stay
            info_nce(X, Y[:3])
        with validation("full"):
            with pytest.raises(ValueError, match="NaN"):
                info_nce(nan, Y)
        assert validation_mode() == "shapes"
    assert validation_mode() == "full"
    try:
        validation("shapes")
        assert validation_mode() == "shapes"
    finally:
        validation("full")
    with pytest.raises(ValueError, match="validation mode must be one of"):
        validation("none")


def test_shapes_mode_gives_the_same_numbers_without_host_syncs():
    t = torch.tensor(0.1, requires_grad=True)
    want = info_nce(X, Y, temperature=t, top_k=4)
    with validation("shapes"):
        got = info_nce(X, Y, temperature=t, top_k=4)
        lin = nn.Linear(D, D)
        cpc_got = cpc(_v(X, Y), _v(Y, X), predictors=[lin])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(cpc_got, cpc(_v(X, Y), _v(Y, X), predictors=[lin]))


def test_validation_benchmark_runs_and_both_modes_agree(tmp_path):
    from tools.bench_validation import main

    rows = main(["--batch", "16", "--dim", "8", "--reps", "1", "--warmup", "0", "--out", str(tmp_path / "v.md")])
    assert {r["loss"] for r in rows} == {"info_nce", "info_nce symmetric, top_k=14", "sup_con", "cpc (K=2)"}
    assert all(r["loss_diff"] == 0.0 for r in rows)
    assert "shapes / full" in (tmp_path / "v.md").read_text()


def test_mixing_losses_are_exported_from_core_losses():
    import core.losses
    import core.negatives

    assert core.losses.info_nce_with_mixing is core.negatives.info_nce_with_mixing
