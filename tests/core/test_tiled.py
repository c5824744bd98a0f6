"""Tiled execution (blocks of rows x columns, recomputed in backward) equals dense execution, for every loss
that takes ``tile_size``: the loss and the gradient of every input (embeddings, learnable temperature, SigLIP's
scale and bias), in float64 (rtol 1e-9) and float32 (rtol 1e-5), for batches that the tiles do not divide,
rectangular tiles, and ``tile_size="auto"`` (dense for small inputs)."""

from __future__ import annotations

import pytest
import torch
from _loss_refs import compare
from torch import nn

from core.losses import (
    con_r,
    cpc,
    cwcl,
    info_nce,
    mean_shifted,
    multi_view_info_nce,
    nt_xent,
    sig_lip,
    sup_con,
)
from core.negatives import resolve_tile_size
from core.negatives.execution import DEFAULT_TILE

B, D = 7, 5


def _make(dtype):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    t = torch.tensor(0.3, dtype=dtype)
    y_reg = torch.randint(0, 6, (B,), generator=g).to(dtype)
    p_reg = 0.4 * y_reg + 1.5 + 0.5 * r(B)
    u = torch.nn.functional.normalize(r(B, 4), dim=1)
    torch.manual_seed(0)
    predictors = nn.ModuleList(nn.Linear(4, D) for _ in range(2)).to(dtype)
    return {
        "two": {"a": r(B, D), "b": r(B, D), "temperature": t},
        "negs": r(4, D),
        "views": {"features": r(B, 2, D), "temperature": t},
        "three": {"views": r(5, 3, D), "temperature": t},
        "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0]),
        "y": y_reg,
        "p": p_reg,
        "w": torch.rand(B, generator=g, dtype=torch.float64).to(dtype) + 0.5,
        "cw": 0.5 * (u @ u.T) + 0.5,
        "center": 0.3 * r(D),
        "sig": {"a": r(B, D), "b": r(B, D), "logit_scale": torch.tensor(5.0, dtype=dtype),
                "logit_bias": torch.tensor(-2.0, dtype=dtype)},
        "seq": {"context": r(3, 5, 4), "future": r(3, 5, D), "temperature": t},
        "predictors": predictors,
    }


def _info(opts, negatives=False):
    def call(d, tile):
        x = d["two"]
        return lambda a, b, temperature: info_nce(a, b, temperature=temperature, tile_size=tile,
                                                  negatives=d["negs"] if negatives else None, **opts), x
    return call


CASES = {
    "info_nce": _info({}),
    "info_nce-symmetric": _info({"symmetric": True}),
    "info_nce-decoupled": _info({"decoupled": True}),
    "info_nce-additive-margin": _info({"margin": 0.2}),
    "info_nce-angular-margin-symmetric": _info({"margin": 0.3, "margin_type": "angular", "symmetric": True}),
    "info_nce-negatives": _info({}, negatives=True),
    "info_nce-symmetric-negatives-decoupled": _info({"symmetric": True, "decoupled": True}, negatives=True),
    "info_nce-dot": _info({"similarity": "dot"}),
    "nt_xent": lambda d, tile: (lambda a, b, temperature: nt_xent(a, b, temperature=temperature, tile_size=tile),
                                d["two"]),
    "nt_xent-decoupled-margin": lambda d, tile: (
        lambda a, b, temperature: nt_xent(a, b, temperature=temperature, tile_size=tile, decoupled=True,
                                          margin=0.1, margin_type="angular"), d["two"]),
    "sup_con-out": lambda d, tile: (
        lambda features, temperature: sup_con(features, d["labels"], temperature=temperature, tile_size=tile),
        d["views"]),
    "sup_con-in": lambda d, tile: (
        lambda features, temperature: sup_con(features, d["labels"], temperature=temperature, variant="in",
                                              tile_size=tile), d["views"]),
    "sup_con-simclr": lambda d, tile: (
        lambda features, temperature: sup_con(features, temperature=temperature, tile_size=tile), d["views"]),
    "cwcl": lambda d, tile: (
        lambda a, b, temperature: cwcl(a, b, weights=d["cw"], temperature=temperature, tile_size=tile), d["two"]),
    "con_r-paper": lambda d, tile: (
        lambda features, temperature: con_r(features, d["y"], d["p"], temperature=temperature, tile_size=tile,
                                            sample_weights=d["w"], push_scale=0.3), d["views"]),
    "con_r-official-linear": lambda d, tile: (
        lambda features, temperature: con_r(features, d["y"], d["p"], temperature=temperature, tile_size=tile,
                                            denominator="official", push="linear", push_scale=0.2), d["views"]),
    "mean_shifted": lambda d, tile: (
        lambda a, b, temperature: mean_shifted(a, b, d["center"], temperature=temperature, angular_weight=0.5,
                                               tile_size=tile), d["two"]),
    "multi_view": lambda d, tile: (
        lambda views, temperature: multi_view_info_nce(views, temperature=temperature, tile_size=tile), d["three"]),
    "sig_lip": lambda d, tile: (
        lambda a, b, logit_scale, logit_bias: sig_lip(a, b, logit_scale=logit_scale, logit_bias=logit_bias,
                                                      tile_size=tile), d["sig"]),
    "cpc": lambda d, tile: (
        lambda context, future, temperature: cpc(context, future, predictors=d["predictors"],
                                                 temperature=temperature, tile_size=tile), d["seq"]),
}

TOL = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-5, 1e-6)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("tile", [3, (2, 5), (6, 1)], ids=["3", "2x5", "6x1"])
@pytest.mark.parametrize("case", list(CASES))
def test_tiled_equals_dense(case, tile, dtype):
    d = _make(dtype)
    tiled, x = CASES[case](d, tile)
    dense, _ = CASES[case](d, None)
    rtol, atol = TOL[dtype]
    compare(tiled, dense, x, rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", list(CASES))
def test_auto_picks_dense_for_small_inputs(case):
    d = _make(torch.float64)
    auto, x = CASES[case](d, "auto")
    dense, _ = CASES[case](d, None)
    assert torch.equal(auto(**x), dense(**x))


def test_auto_tiles_when_the_dense_pass_does_not_fit():
    assert resolve_tile_size("auto", 64, 64, torch.float32) is None
    assert resolve_tile_size("auto", 1 << 20, 1 << 20, torch.float32) == DEFAULT_TILE  # 24 TiB dense
    assert resolve_tile_size("auto", 4096, 4096, torch.float32, memory_budget_bytes=1 << 20) == DEFAULT_TILE
    assert resolve_tile_size("auto", 4096, 4096, torch.float32, memory_budget_bytes=1 << 30) is None


def test_auto_budget_share_and_tile_depend_on_the_device(monkeypatch):
    # dense needs DENSE_BUFFERS x 4096^2 fp32 = 384 MiB; with 600 MiB free the CPU (half) tiles, a GPU (80 %) not
    import core.negatives.mode as ex

    monkeypatch.setattr(ex, "available_memory_bytes", lambda device=None: 600 << 20)
    assert ex.DENSE_BUFFERS * 4096 * 4096 * 4 == 384 << 20
    cuda = torch.device("cuda")  # only the device type is read: no GPU needed
    assert resolve_tile_size("auto", 4096, 4096, torch.float32) == DEFAULT_TILE
    assert resolve_tile_size("auto", 4096, 4096, torch.float32, device=cuda) is None
    monkeypatch.setattr(ex, "available_memory_bytes", lambda device=None: 400 << 20)
    assert resolve_tile_size("auto", 4096, 4096, torch.float32, device=cuda) == ex.DEFAULT_TILE_CUDA
    assert ex.DEFAULT_TILE_CUDA[0] * ex.DEFAULT_TILE_CUDA[1] > DEFAULT_TILE[0] * DEFAULT_TILE[1]
    # an explicit budget overrides the share on every device
    assert resolve_tile_size("auto", 4096, 4096, torch.float32, memory_budget_bytes=1 << 30, device=cuda) is None


def test_cuda_available_memory_counts_the_allocators_unused_cache(monkeypatch):
    """Memory PyTorch caches after a dense pass is free for the next one: 'auto' must not flip to tiles on the
    second call (the H200 benchmark picked dense for the warm-up, then tiles for every timed pass)."""
    import core.negatives.mode as ex

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 50 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    assert ex.available_memory_bytes(torch.device("cuda")) == (10 + 50 - 2) * gib
    # a 40 GiB dense pass fits in 80 % of 58 GiB, not in 80 % of the driver's 10 GiB
    n = int((40 * gib / ex.DENSE_BUFFERS / 4) ** 0.5)
    assert resolve_tile_size("auto", n, n, torch.float32, device=torch.device("cuda")) is None


@pytest.mark.parametrize("case", ["info_nce-angular-margin-symmetric", "sup_con-in", "con_r-paper", "sig_lip",
                                  "multi_view"])
def test_tiled_gradcheck(case):
    """The custom backward (blocks recomputed) against finite differences."""
    d = _make(torch.float64)
    fn, x = CASES[case](d, (2, 3))
    keys = list(x)
    inputs = tuple(v.clone().requires_grad_() for v in x.values())
    assert torch.autograd.gradcheck(lambda *t: fn(**dict(zip(keys, t))), inputs)
