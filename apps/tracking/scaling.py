"""Inference time and peak memory per event vs number of hits (``python -m apps.tracking scale``).

Events of growing pile-up are simulated (about 555 hits per unit of pile-up, so pile-up 200 is a full-size
~110k-hit TrackML event), then reconstructed by the trained pipeline. Peak memory is the resident-set size
sampled every 2 ms during the reconstruction, minus the resident size just before it (so it is the extra
memory one event needs; with a learned clusterer in the run directory, both builders run inside it). Times
are wall-clock seconds on this (possibly shared) CPU, the best of ``repeats``.
"""

from __future__ import annotations

import os
import threading
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from apps.tracking.data import find_detectors  # noqa: E402
from apps.tracking.simulate import Geometry, simulate_event  # noqa: E402
from core.app import InputError, Run, write_json  # noqa: E402
from core.app.files import save_figure  # noqa: E402

__all__ = ["scaling", "rss_bytes", "PeakRSS", "HITS_PER_PILEUP"]

HITS_PER_PILEUP = 555.0


def rss_bytes() -> int:
    """Current resident-set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakRSS:
    """Context manager sampling the resident size in a thread; ``.peak`` = max minus the size at entry."""

    def __init__(self, every: float = 0.002) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self.base = self._max = rss_bytes()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, rss_bytes())
            time.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self._max = max(self._max, rss_bytes())
        self.peak = self._max - self.base


def check_arguments(hits: list[int], repeats: int) -> None:
    if not hits or any(h < 100 for h in hits):
        raise InputError(f"--hits must list sizes >= 100, got {hits}")
    if repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {repeats}")


def scaling(run: Run, hits: list[int], repeats: int = 2) -> dict | None:
    """Measure on the main process and write ``scaling.json`` / ``scaling.png`` into the run directory; returns
    the rows (None on the other processes)."""
    from apps.tracking.evaluate import reconstruct
    from apps.tracking.train import _quiet, load_clusterer, load_models, model_dir

    cfg = run.settings
    _quiet()
    check_arguments(hits, repeats)
    embed, gnn, tuning = load_models(cfg, model_dir(run))
    clusterer = load_clusterer(cfg, model_dir(run))  # the learned builder is timed too when the run has one
    if not run.is_main:
        return None
    geo = Geometry.from_file(find_detectors(cfg.data))
    rows = []
    for target in hits:
        ev = simulate_event(geo, cfg.sim(max(target / HITS_PER_PILEUP, 0.1)), seed=3_000_000 + target)
        xyz = ev.hits[["x", "y", "z"]].to_numpy(dtype=np.float64)
        best, peak, stages, best_learned = float("inf"), 0, {}, None
        for _ in range(repeats):
            with PeakRSS() as mem:
                rec = reconstruct(embed, gnn, xyz, cfg.k, tuning["edge_cut"], cfg.min_hits, tuning["cc_cut"],
                                  clusterer, cfg.cluster_candidates, cfg.cluster_cut, cfg.cluster_hops)
            peak = max(peak, mem.peak)
            if rec["seconds"] < best:
                best, stages, best_learned = rec["seconds"], rec["stages"], rec.get("seconds_learned")
        row = {"hits": len(xyz), "seconds": best, "seconds_per_10k_hits": best / len(xyz) * 1e4,
               "peak_mem_mb": peak / 2 ** 20, "edges": int(rec["edges"].shape[1]),
               **{f"s_{k}": v for k, v in stages.items()},
               **({"seconds_learned": best_learned} if best_learned is not None else {})}
        rows.append(row)
        run.log(f"{row['hits']:>7d} hits: {best:7.2f} s ({row['seconds_per_10k_hits']:.2f} s / 10k hits), "
              f"peak +{row['peak_mem_mb']:.0f} MB, {row['edges']} edges; " +
              ", ".join(f"{k} {v:.2f}s" for k, v in stages.items()))
    root = run.run_dir.path
    write_json(root / "scaling.json", {"rows": rows, "threads": _threads(), "k": cfg.k})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    h = [r["hits"] for r in rows]
    for key in ("embed", "graph", "gnn", "build", "cluster"):
        if f"s_{key}" in rows[0]:
            a1.plot(h, [r[f"s_{key}"] for r in rows], "o-", label=key if key != "build" else "build (chaining)")
    a1.plot(h, [r["seconds"] for r in rows], "k*-", label="total (chaining)")
    if "seconds_learned" in rows[0]:
        a1.plot(h, [r["seconds_learned"] for r in rows], "k^--", label="total (learned clusterer)")
    a2.plot(h, [r["peak_mem_mb"] for r in rows], "o-")
    for a, yl in ((a1, "seconds per event"), (a2, "peak extra memory [MB]")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("hits per event")
        a.set_ylabel(yl)
        a.grid(alpha=0.3)
    a1.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, root / "scaling.png")
    run.log(f"scaling: {root / 'scaling.json'}")
    return {"rows": rows}


def _threads() -> int:
    import torch

    return torch.get_num_threads()
