"""Distributed negatives (``gather=True`` and ``gather="ring"``) against a single process on the global batch.

Convention under test (see :mod:`core.negatives.distributed`): rank ``r`` returns ``l_r``, the mean over
its local anchors against every rank's candidates; its backward leaves ``d(sum_r' l_r')/dx`` on each local
input and ``d l_r / d theta`` on a shared parameter (temperature). DDP's mean of parameter gradients (or
an explicit all-reduce-mean without DDP) is then exactly the gradient of the single-process loss.

Workers are a pool of gloo CPU processes started once per module (``_dist_helpers.DistPool``); the
references are computed in the pytest process, which never initialises ``torch.distributed``.
"""

from __future__ import annotations

import math

import pytest
import torch
from _dist_helpers import (
    Case,
    DistPool,
    as_tensor,
    ddp_linear_reference,
    lightning_reference,
    loss_available,
    loss_reference,
    masked_sup_con_reference,
    stability_reference,
)

from core.losses import info_nce, nt_xent
from core.losses.engine import ContrastSpec, contrast_block
from core.negatives import (
    all_gather_with_grad,
    gather_candidates,
    gather_sizes,
    pair_reduce,
    rank_offset,
    ring_pair_reduce,
)

RTOL, ATOL = 1e-10, 1e-12

CONFIGS = [
    pytest.param("info_nce", {}, id="info_nce"),
    pytest.param("info_nce", {"symmetric": True}, id="info_nce-symmetric"),
    pytest.param("info_nce", {"decoupled": True}, id="info_nce-decoupled"),
    pytest.param("info_nce", {"margin": 0.2}, id="info_nce-margin"),
    pytest.param("info_nce", {"margin": 0.3, "margin_type": "angular"}, id="info_nce-angular"),
    pytest.param("nt_xent", {}, id="nt_xent"),
    pytest.param("nt_xent", {"decoupled": True, "margin": 0.1}, id="nt_xent-decoupled-margin"),
    pytest.param("sup_con", {}, id="sup_con"),
    pytest.param("con_r", {"window": 0.2}, id="con_r"),
    pytest.param("con_r", {"window": 0.2, "push": "linear", "push_scale": 2.0}, id="con_r-linear-push"),
    pytest.param("sig_lip", {}, id="sig_lip"),
    pytest.param("mean_shifted", {"angular_weight": 0.5}, id="mean_shifted"),
]
# Losses whose gather mode assumes the same local batch size on every rank (instance ids / weight columns
# numbered rank * B): checked with equal sizes.
EQUAL_SIZE_CONFIGS = [
    pytest.param("sup_con_instance", {}, id="sup_con-no-labels"),
    pytest.param("multi_view", {}, id="multi_view_info_nce"),
    pytest.param("cwcl", {}, id="cwcl"),
]
MODES = [
    pytest.param(True, None, id="gather"),
    pytest.param(True, 3, id="gather-tiled"),
    pytest.param("ring", None, id="ring"),
    pytest.param("ring", 2, id="ring-tiled"),
]


@pytest.fixture(scope="module")
def pool2():
    pool = DistPool(2)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def pool4():
    pool = DistPool(4)
    yield pool
    pool.close()


def _close(actual, expected, what: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(as_tensor(actual), expected.detach(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _check_case(pool: DistPool, case: Case) -> None:
    if not loss_available(case.loss):
        pytest.skip(f"core.losses has no {case.loss} yet")
    got = pool.run("loss_task", case)
    want = loss_reference(case)
    for r, (g, w) in enumerate(zip(got, want)):
        _close(g["loss"], w["loss"], f"rank {r} loss")
        _close(g["t_grad"], w["t_grad"], f"rank {r} temperature grad")
        assert set(g["grads"]) == set(w["grads"])
        for name in w["grads"]:
            _close(g["grads"][name], w["grads"][name], f"rank {r} grad of {name}")


# ------------------------------------------------------------------------------- no process group


def test_without_process_group_everything_is_single_process():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert all_gather_with_grad(x) is x
    c, meta, offset = gather_candidates(x, {"label": torch.arange(5)})
    assert c is x and offset == 0 and torch.equal(meta["label"], torch.arange(5))
    assert gather_sizes(5) == [5] and rank_offset(5) == 0
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for loss in (info_nce, nt_xent):
        ref = loss(x, y)
        g_ref = torch.autograd.grad(ref, (x, y))
        for gather, tile in ((True, None), ("ring", None), ("ring", 2)):
            out = loss(x, y, gather=gather, tile_size=tile)
            torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
            for a, b in zip(torch.autograd.grad(out, (x, y)), g_ref):
                torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_ring_rejects_column_statistics():
    spec = ContrastSpec(column_stats=True)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="column statistics"):
        ring_pair_reduce(x, x, lambda a, c, p, b: contrast_block(spec, a, c, p, b), row_kinds=spec.row_kinds,
                         col_kinds=spec.col_kinds, params=(torch.tensor(2.0),),
                         row_meta={"pos_id": torch.arange(4)})
    # single process: the ring is plain pair_reduce (same numbers, dense or tiled)
    spec = ContrastSpec()
    fn = lambda a, c, p, b: contrast_block(spec, a, c, p, b)  # noqa: E731
    kw = dict(row_kinds=spec.row_kinds, params=(torch.tensor(2.0),), row_meta={"pos_id": torch.arange(4)})
    torch.testing.assert_close(ring_pair_reduce(x, x, fn, tile_size=3, **kw)[0], pair_reduce(x, x, fn, **kw)[0])


# ------------------------------------------------------------------------------------ 2 processes


@pytest.mark.distributed
def test_all_gather_with_grad_unequal_sizes(pool2):
    sizes = (2, 3)
    out = pool2.run("gather_task", sizes)
    want_rows = torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0], dtype=torch.float64)[:, None].expand(5, 2)
    for r, o in enumerate(out):
        _close(o["gathered"], want_rows, f"rank {r} gathered")
        _close(o["c"], want_rows, f"rank {r} gathered candidates")
        # rank r' weighs gathered row j by (r' + 1) * j, so d/dx_r = (1 + 2) * (global ids of r's rows)
        ids = torch.arange(sum(sizes[:r]), sum(sizes[: r + 1]), dtype=torch.float64)
        _close(o["grad"], 3.0 * ids[:, None].expand(-1, 2), f"rank {r} gradient")
        assert o["offset"] == o["rank_offset"] == sum(sizes[:r])
        assert list(o["sizes"]) == list(sizes)
        assert as_tensor(o["labels"]).tolist() == [0, 1, 100, 101, 102]
        assert as_tensor(o["flags"]).tolist() == [True, False, True, False, True]


@pytest.mark.distributed
@pytest.mark.parametrize("gather,tile_size", MODES)
@pytest.mark.parametrize("loss,kwargs", CONFIGS)
def test_loss_and_grads_match_single_process_2_ranks(pool2, loss, kwargs, gather, tile_size):
    """Unequal local batches (3 and 5 samples): per-rank loss, input grads and temperature grad."""
    _check_case(pool2, Case(loss, kwargs, sizes=(3, 5), gather=gather, tile_size=tile_size))


@pytest.mark.distributed
@pytest.mark.parametrize("gather,tile_size", MODES)
@pytest.mark.parametrize("loss,kwargs", EQUAL_SIZE_CONFIGS)
def test_equal_batch_losses_match_single_process_2_ranks(pool2, loss, kwargs, gather, tile_size):
    _check_case(pool2, Case(loss, kwargs, sizes=(4, 4), gather=gather, tile_size=tile_size))


@pytest.mark.distributed
@pytest.mark.parametrize("gather,tile_size", [(True, None), ("ring", None), ("ring", 3)])
def test_ddp_mean_of_rank_grads_equals_global_grads(pool2, gather, tile_size):
    """Linear encoder + learnable temperature, 4 samples per rank: DDP (and a manual all-reduce-mean
    without DDP) of the per-rank gradients equals the single-process gradient on the 8 samples."""
    world, b = 2, 4
    out = pool2.run("ddp_linear_task", b, gather, tile_size)
    ref = ddp_linear_reference(world, b)
    _close(sum(as_tensor(o["loss"]) for o in out) / world, ref["loss"], "mean of rank losses")
    for r, o in enumerate(out):
        for name, g in ref["grads"].items():
            _close(o["manual"][name], g, f"rank {r} all-reduce-mean grad of {name}")
            _close(o["ddp"][name], g, f"rank {r} DDP grad of {name}")
    # no hidden all-reduce: each rank's temperature grad is its own loss's (they differ)
    assert not torch.allclose(as_tensor(out[0]["raw"]["log_t"]), as_tensor(out[1]["raw"]["log_t"]))


def _check_masked_sup_con(pool: DistPool, sizes: tuple[int, ...], gather, tile_size) -> None:
    got = pool.run("masked_sup_con_task", sizes, gather, tile_size)
    for r, (g, w) in enumerate(zip(got, masked_sup_con_reference(sizes))):
        for k in ("loss", "gx", "gy"):
            _close(g[k], w[k], f"rank {r} {k}")


@pytest.mark.distributed
@pytest.mark.parametrize("gather,tile_size", MODES)
def test_sup_con_anchor_mask_matches_single_process_2_ranks(pool2, gather, tile_size):
    """Masked-out samples stay candidates on every rank: per-rank summed losses and local gradients equal one
    process on the global batch (rank r's anchors alone; gradients of the sum over all anchors)."""
    sizes = (4, 5)
    _check_masked_sup_con(pool2, sizes, gather, tile_size)


@pytest.mark.distributed
@pytest.mark.distributed_heavy
@pytest.mark.parametrize("gather,tile_size", MODES)
def test_sup_con_anchor_mask_matches_single_process_4_ranks(pool4, gather, tile_size):
    sizes = (2, 3, 1, 4)
    _check_masked_sup_con(pool4, sizes, gather, tile_size)


@pytest.mark.distributed
@pytest.mark.parametrize("tile_size", [None, 3])
def test_ring_is_stable_at_logit_scale_100(pool2, tile_size):
    """float32, temperature 0.01 and positives with cosine ~ 1 (Inf-CL's pure-torch ring overflows here):
    finite and equal to a float64 single-process computation."""
    world, b, temperature = 2, 6, 0.01
    out = pool2.run("stability_task", b, temperature, tile_size)
    ref = stability_reference(world, b, temperature)
    for r, o in enumerate(out):
        loss = as_tensor(o["loss"])
        assert torch.isfinite(loss) and torch.isfinite(as_tensor(o["q"])).all()
        _close(loss.double(), ref["losses"][r], f"rank {r} loss", rtol=1e-4, atol=1e-5)
        rows = slice(r * b, (r + 1) * b)
        for name in ("q", "k"):
            scale = ref[name].abs().max()
            _close(as_tensor(o[name]).double() / scale, ref[name][rows] / scale, f"rank {r} grad {name}",
                   rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------ 4 processes, Lightning


@pytest.mark.distributed
@pytest.mark.distributed_heavy
@pytest.mark.parametrize("gather,tile_size", MODES)
@pytest.mark.parametrize("loss,kwargs", CONFIGS)
def test_loss_and_grads_match_single_process_4_ranks(pool4, loss, kwargs, gather, tile_size):
    _check_case(pool4, Case(loss, kwargs, sizes=(3, 2, 4, 3), gather=gather, tile_size=tile_size, seed=1))


@pytest.mark.distributed
@pytest.mark.distributed_heavy
@pytest.mark.parametrize("gather,tile_size", MODES)
@pytest.mark.parametrize("loss,kwargs", EQUAL_SIZE_CONFIGS)
def test_equal_batch_losses_match_single_process_4_ranks(pool4, loss, kwargs, gather, tile_size):
    _check_case(pool4, Case(loss, kwargs, sizes=(3, 3, 3, 3), gather=gather, tile_size=tile_size, seed=1))


@pytest.fixture(scope="module")
def lightning_pool():
    """A separate pair of processes: Lightning's trainer sets process-wide state (env, rank_zero_only)."""
    pytest.importorskip("lightning")
    pool = DistPool(2)
    yield pool
    pool.close()


@pytest.mark.distributed
@pytest.mark.distributed_heavy
@pytest.mark.parametrize("gather", [True, "ring"])
def test_lightning_ddp_matches_single_process(lightning_pool, gather):
    """3 SGD steps of a linear encoder + learnable temperature with info_nce(gather=...) under Lightning's
    DDP strategy (``strategy="ddp"``, processes launched externally as by torchrun) on 2 gloo CPU
    processes = the same steps in one process on the concatenated batch."""
    out = lightning_pool.run("lightning_task", gather)
    ref = lightning_reference(2)
    for r, weights in enumerate(out):
        for name, w in ref.items():
            _close(weights[name], w, f"rank {r} final {name}", rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["info_nce", "sup_con"])
@pytest.mark.parametrize("gather", [True, "ring"], ids=["gather", "ring"])
def test_invalid_input_on_one_rank_raises_on_every_rank(pool2, loss, gather):
    """A NaN on rank 1 raises there (naming the NaN) and on rank 0 (naming rank 1) instead of rank 0
    waiting forever in the all-gather; the group stays usable for the next call."""
    got = pool2.run("bad_input_task", loss, gather, 1)
    assert got[1]["error"] is not None and ("NaN" in got[1]["error"] or "finite" in got[1]["error"])
    assert got[0]["error"] is not None and "rank(s) [1]" in got[0]["error"]
    assert all(math.isfinite(g["after"]) for g in got)


@pytest.mark.distributed
@pytest.mark.parametrize("gather", [True, "ring"])
def test_error_after_gathering_on_one_rank_raises_on_every_rank(pool2, gather):
    """An anchor with no positive is only known after the gather: rank 1 raises it, rank 0 raises a
    PeerInputError naming rank 1 instead of waiting in backward's collectives; the group stays usable."""
    got = pool2.run("late_error_task", gather)
    assert got[1]["error"] is not None and "no positive" in got[1]["error"]
    assert got[0]["error"] is not None and got[0]["error"].startswith("PeerInputError")
    assert "rank(s) [1]" in got[0]["error"]
    assert all(math.isfinite(g["after"]) for g in got)
