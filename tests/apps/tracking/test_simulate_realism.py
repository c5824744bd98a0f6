"""The simulator's realism features: pitch-sized hit errors, double hits, secondaries, pT and eta spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apps.tracking.data import SHARED
from apps.tracking.simulate import Geometry, SimConfig, event_statistics, simulate_event

NONE = dict(hit_resolution=0.0, noise_fraction=0.0, multiple_scattering=False, double_hit_rate=0.0,
            secondary_fraction=0.0, pitch_resolution=False)


@pytest.fixture(scope="module")
def geo() -> Geometry:
    return Geometry.from_file(SHARED / "detectors.csv.gz")


def test_pitch_resolution_per_layer(geo: Geometry) -> None:
    """Hit minus true position: sigma = pitch / sqrt(12) of detectors.csv (pixels 0.05 mm in r-phi; long strips
    10.4-10.8 mm along z in barrel volume 17)."""
    ev = simulate_event(geo, SimConfig(pileup=6, **{**NONE, "pitch_resolution": True}), seed=3)
    h, t = ev.hits, ev.truth
    dz = (h.z - t.tz).to_numpy()
    rphi = (np.hypot(h.x, h.y) * np.arctan2(h.y, h.x) - np.hypot(t.tx, t.ty) * np.arctan2(t.ty, t.tx)).to_numpy()
    ok = np.abs(rphi) < 50  # the phi = +-pi seam
    v17, v8 = (h.volume_id == 17).to_numpy(), (h.volume_id == 8).to_numpy()
    assert dz[v17].std() == pytest.approx(10.6 / math.sqrt(12), rel=0.15)
    assert rphi[v8 & ok].std() == pytest.approx(0.05 / math.sqrt(12), rel=0.15)
    assert rphi[v17 & ok].std() == pytest.approx(0.12 / math.sqrt(12), rel=0.15)


def test_double_hits_share_and_geometry(geo: Geometry) -> None:
    ev = simulate_event(geo, SimConfig(pileup=4, **{**NONE, "double_hit_rate": 0.3}), seed=5)
    d = ev.hits.assign(pid=ev.particle_ids())
    g = d.groupby(["pid", "volume_id", "layer_id"])
    assert (g.size() > 1).mean() == pytest.approx(0.3, abs=0.04)
    # the two hits of a pair are 2-6 mm apart in r (barrel) or |z| (discs): a little further along the track
    pairs = g.filter(lambda x: len(x) == 2)
    discs = set(zip(geo.volume[geo.is_disc], geo.layer[geo.is_disc]))
    gaps = []
    for (_, vol, lay), x in list(pairs.groupby(["pid", "volume_id", "layer_id"]))[:300]:
        gaps.append(np.ptp(x.z) if (vol, lay) in discs else np.ptp(np.hypot(x.x, x.y)))
    assert np.quantile(gaps, 0.05) > 1.9 and np.quantile(gaps, 0.95) < 6.5
    # the particles table counts them
    counts = d[d.pid > 0].groupby("pid").size()
    assert (ev.particles.set_index("particle_id").nhits.loc[counts.index] == counts).all()


def test_secondaries_and_spectra(geo: Geometry) -> None:
    cfg = SimConfig(pileup=10, **{**NONE, "secondary_fraction": 0.25}, pt_median=0.5, pt_sigma=0.6,
                    pt_min=0.01, eta_sigma=1.5, eta_max=5.0)
    ev = simulate_event(geo, cfg, seed=9)
    p = ev.particles
    vr = np.hypot(p.vx, p.vy)
    assert (vr > 1.0).mean() == pytest.approx(0.25 * math.exp(-1 / 100), abs=0.04)  # exponential, mean 100 mm
    pt = np.hypot(p.px, p.py)
    assert np.median(pt) == pytest.approx(0.5, rel=0.08)
    assert np.log(pt).std() == pytest.approx(0.6, rel=0.08)
    eta = np.arcsinh(p.pz / pt)
    assert eta.std() == pytest.approx(1.5, rel=0.08)


def test_event_statistics_by_hand(geo: Geometry) -> None:
    ev = simulate_event(geo, SimConfig(pileup=3, **{**NONE, "noise_fraction": 0.2}), seed=2)
    st = event_statistics(ev)
    pid = ev.particle_ids()
    assert st["hits"] == len(pid) and st["noise"] == pytest.approx((pid == 0).mean())
    assert st["particles"] == len(set(pid) - {0}) and st["double_hits"] == 0.0 and st["secondaries"] == 0.0
    assert st["strip_z_error"] == pytest.approx(0.0, abs=1e-9)  # no smearing, hits on the true points


def test_simulate_compare_prints_real_vs_simulated(tmp_path, capsys) -> None:
    from apps.tracking.__main__ import main

    assert main(["simulate", "--output", str(tmp_path), "--events", "1", "--pileup", "1", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "| statistic | trackml-subset (1 events) | simulated (1 events) |" in out
    assert "| hits per event | 5,527 |" in out  # the embedded real event's size
