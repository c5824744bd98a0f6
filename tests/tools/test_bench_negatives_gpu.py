"""The GPU benchmark's table (rendered from records) and its refusal without a GPU; the sweep itself needs CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from tools import bench_negatives_gpu as bench
from tools._bench_worker import build


def test_table_and_ratios_from_records(tmp_path):
    recs = [
        {"impl": "ours_dense:clip", "B": 4096, "D": 128, "device": "Fake", "status": "ok", "median_s": 0.010,
         "delta_peak_mb": 400.0},
        {"impl": "ours_tiled:clip", "B": 4096, "D": 128, "device": "Fake", "status": "ok", "median_s": 0.025,
         "delta_peak_mb": 20.0},
        {"impl": "open_clip:clip", "B": 4096, "D": 128, "device": "Fake", "status": "ok", "median_s": 0.020,
         "delta_peak_mb": 500.0},
        {"impl": "ours_dense:clip", "B": 262144, "D": 128, "status": "oom"},
    ]
    out = tmp_path / "r.jsonl"
    out.write_text("\n".join(json.dumps(r) for r in recs))
    md, png = tmp_path / "t.md", tmp_path / "t.png"
    assert bench.main(["--render-only", "--out", str(out), "--md", str(md), "--png", str(png)]) == 0
    text = md.read_text()
    assert "| clip | ours_dense | 10.0 ms / 400 MB | oom |" in text
    assert "tiled/dense time 2.50x, memory 5.0 %" in text
    assert "dense/fastest peer (open_clip) 0.50x" in text
    assert png.is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(tmp_path, capsys):
    assert bench.main(["--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_worker_inputs_follow_the_device_argument():
    fn, (z1, z2) = build("ours_dense:clip", 8, 4, (4, 4), device="cpu")
    loss = fn()
    loss.backward()
    assert z1.device.type == "cpu" and z1.grad is not None and torch.isfinite(loss)


def test_sweep_reuses_only_peer_points_and_filters_implementations(tmp_path, monkeypatch):
    calls = []

    def fake_point(impl, B, D, tile, reps, warmup=1):
        calls.append((impl, B, D))
        return {"impl": impl, "B": B, "D": D, "status": "ok", "median_s": 0.001, "delta_peak_mb": 1.0}

    monkeypatch.setattr(bench, "run_point", fake_point)
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join(json.dumps(r) for r in [
        {"impl": "open_clip:clip", "B": 64, "D": 8, "status": "ok", "median_s": 0.5, "delta_peak_mb": 2.0},
        {"impl": "ours_dense:clip", "B": 64, "D": 8, "status": "ok", "median_s": 0.5, "delta_peak_mb": 2.0},
        {"impl": "open_clip:clip", "B": 128, "D": 8, "status": "skipped_budget"},
    ]))
    args = bench.argparse.Namespace(tile="4x4", batches="64,128", dims="8", out=str(tmp_path / "new.jsonl"),
                                    budget_s=1e9, point_s=1e9, long_s=1e9, reps=1,
                                    impls="ours_dense:clip,open_clip:clip", reuse=str(old))
    recs = bench.sweep(args)
    # our point is rerun (our code changes between leases), the peer's measured point is carried over
    assert sorted(calls) == [("open_clip:clip", 128, 8), ("ours_dense:clip", 64, 8), ("ours_dense:clip", 128, 8)]
    assert {r["impl"].split(":")[1] for r in recs} == {"clip"} and len(recs) == 4
    reused = [r for r in recs if r["impl"] == "open_clip:clip" and r["B"] == 64]
    assert reused[0]["median_s"] == 0.5
    # the new file holds only what this lease measured
    assert len((tmp_path / "new.jsonl").read_text().splitlines()) == 3


def test_sweep_order_auto_reuse_and_long_points(tmp_path, monkeypatch):
    """Batch-major order (both widths at a batch before the next batch); 'auto' reuses the tiled point when it
    resolves to the same tiles; points estimated above --long-s run one pass without warm-up."""
    calls = []

    def fake_point(impl, B, D, tile, reps, warmup=1):
        calls.append((impl, B, D, reps, warmup))
        rec = {"impl": impl, "B": B, "D": D, "status": "ok", "median_s": 1e-2 * (B / 64) ** 2, "delta_peak_mb": 1.0}
        if impl.startswith("ours_tiled"):
            rec["tile"] = f"{tile[0]}x{tile[1]}"
        return rec

    import core.negatives

    monkeypatch.setattr(bench, "run_point", fake_point)
    # the dense pass 'fits' below 1000 rows: auto is dense there and tiles (4 x 4, like --tile) above
    monkeypatch.setattr(core.negatives, "resolve_tile_size", lambda t, n, m, *a, **k: None if n < 1000 else (4, 4))
    args = bench.argparse.Namespace(tile="4x4", batches="64,4096", dims="8,16", out=str(tmp_path / "new.jsonl"),
                                    budget_s=1e9, point_s=1e9, long_s=5.0, reps=3,
                                    impls="ours_tiled:clip,ours_auto:clip", reuse="")
    recs = bench.sweep(args)
    assert [(r["B"], r["D"]) for r in recs] == [(64, 8)] * 2 + [(64, 16)] * 2 + [(4096, 8)] * 2 + [(4096, 16)] * 2
    assert calls == [("ours_tiled:clip", 64, 8, 3, 1), ("ours_auto:clip", 64, 8, 3, 1),
                     ("ours_tiled:clip", 64, 16, 3, 1), ("ours_auto:clip", 64, 16, 3, 1),
                     ("ours_tiled:clip", 4096, 8, 1, 0), ("ours_tiled:clip", 4096, 16, 1, 0)]
    auto = [r for r in recs if r["impl"] == "ours_auto:clip" and r["B"] == 4096]
    assert all(r["auto_choice"] == "tiled 4x4" and "reused" in r["note"] for r in auto)
