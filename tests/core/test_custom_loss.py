"""``docs/custom_loss.md`` builds a loss outside ``core`` on the public engine (``core.losses.engine``): its code
blocks are extracted and run here, and the loss is checked against a float64 loop written from the formula
(Chuang et al. 2020), dense, tiled, and on two gloo processes with ``gather=True`` / ``"ring"``."""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import core.losses.engine as engine

DOC = Path(__file__).resolve().parents[2] / "docs" / "custom_loss.md"


def doc_namespace() -> dict:
    """Run every ```python block of the page, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3, "the page lost its code blocks"
    ns: dict = {"__name__": "custom_loss_doc"}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 -- the project's own documentation
    return ns


def reference(q: torch.Tensor, k: torch.Tensor, tau: float, tau_plus: float) -> torch.Tensor:
    """Per-anchor loss, a plain loop over anchors from the paper's formula."""
    out = []
    for i in range(q.shape[0]):
        u = q[i] / q[i].norm()
        p = (u @ (k[i] / k[i].norm())) / tau
        negs = [(u @ (k[j] / k[j].norm())) / tau for j in range(k.shape[0]) if j != i]
        n = len(negs)
        ng = (sum(torch.exp(x) for x in negs) - tau_plus * n * torch.exp(p)) / (1 - tau_plus)
        ng = torch.maximum(ng, torch.tensor(n * math.exp(-1 / tau), dtype=q.dtype))
        out.append(-p + torch.log(torch.exp(p) + ng))
    return torch.stack(out)


def _inputs(b: int = 10, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g, dtype=torch.float64)
    # positives from close to far: at tau = 0.2, tau+ = 0.3 some anchors take the debiased estimate, others the
    # floor (checked below)
    k = q + torch.linspace(0.1, 3.0, b, dtype=torch.float64)[:, None] * torch.randn(b, d, generator=g,
                                                                                     dtype=torch.float64)
    return q, k


@pytest.mark.parametrize("tile", [None, 3, (4, 3)], ids=["dense", "tiled3", "tiled4x3"])
@pytest.mark.parametrize("tau,tau_plus", [(0.5, 0.1), (0.2, 0.3), (1.0, 0.0)])
def test_doc_loss_matches_float64_reference(tile, tau, tau_plus):
    ns = doc_namespace()
    q, k = _inputs()
    q1, k1 = q.clone().requires_grad_(), k.clone().requires_grad_()
    q2, k2 = q.clone().requires_grad_(), k.clone().requires_grad_()
    got = ns["debiased_nce"](q1, k1, temperature=tau, tau_plus=tau_plus, reduction="none", tile_size=tile)
    want = reference(q2, k2, tau, tau_plus)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    w = torch.linspace(0.5, 1.5, q.shape[0], dtype=q.dtype)  # a non-uniform upstream gradient
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(k1.grad, k2.grad, rtol=1e-9, atol=1e-12)


def test_doc_loss_exercises_both_branches_and_equals_info_nce_at_tau_plus_0():
    ns = doc_namespace()
    q, k = _inputs()
    from core.losses import debiased_info_nce, info_nce

    torch.testing.assert_close(ns["debiased_nce"](q, k, temperature=0.5, tau_plus=0.0),
                               info_nce(q, k, temperature=0.5), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ns["debiased_nce"](q, k, temperature=0.5, tau_plus=0.1),
                               debiased_info_nce(q, k, temperature=0.5, tau_plus=0.1), rtol=1e-10, atol=1e-12)
    # the floor is active for some anchors and not for others at these settings (both branches tested above)
    s = engine.reduce_pairs(ns["debiased_block"], engine.prepare(q, "cosine"), engine.prepare(k, "cosine"),
                            params=(engine.to_scale(0.2, q),), row_kinds={"neg_lse": "lse", "pos": "sum",
                                                                          "n_neg": "count"},
                            row_meta={"pos_id": torch.arange(q.shape[0])})[0]
    inner = 1 - 0.3 * s.n_neg * torch.exp(s.pos - s.neg_lse)
    debiased = s.neg_lse + torch.log(inner.clamp_min(1e-30)) - math.log1p(-0.3)
    floor = torch.log(s.n_neg) - 5.0
    chosen = torch.where(inner > 0, debiased > floor, torch.zeros_like(inner, dtype=torch.bool))
    assert bool(chosen.any()) and not bool(chosen.all())


def test_doc_loss_validates_like_a_core_loss():
    ns = doc_namespace()
    q, k = _inputs()
    with pytest.raises(ValueError, match="tau_plus must lie"):
        ns["debiased_nce"](q, k, tau_plus=1.0)
    with pytest.raises(ValueError, match="temperature must"):
        ns["debiased_nce"](q, k, temperature="0.5")
    with pytest.raises(ValueError, match="same batch size"):
        ns["debiased_nce"](q, k[:3])
    with pytest.raises(ValueError, match="tile_size must"):
        ns["debiased_nce"](q, k, tile_size=2.5)


def test_named_row_statistics_of_the_contrast_engine():
    q, k = _inputs()
    spec = engine.ContrastSpec(positive="index")
    row, _ = engine.run_contrast(spec, engine.prepare(q, "cosine"), engine.prepare(k, "cosine"),
                                 engine.to_scale(0.5, q), row_meta={"pos_id": torch.arange(q.shape[0])})
    st = engine.row_stats(row)
    assert st._fields == engine.ROW_STATS
    torch.testing.assert_close(st.den_lse - st.pos, reference(q, k, 0.5, 0.0), rtol=1e-10, atol=1e-12)
    assert torch.equal(st.n_neg, torch.full((q.shape[0],), q.shape[0] - 1.0, dtype=q.dtype))


# ------------------------------------------------------------------------------------------ two processes
def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        ns = doc_namespace()
        q, k = _inputs(b=9)
        rows = [slice(0, 4), slice(4, 9)][rank]  # unequal local batches
        res = {}
        for gather, tile, mode in ((True, None, "full"), (True, 2, "full"), ("ring", None, "full"),
                                   ("ring", (2, 3), "full"), (True, 2, "shapes"), ("ring", None, "shapes")):
            ql, kl = q[rows].clone().requires_grad_(), k[rows].clone().requires_grad_()
            with engine.validation(mode):  # "shapes": no cross-rank agreement, the same collectives otherwise
                loss = ns["debiased_nce"](ql, kl, temperature=0.3, tau_plus=0.2, tile_size=tile, gather=gather)
            loss.backward()
            res[f"{gather}-{tile}-{mode}"] = (loss.detach(), ql.grad, kl.grad)
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~17 s on the shared 2-core CPU
@pytest.mark.distributed
def test_doc_loss_gathered_over_two_ranks_equals_one_process(tmp_path):
    import socket

    import torch.multiprocessing as tmp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.spawn(_rank_main, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    q, k = _inputs(b=9)
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    per = reference(qg, kg, 0.3, 0.2)
    # each rank returns the mean over its local anchors; DDP averages the ranks' gradients
    rows = [slice(0, 4), slice(4, 9)]
    want_loss = [per[r].mean() for r in rows]
    (sum(want_loss) / 2).backward()
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key in got[0]:
        for r in range(2):
            loss, gq, gk = got[r][key]
            torch.testing.assert_close(loss, want_loss[r].detach(), rtol=1e-10, atol=1e-12)
        # the sum of both ranks' local gradients (what DDP all-reduces) over the global batch, divided by 2
        gq = torch.cat([got[0][key][1], got[1][key][1]]) / 2
        gk_local = torch.cat([got[0][key][2], got[1][key][2]]) / 2
        torch.testing.assert_close(gq, qg.grad, rtol=1e-9, atol=1e-12, msg=key)
        torch.testing.assert_close(gk_local, kg.grad, rtol=1e-9, atol=1e-12, msg=key)
