"""The road-following baseline (apps/tracking/road.py) on small hand-made events of exact helices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apps.tracking.metrics import trackml_score
from apps.tracking.road import RoadConfig, find_seeds, fit_circle, road_tracks, tune_road
from core.app import InputError

RADII = (32.0, 72.0, 116.0, 172.0, 260.0, 360.0, 500.0, 660.0, 820.0, 1020.0)
B = 2.0


def helix_hits(pt: float, phi0: float, q: int, cot: float, z0: float = 0.0, radii=RADII) -> np.ndarray:
    """Exact crossings of a helix from the beam line (x = y = 0, z = z0) with cylinders: a circle of radius
    R = pT / (0.3 B) through the origin, phi(r) = phi0 - q asin(r / 2R), z = z0 + cot * 2R asin(r / 2R)."""
    R = 1000.0 * pt / (0.3 * B)
    out = []
    for r in radii:
        if r >= 2 * R:
            break
        a = math.asin(r / (2 * R))
        phi = phi0 - q * a
        out.append((r * math.cos(phi), r * math.sin(phi), z0 + cot * 2 * R * a))
    return np.array(out)


def event(particles: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xyz, pid, srf = [], [], []
    for i, p in enumerate(particles, start=1):
        h = helix_hits(*p)
        xyz.append(h)
        pid += [i] * len(h)
        srf += [int(np.argmin(np.abs(np.array(RADII) - math.hypot(x, y)))) for x, y, _ in h]
    return np.concatenate(xyz), np.array(pid), np.array(srf)


PARTICLES = [(0.5, 0.3, 1, 0.2, 10.0), (1.0, 1.5, -1, -0.5, -30.0), (3.0, 2.8, 1, 1.0, 0.0),
             (0.8, -2.0, -1, 0.0, 50.0), (10.0, -0.7, 1, -1.2, 5.0), (0.35, -1.2, 1, 0.4, -5.0)]


def same_partition(labels: np.ndarray, pid: np.ndarray) -> bool:
    """Every particle is one whole track and every track one particle."""
    pairs = set(zip(labels.tolist(), pid.tolist()))
    return len(pairs) == len(set(labels.tolist())) == len(set(pid.tolist()))


def test_fit_circle_recovers_a_known_circle() -> None:
    a = np.linspace(0.3, 1.4, 7)
    x, y = 400.0 + 2500.0 * np.cos(a), -900.0 + 2500.0 * np.sin(a)
    cx, cy, r = fit_circle(x, y)
    assert (cx, cy, r) == pytest.approx((400.0, -900.0, 2500.0), rel=1e-9, abs=1e-6)


def test_perfect_helices_are_found_completely() -> None:
    xyz, pid, srf = event(PARTICLES)
    labels = road_tracks(xyz, srf, RoadConfig(bfield=B))
    assert (labels > 0).all()  # every hit on a track
    assert same_partition(labels, pid)
    assert trackml_score(labels, pid, np.ones(len(pid)) / len(pid)) == pytest.approx(1.0)


def test_works_without_surface_ids() -> None:
    xyz, pid, _ = event(PARTICLES[:3])
    labels = road_tracks(xyz, None, RoadConfig(bfield=B))
    assert same_partition(labels, pid)


def test_noise_hit_off_the_road_is_not_picked_and_the_gap_is_bridged() -> None:
    """The particle has no hit on the 500 mm layer; a noise hit sits there 15 mm (rphi) off its road. The track
    must skip it and still reach its outer hits; a noise hit far away stays unassigned too."""
    radii = tuple(r for r in RADII if r != 500.0)
    good = helix_hits(1.0, 0.4, 1, 0.3, radii=radii)
    on_road = helix_hits(1.0, 0.4, 1, 0.3, radii=(500.0,))[0]
    phi = math.atan2(on_road[1], on_road[0]) + 15.0 / 500.0
    noise = np.array([[500.0 * math.cos(phi), 500.0 * math.sin(phi), on_road[2]], [-300.0, 100.0, 700.0]])
    xyz = np.concatenate([good, noise])
    labels = road_tracks(xyz, None, RoadConfig(bfield=B))
    assert (labels[: len(good)] == labels[0]).all() and labels[0] > 0
    assert (labels[len(good):] == 0).all()
    # the same noise hit exactly on the road is taken (the window works, it is not a blanket refusal)
    xyz[len(good)] = on_road
    assert road_tracks(xyz, None, RoadConfig(bfield=B))[len(good)] == labels[0]


def test_seeds_respect_the_curvature_bound_and_the_beam_line() -> None:
    # a 0.2 GeV track (R = 333 mm) is below pt_min = 0.5: no seed; above it at pt_min = 0.15
    xyz, _, srf = event([(0.2, 0.0, 1, 0.1, 0.0)])
    assert len(find_seeds(xyz, srf, RoadConfig(bfield=B, pt_min=0.5))) == 0
    assert len(find_seeds(xyz, srf, RoadConfig(bfield=B, pt_min=0.15))) > 0
    # a track from z0 = 600 mm fails the beam-line cut of 200 mm
    xyz, _, srf = event([(2.0, 0.0, 1, 0.1, 600.0)])
    assert len(find_seeds(xyz, srf, RoadConfig(bfield=B, z0_max=200.0))) == 0
    assert len(find_seeds(xyz, srf, RoadConfig(bfield=B, z0_max=800.0))) > 0


def test_tune_road_picks_the_best_variant_on_training_events() -> None:
    xyz, pid, srf = event(PARTICLES)
    w = np.ones(len(pid)) / len(pid)
    best, scores = tune_road([(xyz, srf, pid, w)], RoadConfig(bfield=B),
                             grid=(({"pt_min": 5.0},), ({"win_xy": 0.01, "win_z": 0.01}, {"min_hits": 3})))
    assert scores["default"] == pytest.approx(1.0) and scores["pt_min=5"] < 0.5  # loses the soft tracks
    assert scores["win_xy=0.01,win_z=0.01"] == pytest.approx(1.0)  # exact helices: tiny windows suffice
    assert best == RoadConfig(bfield=B)  # ties keep the current cuts


def test_bad_input_is_refused() -> None:
    with pytest.raises(InputError, match="shape"):
        road_tracks(np.zeros((5, 2)))
    with pytest.raises(InputError, match="win_xy"):
        road_tracks(np.zeros((5, 3)), None, RoadConfig(win_xy=-1.0))
