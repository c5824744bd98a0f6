"""The newer ``core.losses`` objectives against their naive float32 formulas, and tiled vs dense peak memory.

Two measurements, one loss at a time, forward+backward:

* **speed** (``--mode speed``): each objective, dense (``tile_size=None``), against the same formula written
  directly in torch ops on the full B x B float32 matrix (``NAIVE`` below, independent of ``core``). Both run
  in one process on the same inputs, their repetitions interleaved (the first one alternates) so the load of
  other processes on a shared machine hits both alike; medians and the ratio of the medians are reported,
  with the absolute difference of the two loss values.
* **memory** (``--mode memory``): one fresh process per point (``--worker``): imports, inputs, RSS baseline,
  one forward+backward, then "extra peak" = ``ru_maxrss`` minus the baseline (as ``tools/_bench_worker.py``).
  Every objective that takes ``tile_size=`` runs dense and tiled; the table gives tiled / dense.

    python -m tools.bench_new_losses --mode speed --batch 4096 --threads 1
    python -m tools.bench_new_losses --mode memory --mem-batch 8192 16384 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import core.losses as L  # noqa: E402
from tools._bench_worker import _rss_bytes, _vm_bytes  # noqa: E402

TILE = (1024, 4096)
VIEWS = 3  # views per sample of the multi-view objectives
TOP_K = 64
CLASSES = 100


def make_inputs(case: str, B: int, D: int, seed: int = 0) -> dict:
    """fp32 N(0, 1) leaves with grad (and labels / temperatures) for ``case``."""
    g = torch.Generator().manual_seed(seed)
    z = {}
    if case in ("poly_view_arith", "poly_view_geo", "multi_view_dhel", "kernel_uniformity", "sup_con_prior"):
        v = 2 if case in ("kernel_uniformity", "sup_con_prior") else VIEWS
        z["views"] = torch.randn(B, v, D, generator=g).requires_grad_()
    else:
        z["q"] = torch.randn(B, D, generator=g).requires_grad_()
        z["k"] = torch.randn(B, D, generator=g).requires_grad_()
    if case == "info_nce_tau_i":
        z["tau"] = (0.05 + 0.1 * torch.rand(B, generator=g)).requires_grad_()
    if case == "sup_con_prior":
        z["labels"] = torch.randint(0, CLASSES, (B,), generator=g)
        z["prior"] = torch.rand(CLASSES, generator=g) + 0.1
    return z


def _k(q: torch.Tensor) -> int:
    return min(TOP_K, max(1, q.shape[0] // 4))  # tiny smoke batches keep K < B - 1


def _tile(tiled: bool):
    return TILE if tiled else None


# ---- core calls -------------------------------------------------------------------------------------------
CORE = {
    "info_nce_tau_i": lambda z, t: L.info_nce(z["q"], z["k"], temperature=z["tau"], tile_size=_tile(t)),
    "info_nce_top_k": lambda z, t: L.info_nce(z["q"], z["k"], temperature=0.1, top_k=_k(z["q"]), tile_size=_tile(t)),
    "debiased_b0": lambda z, t: L.debiased_info_nce(z["q"], z["k"], temperature=0.5, tau_plus=0.1, beta=0.0,
                                                    tile_size=_tile(t)),
    "hard_neg_b1": lambda z, t: L.debiased_info_nce(z["q"], z["k"], temperature=0.5, tau_plus=0.1, beta=1.0,
                                                    tile_size=_tile(t)),
    "auc_contrastive": lambda z, t: L.auc_contrastive(z["q"], z["k"], temperature=0.1, tile_size=_tile(t)),
    "sup_con_prior": lambda z, t: L.sup_con(z["views"], z["labels"], temperature=0.1, base_temperature=0.1,
                                            class_prior=z["prior"], tile_size=_tile(t)),
    "kernel_uniformity": lambda z, t: L.kernel_uniformity(z["views"], gamma=2.0, tile_size=_tile(t)),
    "align_uniform": lambda z, t: L.align_uniform(z["q"], z["k"], alpha=2.0, t=2.0, weight=1.0),
    "poly_view_arith": lambda z, t: L.poly_view_info_nce(z["views"], temperature=0.1, aggregation="arithmetic",
                                                         tile_size=_tile(t)),
    "poly_view_geo": lambda z, t: L.poly_view_info_nce(z["views"], temperature=0.1, aggregation="geometric",
                                                       tile_size=_tile(t)),
    "circle_loss": lambda z, t: L.circle_loss(z["q"], z["k"], margin=0.25, gamma=256.0, tile_size=_tile(t)),
    "multi_view_dhel": lambda z, t: L.multi_view_dhel(z["views"], temperature=0.2, tile_size=_tile(t)),
    "cacr": lambda z, t: L.cacr(z["q"], z["k"], t_pos=1.0, t_neg=2.0, tile_size=_tile(t)),
}
TILES = {name: name != "align_uniform" for name in CORE}  # align_uniform is dense only


# ---- naive float32 formulas (full matrices, torch ops, nothing from core) ----------------------------------
def _eye(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.bool)


def _n_info_nce_tau_i(z):
    x = F.normalize(z["q"], dim=1) @ F.normalize(z["k"], dim=1).T / z["tau"][:, None]
    return (torch.logsumexp(x, 1) - x.diagonal()).mean()


def _n_top_k(z):
    x = F.normalize(z["q"], dim=1) @ F.normalize(z["k"], dim=1).T / 0.1
    pos = x.diagonal()
    hard = x.masked_fill(_eye(x.shape[0]), float("-inf")).topk(_k(z["q"]), dim=1).values
    return (torch.logsumexp(torch.cat([pos[:, None], hard], 1), 1) - pos).mean()


def _n_debiased(z, beta: float, t: float = 0.5, tau_plus: float = 0.1):
    x = F.normalize(z["q"], dim=1) @ F.normalize(z["k"], dim=1).T / t
    B = x.shape[0]
    n = B - 1
    off = ~_eye(B)
    pos = x.diagonal().exp()
    e = x.exp() * off
    if beta > 0:
        w = (beta * x).exp() * off
        neg = n * (w * e).sum(1) / w.sum(1)
    else:
        neg = e.sum(1)
    ng = ((neg - tau_plus * n * pos) / (1 - tau_plus)).clamp_min(n * torch.exp(torch.tensor(-1.0 / t)))
    return (-torch.log(pos / (pos + ng))).mean()


def _n_auc(z):
    x = F.normalize(z["q"], dim=1) @ F.normalize(z["k"], dim=1).T / 0.1
    B = x.shape[0]
    sp = F.softplus(x - x.diagonal()[:, None]) * (~_eye(B))
    return (sp.sum(1) / (B - 1)).mean()


def _n_sup_con_prior(z):
    v = z["views"]
    B, V = v.shape[0], v.shape[1]
    u = F.normalize(v.transpose(0, 1).reshape(V * B, -1), dim=1)  # row v * B + i = view v of sample i
    y = z["labels"].repeat(V)
    x = u @ u.T / 0.1 - torch.log(z["prior"])[y][None, :]
    self_ = _eye(V * B)
    x = x.masked_fill(self_, float("-inf"))
    logp = x - torch.logsumexp(x, 1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_
    return (-(logp.masked_fill(~pos, 0.0).sum(1) / pos.sum(1))).mean()


def _n_kernel_uniformity(z, gamma: float = 2.0):
    mu = F.normalize(z["views"], dim=2).mean(1)
    sq = (mu * mu).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * mu @ mu.T
    B = mu.shape[0]
    return torch.logsumexp((-gamma * d2).masked_fill(_eye(B), float("-inf")).flatten(), 0) - torch.log(
        torch.tensor(float(B * (B - 1))))


def _n_align_uniform(z, t: float = 2.0):
    a, b = F.normalize(z["q"], dim=1), F.normalize(z["k"], dim=1)
    align = (a - b).norm(dim=1).pow(2).mean()

    def unif(u):
        B = u.shape[0]
        d2 = (2 - 2 * u @ u.T).masked_fill(_eye(B), float("inf"))  # i != j, both orders: same mean as i < j
        return torch.logsumexp(-t * d2.flatten(), 0) - torch.log(torch.tensor(float(B * (B - 1))))

    return align + 0.5 * (unif(a) + unif(b))


def _n_poly_view(z, geometric: bool, t: float = 0.1):
    u = F.normalize(z["views"], dim=2)
    M = u.shape[1]
    terms = []
    for a in range(M):
        others = torch.stack([u[:, b] for b in range(M) if b != a], 1)  # (B, M-1, D)
        s = torch.einsum("id,jbd->ijb", u[:, a], others) / t  # (B, B, M-1)
        f = s.mean(2) if geometric else torch.logsumexp(s, 2) - torch.log(torch.tensor(float(M - 1)))
        terms.append(torch.logsumexp(f, 1) - f.diagonal())
    return torch.cat(terms).mean()


def _n_circle(z, m: float = 0.25, gamma: float = 256.0):
    s = F.normalize(z["q"], dim=1) @ F.normalize(z["k"], dim=1).T
    B = s.shape[0]
    eye = _eye(B)
    sp = s.diagonal()
    sd = s.detach()
    ln = gamma * (sd + m).clamp_min(0) * (s - m)
    lp = -gamma * (1 + m - sp.detach()).clamp_min(0) * (sp - (1 - m))
    return F.softplus(torch.logsumexp(ln.masked_fill(eye, float("-inf")), 1) + lp).mean()


def _n_dhel(z, t: float = 0.2):
    u = F.normalize(z["views"], dim=2)
    B, V = u.shape[0], u.shape[1]
    eye = _eye(B)
    energy = 0
    for v in range(V):
        x = u[:, v] @ u[:, v].T / t
        energy = energy + torch.logsumexp(x.masked_fill(eye, float("-inf")), 1)
    pairs = [(u[:, a] * u[:, b]).sum(1) / t for a in range(V) for b in range(a + 1, V)]
    return (energy - torch.logsumexp(torch.stack(pairs, 1), 1)).mean()


def _n_cacr(z, t_neg: float = 2.0):
    q, k = F.normalize(z["q"], dim=1), F.normalize(z["k"], dim=1)
    d = 2.0 - 2.0 * (q @ k.T)
    eye = _eye(d.shape[0])
    w = torch.softmax((-t_neg * d).masked_fill(eye, float("-inf")), 1)
    return (d.diagonal() - (w * d).sum(1)).mean()


NAIVE = {
    "info_nce_tau_i": _n_info_nce_tau_i,
    "info_nce_top_k": _n_top_k,
    "debiased_b0": lambda z: _n_debiased(z, 0.0),
    "hard_neg_b1": lambda z: _n_debiased(z, 1.0),
    "auc_contrastive": _n_auc,
    "sup_con_prior": _n_sup_con_prior,
    "kernel_uniformity": _n_kernel_uniformity,
    "align_uniform": _n_align_uniform,
    "poly_view_arith": lambda z: _n_poly_view(z, False),
    "poly_view_geo": lambda z: _n_poly_view(z, True),
    "circle_loss": _n_circle,
    "multi_view_dhel": _n_dhel,
    "cacr": _n_cacr,
}
LABELS = {
    "info_nce_tau_i": "`info_nce`, per-anchor temperature (B,)",
    "info_nce_top_k": f"`info_nce(top_k={TOP_K})`",
    "debiased_b0": "`debiased_info_nce` (beta = 0, tau+ = 0.1)",
    "hard_neg_b1": "`debiased_info_nce` (beta = 1, hard negatives)",
    "auc_contrastive": "`auc_contrastive`",
    "sup_con_prior": f"`sup_con(class_prior=)` (V = 2, {CLASSES} classes)",
    "kernel_uniformity": "`kernel_uniformity` (V = 2)",
    "align_uniform": "`align_uniform` (dense only)",
    "poly_view_arith": f"`poly_view_info_nce` arithmetic (M = {VIEWS})",
    "poly_view_geo": f"`poly_view_info_nce` geometric (M = {VIEWS})",
    "circle_loss": "`circle_loss` (index positives)",
    "multi_view_dhel": f"`multi_view_dhel` (V = {VIEWS})",
    "cacr": "`cacr` (t+ = 1, t- = 2, index positives)",
}


def _grads_clear(z: dict) -> None:
    for x in z.values():
        if isinstance(x, torch.Tensor) and x.requires_grad:
            x.grad = None


def _step(fn, z: dict) -> tuple[float, float]:
    _grads_clear(z)
    t0 = time.perf_counter()
    loss = fn(z)
    loss.backward()
    return time.perf_counter() - t0, float(loss.detach())


def speed(case: str, B: int, D: int, reps: int, warmup: int) -> dict:
    z = make_inputs(case, B, D)

    def ours(z):
        return CORE[case](z, False)

    naive = NAIVE[case]
    t_o, t_n, v_o, v_n = [], [], None, None
    for r in range(warmup + reps):
        order = ((ours, t_o), (naive, t_n)) if r % 2 == 0 else ((naive, t_n), (ours, t_o))
        for fn, acc in order:
            dt, val = _step(fn, z)
            if fn is ours:
                v_o = val
            else:
                v_n = val
            if r >= warmup:
                acc.append(dt)
    mo, mn = statistics.median(t_o), statistics.median(t_n)
    return {"case": case, "B": B, "D": D, "reps": reps, "ours_s": mo, "naive_s": mn, "ratio": mo / mn,
            "loss_ours": v_o, "loss_naive": v_n, "abs_diff": abs(v_o - v_n)}


def worker(case: str, B: int, D: int, tiled: bool, cap_gib: float) -> dict:
    """One forward+backward in this (fresh) process; extra peak = ru_maxrss - RSS after the inputs."""
    z = make_inputs(case, B, D)
    base = _rss_bytes()
    if cap_gib > 0:
        resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + int(cap_gib * 2**30), resource.RLIM_INFINITY))
    out = {"case": case, "B": B, "D": D, "tiled": tiled, "tile": list(TILE) if tiled else None}
    t0 = time.perf_counter()
    try:
        loss = CORE[case](z, tiled)
        loss.backward()
        out.update(status="ok", loss=float(loss.detach()))
    except (MemoryError, RuntimeError) as e:
        out.update(status="oom" if "memory" in str(e).lower() or isinstance(e, MemoryError) else "error",
                   error=f"{type(e).__name__}: {str(e)[:200]}")
    out["time_s"] = round(time.perf_counter() - t0, 2)
    out["extra_peak_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**20, 1)
    return out


def memory_point(case: str, B: int, D: int, tiled: bool, threads: int, cap_gib: float, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "tools.bench_new_losses", "--worker", case, "--batch", str(B), "--dim", str(D),
           "--threads", str(threads), "--cap-gib", str(cap_gib)] + (["--tiled"] if tiled else [])
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": case, "B": B, "D": D, "tiled": tiled, "status": "timeout"}
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"case": case, "B": B, "D": D, "tiled": tiled, "status": "error", "error": res.stderr[-300:]}


def _machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} cores"


def speed_md(rows: list[dict], args) -> str:
    lines = [
        "## Dense speed: core vs the naive float32 formula (forward + backward)", "",
        f"`python -m tools.bench_new_losses --mode speed --batch {args.batch} --dim {args.dim} --reps {args.reps} "
        f"--threads {args.threads}`; torch {torch.__version__}, CPU ({_machine()}), `torch.set_num_threads("
        f"{args.threads})`, fp32 inputs; the two implementations' repetitions interleaved in one process, "
        f"{args.warmup} warm-up + {args.reps} timed each, medians.", "",
        "| objective | B | core median (s) | naive median (s) | core / naive | abs loss diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {LABELS[r['case']]} | {r['B']} | {r['ours_s']:.3f} | {r['naive_s']:.3f} | "
                     f"{r['ratio']:.2f} | {r['abs_diff']:.1e} |")
    return "\n".join(lines + [""])


def memory_md(rows: list[dict], args) -> str:
    lines = [
        "## Extra peak memory: tiled vs dense (forward + backward, one fresh process per point)", "",
        f"`python -m tools.bench_new_losses --mode memory --mem-batch {' '.join(map(str, args.mem_batch))} "
        f"--dim {args.dim} --threads {args.threads} --cap-gib {args.cap_gib:g}`; tiles {TILE[0]} x {TILE[1]}; "
        "extra peak = `ru_maxrss` after one forward+backward minus the RSS after imports and inputs "
        f"(address space capped at the baseline + {args.cap_gib:g} GiB).", "",
        "| objective | B | dense extra peak (MB) | tiled extra peak (MB) | tiled / dense | "
        "<= 10 % (target at B = 16384) |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["case"], r["B"], r["tiled"]): r for r in rows}
    for case in CORE:
        if not TILES[case]:
            continue
        for B in args.mem_batch:
            d, t = by.get((case, B, False)), by.get((case, B, True))
            if d is None and t is None:
                continue

            def cell(r):
                if r is None:
                    return "not run"
                if r.get("status") == "oom":
                    return f"> {args.cap_gib:g} GiB (allocation failed under the cap)"
                if r.get("status") != "ok":
                    return r.get("status", "?")
                return f"{r['extra_peak_mb']:.0f} ({r['time_s']:.0f} s)"

            ok = d is not None and t is not None and d.get("status") == t.get("status") == "ok"
            frac = t["extra_peak_mb"] / max(d["extra_peak_mb"], 1.0) if ok else None
            if frac is not None:
                share, verdict = f"{100 * frac:.1f} %", "yes" if frac <= 0.10 else "no"
            elif d is not None and d.get("status") == "oom" and t is not None and t.get("status") == "ok":
                # dense failed under the cap, so it needs more than the cap: the share is below tiled / cap
                bound = t["extra_peak_mb"] / (1024 * args.cap_gib)
                share, verdict = f"< {100 * bound:.1f} %", "yes" if bound <= 0.10 else "-"
            else:
                share, verdict = "-", "-"
            lines.append(f"| {LABELS[case]} | {B} | {cell(d)} | {cell(t)} | {share} | {verdict} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("speed", "memory"), default="speed")
    p.add_argument("--cases", nargs="*", default=list(CORE), help="objectives (default: all)")
    p.add_argument("--batch", type=int, default=4096, help="speed: batch size")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mem-batch", type=int, nargs="*", default=[8192, 16384], help="memory: batch sizes")
    p.add_argument("--dense-max", type=int, default=16384, help="memory: largest batch run dense")
    p.add_argument("--cap-gib", type=float, default=12.0, help="memory: address-space cap above the baseline")
    p.add_argument("--timeout", type=float, default=600.0, help="memory: seconds per point")
    p.add_argument("--out", default="", help="append the markdown table here (and a .jsonl of the rows)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--tiled", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        res = worker(args.worker, args.batch, args.dim, args.tiled, args.cap_gib)
        print("RESULT " + json.dumps(res), flush=True)
        return res
    unknown = [c for c in args.cases if c not in CORE]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {list(CORE)}")
    rows = []
    if args.mode == "speed":
        for case in args.cases:
            r = speed(case, args.batch, args.dim, args.reps, args.warmup)
            print(json.dumps(r), flush=True)
            rows.append(r)
        md = speed_md(rows, args)
    else:
        for B in args.mem_batch:  # every objective at the smaller batch first
            for case in args.cases:
                if not TILES[case]:
                    continue
                for tiled in (True, False):
                    if not tiled and B > args.dense_max:
                        continue
                    r = memory_point(case, B, args.dim, tiled, args.threads, args.cap_gib, args.timeout)
                    print(json.dumps(r), flush=True)
                    rows.append(r)
        md = memory_md(rows, args)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(md + "\n")
        with out.with_suffix(".jsonl").open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return {"rows": rows, "markdown": md}


if __name__ == "__main__":
    main()
