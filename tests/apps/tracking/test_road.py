"""The road-following baseline (apps/tracking/road.py) on small hand-made events of exact helices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apps.tracking.metrics import trackml_score
from apps.tracking.road import (
    EdgeScores,
    RoadConfig,
    extend_tracks,
    fill_leftovers,
    find_seeds,
    fit_circle,
    helix_quality,
    hybrid_tracks,
    road_tracks,
    tune_hybrid,
    tune_road,
)
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


def test_edge_scores_look_up_pairs_in_either_direction() -> None:
    es = EdgeScores(10, np.array([[0, 3, 5, 3], [3, 0, 9, 7]]), np.array([0.2, 0.6, 0.9, 0.1]))
    got = es(np.array([3, 0, 9, 7, 1, 2]), np.array([0, 3, 5, 3, 2, 9]))
    # (0, 3) listed twice keeps the higher score; pairs that are no edge have none (NaN)
    assert got[:4] == pytest.approx([0.6, 0.6, 0.9, 0.1])
    assert np.isnan(got[4:]).all()
    assert np.isnan(EdgeScores(4, np.zeros((2, 0)), np.zeros(0))(0, 1))


def decoy_event() -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """One helix whose hit on the 360 mm layer is 1.5 mm off in z (still inside the road) and a noise hit
    exactly on the helix on that layer: the road takes the noise hit (nearer the prediction). GNN scores: 0.9 on
    the particle's consecutive pairs, 0.05 between the noise hit and every hit of the particle."""
    good = helix_hits(1.0, 0.4, 1, 0.3)
    layer = RADII.index(360.0)
    decoy = good[layer].copy()
    good[layer, 2] += 1.5
    xyz = np.concatenate([good, decoy[None]])
    n = len(good)
    srf = np.array(list(range(n)) + [layer])
    pairs = [(i, i + 1) for i in range(n - 1)] + [(i, n) for i in range(n)]
    edges = np.array(pairs).T
    scores = np.array([0.9] * (n - 1) + [0.05] * n)
    return xyz, srf, np.array([1] * n + [0]), n, edges, scores


def test_gnn_veto_keeps_the_road_off_a_low_score_hit() -> None:
    xyz, srf, pid, decoy, edges, scores = decoy_event()
    cfg = RoadConfig(bfield=B)
    plain = road_tracks(xyz, srf, cfg)
    assert plain[decoy] > 0 and plain[decoy] == plain[0]  # without the GNN the road takes the noise hit
    assert hybrid_tracks(xyz, srf, cfg, edges, scores, gnn_cut=0.0).tolist() == plain.tolist()  # no veto: same
    vetoed = hybrid_tracks(xyz, srf, cfg, edges, scores, gnn_cut=0.5)
    assert vetoed[decoy] == 0  # the edge to the noise hit scores 0.05 < 0.5: vetoed
    assert same_partition(vetoed[:decoy], pid[:decoy]) and vetoed[0] > 0  # the particle is one whole track
    # a candidate whose mean pair score is below track_cut is dropped
    assert (hybrid_tracks(xyz, srf, cfg, edges, scores, gnn_cut=0.5, track_cut=0.95) == 0).all()


def test_fill_leftovers_adds_chains_of_unused_hits_only() -> None:
    """Hits 0-4: a road track; 5-10: a free chain (6 hits); 11-13: a free 3-hit chain (too short); a high-score
    edge 4-5 joins the road track to the free chain and must not merge them."""
    xyz = np.array([[10.0 * (i + 1), 1.0 * i, 0.0] for i in range(14)])
    labels = np.array([1] * 5 + [0] * 9)
    pairs = [(i, i + 1) for i in range(13) if i != 10]
    edges = np.array(pairs).T
    scores = np.full(len(pairs), 0.9)
    out = fill_leftovers(labels, xyz, edges, scores, cut=0.5, min_hits=4)
    assert out[:5].tolist() == [1] * 5
    assert len(set(out[5:11].tolist())) == 1 and out[5] == 2
    assert out[11:].tolist() == [0, 0, 0]
    # cohesion: a low-score edge inside the chain (5-10, not chained) lowers its mean edge score to 0.75
    e2, s2 = np.concatenate([edges, [[5], [10]]], axis=1), np.append(scores, 0.0)
    assert fill_leftovers(labels, xyz, e2, s2, cut=0.5, min_hits=4, min_cohesion=0.7).tolist() == out.tolist()
    assert fill_leftovers(labels, xyz, e2, s2, cut=0.5, min_hits=4, min_cohesion=0.8).tolist() == labels.tolist()
    # edges below the cut are not chained: nothing is added
    assert fill_leftovers(labels, xyz, edges, np.full(len(pairs), 0.3), cut=0.5, min_hits=4).tolist() == \
        labels.tolist()


def test_helix_quality_separates_a_helix_from_a_merge() -> None:
    cfg = RoadConfig(bfield=B)
    a, b = helix_hits(1.0, 0.4, 1, 0.3), helix_hits(0.6, 1.2, -1, -0.2)
    assert helix_quality(a, cfg) < 0.01
    assert helix_quality(np.concatenate([a[:5], b[5:]]), cfg) > 1.0


def test_tune_hybrid_picks_the_veto_that_removes_a_fake_track() -> None:
    """A particle (pair scores 0.9) and a helix whose hits alternate between two particles (pair scores 0.05, no
    score weight): plain road following builds the helix into a fake track (no majority particle); the veto
    (gnn_cut 0.5) removes it at the same score, so it is chosen."""
    a, fake = helix_hits(1.0, 0.4, 1, 0.3), helix_hits(0.8, -2.0, -1, -0.4, 20.0)
    xyz = np.concatenate([a, fake])
    n = len(a)
    pid = np.array([1] * n + [2 + i % 2 for i in range(len(fake))])
    srf = np.concatenate([np.arange(n), np.arange(len(fake))])
    pairs = [(i, i + 1) for i in range(n - 1)] + [(n + i, n + i + 1) for i in range(len(fake) - 1)]
    scores = np.array([0.9] * (n - 1) + [0.05] * (len(fake) - 1))
    w = (pid == 1) / n
    grid = {"gnn_cut": (0.0, 0.5), "track_cut": (0.0,), "fill_cut": (None,), "fill_min_hits": (4,),
            "fill_quality": (None,), "fill_cohesion": (None,)}
    best, table = tune_hybrid([(xyz, srf, pid, w, np.array(pairs).T, scores)], RoadConfig(bfield=B), grid)
    assert best["gnn_cut"] == 0.5
    rows = list(table.values())
    assert rows[0]["fake_rate"] == pytest.approx(0.5) and rows[1]["fake_rate"] == 0.0
    assert rows[0]["trackml_score"] == pytest.approx(1.0) and rows[1]["trackml_score"] == pytest.approx(1.0)


def test_unassigned_road_hits_are_scored_as_one_hit_tracks():
    """Track id 0 (road following's unassigned hits) must not count as one large fake track: with the hits
    made singletons, two perfect tracks plus four unassigned hits of four different particles (noise and
    one-hit particles) give fake rate 0 (hand count), where the raw labels give one fake 4-hit track out of 3
    (1/3: no particle holds a majority of it)."""
    from apps.tracking.metrics import as_singletons, track_metrics

    pid = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0, 3, 4, 5])
    labels = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0])
    raw = track_metrics(labels, pid)
    assert raw["fake_rate"] == pytest.approx(1 / 3) and raw["n_tracks"] == 3
    alone = as_singletons(labels, labels == 0)
    assert len(np.unique(alone[labels == 0])) == 4 and (alone[labels > 0] == labels[labels > 0]).all()
    fixed = track_metrics(alone, pid)
    assert fixed["fake_rate"] == 0.0 and fixed["n_tracks"] == 2 and fixed["efficiency"] == 1.0


def test_extend_tracks_grows_a_stopped_track_into_a_true_one() -> None:
    """Particle 1: hits 0-9 on the x axis (10 ... 100 mm), of which the track (id 1) holds only 2-5: 4 of 10 hits,
    a fake track under the double majority. Particle 2: hits 10-14 on the y axis (70 ... 110 mm), a whole track
    (id 2). Noise hit 15 beyond hit 9 (edge score 0.2), a one-hit particle 16 at 65 mm (edge 5-16 scoring 0.6,
    below the true 5-6 at 0.9), and edge 5-12 scoring 0.95 to a hit already in track 2. Growing at cut 0.5 must
    take hits 6-9 outwards and 0-1 inwards, and nothing else: then both particles are found and no track is
    fake (hand count)."""
    from apps.tracking.metrics import as_singletons, track_metrics

    xyz = np.array([[10.0 * (i + 1), 0.0, 0.0] for i in range(10)] + [[0.0, 70.0 + 10 * i, 0.0] for i in range(5)]
                   + [[110.0, 0.0, 0.0], [65.0, 2.0, 0.0]])
    pid = np.array([1] * 10 + [2] * 5 + [0, 3])
    labels = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 0] + [2] * 5 + [0, 0])
    pairs = [(i, i + 1) for i in range(9)] + [(10 + i, 11 + i) for i in range(4)] + [(9, 15), (5, 16), (5, 12)]
    scores = np.array([0.9] * 9 + [0.9] * 4 + [0.2, 0.6, 0.95])
    edges = np.array(pairs).T
    before = track_metrics(as_singletons(labels, labels == 0), pid)
    assert before["fake_rate"] == pytest.approx(0.5) and before["efficiency"] == pytest.approx(0.5)
    out = extend_tracks(labels, xyz, edges, scores, 0.5)
    assert out.tolist() == [1] * 10 + [2] * 5 + [0, 0]
    after = track_metrics(as_singletons(out, out == 0), pid)
    assert after["fake_rate"] == 0.0 and after["efficiency"] == 1.0
    # edges in either direction of the list give the same tracks; a cut above every score changes nothing
    assert extend_tracks(labels, xyz, edges[::-1], scores, 0.5).tolist() == out.tolist()
    assert extend_tracks(labels, xyz, edges, scores, 0.96).tolist() == labels.tolist()
    # the first track grows first: a free hit both tracks could take goes to track 1
    lab2 = np.array([1, 1, 1, 1, 0, 2, 2, 2, 2, 0] + [0] * 7)
    assert extend_tracks(lab2, xyz, edges, scores, 0.5)[4] == 1
    with pytest.raises(InputError):
        extend_tracks(labels, xyz, edges, scores[:-1], 0.5)


GAP_RADII = (32.0, 72.0, 116.0, 172.0, 700.0, 760.0, 820.0, 900.0, 960.0, 1020.0)


def test_road_gnn_growing_turns_a_track_stopped_at_a_gap_into_a_true_one() -> None:
    """A particle whose layers skip 172 -> 700 mm (farther than max_gap 450 mm): road following finds its 4 inner
    hits and stops (4 of 10 hits: a fake track), the outer 6 stay unassigned. With GNN scores 0.9 on its
    consecutive pairs (and on a second, complete particle's) and extend_cut 0.5, road_gnn grows the track over
    the gap: one true track per particle, fake rate 0; tune_hybrid chooses that cut on this event."""
    from apps.tracking.metrics import as_singletons, track_metrics

    gap = helix_hits(2.0, 0.4, 1, 0.3, radii=GAP_RADII)
    other = helix_hits(1.0, 2.5, -1, -0.4, 10.0)
    xyz = np.concatenate([gap, other])
    pid = np.array([1] * len(gap) + [2] * len(other))
    srf = np.concatenate([np.arange(len(gap)), 100 + np.arange(len(other))])
    n = len(gap)
    pairs = [(i, i + 1) for i in range(n - 1)] + [(n + i, n + i + 1) for i in range(len(other) - 1)]
    edges, scores = np.array(pairs).T, np.full(len(pairs), 0.9)
    cfg = RoadConfig(bfield=B)
    plain = road_tracks(xyz, srf, cfg)
    assert (plain[:4] > 0).all() and len(set(plain[:4].tolist())) == 1 and (plain[4:n] == 0).all()
    assert track_metrics(as_singletons(plain, plain == 0), pid)["fake_rate"] == pytest.approx(0.5)
    grown = hybrid_tracks(xyz, srf, cfg, edges, scores, gnn_cut=0.0, extend_cut=0.5)
    assert same_partition(grown, pid)
    assert track_metrics(as_singletons(grown, grown == 0), pid)["fake_rate"] == 0.0
    w = np.full(len(pid), 1.0 / len(pid))
    grid = {"gnn_cut": (0.0,), "track_cut": (0.0,), "extend_cut": (None, 0.5), "fill_cut": (None,),
            "fill_min_hits": (4,), "fill_quality": (None,), "fill_cohesion": (None,)}
    best, table = tune_hybrid([(xyz, srf, pid, w, edges, scores)], cfg, grid)
    assert best["extend_cut"] == 0.5
    rows = list(table.values())
    assert rows[0]["fake_rate"] == pytest.approx(0.5) and rows[1]["fake_rate"] == 0.0
    assert rows[0]["trackml_score"] == pytest.approx(len(other) / len(pid)) and rows[1]["trackml_score"] == 1.0
    with pytest.raises(InputError):
        tune_hybrid([(xyz, srf, pid, w, edges, scores)], cfg, grid, fake_margin=-0.1)
