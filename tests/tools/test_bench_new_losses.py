"""Smoke test of ``tools/bench_new_losses.py`` at tiny sizes: output structure, and the benchmark's naive float32
formulas agree with ``core.losses`` (dense and tiled), so the timed pairs compute the same number."""

from __future__ import annotations

import math

import pytest
import torch

from tools import bench_new_losses as bench


@pytest.mark.parametrize("case", list(bench.CORE))
def test_naive_formula_matches_core(case):
    z = bench.make_inputs(case, 80, 16, seed=3)
    ref = bench.NAIVE[case](z)
    got = bench.CORE[case](z, False)
    assert math.isfinite(float(ref.detach()))
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5), (case, float(got), float(ref))
    got.backward()
    g_core = [x.grad.clone() for x in z.values() if isinstance(x, torch.Tensor) and x.requires_grad]
    bench._grads_clear(z)
    ref.backward()
    g_ref = [x.grad for x in z.values() if isinstance(x, torch.Tensor) and x.requires_grad]
    for a, b in zip(g_core, g_ref):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), case
    if bench.TILES[case]:
        old = bench.TILE
        bench.TILE = (64, 64)  # B = 80: 2 x 2 tiles or more
        try:
            tiled = bench.CORE[case](z, True)
        finally:
            bench.TILE = old
        assert torch.allclose(tiled, ref, rtol=1e-4, atol=1e-5), case


def test_speed_output_structure():
    res = bench.main(["--mode", "speed", "--batch", "32", "--dim", "8", "--reps", "1", "--warmup", "0",
                      "--cases", "auc_contrastive", "circle_loss"])
    rows = res["rows"]
    assert [r["case"] for r in rows] == ["auc_contrastive", "circle_loss"]
    for r in rows:
        assert r["ours_s"] > 0 and r["naive_s"] > 0
        assert r["ratio"] == pytest.approx(r["ours_s"] / r["naive_s"])
        assert r["abs_diff"] < 1e-4
    assert "| `auc_contrastive` | 32 |" in res["markdown"]


def test_memory_worker_structure():
    r = bench.worker("kernel_uniformity", 32, 8, True, cap_gib=0)
    assert r["status"] == "ok" and r["tiled"] and r["tile"] == list(bench.TILE)
    assert math.isfinite(r["loss"]) and isinstance(r["extra_peak_mb"], float)  # in-process: may be < 0
    md = bench.memory_md([r, dict(r, tiled=False, tile=None, extra_peak_mb=100.0)],
                         type("A", (), {"mem_batch": [32], "dim": 8, "threads": 1, "cap_gib": 0.0})())
    assert "| `kernel_uniformity` (V = 2) | 32 |" in md
