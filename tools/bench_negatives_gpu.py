"""The :mod:`tools.bench_negatives` grid on a CUDA GPU (run it when a GPU machine is lent; CI never needs it).

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

    python -m tools.bench_negatives_gpu --out $OUT/gpu.jsonl --md $OUT/bench_negatives_gpu.md --png $OUT/gpu.png
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from core.negatives.execution import DEFAULT_TILE_CUDA
from tools._bench_worker import build
from tools.bench_negatives import FAMILIES  # the same implementations per loss as the CPU benchmark


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def run_point(impl: str, B: int, D: int, tile, reps: int, warmup: int = 1) -> dict:
    import torch

    rec = {"impl": impl, "B": B, "D": D, "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if impl.startswith("ours_tiled"):
        rec["tile"] = f"{tile[0]}x{tile[1]}"
    fn = inputs = loss = None
    try:
        fn, inputs = build(impl, B, D, tile, device="cuda")
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


def _auto_same_as_tiled(impl: str, B: int, D: int, tile, recs: list[dict]) -> dict | None:
    """The ``ours_tiled`` record of this point when ``impl`` is ``ours_auto`` and auto resolves to the same tiles."""
    if not impl.startswith("ours_auto") or _auto_tiles(impl, B) != tuple(tile):
        return None
    fam = impl.split(":")[1]
    return next((r for r in recs if r["impl"] == f"ours_tiled:{fam}" and r["B"] == B and r["D"] == D
                 and r["status"] == "ok"), None)


def sweep(args) -> list[dict]:
    tile = tuple(int(x) for x in args.tile.split("x"))
    batches = [int(b) for b in args.batches.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recs: list[dict] = []
    t_start = time.perf_counter()
    impls = [f"{who}:{fam}" for fam, whos in FAMILIES.items() for who in whos]
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
                done[(r["impl"], r["B"], r["D"])] = r
    stop: dict = {}  # (impl, D) -> why larger batches are not run
    last: dict = {}  # (impl, D) -> (B, median_s) of the largest completed batch
    # breadth first (every implementation at a batch size, both widths, before the next size), so a short lease
    # still covers every implementation at the small batches
    for B in batches:
        for D in dims:
            for impl in impls:
                key = (impl, D)
                if (impl, B, D) in done:
                    rec = done[(impl, B, D)]
                elif key in stop:
                    rec = {"impl": impl, "B": B, "D": D, "status": stop[key], "note": "after a smaller batch"}
                elif time.perf_counter() - t_start > args.budget_s:
                    rec = {"impl": impl, "B": B, "D": D, "status": "skipped_budget"}
                else:
                    est = None if key not in last else last[key][1] * (B / last[key][0]) ** 2
                    if est is not None and est * 2 > args.point_s:
                        rec = {"impl": impl, "B": B, "D": D, "status": "skipped_time", "est_s": round(est, 1)}
                    else:
                        long = est is not None and est > args.long_s
                        same = _auto_same_as_tiled(impl, B, D, tile, recs)
                        if same is not None:  # 'auto' picked the tiles just measured: the same computation
                            rec = {**same, "impl": impl, "auto_choice": f"tiled {same['tile']}",
                                   "note": "auto chose the tiles of ours_tiled: that point is reused"}
                        else:  # long points: one pass, no warm-up (the smaller batches warmed the kernels)
                            rec = run_point(impl, B, D, tile, 1 if long else args.reps, 0 if long else 1)
                if rec["status"] == "ok":
                    last[key] = (B, rec["median_s"])
                elif rec["status"] in ("oom", "unavailable", "error", "skipped_time"):
                    stop.setdefault(key, rec["status"])
                recs.append(rec)
                if (impl, B, D) in done:
                    continue
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{impl:18s} B={B:7d} D={D:4d} {rec['status']:12s} {rec.get('median_s', '')} s  "
                      f"{rec.get('delta_peak_mb', '')} MB  {rec.get('error', '')[:80]}", flush=True)
    return recs


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return r["status"]
    return f"{r['median_s'] * 1000:.1f} ms / {r['delta_peak_mb']:.0f} MB"


def render(recs: list[dict], md: Path, png: Path | None) -> None:
    by = {(r["impl"], r["B"], r["D"]): r for r in recs}
    batches = sorted({r["B"] for r in recs})
    dims = sorted({r["D"] for r in recs})
    dev = next((r["device"] for r in recs if "device" in r), "GPU")
    lines = [f"# core.negatives benchmark on {dev}", "",
             "Forward+backward of one loss evaluation, fp32 (no TF32), median of the timed passes; Delta peak = "
             "`torch.cuda.max_memory_allocated()` minus the inputs. One process for all points "
             "(`python -m tools.bench_negatives_gpu`). Cells: time / extra peak memory, or why there is no number.",
             ""]
    leases: dict = {}
    for r in recs:
        if r.get("lease") is not None and r["status"] in ("ok", "oom"):
            leases.setdefault(r["lease"], set()).add(f"{r['impl'].split(':')[0]} D={r['D']}")
    if len(leases) > 1:  # points carried over from earlier leases (--reuse): say which machine run measured what
        lines += ["Points by lease (timings compare best within one lease): " + "; ".join(
            f"lease {k}: {', '.join(sorted(v))}" for k, v in sorted(leases.items())) + ".", ""]
    for D in dims:
        lines += [f"## D = {D}", "", "| loss | implementation | " + " | ".join(f"B={b}" for b in batches) + " |",
                  "|---|---|" + "---|" * len(batches)]
        for fam, whos in FAMILIES.items():
            for who in whos:
                impl = f"{who}:{fam}"
                lines.append(f"| {fam} | {who} | " + " | ".join(_cell(by.get((impl, b, D))) for b in batches) + " |")
        lines += ["", "Ratios (ours tiled / ours dense, ours dense / fastest peer; time):", ""]
        for fam, whos in FAMILIES.items():
            for b in batches:
                d, t = by.get((f"ours_dense:{fam}", b, D)), by.get((f"ours_tiled:{fam}", b, D))
                peers = [by.get((f"{w}:{fam}", b, D)) for w in whos if not w.startswith("ours")]
                peers = [p for p in peers if p and p["status"] == "ok"]
                parts = []
                if d and t and d["status"] == t["status"] == "ok":
                    parts.append(f"tiled/dense time {t['median_s'] / d['median_s']:.2f}x, "
                                 f"memory {100 * t['delta_peak_mb'] / max(d['delta_peak_mb'], 1e-9):.1f} %")
                if d and d["status"] == "ok" and peers:
                    best = min(peers, key=lambda p: p["median_s"])
                    parts.append(f"dense/fastest peer ({best['impl'].split(':')[0]}) "
                                 f"{d['median_s'] / best['median_s']:.2f}x")
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
    fig, axes = plt.subplots(2, len(FAMILIES), figsize=(4 * len(FAMILIES), 7), squeeze=False)
    D0 = dims[0]
    for j, (fam, whos) in enumerate(FAMILIES.items()):
        for who in whos:
            pts = [by.get((f"{who}:{fam}", b, D0)) for b in batches]
            pts = [p for p in pts if p and p["status"] == "ok"]
            if not pts:
                continue
            xs = [p["B"] for p in pts]
            axes[0][j].loglog(xs, [p["median_s"] for p in pts], "o-", label=who)
            axes[1][j].loglog(xs, [max(p["delta_peak_mb"], 1e-1) for p in pts], "o-", label=who)
        axes[0][j].set_title(f"{fam} (D={D0})")
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
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--long-s", type=float, default=5.0, help="points estimated above this run 1 timed pass")
    p.add_argument("--point-s", type=float, default=60.0, help="skip points estimated above this (warm-up incl.)")
    p.add_argument("--budget-s", type=float, default=240.0, help="stop starting points after this many seconds")
    p.add_argument("--tile", default=f"{DEFAULT_TILE_CUDA[0]}x{DEFAULT_TILE_CUDA[1]}",
                   help="tiles of 'ours tiled' (default: core's CUDA tile for 'auto'; the first leases used 1024x4096)")
    p.add_argument("--impls", default="", help="comma list of implementations (ours_dense:clip) or owners (ours_tiled)")
    p.add_argument("--reuse", default="", help="JSON lines of an earlier lease: its peers' ok / oom points are reused")
    p.add_argument("--out", default="runs/bench/gpu.jsonl")
    p.add_argument("--md", default="runs/bench/bench_negatives_gpu.md")
    p.add_argument("--png", default="runs/bench/bench_negatives_gpu.png")
    p.add_argument("--render-only", action="store_true", help="only rewrite --md/--png from --out")
    args = p.parse_args(argv)
    if args.render_only:
        recs = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    else:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device (this benchmark is for a GPU machine; the CPU one is tools.bench_negatives)",
                  file=sys.stderr)
            return 2
        recs = sweep(args)
    render(recs, Path(args.md), Path(args.png) if args.png else None)
    print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
