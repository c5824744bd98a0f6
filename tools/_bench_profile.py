"""Where the time of our tiled path goes (companion of :mod:`tools.bench_negatives`).

``python -m tools._bench_profile paired --loss clip --batch 8192 --dim 128 --rounds 5 \
        --variants ours_dense,ours_tiled@1024x4096,open_clip``
    times the implementations *interleaved in one process* (dense, tiled, peer, dense, tiled, ...), so a
    slow drift of the machine's load hits all of them alike; prints the median of each and the median of
    the per-round ratios to the first variant. Wall time, 2 threads. (Time only: memory needs the fresh
    processes of :mod:`tools.bench_negatives`.)

``python -m tools._bench_profile ops --loss clip --batch 8192 --dim 128 [--tile 1024x4096]``
    ``torch.profiler`` table (self CPU time per operator) of one forward+backward of the dense and of the
    tiled path, plus a forward-only / backward-only split.

``python -m tools._bench_profile tiles --loss clip --batch 8192 --dim 128``
    tiled time for several tile shapes, interleaved with dense.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tools._bench_worker import build


def _timed(fn, inputs) -> tuple[float, float]:
    for x in inputs:
        x.grad = None
    t0 = time.perf_counter()
    loss = fn()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def paired(loss: str, B: int, D: int, rounds: int, variants: dict) -> None:
    fns = {}
    for name, (who, tile) in variants.items():
        fns[name] = build(f"{who}:{loss}", B, D, tile)
    for fn, inputs in fns.values():  # warm-up
        _timed(fn, inputs)
    res = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (fn, inputs) in fns.items():
            res[name].append(_timed(fn, inputs))
    base = next(iter(res))
    print(f"loss={loss} B={B} D={D} rounds={rounds} threads={torch.get_num_threads()}")
    print(f"{'variant':<28} {'fwd+bwd med s':>13} {'fwd med':>8} {'bwd med':>8} {'x first (med of per-round)':>27}")
    for name, ts in res.items():
        tot = [f + b for f, b in ts]
        ratios = [t / (f0 + b0) for t, (f0, b0) in zip(tot, res[base])]
        print(f"{name:<28} {statistics.median(tot):13.3f} {statistics.median(f for f, _ in ts):8.3f} "
              f"{statistics.median(b for _, b in ts):8.3f} {statistics.median(ratios):27.2f}")


def ops(loss: str, B: int, D: int, tile, row_limit: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for who in ("ours_dense", "ours_tiled"):
        fn, inputs = build(f"{who}:{loss}", B, D, tile)
        _timed(fn, inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            f, b = _timed(fn, inputs)
        print(f"\n=== {who} ({loss}, B={B}, D={D}, tile={tile if who == 'ours_tiled' else None}): "
              f"forward {f:.3f} s, backward {b:.3f} s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit, max_name_column_width=40))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("paired", "ops", "tiles"))
    p.add_argument("--loss", default="clip")
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tile", default="1024x4096")
    p.add_argument("--variants", default="ours_dense,ours_tiled@1024x4096",
                   help="paired: comma list of impl[@RxC] (impl as in tools._bench_worker, without the loss)")
    p.add_argument("--tiles", default="256x1024,512x2048,1024x4096,2048x8192")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=25)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    def tt(s):
        r, _, c = s.partition("x")
        return int(r), int(c or r)

    if a.what == "paired":
        v = {}
        for tok in a.variants.split(","):
            who, _, t = tok.partition("@")
            v[tok] = (who, tt(t) if t else tt(a.tile))
        paired(a.loss, a.batch, a.dim, a.rounds, v)
    elif a.what == "tiles":
        v = {"dense": ("ours_dense", None)}
        v.update({f"tiled {t}": ("ours_tiled", tt(t)) for t in a.tiles.split(",")})
        paired(a.loss, a.batch, a.dim, a.rounds, v)
    else:
        ops(a.loss, a.batch, a.dim, tt(a.tile), a.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
