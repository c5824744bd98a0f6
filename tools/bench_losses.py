"""Dense ``info_nce`` forward+backward vs a straightforward PyTorch cross-entropy InfoNCE.

The baseline is what a user would write by hand::

    F.cross_entropy(F.normalize(q) @ F.normalize(k).T / t, torch.arange(B))

Both run in the same process on the same inputs, alternating rep by rep (so load from other processes on a
shared machine hits both alike), after warm-up; the table reports the median time of each, the ratio of the
medians and the median of the per-rep ratios. Target: ours <= 1.10 x baseline.

    python tools/bench_losses.py                       # B = 4096, D = 128, fp32, 2 threads
    python tools/bench_losses.py --batch 8192 --reps 9 --out runs/bench/losses.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.losses import info_nce  # noqa: E402

TARGET = 1.10


def _step(fn, q: torch.Tensor, k: torch.Tensor) -> float:
    q.grad = k.grad = None
    t0 = time.perf_counter()
    loss = fn(q, k)
    loss.backward()
    if q.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run(batch: int, dim: int, reps: int, warmup: int, threads: int, temperature: float, device: str) -> dict:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, dim, generator=g).to(device).requires_grad_()
    k = torch.randn(batch, dim, generator=g).to(device).requires_grad_()
    labels = torch.arange(batch, device=device)

    def ours(q, k):
        return info_nce(q, k, temperature=temperature)

    def baseline(q, k):
        return F.cross_entropy(F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / temperature, labels)

    # same numbers (fp32 rounding aside) before timing anything
    with torch.no_grad():
        diff = abs(float(ours(q, k)) - float(baseline(q, k)))
    for _ in range(warmup):
        _step(ours, q, k)
        _step(baseline, q, k)
    t_ours, t_base = [], []
    for r in range(reps):
        # alternate which goes first so neither always runs on a "warmer" machine state
        if r % 2 == 0:
            t_ours.append(_step(ours, q, k))
            t_base.append(_step(baseline, q, k))
        else:
            t_base.append(_step(baseline, q, k))
            t_ours.append(_step(ours, q, k))
    m_ours, m_base = statistics.median(t_ours), statistics.median(t_base)
    return {
        "batch": batch, "dim": dim, "threads": threads, "reps": reps, "device": device,
        "ours_s": m_ours, "baseline_s": m_base, "ratio": m_ours / m_base,
        "ratio_paired": statistics.median(a / b for a, b in zip(t_ours, t_base)),
        "min_ratio": min(t_ours) / min(t_base), "loss_diff": diff,
    }


def to_markdown(res: dict) -> str:
    verdict = "yes" if res["ratio"] <= TARGET else "no"
    cpu = platform.processor() or platform.machine()
    return "\n".join([
        "# Dense `info_nce` vs hand-written cross-entropy InfoNCE (forward + backward)",
        "",
        f"`python tools/bench_losses.py --batch {res['batch']} --dim {res['dim']} --reps {res['reps']} "
        f"--threads {res['threads']}`; torch {torch.__version__}, {res['device']} ({cpu}), fp32, "
        f"`torch.set_num_threads({res['threads']})`; the two implementations alternate within one process.",
        "",
        "| B | D | ours median (s) | baseline median (s) | ratio of medians | median per-rep ratio | "
        "ratio of minima | target <= 1.10 met | abs loss diff |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {res['batch']} | {res['dim']} | {res['ours_s']:.4f} | {res['baseline_s']:.4f} | {res['ratio']:.3f} | "
        f"{res['ratio_paired']:.3f} | {res['min_ratio']:.3f} | {verdict} | {res['loss_diff']:.2e} |",
        "",
        "Baseline: `F.cross_entropy(F.normalize(q) @ F.normalize(k).T / t, arange(B))`. "
        "Ours: `core.losses.info_nce(q, k, temperature=t)` (dense engine path).",
        "",
    ])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/bench/losses.md")
    args = p.parse_args(argv)
    res = run(args.batch, args.dim, args.reps, args.warmup, args.threads, args.temperature, args.device)
    md = to_markdown(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(md)
    print(f"ratio (ours / baseline): {res['ratio']:.3f}  (target <= {TARGET})  -> {out}")
    return res


if __name__ == "__main__":
    main()
