"""Distributed gradient correctness of our gather modes and of each peer's distributed mode.

``python -m tools._bench_dist --world 2 [--cases ours,peers]`` spawns ``world`` gloo CPU processes and
prints one ``RESULT {json}`` line per case. Protocol (float64): two tiny linear towers ``f1 = x1 @ A``,
``f2 = x2 @ B`` (+ a learnable log logit scale ``theta`` and SigLIP bias ``b`` where the loss has them);
each rank computes the case's per-rank loss on its shard of the global batch and back-propagates;
parameter gradients are then all-reduced and divided by ``W`` (what DDP does). Reference: the same loss
in one process, non-distributed, on the concatenated global batch. Reported per parameter group:
``ratio = <g_dist, g_ref> / |g_ref|^2``, cosine, and ``max |g_dist - g_ref|``; "exact" when every max
difference is <= 1e-9.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F

B_LOCAL, D_IN, D_OUT, TAU = 8, 16, 32, 0.1
EXACT_TOL = 1e-9


def _ours_available(module: str, fn: str, kw: str = "gather") -> bool:
    try:
        mod = __import__(module, fromlist=[fn])
        return kw in inspect.signature(getattr(mod, fn)).parameters
    except Exception:  # noqa: BLE001
        return False


def _has_distributed() -> bool:
    try:
        import core.negatives.distributed  # noqa: F401

        return True
    except Exception:  # noqa: BLE001
        return False


def make_cases() -> dict:
    """name -> (group, needs_scale, needs_bias, dist_fn, ref_fn). fn(f1, f2, theta, b, rank, world, gid)."""
    cases = {}

    if _has_distributed():
        from core.losses import info_nce, nt_xent

        for sym in (True, False):
            for gather in (True, "ring"):
                for tile in (None, (3, 5)):
                    name = f"ours info_nce(symmetric={sym}, gather={gather!r}" + (f", tile_size={tile})" if tile
                                                                                  else ")")

                    def d(f1, f2, th, b, r, w, gid, sym=sym, gather=gather, tile=tile):
                        return info_nce(f1, f2, temperature=torch.exp(-th), symmetric=sym, gather=gather,
                                        tile_size=tile)

                    def ref(f1, f2, th, b, sym=sym):
                        return info_nce(f1, f2, temperature=torch.exp(-th), symmetric=sym)

                    cases[name] = ("ours", True, False, d, ref)
        for gather in (True, "ring"):
            for tile in (None, (5, 7)):
                name = f"ours nt_xent(gather={gather!r}" + (f", tile_size={tile})" if tile else ")")

                def d(f1, f2, th, b, r, w, gid, gather=gather, tile=tile):
                    return nt_xent(f1, f2, temperature=torch.exp(-th), gather=gather, tile_size=tile)

                def ref(f1, f2, th, b):
                    return nt_xent(f1, f2, temperature=torch.exp(-th))

                cases[name] = ("ours", True, False, d, ref)
        if _ours_available("core.losses.sup_con", "sup_con"):
            from core.losses.sup_con import sup_con

            for gather, tile in ((True, None), ("ring", None), (True, (5, 7)), ("ring", (5, 7))):
                def d(f1, f2, th, b, r, w, gid, gather=gather, tile=tile):
                    y = gid // 2
                    return sup_con(torch.stack([f1, f2], 1), y, temperature=torch.exp(-th), base_temperature=TAU,
                                   gather=gather, tile_size=tile)

                def ref(f1, f2, th, b):
                    y = torch.arange(f1.shape[0]) // 2
                    return sup_con(torch.stack([f1, f2], 1), y, temperature=torch.exp(-th), base_temperature=TAU)

                cases[f"ours sup_con(gather={gather!r}" + (f", tile_size={tile})" if tile else ")")] = (
                    "ours", True, False, d, ref)
        if _ours_available("core.losses.sig_lip", "sig_lip"):
            from core.losses.sig_lip import sig_lip

            for gather, tile in ((True, None), ("ring", None), (True, (3, 5)), ("ring", (3, 5))):
                def d(f1, f2, th, b, r, w, gid, gather=gather, tile=tile):
                    return sig_lip(f1, f2, logit_scale=torch.exp(th), logit_bias=b, gather=gather, tile_size=tile)

                def ref(f1, f2, th, b):
                    return sig_lip(f1, f2, logit_scale=torch.exp(th), logit_bias=b)

                cases[f"ours sig_lip(gather={gather!r}" + (f", tile_size={tile})" if tile else ")")] = (
                    "ours", True, True, d, ref)

    try:
        from open_clip.loss import ClipLoss, SigLipLoss

        for local, wgrad in ((False, False), (True, True), (True, False), (False, True)):
            name = f"open_clip ClipLoss(local_loss={local}, gather_with_grad={wgrad})" + (
                " [defaults]" if not local and not wgrad else "")

            def d(f1, f2, th, b, r, w, gid, local=local, wgrad=wgrad):
                fn = ClipLoss(local_loss=local, gather_with_grad=wgrad, rank=r, world_size=w)
                return fn(F.normalize(f1, dim=1), F.normalize(f2, dim=1), torch.exp(th))

            def ref(f1, f2, th, b):
                return ClipLoss()(F.normalize(f1, dim=1), F.normalize(f2, dim=1), torch.exp(th))

            cases[name] = ("peer", True, False, d, ref)
        sig_impls = ["bidir", "shift", "reduce", "gather"]
        if "dist_impl" not in inspect.signature(SigLipLoss.__init__).parameters:
            sig_impls = [None]
        for impl in sig_impls:
            def d(f1, f2, th, b, r, w, gid, impl=impl):
                kw = {"dist_impl": impl} if impl else {}
                fn = SigLipLoss(rank=r, world_size=w, **kw)
                return fn(F.normalize(f1, dim=1), F.normalize(f2, dim=1), torch.exp(th), b)

            def ref(f1, f2, th, b):
                return SigLipLoss()(F.normalize(f1, dim=1), F.normalize(f2, dim=1), torch.exp(th), b)

            cases[f"open_clip SigLipLoss(dist_impl={impl!r})"] = ("peer", True, True, d, ref)
    except Exception as e:  # noqa: BLE001
        cases["open_clip (unavailable)"] = ("error", False, False, f"{type(e).__name__}: {e}", None)

    try:
        from lightly.loss import NTXentLoss as LNTX

        def d(f1, f2, th, b, r, w, gid):
            return LNTX(temperature=TAU, gather_distributed=True)(f1, f2)

        def ref(f1, f2, th, b):
            return LNTX(temperature=TAU)(f1, f2)

        cases["lightly NTXentLoss(gather_distributed=True)"] = ("peer", False, False, d, ref)
    except Exception as e:  # noqa: BLE001
        cases["lightly (unavailable)"] = ("error", False, False, f"{type(e).__name__}: {e}", None)

    try:
        from pytorch_metric_learning.losses import NTXentLoss as PNTX
        from pytorch_metric_learning.losses import SupConLoss as PSC
        from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

        for cls_name, cls in (("NTXentLoss", PNTX), ("SupConLoss", PSC)):
            for eff in (False, True):
                def d(f1, f2, th, b, r, w, gid, cls=cls, eff=eff):
                    fn = DistributedLossWrapper(cls(temperature=TAU), efficient=eff)
                    return fn(torch.cat([f1, f2]), torch.cat([gid, gid]))

                def ref(f1, f2, th, b, cls=cls):
                    y = torch.arange(f1.shape[0])
                    return cls(temperature=TAU)(torch.cat([f1, f2]), torch.cat([y, y.clone()]))

                cases[f"PML DistributedLossWrapper({cls_name}, efficient={eff})"] = ("peer", False, False, d, ref)
    except Exception as e:  # noqa: BLE001
        cases["pytorch-metric-learning (unavailable)"] = ("error", False, False, f"{type(e).__name__}: {e}", None)
    return cases


def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D_IN, D_OUT, generator=g, dtype=torch.float64) / math.sqrt(D_IN)
    Bm = torch.randn(D_IN, D_OUT, generator=g, dtype=torch.float64) / math.sqrt(D_IN)
    theta = torch.tensor(math.log(1 / TAU), dtype=torch.float64)
    bias = torch.tensor(-2.0, dtype=torch.float64)
    return [t.clone().requires_grad_() for t in (A, Bm, theta, bias)]


def _data(world: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(world * B_LOCAL, D_IN, generator=g, dtype=torch.float64)
    x2 = x1 + 0.5 * torch.randn(world * B_LOCAL, D_IN, generator=g, dtype=torch.float64)
    return x1, x2


def _compare(gd: list, gr: list) -> dict:
    gd = torch.cat([g.reshape(-1) for g in gd])
    gr = torch.cat([g.reshape(-1) for g in gr])
    nr = float(gr.square().sum())
    return {
        "ratio": float(gd @ gr) / nr if nr > 0 else float("nan"),
        "cos": float(F.cosine_similarity(gd, gr, dim=0)),
        "max_abs_diff": float((gd - gr).abs().max()),
    }


def _rank_main(rank: int, world: int, init_file: str, names: list[str], out_file: str) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    cases = make_cases()
    results = []
    x1, x2 = _data(world)
    sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    gid = torch.arange(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    for name in names:
        group, need_s, need_b, dfn, rfn = cases[name]
        rec = {"case": name, "world": world, "group": group, "B_local": B_LOCAL, "dtype": "float64"}
        if group == "error":
            rec.update(status="unavailable", error=dfn)
            results.append(rec)
            continue
        try:
            # reference: single process, global batch
            A, Bm, th, b = _params()
            ref_loss = rfn(x1 @ A, x2 @ Bm, th, b)
            ref_loss.backward()
            g_ref = [A.grad, Bm.grad, th.grad, b.grad]
            # distributed: this rank's shard, then DDP-style mean of the parameter gradients
            A, Bm, th, b = _params()
            loss = dfn(x1[sl] @ A, x2[sl] @ Bm, th, b, rank, world, gid)
            loss.backward()
            grads = []
            for p in (A, Bm, th, b):
                gp = p.grad if p.grad is not None else torch.zeros_like(p)
                dist.all_reduce(gp)
                grads.append(gp / world)
            lsum = loss.detach().clone()
            dist.all_reduce(lsum)
            rec["loss_ref"] = float(ref_loss.detach())
            rec["loss_rank_mean"] = float(lsum) / world
            rec["towers"] = _compare(grads[:2], [g if g is not None else torch.zeros_like(grads[0]) for g in g_ref[:2]])
            if need_s:
                rec["scale"] = _compare(grads[2:3], [g_ref[2] if g_ref[2] is not None else torch.zeros(())])
            if need_b:
                rec["bias"] = _compare(grads[3:4], [g_ref[3] if g_ref[3] is not None else torch.zeros(())])
            worst = max(rec[k]["max_abs_diff"] for k in ("towers", "scale", "bias") if k in rec)
            rec["exact"] = bool(worst <= EXACT_TOL)
            rec["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            rec.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}",
                       traceback=traceback.format_exc()[-1200:])
        results.append(rec)
        dist.barrier()
    if rank == 0:
        with open(out_file, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--groups", default="ours,peer", help="comma list of case groups: ours, peer")
    a = p.parse_args(argv)
    groups = set(a.groups.split(","))
    cases = make_cases()
    names = [n for n, c in cases.items() if c[0] in groups or (c[0] == "error" and "peer" in groups)]
    if not _has_distributed() and "ours" in groups:
        print("RESULT " + json.dumps({"case": "ours (core.negatives.distributed not available)", "world": a.world,
                                      "group": "ours", "status": "unavailable"}), flush=True)
    if not names:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "out.jsonl")
        torch.multiprocessing.spawn(_rank_main, args=(a.world, init_file, names, out_file), nprocs=a.world,
                                    join=True)
        with open(out_file) as f:
            for line in f:
                print("RESULT " + line.strip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
