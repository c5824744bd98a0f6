"""The helix simulator: physics (radius = pT / 0.3 B, straight r-z lines, surfaces), noise, weights, format."""

from __future__ import annotations

import numpy as np
import pytest

from apps.tracking.data import SHARED, read_event, write_event
from apps.tracking.simulate import Geometry, SimConfig, helix_radius_mm, simulate_event, trackml_weights
from core.app import InputError


@pytest.fixture(scope="module")
def geo() -> Geometry:
    return Geometry.from_file(SHARED / "detectors.csv.gz")


def ideal(**kw) -> SimConfig:
    return SimConfig(pileup=2, hit_resolution=0.0, noise_fraction=0.0, multiple_scattering=False,
                     double_hit_rate=0.0, secondary_fraction=0.0, pitch_resolution=False, **kw)


def fit_circle(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) least-squares circle: centre and radius."""
    a = np.stack([x, y, np.ones_like(x)], axis=1)
    sol, *_ = np.linalg.lstsq(a, x ** 2 + y ** 2, rcond=None)
    cx, cy = sol[0] / 2, sol[1] / 2
    return cx, cy, float(np.sqrt(sol[2] + cx ** 2 + cy ** 2))


def test_helix_radius_formula() -> None:
    assert helix_radius_mm(1.0, 2.0) == pytest.approx(1000 / 0.6)  # 1 GeV in 2 T: 1.667 m
    assert helix_radius_mm(0.3, 1.0) == pytest.approx(1000.0)


def test_tracks_are_helices_with_the_right_radius(geo: Geometry) -> None:
    ev = simulate_event(geo, ideal(pt_min=0.5, pt_max=3.0), seed=4)
    t, parts = ev.truth, ev.particles.set_index("particle_id")
    checked = 0
    for pid, g in t.groupby("particle_id"):
        if len(g) < 5:
            continue
        p = parts.loc[pid]
        pt = np.hypot(p.px, p.py)
        x = np.concatenate([[p.vx], g.tx.to_numpy()])
        y = np.concatenate([[p.vy], g.ty.to_numpy()])
        cx, cy, radius = fit_circle(x, y)
        assert radius == pytest.approx(helix_radius_mm(pt, 2.0), rel=2e-3)
        # positive particles turn clockwise: the centre is to the right of the initial direction
        side = np.sign(p.px * (cy - p.vy) - p.py * (cx - p.vx))
        assert side == -p.q
        # z grows linearly with the transverse arc length, slope pz / pT
        ang = np.unwrap(np.arctan2(y - cy, x - cx))
        s_t = np.abs(ang - ang[0]) * radius
        z = np.concatenate([[p.vz], g.tz.to_numpy()])
        assert np.allclose(z - p.vz, s_t * p.pz / pt, atol=0.05 + 1e-3 * np.abs(z).max())
        # momentum at each hit has the initial pT (no scattering)
        assert np.allclose(np.hypot(g.tpx, g.tpy), pt, rtol=1e-6)
        checked += 1
    assert checked >= 20


def test_hits_lie_on_the_detector_surfaces(geo: Geometry) -> None:
    ev = simulate_event(geo, SimConfig(pileup=3, double_hit_rate=0.0), seed=1)  # (double hits: see test_simulate_*)
    h = ev.hits
    r = np.hypot(h.x, h.y)
    for (vol, lay), g in h.groupby(["volume_id", "layer_id"]):
        s = int(np.flatnonzero((geo.volume == vol) & (geo.layer == lay))[0])
        coord = g.z if geo.is_disc[s] else r[g.index]
        assert np.allclose(coord, geo.pos[s], atol=1e-6)
    # each module id exists in detectors.csv for its layer
    assert h.module_id.min() >= 1


def test_noise_weights_and_determinism(geo: Geometry) -> None:
    cfg = SimConfig(pileup=4, noise_fraction=0.2)
    ev = simulate_event(geo, cfg, seed=7)
    pid, w = ev.particle_ids(), ev.weights()
    assert abs((pid == 0).mean() - 0.2) < 0.03
    assert w.sum() == pytest.approx(1.0)
    n_of = ev.truth.groupby("particle_id").size()
    small = n_of.index[(n_of <= 3)].to_numpy()
    assert (w[pid == 0] == 0).all() and (w[np.isin(pid, small)] == 0).all()
    again = simulate_event(geo, cfg, seed=7)
    assert again.hits.equals(ev.hits) and again.truth.equals(ev.truth)
    assert not simulate_event(geo, cfg, seed=8).hits.equals(ev.hits)
    # particles' nhits agrees with the truth table
    counts = ev.truth[ev.truth.particle_id > 0].groupby("particle_id").size()
    nh = ev.particles.set_index("particle_id").nhits
    assert (nh.loc[counts.index] == counts).all()


def test_multiple_scattering_keeps_momentum_and_bends_tracks(geo: Geometry) -> None:
    ev = simulate_event(geo, SimConfig(pileup=2, noise_fraction=0.0, material=0.05), seed=2)
    t = ev.truth.merge(ev.particles, on="particle_id")
    p_hit = np.sqrt(t.tpx ** 2 + t.tpy ** 2 + t.tpz ** 2)
    p0 = np.sqrt(t.px ** 2 + t.py ** 2 + t.pz ** 2)
    assert np.allclose(p_hit, p0, rtol=1e-9)
    assert not np.allclose(np.hypot(t.tpx, t.tpy), np.hypot(t.px, t.py), rtol=1e-4)


def test_weights_recipe_by_hand() -> None:
    pid = np.array([1] * 5 + [2] * 3 + [0])
    order = np.array([0, 1, 2, 3, 4, 0, 1, 2, 0])
    nh = np.array([5] * 5 + [3] * 3 + [0])
    pt = np.array([3.0] * 5 + [5.0] * 3 + [0.0])
    w = trackml_weights(pid, order, nh, pt)
    raw = np.array([10, 8, 6, 8, 10], dtype=float)  # ends weigh most; pT >= 3 GeV has pT weight 1
    assert np.allclose(w[:5], raw / raw.sum()) and (w[5:] == 0).all()


def test_write_read_roundtrip(tmp_path, geo: Geometry) -> None:
    ev = simulate_event(geo, SimConfig(pileup=1), seed=3, name="event000000042")
    write_event(tmp_path / ev.name, ev)
    back = read_event(tmp_path / ev.name, require_truth=True)
    assert np.array_equal(back.hits.hit_id, ev.hits.hit_id)
    assert np.allclose(back.hits[["x", "y", "z"]], ev.hits[["x", "y", "z"]], rtol=1e-5, atol=1e-3)
    assert np.array_equal(back.particle_ids(), ev.particle_ids())


def test_bad_settings_are_refused() -> None:
    for bad in (dict(pileup=0), dict(pt_min=2, pt_max=1), dict(noise_fraction=1.0), dict(pt_alpha=1.0)):
        with pytest.raises(InputError):
            SimConfig(**bad).validate()
