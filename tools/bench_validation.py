"""What ``core.losses.validation("shapes")`` saves: loss steps under full validation vs shape-only checks.

"full" (the default) scans every input for NaN / inf, checks that no row has a zero norm under cosine similarity
and reads tensor temperatures back to the host: each is a host synchronisation on a GPU and a pass over the
embeddings on any device. "shapes" keeps only the free checks. Both modes run in one process on the same inputs,
alternating rep by rep after warm-up; the table reports the median step time (forward + backward) of each and
the ratio of the medians, for a few losses and batch sizes (small batches are where the checks weigh most).

    python -m tools.bench_validation                           # CPU, 1 thread
    python -m tools.bench_validation --batch 256 1024 --reps 21 --out runs/bench/validation.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from core.losses import cpc, info_nce, sup_con, validation


def _cases(batch: int, dim: int, device: str):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, dim, generator=g).to(device).requires_grad_()
    k = torch.randn(batch, dim, generator=g).to(device).requires_grad_()
    t = torch.tensor(0.07, device=device, requires_grad=True)  # a learnable temperature: read back under "full"
    labels = (torch.arange(batch) % 10).to(device)
    seq = torch.randn(max(batch // 16, 2), 16, dim, generator=g).to(device).requires_grad_()
    preds = [torch.nn.Linear(dim, dim).to(device) for _ in range(2)]
    top_k = min(16, batch - 2)
    return {
        "info_nce": ([q, k, t], lambda: info_nce(q, k, temperature=t)),
        f"info_nce symmetric, top_k={top_k}": ([q, k, t], lambda: info_nce(q, k, temperature=t, symmetric=True,
                                                                          top_k=top_k)),
        "sup_con": ([q, k], lambda: sup_con(torch.stack([q, k], 1), labels, temperature=0.1)),
        "cpc (K=2)": ([seq], lambda: cpc(seq, seq, predictors=preds, temperature=t)),
    }


def _step(fn, params) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward + backward."""
    for p in params:
        p.grad = None
    t0, c0 = time.perf_counter(), time.process_time()
    fn().backward()
    if params[0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def run(batches: list[int], dim: int, reps: int, warmup: int, threads: int, device: str) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for batch in batches:
        for name, (params, fn) in _cases(batch, dim, device).items():
            with torch.no_grad():
                full_value = float(fn())
                with validation("shapes"):
                    diff = abs(full_value - float(fn()))
            wall = {"full": [], "shapes": []}
            cpu = {"full": [], "shapes": []}
            for r in range(warmup + reps):
                order = ("full", "shapes") if r % 2 == 0 else ("shapes", "full")
                for mode in order:
                    with validation(mode):
                        w, c = _step(fn, params)
                    if r >= warmup:
                        wall[mode].append(w)
                        cpu[mode].append(c)
            full, shapes = statistics.median(wall["full"]), statistics.median(wall["shapes"])
            paired = statistics.median(s / f for s, f in zip(wall["shapes"], wall["full"]))
            cpu_ratio = statistics.median(cpu["shapes"]) / statistics.median(cpu["full"])
            rows.append({"loss": name, "batch": batch, "dim": dim, "full_ms": 1e3 * full, "shapes_ms": 1e3 * shapes,
                         "ratio": shapes / full, "paired": paired, "cpu_ratio": cpu_ratio, "loss_diff": diff})
    return rows


def to_markdown(rows: list[dict], args) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        '# `validation("full")` vs `validation("shapes")` (forward + backward)',
        "",
        f"`python -m tools.bench_validation --batch {' '.join(map(str, args.batch))} --dim {args.dim} "
        f"--reps {args.reps} --threads {args.threads} --device {args.device}`; torch {torch.__version__}, "
        f"{args.device} ({cpu}), fp32, {args.threads} thread(s); the two modes alternate within one process.",
        "",
        "| loss | B | D | full median (ms) | shapes median (ms) | shapes / full (medians) | median per-rep ratio | "
        "CPU-time ratio | abs loss diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['batch']} | {r['dim']} | {r['full_ms']:.3f} | {r['shapes_ms']:.3f} | "
                     f"{r['ratio']:.3f} | {r['paired']:.3f} | {r['cpu_ratio']:.3f} | {r['loss_diff']:.1e} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/bench/validation.md")
    args = p.parse_args(argv)
    rows = run(args.batch, args.dim, args.reps, args.warmup, args.threads, args.device)
    md = to_markdown(rows, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(md)
    print(f"-> {out}")
    return rows


if __name__ == "__main__":
    main()
