"""Benchmark of the InfoNCE-family execution modes against the peer implementations (not a timed test).

Forward+backward wall time and extra peak memory of one loss evaluation, **one fresh process per point**
(:mod:`tools._bench_worker`), for our dense path, our tiled path (explicit tiles and ``tile_size="auto"``)
and the peer losses a user would otherwise pick, grouped by the loss they compute:

========  ====================================================  =================================================
loss      ours                                                  peers
========  ====================================================  =================================================
clip      ``info_nce(q, k, symmetric=True)``                    open_clip ``ClipLoss``
siglip    ``sig_lip(a, b, logit_scale, logit_bias)``            open_clip ``SigLipLoss``
ntxent    ``nt_xent(z1, z2)``                                   lightly ``NTXentLoss``, PML ``NTXentLoss`` (2B)
supcon    ``sup_con(stack([z1, z2], 1), labels)``               PML ``SupConLoss`` (2B embeddings)
========  ====================================================  =================================================

Protocol per point: ``torch.set_num_threads(2)``; inputs z1, z2 ~ N(0, 1), (B, D), fp32, ``requires_grad``;
temperature 0.1 (SigLIP: scale 10, bias -10); 1 warm-up + ``--reps`` timed passes, median; "Delta peak" =
``ru_maxrss`` at the end minus the RSS after imports and input creation. The worker caps its address
space (``RLIMIT_AS`` = current + ``--cap-gib``) so an impossible point fails with a recorded OOM.
Points whose estimated peak exceeds the cap but whose first big allocation does not (so the process
would fill the machine before failing) are not run: they are recorded as ``oom_est`` with the
estimate. Points whose time, extrapolated from the same implementation at a smaller batch, exceeds
``--timeout`` are recorded as ``skipped_time`` with the estimate.

Results are appended as JSON lines (``--out``, default ``runs/bench/cpu.jsonl``); a rerun skips points
already recorded, so a long sweep can be resumed or extended. ``--render-only`` rewrites the markdown
table and the log-log PNG from the JSON lines; ``--publish`` also copies them to ``tools/results/``.
``--dist`` runs the distributed gradient check (:mod:`tools._bench_dist`) on 2 (ours and peers) and
4 (ours) gloo ranks.

Examples::

    python -m tools.bench_negatives --quick                              # smoke run (seconds)
    python -m tools.bench_negatives --batches 4096,16384 --dims 128 --dist
    python -m tools.bench_negatives --batches 65536,262144 --dims 128 --timeout 5400
    nohup python -m tools.bench_negatives --plan full > runs/bench/full.log 2>&1 &   # hours; resumable
    python -m tools.bench_negatives --render-only --publish
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {
    "clip": ["ours_dense", "ours_tiled", "ours_auto", "open_clip"],
    "siglip": ["ours_dense", "ours_tiled", "ours_auto", "open_clip"],
    "ntxent": ["ours_dense", "ours_tiled", "ours_auto", "lightly", "pml"],
    "supcon": ["ours_dense", "ours_tiled", "ours_auto", "pml"],
}
ALL_IMPLS = [f"{who}:{fam}" for fam, whos in FAMILIES.items() for who in whos]
FINAL = {"ok", "oom", "oom_est", "timeout", "skipped_time", "error"}
GIB = 1 << 30
DEFAULT_TILE = (1024, 4096)
# A-priori peak (bytes) in units of one fp32 (n x n) logits matrix, from the spec's measurements and a
# first small run; replaced by extrapolation from a measured smaller batch whenever one exists.
K_DENSE = {
    "ours_dense:clip": 6.0, "ours_dense:siglip": 6.0, "ours_dense:ntxent": 4.5, "ours_dense:supcon": 8.0,
    "open_clip:clip": 4.5, "open_clip:siglip": 6.0, "lightly:ntxent": 4.5, "pml:supcon": 12.0,
}


def is_ours(impl: str) -> bool:
    return impl.startswith("ours")


def family(impl: str) -> str:
    return impl.split(":")[1]


def n_of(impl: str, B: int) -> int:
    """Rows (= columns) of the similarity matrix: 2B for the 2N-view losses."""
    return 2 * B if family(impl) in ("ntxent", "supcon") else B


def auto_tiles(impl: str, B: int):
    import torch

    from core.negatives import resolve_tile_size

    n = n_of(impl, B)
    return resolve_tile_size("auto", n, n, torch.float32)


def effective_mode(impl: str, B: int, tile) -> str:
    """'dense', 'tiled RxC' or 'pml_cubic' -- what the implementation actually runs."""
    who = impl.split(":")[0]
    if who == "ours_tiled":
        return f"tiled {tile[0]}x{tile[1]}"
    if who == "ours_auto":
        try:
            r = auto_tiles(impl, B)
        except Exception:  # noqa: BLE001
            return "dense"
        return "dense" if r is None else f"tiled {r[0]}x{r[1]}"
    if impl == "pml:ntxent":
        return "pml_cubic"
    return "dense"


def estimate_memory(impl: str, B: int, D: int, tile) -> tuple[float, float]:
    """(estimated Delta peak, size of the first allocation that would exceed it) in bytes, a priori."""
    n = n_of(impl, B)
    mode = effective_mode(impl, B, tile)
    if mode.startswith("tiled"):
        rt, ct = (int(x) for x in mode.split()[1].split("x"))
        rt, ct = min(rt, n), min(ct, n)
        est = 12 * rt * ct * 4 + 16 * n * D * 4
        return est, rt * ct * 4
    if mode == "pml_cubic":
        cubic = n * n * (n - 2)  # bool mask (#positive pairs x #negative pairs)
        return 5.0 * cubic + 4 * n * n * 4, cubic
    k = K_DENSE.get(impl.replace("ours_auto", "ours_dense"), 6.0)
    unit = (B if impl in ("lightly:ntxent",) else n) ** 2 * 4
    return k * n * n * 4, unit


def load(path: Path) -> dict:
    """Latest record per (impl, B, D)."""
    recs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                recs[(r["impl"], r["B"], r["D"])] = r
    return recs


def append(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rec.setdefault("when", datetime.datetime.now().isoformat(timespec="seconds"))
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def _scaling_order(impl: str) -> int:
    return 3 if impl == "pml:ntxent" else 2


def extrapolate(recs: dict, impl: str, B: int, D: int, tile) -> dict:
    """Time / memory estimates from the largest smaller batch of the same implementation, mode and D."""
    mode = effective_mode(impl, B, tile)
    best = None
    for (i, b, d), r in recs.items():
        if i == impl and d == D and b < B and r.get("mode", mode) == mode:
            if best is None or b > best["B"]:
                best = r
    out = {}
    if best is None:
        return out
    ratio = n_of(impl, B) / n_of(impl, best["B"])
    if best["status"] == "ok":
        out["time_s"] = best["median_s"] * ratio ** _scaling_order(impl)
        mem_order = 1 if mode.startswith("tiled") else _scaling_order(impl)
        out["mem_bytes"] = best["delta_peak_mb"] * 2**20 * ratio ** mem_order
        out["from_B"] = best["B"]
    elif best["status"] in ("timeout", "skipped_time"):
        out["time_s"] = float("inf")
        out["from_B"] = best["B"]
    return out


def _avail_bytes() -> int:
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable"):
                    return int(line.split()[1]) * 1024
    return 0


def run_point(impl: str, B: int, D: int, args, recs: dict) -> dict:
    tile = args.tile
    mode = effective_mode(impl, B, tile)
    base = {"impl": impl, "B": B, "D": D, "mode": mode, "timeout_s": args.timeout, "cap_gib": args.cap_gib}
    if impl.startswith("ours_auto"):
        base["auto_choice"] = mode
    est_mem, first_alloc = estimate_memory(impl, B, D, tile)
    ex = extrapolate(recs, impl, B, D, tile)
    if "mem_bytes" in ex:
        est_mem = ex["mem_bytes"]
    base["est_delta_peak_gib"] = round(est_mem / GIB, 2)
    cap = args.cap_gib * GIB
    # 1) memory: run only if it fits, or if it fails at the very first big allocation.
    if est_mem > cap and not args.try_oom:
        fails_fast = first_alloc > cap if mode != "pml_cubic" else (4 * n_of(impl, B) ** 2 * 4 <= 4 * GIB)
        if not fails_fast:
            return {**base, "status": "oom_est",
                    "note": f"est. {est_mem / GIB:.1f} GiB > cap {args.cap_gib:g} GiB; not run (it would fill "
                            f"the machine before failing)"}
    # 2) time
    est_t = ex.get("time_s")
    warmup, reps = 1, args.reps
    if est_t is not None:
        base["est_time_s"] = None if math.isinf(est_t) else round(est_t, 1)
        if est_t > args.timeout:
            why = (f"smaller batch B={ex['from_B']} already timed out" if math.isinf(est_t)
                   else f"est. {est_t:.0f} s > timeout {args.timeout} s (from B={ex['from_B']})")
            return {**base, "status": "skipped_time", "note": why}
        if est_t > args.long_s or est_t * (1 + reps) > args.timeout:
            warmup, reps = 0, 1
    # 3) alias: "auto" resolving to exactly the configuration of a point already measured
    if impl.startswith("ours_auto") and not args.no_alias:
        fam = family(impl)
        for other in (f"ours_dense:{fam}", f"ours_tiled:{fam}"):
            r = recs.get((other, B, D))
            if (r and r["status"] == "ok" and effective_mode(other, B, tile) == mode
                    and max(est_t or 0.0, r["median_s"]) > args.long_s):
                keep = {k: r[k] for k in ("status", "median_s", "times_s", "delta_peak_mb", "base_rss_mb", "loss",
                                          "grad_norm", "warmup", "reps") if k in r}
                return {**base, **keep, "alias_of": other,
                        "note": f"auto resolves to {mode} = {other}; numbers copied, not re-run"}
    # 4) memory currently available on the (shared) machine
    need = min(est_mem, cap) + GIB
    avail = _avail_bytes()
    if est_mem <= cap and need > avail:
        return {**base, "status": "skipped_busy",
                "note": f"needs ~{need / GIB:.1f} GiB, {avail / GIB:.1f} GiB available now; rerun later"}
    cmd = [sys.executable, "-m", "tools._bench_worker", "--impl", impl, "--batch", str(B), "--dim", str(D),
           "--reps", str(reps), "--warmup", str(warmup), "--threads", str(args.threads),
           "--cap-gib", str(args.cap_gib), "--tile", f"{tile[0]}x{tile[1]}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    # Watchdog: the machine is shared, so a point that drives free memory below --min-free-mib is killed
    # (recorded as "killed_lowmem", retried by the next run) rather than letting the OOM killer pick a victim.
    low_mem = False
    while True:
        try:
            out, err = proc.communicate(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            elapsed = time.perf_counter() - t0
            low_mem = _avail_bytes() < args.min_free_mib * 2**20
            if elapsed > args.timeout or low_mem:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                if low_mem:
                    return {**base, "status": "killed_lowmem", "wall_s": round(elapsed, 1),
                            "note": f"free memory fell below {args.min_free_mib} MiB; rerun when quieter"}
                return {**base, "status": "timeout", "wall_s": round(elapsed, 1),
                        "note": f"killed after {args.timeout} s", "warmup": warmup, "reps": reps}
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        status = "oom" if proc.returncode in (-9, 137) else "error"
        return {**base, "status": status, "returncode": proc.returncode, "error": err[-800:]}
    rec = json.loads(lines[-1][len("RESULT "):])
    return {**base, **rec, "wall_s": round(time.perf_counter() - t0, 1)}


def select_impls(spec: str) -> list[str]:
    out = []
    for tok in spec.split(","):
        tok = tok.strip()
        if tok == "all":
            out += ALL_IMPLS
        elif tok == "ours":
            out += [i for i in ALL_IMPLS if is_ours(i)]
        elif tok == "peers":
            out += [i for i in ALL_IMPLS if not is_ours(i)]
        elif tok in FAMILIES:
            out += [i for i in ALL_IMPLS if family(i) == tok]
        elif tok in ALL_IMPLS:
            out.append(tok)
        elif tok:
            raise SystemExit(f"unknown implementation {tok!r}; choose from all, ours, peers, {list(FAMILIES)}, "
                             f"{ALL_IMPLS}")
    return list(dict.fromkeys(out))


def sweep(args) -> None:
    out = Path(args.out)
    impls = select_impls(args.impls)
    for D in args.dims:
        for B in sorted(args.batches):
            for impl in impls:
                recs = load(out)
                old = recs.get((impl, B, D))
                if old and not args.force and old["status"] in FINAL:
                    retry_time = old["status"] in ("timeout", "skipped_time") and args.timeout > old.get("timeout_s", 0)
                    if not retry_time:
                        continue
                if B > args.max_batch.get(D, 1 << 62):
                    rec = {"impl": impl, "B": B, "D": D, "status": "skipped_time",
                           "note": f"B > --max-batch {args.max_batch[D]} for D={D}", "timeout_s": args.timeout}
                else:
                    rec = run_point(impl, B, D, args, recs)
                append(out, rec)
                print(_fmt_progress(rec), flush=True)
    render(args)


def _fmt_progress(r: dict) -> str:
    s = f"[{r.get('when', '')}] {r['impl']:<20} B={r['B']:<7} D={r['D']:<4} {r['status']:<12}"
    if r["status"] == "ok":
        s += f" {r['median_s']:.3f} s  dpeak {r['delta_peak_mb']:.0f} MB  loss {r.get('loss', float('nan')):.5f}"
    if r.get("note") or r.get("error"):
        s += f"  ({r.get('note') or r.get('error', '')[:160]})"
    return s


def run_dist(args) -> None:
    out = Path(args.out).with_name("dist.jsonl")
    recs = []
    for world, groups in ((2, "ours,peer"), (4, "ours")):
        cmd = [sys.executable, "-m", "tools._bench_dist", "--world", str(world), "--groups", groups]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        try:
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            got = [json.loads(ln[7:]) for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
            if res.returncode != 0:
                got.append({"case": f"(world {world} run failed)", "world": world, "status": "error",
                            "error": res.stderr[-600:]})
        except subprocess.TimeoutExpired:
            got = [{"case": f"(world {world} run timed out)", "world": world, "status": "timeout"}]
        recs += got
        for r in got:
            print(f"W={world} {r['case']:<70} {r['status']} exact={r.get('exact')}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))


# ----------------------------------------------------------------------------------------------- render

LABEL = {"ours_dense": "ours dense", "ours_tiled": "ours tiled", "ours_auto": "ours auto",
         "open_clip": "open_clip", "lightly": "lightly", "pml": "PML"}
PEER_CLASS = {"open_clip:clip": "ClipLoss", "open_clip:siglip": "SigLipLoss", "lightly:ntxent": "NTXentLoss",
              "pml:ntxent": "NTXentLoss", "pml:supcon": "SupConLoss"}


def impl_label(impl: str, r: dict | None = None) -> str:
    who = impl.split(":")[0]
    s = LABEL[who] + (f" {PEER_CLASS[impl]}" if impl in PEER_CLASS else "")
    if who == "ours_tiled" and r and r.get("tile"):
        s += f" {r['tile'][0]}x{r['tile'][1]}"
    return s


def _status_cell(r: dict) -> str:
    st = r["status"]
    if st == "oom":
        import re

        m = re.search(r"allocate (\d+) bytes", r.get("error", ""))
        return "OOM" + (f" (alloc {int(m.group(1)) / GIB:.0f} GiB > cap)" if m else "")
    if st == "oom_est":
        return f"OOM est. ({r.get('est_delta_peak_gib', '?')} GiB > cap {r.get('cap_gib', '?'):g} GiB), not run"
    if st == "skipped_time":
        e = r.get("est_time_s")
        return "skipped (time" + (f", est. {e:.0f} s" if e else "") + ")"
    if st == "timeout":
        return f"timeout (> {r.get('timeout_s')} s)"
    if st == "unavailable":
        return "n/a (not importable)"
    if st == "skipped_busy":
        return "skipped (memory busy)"
    if st == "killed_lowmem":
        return "killed (machine low on memory)"
    return st + (f": {r.get('error', '')[:60]}" if r.get("error") else "")


def _ratio(x, y) -> str:
    return f"{x / y:.2f}" if x is not None and y else "–"


def _ok(r):
    return r is not None and r["status"] == "ok"


def render(args) -> None:
    out = Path(args.out)
    recs = load(out)
    dist_path = out.with_name("dist.jsonl")
    dist_recs = []
    if dist_path.exists():
        dist_recs = [json.loads(ln) for ln in dist_path.read_text().splitlines() if ln.strip()]
    md_path, png_path = out.with_suffix(".md"), out.with_suffix(".png")
    lines = [f"# `tools/bench_negatives.py` results ({out.stem})", ""]
    lines += _header(recs)
    dims = sorted({k[2] for k in recs})
    for D in dims:
        lines += [f"## D = {D}", "",
                  "| loss | implementation | B | time (s) | CPU (s) | Δ peak (MB) | time ×dense | CPU ×dense | "
                  "mem ×dense | time ×best peer | mem ×best peer | loss value | load | notes |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for fam, whos in FAMILIES.items():
            batches = sorted({k[1] for k in recs if k[2] == D and family(k[0]) == fam})
            for B in batches:
                dense = recs.get((f"ours_dense:{fam}", B, D))
                peers = [recs.get((f"{w}:{fam}", B, D)) for w in whos if not w.startswith("ours")]
                peers = [p for p in peers if _ok(p)]
                best_t = min((p["median_s"] for p in peers), default=None)
                best_m = min((max(p["delta_peak_mb"], 1.0) for p in peers), default=None)
                for who in whos:
                    r = recs.get((f"{who}:{fam}", B, D))
                    if r is None:
                        continue
                    notes = []
                    if r.get("auto_choice"):
                        notes.append(f"auto → {r['auto_choice']}")
                    if r.get("alias_of"):
                        notes.append(f"= {impl_label(r['alias_of'])} (same config, copied)")
                    if r.get("reps") == 1 and r.get("warmup") == 0 and _ok(r):
                        notes.append("1 rep, no warm-up")
                    if _ok(r):
                        t, m = r["median_s"], max(r["delta_peak_mb"], 1.0)
                        dt = dense["median_s"] if _ok(dense) else None
                        dm = max(dense["delta_peak_mb"], 1.0) if _ok(dense) else None
                        c = r.get("median_cpu_s")
                        dc = dense.get("median_cpu_s") if _ok(dense) else None
                        load1 = r.get("load1_start")
                        cells = [f"{t:.3f}", f"{c:.2f}" if c is not None else "–", f"{r['delta_peak_mb']:.0f}",
                                 _ratio(t, dt), _ratio(c, dc), _ratio(m, dm), _ratio(t, best_t), _ratio(m, best_m),
                                 f"{r.get('loss', float('nan')):.5f}", f"{load1:.1f}" if load1 is not None else "–"]
                    else:
                        cells = [_status_cell(r)] + [""] * 9
                    lines.append(f"| {fam} | {impl_label(f'{who}:{fam}', r)} | {B} | " + " | ".join(cells)
                                 + f" | {'; '.join(notes)} |")
        lines.append("")
    lines += _targets(recs, dist_recs)
    if dist_recs:
        lines += _dist_table(dist_recs)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines) + "\n")
    made_png = _plot(recs, png_path)
    print(f"wrote {md_path}" + (f" and {png_path}" if made_png else ""))
    if args.publish:
        dest = ROOT / "tools" / "results"
        dest.mkdir(parents=True, exist_ok=True)
        name = args.publish_name
        text = md_path.read_text().replace(f"]({png_path.name})", f"]({name}.png)")
        (dest / f"{name}.md").write_text(text)
        if made_png:
            shutil.copy(png_path, dest / f"{name}.png")
        print(f"published to {dest / name}.md / .png")


def _header(recs: dict) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    torch_v = next((r.get("torch") for r in recs.values() if r.get("torch")), "?")
    threads = next((r.get("threads") for r in recs.values() if r.get("threads")), 2)
    caps = sorted({r.get("cap_gib") for r in recs.values() if r.get("cap_gib")})
    when = sorted(r.get("when", "") for r in recs.values() if r.get("when"))
    return [
        f"Machine: {cpu}, {os.cpu_count()} cores, {_total_gib():.0f} GiB RAM (shared with other jobs while "
        f"measured: timings are noisy). torch {torch_v}, `torch.set_num_threads({threads})`, fp32 inputs "
        f"(B, D) ~ N(0, 1). Measured {when[0][:16] if when else '?'} .. {when[-1][:16] if when else '?'}.",
        "",
        "Each point is one fresh process: forward + backward of one loss evaluation, 1 warm-up + 3 timed "
        "reps (median) unless noted; Δ peak = `ru_maxrss` at the end minus RSS after imports and input "
        f"creation; address space capped at baseline + {'/'.join(f'{c:g}' for c in caps)} GiB (`RLIMIT_AS`), "
        "so OOM = a real allocation failure under the cap. \"OOM est.\" = estimated peak above the cap with a "
        "first allocation below it (the process would fill the shared machine before failing), not run. "
        "CPU = process CPU time of the same pass (all threads; it includes OpenMP spin-waiting, so it also "
        "grows when the machine is oversubscribed); load = 1-min load average when the point started (2 = "
        "the benchmark alone fills the machine). With load well above 2, every parallel operator pays "
        "scheduling latency at its barriers; the tiled path issues far more (smaller) operators than the "
        "dense one and is hit hardest, so time ratios measured under load overstate its cost. "
        "Ratios: ×dense = this / ours dense for the same loss; ×best peer = this / the fastest (time) or "
        "smallest (memory) completing peer for the same loss at the same B, D. "
        "Temperature 0.1; SigLIP scale 10, bias −10; ntxent/supcon have 2B embeddings (supcon: 4 samples "
        "× 2 views per class); PML losses get `cat([z1, z2])` with labels.",
        "",
        "![time and memory vs batch](" + "PNGNAME" + ")",
        "",
    ]


def _total_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 2**20
    except OSError:
        return float("nan")


def _targets(recs: dict, dist_recs: list) -> list[str]:
    L = ["## Targets (issue 4)", "", "| target | result | verdict |", "|---|---|---|"]

    def verdict(ok):
        return "–" if ok is None else ("**met**" if ok else "**not met**")

    # 1. tiled memory at B=16384, D=128
    for fam in FAMILIES:
        d, t = recs.get((f"ours_dense:{fam}", 16384, 128)), recs.get((f"ours_tiled:{fam}", 16384, 128))
        if _ok(d) and _ok(t):
            frac = t["delta_peak_mb"] / max(d["delta_peak_mb"], 1)
            L.append(f"| {fam}: tiled Δ peak ≤ 10% of dense at B=16384, D=128 | {t['delta_peak_mb']:.0f} MB vs "
                     f"{d['delta_peak_mb']:.0f} MB = {100 * frac:.1f}% | {verdict(frac <= 0.10)} |")
    # 2. tiled time
    for fam in FAMILIES:
        for (impl, B, D), t in sorted(recs.items(), key=lambda kv: (kv[0][2], kv[0][1])):
            if impl != f"ours_tiled:{fam}" or not _ok(t):
                continue
            d = recs.get((f"ours_dense:{fam}", B, D))
            if not _ok(d):
                continue
            lim = 1.6 if B < 16384 else 1.35
            ratio = t["median_s"] / d["median_s"]
            cpu = ""
            if t.get("median_cpu_s") and d.get("median_cpu_s"):
                cpu = f" (CPU time {t['median_cpu_s'] / d['median_cpu_s']:.2f}×)"
            L.append(f"| {fam}: tiled time ≤ {lim}× dense at B={B}, D={D} | {t['median_s']:.2f} s / "
                     f"{d['median_s']:.2f} s = {ratio:.2f}×{cpu} | {verdict(ratio <= lim)} |")
    # 3. auto picks dense whenever dense fits
    for (impl, B, D), a in sorted(recs.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if not impl.startswith("ours_auto") or "auto_choice" not in a:
            continue
        d = recs.get((impl.replace("ours_auto", "ours_dense"), B, D))
        if d is None or d["status"] not in ("ok", "oom", "oom_est"):
            continue  # dense not measured (skipped / killed / timed out): unknown whether it fits
        fits = _ok(d)
        picked_dense = a["auto_choice"] == "dense"
        dense_txt = f"completes ({d['delta_peak_mb']:.0f} MB)" if fits else _status_cell(d)
        res = f"auto → {a['auto_choice']}; dense {dense_txt}"
        ok = picked_dense if fits else not picked_dense
        L.append(f"| {family(impl)}: `tile_size=\"auto\"` picks dense iff dense fits, B={B}, D={D} | {res} | "
                 f"{verdict(ok)} |")
    # 4. our dense vs fastest peer
    for (impl, B, D), d in sorted(recs.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if not impl.startswith("ours_dense") or not _ok(d):
            continue
        fam = family(impl)
        peers = [(w, recs.get((f"{w}:{fam}", B, D))) for w in FAMILIES[fam] if not w.startswith("ours")]
        peers = [(w, p) for w, p in peers if _ok(p)]
        if not peers:
            continue
        w, p = min(peers, key=lambda wp: wp[1]["median_s"])
        ratio = d["median_s"] / p["median_s"]
        cpu = ""
        if d.get("median_cpu_s") and p.get("median_cpu_s"):
            cpu = f" (CPU time {d['median_cpu_s'] / p['median_cpu_s']:.2f}×)"
        L.append(f"| {fam}: ours dense ≤ 1.05× fastest peer at B={B}, D={D} | {d['median_s']:.3f} s vs "
                 f"{impl_label(f'{w}:{fam}')} {p['median_s']:.3f} s = {ratio:.2f}×{cpu} | {verdict(ratio <= 1.05)} |")
    # 5. B=262144
    for D in sorted({k[2] for k in recs}):
        for fam in FAMILIES:
            t = recs.get((f"ours_tiled:{fam}", 262144, D))
            if t is None:
                continue
            others = [(i, r) for (i, b, d), r in recs.items() if b == 262144 and d == D and family(i) == fam
                      and not i.startswith(("ours_tiled", "ours_auto"))]
            fail = [impl_label(i) + ": " + _status_cell(r) for i, r in others if not _ok(r)]
            succ = [impl_label(i) for i, r in others if _ok(r)]
            if _ok(t):
                tot = (t["delta_peak_mb"] + t.get("base_rss_mb", 0)) / 1024
                res = f"tiled completes: {t['median_s']:.0f} s, peak RSS {tot:.1f} GiB; " + "; ".join(fail)
                ok = tot < 24 and not succ
            else:
                res, ok = "tiled: " + _status_cell(t), False
            if succ:
                res += "; also completed: " + ", ".join(succ)
            L.append(f"| {fam}: B=262144, D={D} tiled within 24 GiB, dense and peers cannot | {res} | "
                     f"{verdict(ok)} |")
    # 6. dist
    ours = [r for r in dist_recs if r.get("group") == "ours"]
    for world in sorted({r["world"] for r in ours}):
        rs = [r for r in ours if r["world"] == world]
        good = [r for r in rs if r.get("exact")]
        bad = [r["case"] for r in rs if not r.get("exact")]
        L.append(f"| gradient exact for every one of our modes, W={world} | {len(good)}/{len(rs)} exact"
                 + (f"; not: {', '.join(bad)}" if bad else "") + f" | {verdict(not bad and bool(rs))} |")
    L.append("")
    return L


def _dist_table(dist_recs: list) -> list[str]:
    L = ["## Distributed gradient correctness (gloo, CPU, float64)", "",
         "`python -m tools.bench_negatives --dist`: B_local = 8, two linear towers 16→32 (+ learnable log scale "
         "θ, SigLIP bias b); each rank computes its per-rank loss on its shard and back-propagates, parameter "
         "grads are all-reduced and divided by W (= DDP); reference = the same loss non-distributed on the "
         "global batch in one process. ratio = ⟨g_dist, g_ref⟩/‖g_ref‖² (1 = exact); exact = every "
         "max |Δ| ≤ 1e-9. loss = mean over ranks of the per-rank loss vs the reference loss.", "",
         "| case | W | towers ratio (cos) | θ ratio | b ratio | max abs diff | exact | loss (rank mean / ref) |",
         "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in dist_recs:
        if r.get("status") != "ok":
            L.append(f"| {r['case']} | {r['world']} | {r.get('status')}: {r.get('error', '')[:80]} | | | | | |")
            continue
        tw = r["towers"]
        sc = f"{r['scale']['ratio']:.4f}" if "scale" in r else "–"
        bi = f"{r['bias']['ratio']:.4f}" if "bias" in r else "–"
        worst = max(r[k]["max_abs_diff"] for k in ("towers", "scale", "bias") if k in r)
        cos = f" ({tw['cos']:.4f})" if abs(tw["cos"] - 1) > 1e-9 else ""
        L.append(f"| {r['case']} | {r['world']} | {tw['ratio']:.4f}{cos} | {sc} | {bi} | {worst:.1e} | "
                 f"{'**exact**' if r['exact'] else 'no'} | {r['loss_rank_mean']:.6f} / {r['loss_ref']:.6f} |")
    L.append("")
    return L


def _plot(recs: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    dims = sorted({k[2] for k in recs})
    if not dims:
        return False
    fig, axes = plt.subplots(2, len(dims), figsize=(7 * len(dims) + 2, 10), squeeze=False)
    colors = {"clip": "tab:blue", "siglip": "tab:orange", "ntxent": "tab:green", "supcon": "tab:red"}
    styles = {"ours_dense": ("-", "o"), "ours_tiled": ("--", "s"), "ours_auto": (":", "^"),
              "open_clip": ("-.", "x"), "lightly": ("-.", "d"), "pml": ((0, (1, 3)), "v")}
    for j, D in enumerate(dims):
        for impl in ALL_IMPLS:
            pts = sorted((b, r) for (i, b, d), r in recs.items() if i == impl and d == D and _ok(r))
            if not pts:
                continue
            who, fam = impl.split(":")
            ls, mk = styles[who]
            xs = [b for b, _ in pts]
            kw = dict(color=colors[fam], linestyle=ls, marker=mk, label=f"{fam}: {impl_label(impl)}")
            axes[0, j].plot(xs, [r["median_s"] for _, r in pts], **kw)
            axes[1, j].plot(xs, [max(r["delta_peak_mb"], 1) for _, r in pts], **kw)
        for i, (ylabel, title) in enumerate((("forward+backward time (s)", "time"), ("Δ peak RSS (MB)", "memory"))):
            ax = axes[i, j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch B")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}, D = {D} (missing point = OOM / skipped)")
            ax.grid(True, which="both", alpha=0.3)
        axes[1, j].axhline(24 * 1024, color="k", lw=0.8, ls="--")
        axes[1, j].text(axes[1, j].get_xlim()[0], 24 * 1024, " 24 GiB machine", va="bottom", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes.flat:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    ncol = 2 * len(dims)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    fig.tight_layout(rect=(0, 0.022 * math.ceil(len(labels) / ncol) + 0.01, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    # the markdown refers to the PNG by file name
    md = path.with_suffix(".md")
    if md.exists():
        md.write_text(md.read_text().replace("PNGNAME", path.name))
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="4096,16384,65536,262144", help="comma list of batch sizes B")
    p.add_argument("--dims", default="128,512", help="comma list of feature dimensions D")
    p.add_argument("--impls", default="all",
                   help=f"comma list: all, ours, peers, a loss ({', '.join(FAMILIES)}) or an implementation "
                        f"({', '.join(ALL_IMPLS)})")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after 1 warm-up (median reported)")
    p.add_argument("--timeout", type=int, default=1800, help="per-point wall-clock limit in seconds")
    p.add_argument("--long-s", type=float, default=60.0,
                   help="points estimated longer than this run once without warm-up")
    p.add_argument("--max-batch", default="",
                   help="per-D batch limit, e.g. '512:65536' records larger D=512 points as skipped (time)")
    p.add_argument("--cap-gib", type=float, default=20.0, help="address-space cap per point above its baseline")
    p.add_argument("--min-free-mib", type=int, default=768,
                   help="kill a point when the machine's available memory falls below this (shared machine)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile", default=f"{DEFAULT_TILE[0]}x{DEFAULT_TILE[1]}", help="tiles of 'ours tiled': RxC")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "cpu.jsonl"))
    p.add_argument("--force", action="store_true", help="re-run points already recorded")
    p.add_argument("--try-oom", action="store_true", help="also run points estimated above the cap")
    p.add_argument("--no-alias", action="store_true",
                   help="always measure 'auto', even when it resolves to a configuration already measured")
    p.add_argument("--quick", action="store_true", help="smoke run: B 256,1024, D 32, 1 rep, runs/bench/quick.jsonl")
    p.add_argument("--plan", choices=("small", "full"),
                   help="run a predefined sequence of sweeps in priority order (see PLANS); --batches, --dims, "
                        "--impls, --timeout and --max-batch are then taken from the plan")
    p.add_argument("--dist", action="store_true", help="also run the distributed gradient check")
    p.add_argument("--dist-only", action="store_true", help="only the distributed gradient check (+ render)")
    p.add_argument("--render-only", action="store_true", help="only rewrite the table and PNG from --out")
    p.add_argument("--publish", action="store_true", help="copy the table and PNG to tools/results/")
    p.add_argument("--publish-name", default="bench_negatives_cpu")
    a = p.parse_args(argv)
    if a.quick:
        a.batches, a.dims, a.reps, a.timeout = "256,1024", "32", 1, 300
        if a.out == p.get_default("out"):
            a.out = str(ROOT / "runs" / "bench" / "quick.jsonl")
    a.batches = [int(x) for x in str(a.batches).split(",") if x]
    a.dims = [int(x) for x in str(a.dims).split(",") if x]
    a.max_batch = {int(k): int(v) for k, v in (kv.split(":") for kv in a.max_batch.split(",") if kv)}
    rt, _, ct = a.tile.partition("x")
    a.tile = (int(rt), int(ct or rt))
    return a


# Priority order of the long CPU sweep (each stage resumes: points already recorded are skipped).
# (batches, dims, impls, per-point timeout s, per-D max batch)
PLANS = {
    "small": [([4096, 16384], [128], "all", 1800, {})],
    "full": [
        ([4096, 16384], [128], "all", 1800, {}),
        ([65536], [128], "clip,siglip", 7200, {}),
        ([262144], [128], "clip", 14400, {}),
        ([65536], [128], "ntxent", 7200, {}),
        ([4096, 16384, 65536, 262144], [512], "clip,siglip,ntxent", 7200, {512: 65536}),
        ([262144], [128], "siglip,ntxent", 14400, {}),
        ([65536, 262144], [128], "supcon", 14400, {}),
        ([4096, 16384, 65536, 262144], [512], "supcon", 7200, {512: 65536}),
    ],
}


def run_plan(args) -> None:
    for batches, dims, impls, timeout, max_batch in PLANS[args.plan]:
        stage = argparse.Namespace(**{**vars(args), "batches": batches, "dims": dims, "impls": impls,
                                      "timeout": timeout, "max_batch": max_batch})
        print(f"=== stage: B={batches} D={dims} impls={impls} timeout={timeout}s", flush=True)
        sweep(stage)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plan:
        if args.dist:
            run_dist(args)
        run_plan(args)
        return 0
    if args.render_only:
        render(args)
        return 0
    if args.dist or args.dist_only:
        run_dist(args)
    if not args.dist_only:
        sweep(args)
    else:
        render(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
