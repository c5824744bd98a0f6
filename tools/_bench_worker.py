"""One benchmark point in a fresh process (driven by :mod:`tools.bench_negatives`).

``python -m tools._bench_worker --impl ours_dense:clip --batch 4096 --dim 128 --reps 3 --cap-gib 20``

Prints one line ``RESULT {json}`` on stdout. Protocol: import only what the implementation needs,
create fp32 inputs ~ N(0, 1) with ``requires_grad``, take the RSS baseline, cap the address space
(``RLIMIT_AS`` = current size + cap, so an impossible point fails with an allocation error instead of
taking the machine), then ``warmup`` untimed and ``reps`` timed forward+backward passes. "Delta peak"
is ``ru_maxrss`` at the end minus the baseline RSS.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
import traceback

# Each implementation: "<impl>:<loss>". Loss families: clip (symmetric InfoNCE), siglip, ntxent, supcon.
IMPLS = {
    "ours_dense:clip", "ours_tiled:clip", "ours_auto:clip", "open_clip:clip",
    "ours_dense:siglip", "ours_tiled:siglip", "ours_auto:siglip", "open_clip:siglip",
    "ours_dense:ntxent", "ours_tiled:ntxent", "ours_auto:ntxent", "lightly:ntxent", "pml:ntxent",
    "ours_dense:supcon", "ours_tiled:supcon", "ours_auto:supcon", "pml:supcon",
}
TEMPERATURE = 0.1
SIGLIP_SCALE, SIGLIP_BIAS = 10.0, -10.0
DEFAULT_TILE = (1024, 4096)  # explicit tiles of "ours_tiled" ("auto" falls back to core DEFAULT_TILE)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def build(impl: str, B: int, D: int, tile, device: str = "cpu"):
    """Return (fn, inputs): ``fn()`` computes the loss from ``inputs`` (leaf tensors with grad on ``device``)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(B, D, generator=g).to(device).requires_grad_()
    z2 = torch.randn(B, D, generator=g).to(device).requires_grad_()
    who, loss = impl.split(":")
    tile_size = {"ours_dense": None, "ours_tiled": tile, "ours_auto": "auto"}.get(who)
    labels = torch.arange(B, device=device) // 4  # supcon: 4 samples x 2 views per class

    if loss == "clip":
        if who.startswith("ours"):
            from core.losses import info_nce

            return (lambda: info_nce(z1, z2, temperature=TEMPERATURE, symmetric=True, tile_size=tile_size)), (z1, z2)
        if who == "open_clip":
            from open_clip.loss import ClipLoss

            fn, scale = ClipLoss(), torch.tensor(1.0 / TEMPERATURE, device=device)
            return (lambda: fn(F.normalize(z1, dim=1), F.normalize(z2, dim=1), scale)), (z1, z2)
    if loss == "siglip":
        if who.startswith("ours"):
            from core.losses.sig_lip import sig_lip

            s, b = torch.tensor(SIGLIP_SCALE, device=device), torch.tensor(SIGLIP_BIAS, device=device)
            return (lambda: sig_lip(z1, z2, logit_scale=s, logit_bias=b, tile_size=tile_size)), (z1, z2)
        if who == "open_clip":
            from open_clip.loss import SigLipLoss

            fn = SigLipLoss()
            s, b = torch.tensor(SIGLIP_SCALE, device=device), torch.tensor(SIGLIP_BIAS, device=device)
            return (lambda: fn(F.normalize(z1, dim=1), F.normalize(z2, dim=1), s, b)), (z1, z2)
    if loss == "ntxent":
        if who.startswith("ours"):
            from core.losses import nt_xent

            return (lambda: nt_xent(z1, z2, temperature=TEMPERATURE, tile_size=tile_size)), (z1, z2)
        if who == "lightly":
            from lightly.loss import NTXentLoss

            fn = NTXentLoss(temperature=TEMPERATURE)
            return (lambda: fn(z1, z2)), (z1, z2)
        if who == "pml":
            from pytorch_metric_learning.losses import NTXentLoss

            fn, y = NTXentLoss(temperature=TEMPERATURE), torch.arange(B, device=device).repeat(2)
            return (lambda: fn(torch.cat([z1, z2]), y)), (z1, z2)
    if loss == "supcon":
        if who.startswith("ours"):
            from core.losses.sup_con import sup_con

            return (lambda: sup_con(torch.stack([z1, z2], 1), labels, temperature=TEMPERATURE,
                                    base_temperature=TEMPERATURE, tile_size=tile_size)), (z1, z2)
        if who == "pml":
            from pytorch_metric_learning.losses import SupConLoss

            fn, y = SupConLoss(temperature=TEMPERATURE), labels.repeat(2)
            return (lambda: fn(torch.cat([z1, z2]), y)), (z1, z2)
    raise ValueError(f"unknown implementation {impl!r}")


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def _is_oom(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, MemoryError) or "can't allocate memory" in msg or "cannot allocate memory" in msg \
        or "out of memory" in msg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--impl", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cap-gib", type=float, default=20.0, help="address-space cap above the baseline")
    p.add_argument("--tile", default=f"{DEFAULT_TILE[0]}x{DEFAULT_TILE[1]}")
    a = p.parse_args(argv)
    rt, _, ct = a.tile.partition("x")
    tile = (int(rt), int(ct or rt))
    out = {"impl": a.impl, "B": a.batch, "D": a.dim, "warmup": a.warmup, "reps": a.reps, "threads": a.threads,
           "cap_gib": a.cap_gib}
    if a.impl.startswith("ours_tiled"):
        out["tile"] = list(tile)
    t_import = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(a.threads)
        out["torch"] = torch.__version__
        fn, inputs = build(a.impl, a.batch, a.dim, tile)
    except ImportError as e:
        out.update(status="unavailable", error=f"{type(e).__name__}: {e}")
        print("RESULT " + json.dumps(out), flush=True)
        return 0
    out["import_s"] = round(time.perf_counter() - t_import, 2)
    if a.impl.startswith("ours_auto"):
        from core.negatives import resolve_tile_size

        n = 2 * a.batch if a.impl.split(":")[1] in ("ntxent", "supcon") else a.batch
        r = resolve_tile_size("auto", n, n, torch.float32)
        out["auto_choice"] = "dense" if r is None else f"tiled {r[0]}x{r[1]}"
    gc.collect()
    base_rss = _rss_bytes()
    if a.cap_gib > 0:
        cap = _vm_bytes() + int(a.cap_gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))
    times, cpu_times = [], []
    out["load1_start"] = round(os.getloadavg()[0], 2)
    try:
        for i in range(a.warmup + a.reps):
            for x in inputs:
                x.grad = None
            t0, c0 = time.perf_counter(), time.process_time()
            loss = fn()
            loss.backward()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= a.warmup:
                times.append(dt)
                cpu_times.append(dc)
            out["loss"] = float(loss.detach())
            del loss
        out["grad_norm"] = float(sum(float(x.grad.double().square().sum()) for x in inputs) ** 0.5)
        out["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - every failure is recorded, OOM or not
        out["status"] = "oom" if _is_oom(e) else "error"
        out["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        if out["status"] == "error":
            out["traceback"] = traceback.format_exc()[-1500:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["base_rss_mb"] = round(base_rss / 2**20, 1)
    out["delta_peak_mb"] = round((peak - base_rss) / 2**20, 1)
    out["load1_end"] = round(os.getloadavg()[0], 2)
    if times:
        out["times_s"] = [round(t, 4) for t in times]
        out["median_s"] = round(_median(times), 4)
        out["min_s"] = round(min(times), 4)
        out["cpu_times_s"] = [round(t, 4) for t in cpu_times]
        out["median_cpu_s"] = round(_median(cpu_times), 4)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
