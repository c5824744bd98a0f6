r"""The :mod:`tools.bench_negatives` grid on a CUDA GPU (run it when a GPU machine is lent; CI never needs it).

Same implementations, inputs and loss settings as the CPU benchmark (:func:`tools._bench_worker.build`),
forward+backward of one loss evaluation, fp32 with PyTorch's default matmul precision (no TF32). Differences
from the CPU protocol, because a GPU lease is short:

* all points run in **one process** (a fresh CUDA context per point costs seconds); between points every
  tensor is freed, the caching allocator emptied and its peak statistics reset, so "Delta peak" =
  ``torch.cuda.max_memory_allocated()`` during the timed passes minus the memory held by the inputs;
* timing: ``torch.cuda.synchronize()`` around each pass, 1 warm-up + ``--reps`` passes (median); points
  estimated above ``--long-s`` run once after the warm-up;
* an implementation stops at the first batch that runs out of GPU memory (larger batches are recorded
  ``oom`` without running), or whose time, extrapolated quadratically, exceeds ``--point-s``.

Two more rows than the CPU grid, for the clip and ntxent losses: ``ours_fused`` (the Triton kernels of
:mod:`core.kernels`: logits recomputed on chip, never stored) and ``matmul`` (the time of the B x N logit product
alone, ``q @ k.T`` at the same precision, computed in row chunks into one reused buffer when B x N does not fit:
the unit of the "multiple of matmul time" ratios). ``--dtypes fp32,bf16`` repeats the grid in bfloat16 (inputs cast,
every implementation; the losses' statistics stay float32 where the implementation keeps them so).

    python -m tools.bench_negatives_gpu --out $OUT/gpu.jsonl --md $OUT/bench_negatives_gpu.md --png $OUT/gpu.png
    python -m tools.bench_negatives_gpu --impls ours_dense,ours_tiled,ours_fused,matmul,open_clip,lightly \
        --batches 4096,16384,65536,262144,1048576 --dims 128,512 --dtypes fp32,bf16 --point-s 120 --budget-s 480 \
        --check-fused --out $OUT/fused.jsonl --md $OUT/bench_fused_gpu.md --png $OUT/fused.png
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
import time
from pathlib import Path

from core.negatives.execution import DEFAULT_TILE_CUDA
from tools._bench_worker import build
from tools.bench_negatives import FAMILIES  # the same implementations per loss as the CPU benchmark

TEMPERATURE = 0.1
#: the CPU grid's implementations plus the fused kernels and the bare logit product (clip and ntxent only)
GPU_FAMILIES = {fam: whos + (["ours_fused", "matmul"] if fam in ("clip", "ntxent") else [])
                for fam, whos in FAMILIES.items()}
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _inputs(B: int, D: int, dtype):
    """The two (B, D) leaves of :func:`tools._bench_worker.build` (same generator and seed), in ``dtype``."""
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, D, generator=g).to("cuda", dtype).requires_grad_() for _ in range(2)]


def build_gpu(impl: str, B: int, D: int, tile, dtype: str = "fp32"):
    """``(fn, inputs)`` of one point: :func:`tools._bench_worker.build` for the CPU grid's implementations (inputs
    cast to ``dtype``), the fused kernels of :mod:`core.kernels` for ``ours_fused``."""
    import torch

    tdt = getattr(torch, DTYPES[dtype])
    who, fam = impl.split(":")
    if who == "ours_fused":
        from core.kernels import check_triton, fused_info_nce, fused_nt_xent

        try:
            check_triton("cuda")
        except RuntimeError as e:
            raise ImportError(str(e)) from e
        z1, z2 = _inputs(B, D, tdt)
        if fam == "clip":
            return (lambda: fused_info_nce(z1, z2, temperature=TEMPERATURE, symmetric=True)), (z1, z2)
        if fam == "ntxent":
            return (lambda: fused_nt_xent(z1, z2, temperature=TEMPERATURE)), (z1, z2)
        raise ImportError(f"no fused kernel for the {fam} loss")
    fn, inputs = build(impl, B, D, tile, device="cuda")
    if tdt != torch.float32:
        for x in inputs:
            x.data = x.data.to(tdt)  # the closures hold these leaves: cast in place
    return fn, inputs


def run_matmul_point(impl: str, B: int, D: int, reps: int, dtype: str = "fp32", warmup: int = 1) -> dict:
    """Time of the loss's whole logit product (B x B for clip, 2B x 2B for ntxent) at ``dtype``, with PyTorch's
    matmul precision setting (no TF32 by default): rows in chunks of at most 2^30 logits into one reused buffer."""
    import torch

    n = 2 * B if impl.split(":")[1] == "ntxent" else B
    tdt = getattr(torch, DTYPES[dtype])
    rec = {"impl": impl, "B": B, "D": D, "dtype": dtype, "device": torch.cuda.get_device_name(),
           "torch": torch.__version__, "N": n}
    a = c = buf = None
    try:
        g = torch.Generator(device="cuda").manual_seed(0)
        a = torch.randn(n, D, device="cuda", generator=g, dtype=tdt)
        c = torch.randn(n, D, device="cuda", generator=g, dtype=tdt)
        rows = max(1, min(n, (1 << 30) // n))
        buf = torch.empty(rows, n, device="cuda", dtype=tdt)
        rec["chunk_rows"] = rows
        times = []
        for i in range(warmup + reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for r0 in range(0, n, rows):
                r1 = min(n, r0 + rows)
                torch.matmul(a[r0:r1], c.T, out=buf[: r1 - r0])
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        rec.update(status="ok", times_s=[round(t, 5) for t in times], median_s=round(_median(times), 5),
                   tflops=round(2.0 * n * n * D / _median(times) / 1e12, 1))
    except torch.cuda.OutOfMemoryError as e:
        rec.update(status="oom", error=str(e).splitlines()[0][:200])
    except Exception as e:  # noqa: BLE001 -- every failure is recorded
        rec.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
    rec["delta_peak_mb"] = 0.0
    del a, c, buf
    gc.collect()
    torch.cuda.empty_cache()
    return rec


def check_fused(shapes=((3000, 128), (4096, 512)), dtypes=("fp32", "bf16"), device: str = "cuda") -> list[dict]:
    """The compiled kernels against the dense losses in float64 on the same (rounded) inputs, on the GPU: loss and
    every gradient (inputs, learnable temperature), relative to the largest reference entry. CLIP with a margin and
    NT-Xent; a ragged batch (3000) and a wide one (D = 512, the chunked products). ``ok`` within 1e-4 (fp32) or
    3e-2 (bf16)."""
    import torch

    from core.kernels import fused_info_nce, fused_nt_xent
    from core.losses import info_nce, nt_xent

    def clip(fn, a, b, t):
        return fn(a, b, temperature=t, symmetric=True, margin=0.1)

    def ntx(fn, a, b, t):
        return fn(a, b, temperature=t)

    recs = []
    for dt in dtypes:
        tdt = getattr(torch, DTYPES[dt])
        for B, D in shapes:
            for fam, call, fused, dense in (("clip", clip, fused_info_nce, info_nce), ("ntxent", ntx, fused_nt_xent,
                                                                                       nt_xent)):
                g = torch.Generator(device=device).manual_seed(0)
                z = [torch.randn(B, D, device=device, generator=g).to(tdt) for _ in range(2)]
                x = [v.clone().requires_grad_() for v in z] + [torch.tensor(0.07, device=device, requires_grad=True)]
                r = [v.double().requires_grad_() for v in z] + [torch.tensor(0.07, device=device, dtype=torch.float64,
                                                                             requires_grad=True)]
                sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
                sync()
                t0 = time.perf_counter()
                loss = call(fused, *x)
                got = torch.autograd.grad(loss, x)
                sync()
                wall = time.perf_counter() - t0
                ref = call(dense, *r)
                want = torch.autograd.grad(ref, r)
                loss, ref = loss.detach(), ref.detach()
                errs = [abs(float(loss) - float(ref)) / max(abs(float(ref)), 1e-12)]
                errs += [float((u.double() - w).abs().max() / w.abs().max().clamp_min(1e-30))
                         for u, w in zip(got, want)]
                tol = 1e-4 if dt == "fp32" else 3e-2
                recs.append({"check": f"ours_fused:{fam}", "B": B, "D": D, "dtype": dt, "loss": float(loss),
                             "ref": float(ref), "rel_err": {k: round(e, 7) for k, e in
                                                            zip(("loss", "query", "key", "temperature"), errs)},
                             "first_call_s": round(wall, 3), "ok": max(errs) <= tol})
                print(json.dumps(recs[-1]), flush=True)
                del z, x, r, loss, ref, got, want
                if device == "cuda":
                    torch.cuda.empty_cache()
    return recs


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def run_point(impl: str, B: int, D: int, tile, reps: int, warmup: int = 1, dtype: str = "fp32") -> dict:
    import torch

    if impl.startswith("matmul"):
        return run_matmul_point(impl, B, D, reps, dtype, warmup)
    rec = {"impl": impl, "B": B, "D": D, "dtype": dtype, "device": torch.cuda.get_device_name(),
           "torch": torch.__version__}
    if impl.startswith("ours_tiled"):
        rec["tile"] = f"{tile[0]}x{tile[1]}"
    fn = inputs = loss = None
    try:
        fn, inputs = build_gpu(impl, B, D, tile, dtype)
    except ImportError as e:
        return {**rec, "status": "unavailable", "error": f"{type(e).__name__}: {e}"}
    if impl.startswith("ours_auto"):
        r = _auto_tiles(impl, B)
        rec["auto_choice"] = "dense" if r is None else f"tiled {r[0]}x{r[1]}"
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        for i in range(warmup + reps):
            for x in inputs:
                x.grad = None
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = fn()
            loss.backward()
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            rec["loss"] = float(loss.detach())
            loss = None
        rec["grad_norm"] = float(sum(float(x.grad.double().square().sum()) for x in inputs) ** 0.5)
        rec.update(status="ok", times_s=[round(t, 5) for t in times], median_s=round(_median(times), 5))
    except torch.cuda.OutOfMemoryError as e:
        rec.update(status="oom", error=str(e).splitlines()[0][:200])
    except Exception as e:  # noqa: BLE001 -- every failure is recorded
        rec.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
    rec["delta_peak_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    del fn, inputs, loss
    gc.collect()
    torch.cuda.empty_cache()
    return rec


def _auto_tiles(impl: str, B: int) -> tuple[int, int] | None:
    """What ``tile_size="auto"`` resolves to on the GPU now for this loss at batch ``B`` (None = dense)."""
    import torch

    from core.negatives import resolve_tile_size

    n = 2 * B if impl.split(":")[1] in ("ntxent", "supcon") else B  # two views per sample
    return resolve_tile_size("auto", n, n, torch.float32, device=torch.device("cuda"))


def _auto_same_as_tiled(impl: str, B: int, D: int, tile, recs: list[dict], dtype: str = "fp32") -> dict | None:
    """The ``ours_tiled`` record of this point when ``impl`` is ``ours_auto`` and auto resolves to the same tiles."""
    if not impl.startswith("ours_auto") or _auto_tiles(impl, B) != tuple(tile):
        return None
    fam = impl.split(":")[1]
    return next((r for r in recs if r["impl"] == f"ours_tiled:{fam}" and r["B"] == B and r["D"] == D
                 and r.get("dtype", "fp32") == dtype and r["status"] == "ok"), None)


def sweep(args) -> list[dict]:
    tile = tuple(int(x) for x in args.tile.split("x"))
    batches = [int(b) for b in args.batches.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    dtypes = [d.strip() for d in getattr(args, "dtypes", "fp32").split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"unknown dtype {d!r}; choose from {list(DTYPES)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recs: list[dict] = []
    t_start = time.perf_counter()
    impls = [f"{who}:{fam}" for fam, whos in GPU_FAMILIES.items() for who in whos]
    if args.impls:
        wanted = set(args.impls.split(","))
        impls = [i for i in impls if i in wanted or i.split(":")[0] in wanted]
    # peers' points measured by an earlier lease (status ok / oom in --reuse) are carried over, not rerun; ours
    # are always rerun (our code changes between leases, the installed peers do not)
    done: dict = {}
    if args.reuse and Path(args.reuse).exists():
        for line in Path(args.reuse).read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            if r.get("status") in ("ok", "oom") and r.get("impl") in impls and not r["impl"].startswith("ours"):
                done[(r["impl"], r["B"], r["D"], r.get("dtype", "fp32"))] = r
    stop: dict = {}  # (impl, D, dtype) -> why larger batches are not run
    last: dict = {}  # (impl, D, dtype) -> (B, median_s) of the largest completed batch
    # breadth first (every implementation at a batch size, both widths, before the next size), so a short lease
    # still covers every implementation at the small batches
    for B in batches:
        for D, dt in itertools.product(dims, dtypes):
            for impl in impls:
                key = (impl, D, dt)
                pkey = (impl, B, D, dt)
                head = {"impl": impl, "B": B, "D": D, **({} if dt == "fp32" else {"dtype": dt})}
                if pkey in done:
                    rec = done[pkey]
                elif key in stop:
                    rec = {**head, "status": stop[key], "note": "after a smaller batch"}
                elif time.perf_counter() - t_start > args.budget_s:
                    rec = {**head, "status": "skipped_budget"}
                else:
                    est = None if key not in last else last[key][1] * (B / last[key][0]) ** 2
                    if est is not None and est * 2 > args.point_s:
                        rec = {**head, "status": "skipped_time", "est_s": round(est, 1)}
                    else:
                        long = est is not None and est > args.long_s
                        same = _auto_same_as_tiled(impl, B, D, tile, recs, dt)
                        if same is not None:  # 'auto' picked the tiles just measured: the same computation
                            rec = {**same, "impl": impl, "auto_choice": f"tiled {same['tile']}",
                                   "note": "auto chose the tiles of ours_tiled: that point is reused"}
                        else:  # long points: one pass, no warm-up (the smaller batches warmed the kernels)
                            more = {} if dt == "fp32" else {"dtype": dt}
                            rec = run_point(impl, B, D, tile, 1 if long else args.reps, 0 if long else 1, **more)
                if rec["status"] == "ok":
                    last[key] = (B, rec["median_s"])
                elif rec["status"] in ("oom", "unavailable", "error", "skipped_time"):
                    stop.setdefault(key, rec["status"])
                recs.append(rec)
                if pkey in done:
                    continue
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{impl:18s} B={B:7d} D={D:4d} {dt:4s} {rec['status']:12s} {rec.get('median_s', '')} s  "
                      f"{rec.get('delta_peak_mb', '')} MB  {rec.get('error', '')[:80]}", flush=True)
    return recs


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return r["status"]
    return f"{r['median_s'] * 1000:.1f} ms / {r['delta_peak_mb']:.0f} MB"


def render(recs: list[dict], md: Path, png: Path | None) -> None:
    by = {(r["impl"], r["B"], r["D"], r.get("dtype", "fp32")): r for r in recs}
    present = {r["impl"] for r in recs}
    batches = sorted({r["B"] for r in recs})
    dims = sorted({r["D"] for r in recs})
    dtypes = [d for d in DTYPES if any(r.get("dtype", "fp32") == d for r in recs)]
    dev = next((r["device"] for r in recs if "device" in r), "GPU")
    lines = [f"# core.negatives benchmark on {dev}", "",
             "Forward+backward of one loss evaluation (fp32: no TF32; bf16: inputs cast to bfloat16), median of the "
             "timed passes; Delta peak = `torch.cuda.max_memory_allocated()` minus the inputs. One process for all "
             "points (`python -m tools.bench_negatives_gpu`). Cells: time / extra peak memory, or why there is no "
             "number. `matmul`: the loss's whole logit product alone at the same precision (forward only).", ""]
    leases: dict = {}
    for r in recs:
        if r.get("lease") is not None and r["status"] in ("ok", "oom"):
            leases.setdefault(r["lease"], set()).add(f"{r['impl'].split(':')[0]} D={r['D']}")
    if len(leases) > 1:  # points carried over from earlier leases (--reuse): say which machine run measured what
        lines += ["Points by lease (timings compare best within one lease): " + "; ".join(
            f"lease {k}: {', '.join(sorted(v))}" for k, v in sorted(leases.items())) + ".", ""]

    def ok(r):
        return r is not None and r["status"] == "ok"

    for D, dt in itertools.product(dims, dtypes):
        lines += [f"## D = {D}, {dt}", "", "| loss | implementation | " + " | ".join(f"B={b}" for b in batches) + " |",
                  "|---|---|" + "---|" * len(batches)]
        for fam, whos in GPU_FAMILIES.items():
            for who in whos:
                impl = f"{who}:{fam}"
                if impl not in present:
                    continue
                lines.append(f"| {fam} | {who} | " + " | ".join(_cell(by.get((impl, b, D, dt))) for b in batches)
                             + " |")
        lines += ["", "Ratios (time; memory for tiled / dense): ours tiled / ours dense, ours dense / fastest peer, "
                  "ours fused / ours dense and / ours tiled, and each of ours as a multiple of the matmul time:", ""]
        for fam, whos in GPU_FAMILIES.items():
            for b in batches:
                d, t = by.get((f"ours_dense:{fam}", b, D, dt)), by.get((f"ours_tiled:{fam}", b, D, dt))
                fu, mm = by.get((f"ours_fused:{fam}", b, D, dt)), by.get((f"matmul:{fam}", b, D, dt))
                peers = [by.get((f"{w}:{fam}", b, D, dt)) for w in whos if not w.startswith(("ours", "matmul"))]
                peers = [p for p in peers if ok(p)]
                parts = []
                if ok(d) and ok(t):
                    parts.append(f"tiled/dense time {t['median_s'] / d['median_s']:.2f}x, "
                                 f"memory {100 * t['delta_peak_mb'] / max(d['delta_peak_mb'], 1e-9):.1f} %")
                if ok(d) and peers:
                    best = min(peers, key=lambda p: p["median_s"])
                    parts.append(f"dense/fastest peer ({best['impl'].split(':')[0]}) "
                                 f"{d['median_s'] / best['median_s']:.2f}x")
                if ok(fu):
                    for name, r in (("dense", d), ("tiled", t)):
                        if ok(r):
                            parts.append(f"fused/{name} {fu['median_s'] / r['median_s']:.2f}x")
                if ok(mm):
                    mult = [f"{n} {r['median_s'] / mm['median_s']:.1f}x" for n, r in
                            (("dense", d), ("tiled", t), ("fused", fu)) if ok(r)]
                    if mult:
                        parts.append("x matmul (" + f"{mm['median_s'] * 1000:.1f} ms): " + ", ".join(mult))
                if parts:
                    lines.append(f"- {fam} B={b}: " + "; ".join(parts))
        lines.append("")
    md.write_text("\n".join(lines))
    if png is None:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(2, len(GPU_FAMILIES), figsize=(4 * len(GPU_FAMILIES), 7), squeeze=False)
    D0, dt0 = dims[0], dtypes[0]
    for j, (fam, whos) in enumerate(GPU_FAMILIES.items()):
        for who in whos:
            pts = [by.get((f"{who}:{fam}", b, D0, dt0)) for b in batches]
            pts = [p for p in pts if p and p["status"] == "ok"]
            if not pts:
                continue
            xs = [p["B"] for p in pts]
            axes[0][j].loglog(xs, [p["median_s"] for p in pts], "o-", label=who)
            axes[1][j].loglog(xs, [max(p["delta_peak_mb"], 1e-1) for p in pts], "o-", label=who)
        axes[0][j].set_title(f"{fam} (D={D0}, {dt0})")
        axes[0][j].set_ylabel("time (s)")
        axes[1][j].set_ylabel("extra peak memory (MB)")
        axes[1][j].set_xlabel("batch B")
        if axes[0][j].lines:
            axes[0][j].legend(fontsize=7)
    fig.suptitle(f"core.negatives on {dev}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="4096,16384,65536,262144")
    p.add_argument("--dims", default="128,512")
    p.add_argument("--dtypes", default="fp32", help=f"comma list of input dtypes, from {list(DTYPES)}")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--long-s", type=float, default=5.0, help="points estimated above this run 1 timed pass")
    p.add_argument("--point-s", type=float, default=60.0, help="skip points estimated above this (warm-up incl.)")
    p.add_argument("--budget-s", type=float, default=240.0, help="stop starting points after this many seconds")
    p.add_argument("--tile", default=f"{DEFAULT_TILE_CUDA[0]}x{DEFAULT_TILE_CUDA[1]}",
                   help="tiles of 'ours tiled' (default: core's CUDA tile for 'auto'; the first leases used 1024x4096)")
    p.add_argument("--impls", default="", help="comma list of implementations (ours_dense:clip) or owners (ours_tiled, "
                   "ours_fused, matmul)")
    p.add_argument("--reuse", default="", help="JSON lines of an earlier lease: its peers' ok / oom points are reused")
    p.add_argument("--out", default="runs/bench/gpu.jsonl")
    p.add_argument("--md", default="runs/bench/bench_negatives_gpu.md")
    p.add_argument("--png", default="runs/bench/bench_negatives_gpu.png")
    p.add_argument("--render-only", action="store_true", help="only rewrite --md/--png from --out")
    p.add_argument("--check-fused", action="store_true",
                   help="first compare the fused kernels with the dense losses (float64) on this GPU, into "
                        "<out>.check.json; exit status 1 if they disagree (the sweep still runs)")
    args = p.parse_args(argv)
    if args.render_only:
        recs = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    else:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device (this benchmark is for a GPU machine; the CPU one is tools.bench_negatives)",
                  file=sys.stderr)
            return 2
        status = 0
        if args.check_fused:
            checks = check_fused()
            path = Path(args.out).with_suffix(".check.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(checks, indent=1))
            status = 0 if all(c["ok"] for c in checks) else 1
            print(f"fused kernels {'agree with' if status == 0 else 'DISAGREE with'} the dense losses: {path}")
        recs = sweep(args)
    render(recs, Path(args.md), Path(args.png) if args.png else None)
    print(f"wrote {args.md}")
    return status if not args.render_only else 0


if __name__ == "__main__":
    sys.exit(main())
