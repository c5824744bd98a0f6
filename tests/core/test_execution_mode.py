"""One place decides the execution mode (``core.negatives.mode``): every loss taking ``tile_size=`` / ``gather=``
raises the same error for the same bad value, and the restrictions of the ring come out with one message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import core.losses as L
import core.negatives.mode as mode_module
from core.losses.engine import reduce_pairs
from core.negatives import ExecutionMode, execution_mode, pair_reduce, ring_pair_reduce
from core.negatives.mode import check_tile_size

torch.manual_seed(0)
B, D = 6, 4
Q, K = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
VIEWS = torch.randn(B, 3, D, dtype=torch.float64)
Y = torch.tensor([0, 1, 0, 1, 2, 2])
PREDS = torch.randn(B, dtype=torch.float64)
W = torch.rand(B, B, dtype=torch.float64)
W = (W + W.T) / 2  # symmetric: under gather cwcl reuses the rows for the reverse direction
CONTEXT, FUTURE = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, D, dtype=torch.float64)
SYNTHETIC = torch.randn(B, 2, D, dtype=torch.float64)
PREDICTORS = nn.ModuleList([nn.Linear(3, D).double() for _ in range(2)])


def _block(a, c, params, blk):
    return [torch.logsumexp(a @ c.T, 1)], []


def _block_cols(a, c, params, blk):
    return [torch.logsumexp(a @ c.T, 1)], [torch.logsumexp(a @ c.T, 0)]


#: every loss that takes tile_size= / gather=, called on valid inputs
LOSSES = {
    "info_nce": lambda **kw: L.info_nce(Q, K, **kw),
    "info_nce(top_k)": lambda **kw: L.info_nce(Q, K, top_k=2, **kw),
    "nt_xent": lambda **kw: L.nt_xent(Q, K, **kw),
    "sup_con": lambda **kw: L.sup_con(VIEWS, Y, **kw),
    "sig_lip": lambda **kw: L.sig_lip(Q, K, logit_scale=10.0, logit_bias=-10.0, **kw),
    "cwcl": lambda **kw: L.cwcl(Q, K, weights=W, temperature=0.2, **kw),
    "multi_view_info_nce": lambda **kw: L.multi_view_info_nce(VIEWS, temperature=0.2, **kw),
    "mean_shifted": lambda **kw: L.mean_shifted(Q, K, torch.zeros(D, dtype=torch.float64) + 0.1, **kw),
    "con_r": lambda **kw: L.con_r(Q, PREDS, PREDS, **kw),
    "cpc": lambda **kw: L.cpc(CONTEXT, FUTURE, predictors=PREDICTORS, **kw),
    "debiased_info_nce": lambda **kw: L.debiased_info_nce(Q, K, **kw),
    "auc_contrastive": lambda **kw: L.auc_contrastive(Q, K, **kw),
    "kernel_uniformity": lambda **kw: L.kernel_uniformity(VIEWS, **kw),
    "poly_view_info_nce": lambda **kw: L.poly_view_info_nce(VIEWS, **kw),
    "circle_loss": lambda **kw: L.circle_loss(Q, K, **kw),
    "multi_view_dhel": lambda **kw: L.multi_view_dhel(VIEWS, **kw),
    "cacr": lambda **kw: L.cacr(Q, K, **kw),
    "info_nce_with_synthetic": lambda **kw: L.info_nce_with_synthetic(Q, K, SYNTHETIC, **kw),
    "reduce_pairs": lambda **kw: reduce_pairs(_block, Q, K, row_kinds=("lse",), **kw),
    "pair_reduce": lambda tile_size=None, **kw: pair_reduce(Q, K, _block, row_kinds=("lse",), tile_size=tile_size),
}


def _message(fn, **kw) -> str:
    with pytest.raises(ValueError) as err:
        fn(**kw)
    return str(err.value)


def test_every_loss_runs_in_every_single_process_mode():
    for name, fn in LOSSES.items():
        dense = fn()
        tiled = fn(tile_size=(4, 3))
        torch.testing.assert_close(tiled, dense, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("bad", [2.5, True, "big", (0, 4), (2, 3, 4), [2.0, 3], 0, -1])
def test_a_bad_tile_size_gives_the_same_error_in_every_loss(bad):
    with pytest.raises(ValueError) as ref:
        check_tile_size(bad)
    messages = {name: _message(fn, tile_size=bad) for name, fn in LOSSES.items()}
    assert set(messages.values()) == {str(ref.value)}, messages
    assert "tile_size" in str(ref.value)


@pytest.mark.parametrize("bad", ["all", 2, "Ring", 0.5])
def test_a_bad_gather_gives_the_same_error_in_every_loss(bad):
    messages = {name: _message(fn, gather=bad) for name, fn in LOSSES.items() if name != "pair_reduce"}
    assert set(messages.values()) == {f"gather must be False, True or 'ring', got {bad!r}"}, messages


def test_gather_values_that_mean_false_or_true_are_accepted():
    for g in (False, True, 0, 1):
        assert execution_mode(None, g).gather is bool(g)
    assert execution_mode(None, "ring").gather == "ring"
    # single process: gather=True / "ring" are the single-process computation
    for name, fn in LOSSES.items():
        if name in ("pair_reduce", "info_nce_with_synthetic"):
            continue
        torch.testing.assert_close(fn(gather="ring", tile_size=4), fn(), rtol=1e-10, atol=1e-12, msg=name)


def test_the_ring_restrictions_come_from_one_place():
    ring = "gather='ring' does not support extra negatives; use gather=True"
    assert _message(lambda: L.info_nce(Q, K, negatives=torch.randn(3, D, dtype=torch.float64), gather="ring")) == ring
    assert _message(lambda: reduce_pairs(_block, Q, K, row_kinds=("lse",), gather="ring",
                                         extra_candidates=torch.randn(3, D, dtype=torch.float64))) == ring
    cols = "gather='ring' computes row statistics only; column statistics are not supported"
    assert _message(lambda: reduce_pairs(_block_cols, Q, K, row_kinds=("lse",), col_kinds=("lse",),
                                         gather="ring")) == cols
    assert _message(lambda: ring_pair_reduce(Q, K, _block_cols, row_kinds=("lse",), col_kinds=("lse",))) == cols
    assert _message(LOSSES["info_nce_with_synthetic"], gather="ring") == \
        "info_nce_with_synthetic supports gather=False or True (not 'ring')"
    with pytest.raises(ValueError, match="single-process only"):
        execution_mode(None, True, fused_columns=True)


def test_a_mode_resolves_auto_tiles_once_per_call(monkeypatch):
    """info_nce(top_k=, tile_size="auto") runs a threshold pass and the loss pass on the same B x B matrix: the
    memory probe behind "auto" runs once, so both passes tile alike."""
    calls = []

    def probe(device=None):
        calls.append(device)
        return 1 << 10  # too little for dense: "auto" tiles

    monkeypatch.setattr(mode_module, "available_memory_bytes", probe)
    got = L.info_nce(Q, K, top_k=2, tile_size="auto")
    torch.testing.assert_close(got, L.info_nce(Q, K, top_k=2), rtol=1e-10, atol=1e-12)
    assert len(calls) == 1
    mode = execution_mode("auto", False)
    assert mode.tiles(B, B, torch.float64) == mode.tiles(B, B, torch.float64) == mode_module.DEFAULT_TILE
    assert len(calls) == 2


def test_a_mode_passes_through_and_cannot_be_given_twice():
    mode = execution_mode((4, 3), False)
    assert execution_mode(mode, "ring") is mode  # gather is part of the mode
    assert isinstance(mode, ExecutionMode) and mode.world == 1 and mode.n_global(5) == 5
    torch.testing.assert_close(reduce_pairs(_block, Q, K, row_kinds=("lse",), mode=mode)[0],
                               reduce_pairs(_block, Q, K, row_kinds=("lse",))[0], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="not both"):
        reduce_pairs(_block, Q, K, row_kinds=("lse",), mode=mode, tile_size=4)
    with pytest.raises(ValueError, match="ExecutionMode"):
        reduce_pairs(_block, Q, K, row_kinds=("lse",), mode=(4, 3))
