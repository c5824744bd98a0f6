"""The newer objectives under ``gather=True`` / ``gather="ring"`` on 2 gloo CPU processes equal one process on the
global batch (losses, input gradients, the scalar temperature's gradient and per-anchor temperatures'
gradients), with the convention of :mod:`core.negatives.distributed` (see ``test_distributed.py``)."""

from __future__ import annotations

import pytest
import torch
from _dist_helpers import (
    Case,
    DistPool,
    alignment_temperature_reference,
    as_tensor,
    kernel_uniformity_reference,
    loss_reference,
)

RTOL, ATOL = 1e-10, 1e-12

CASES = [
    pytest.param("info_nce_tau", {"symmetric": True}, id="info_nce-per-anchor-t-symmetric"),
    pytest.param("nt_xent_tau", {}, id="nt_xent-per-anchor-t"),
    pytest.param("sup_con_tau", {"class_prior": torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)},
                 id="sup_con-per-anchor-t-class-prior"),
    pytest.param("info_nce", {"top_k": 3}, id="info_nce-top_k"),
    pytest.param("debiased", {"tau_plus": 0.1, "beta": 1.0}, id="hard-negative"),
    pytest.param("debiased_2n", {"tau_plus": 0.2}, id="debiased-2n"),
    pytest.param("auc", {}, id="auc"),
    pytest.param("poly_view", {"aggregation": "arithmetic"}, id="poly_view-arithmetic"),
    pytest.param("poly_view", {"aggregation": "geometric"}, id="poly_view-geometric"),
    pytest.param("circle", {}, id="circle-labels"),
    pytest.param("mv_dhel", {}, id="mv_dhel"),
    pytest.param("cacr", {}, id="cacr"),
    pytest.param("cacr_labels", {"similarity": "dot"}, id="cacr-labels-dot"),
]
MODES = [pytest.param(True, None, id="gather"), pytest.param("ring", 2, id="ring-tiled")]


@pytest.fixture(scope="module")
def pool2():
    pool = DistPool(2)
    yield pool
    pool.close()


def _close(actual, expected, what):
    torch.testing.assert_close(as_tensor(actual), expected.detach(), rtol=RTOL, atol=ATOL,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.distributed
@pytest.mark.parametrize("gather,tile_size", MODES)
@pytest.mark.parametrize("loss,kwargs", CASES)
def test_new_losses_match_single_process_2_ranks(pool2, loss, kwargs, gather, tile_size):
    """Unequal local batches (3 and 5 samples): rank r's loss is the mean over its anchors against every
    rank's candidates; its input gradients those of the sum of the ranks' losses."""
    case = Case(loss, kwargs, sizes=(3, 5), gather=gather, tile_size=tile_size)
    got = pool2.run("loss_task", case)
    want = loss_reference(case)
    for r, (g, w) in enumerate(zip(got, want)):
        _close(g["loss"], w["loss"], f"rank {r} loss")
        _close(g["t_grad"], w["t_grad"], f"rank {r} temperature grad")
        for name in w["grads"]:
            _close(g["grads"][name], w["grads"][name], f"rank {r} grad of {name}")


@pytest.mark.distributed
@pytest.mark.parametrize("gather,tile_size", MODES)
def test_kernel_uniformity_is_global_on_every_rank(pool2, gather, tile_size):
    sizes = (3, 4)
    got = pool2.run("kernel_uniformity_task", sizes, gather, tile_size)
    want = kernel_uniformity_reference(sizes)
    for r, g in enumerate(got):
        _close(g["loss"], want["loss"], f"rank {r} loss")
        rows = slice(sum(sizes[:r]), sum(sizes[: r + 1]))
        _close(g["grad"], want["grad"][rows], f"rank {r} grad")


def test_alignment_temperature_is_one_global_value_with_gather(pool2):
    sizes = (3, 5)
    want = alignment_temperature_reference(sizes)
    for r, g in enumerate(pool2.run("alignment_temperature_task", sizes, True)):
        assert float(g["tau"]) == pytest.approx(want[0], rel=1e-6), f"rank {r}"
    for r, g in enumerate(pool2.run("alignment_temperature_task", sizes, False)):  # each rank its own rows
        assert float(g["tau"]) == pytest.approx(want[1 + r], rel=1e-6), f"rank {r}"
