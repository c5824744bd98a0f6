"""TrackML score, efficiency / fake rate and edge metrics against brute force and hand-computed events."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from apps.tracking.metrics import edge_metrics, match_tracks, track_metrics, trackml_score, true_edges


def brute_force_score(track_id, particle_id, weight) -> float:
    """The definition, literally: loop over tracks, majority particle (ties: smallest id), double majority."""
    track_id, particle_id, weight = list(track_id), list(particle_id), list(weight)
    n_of = Counter(particle_id)
    total = sum(weight)
    score = 0.0
    for t in set(track_id):
        members = [i for i, x in enumerate(track_id) if x == t]
        counts = Counter(particle_id[i] for i in members)
        best = max(counts.values())
        p = min(q for q, c in counts.items() if c == best)
        if best / len(members) > 0.5 and best / n_of[p] > 0.5:
            score += sum(weight[i] for i in members if particle_id[i] == p)
    return score / total


def random_event(rng: np.random.Generator, n_particles: int = 30, noise: int = 20):
    sizes = rng.integers(1, 12, size=n_particles)
    pid = np.concatenate([np.full(s, i + 1) for i, s in enumerate(sizes)] + [np.zeros(noise, dtype=int)])
    w = rng.random(len(pid))
    w[pid == 0] = 0
    w[np.isin(pid, np.flatnonzero(sizes <= 3) + 1)] = 0
    w /= w.sum()
    # a noisy reconstruction: true tracks, with random reassignments, splits and merges
    tracks = pid.copy() * 3
    flip = rng.random(len(pid)) < 0.25
    tracks[flip] = rng.integers(0, 3 * n_particles, size=int(flip.sum()))
    perm = rng.permutation(len(pid))
    return tracks[perm], pid[perm], w[perm]


@pytest.mark.parametrize("seed", range(8))
def test_score_matches_brute_force(seed: int) -> None:
    t, p, w = random_event(np.random.default_rng(seed))
    assert trackml_score(t, p, w) == pytest.approx(brute_force_score(t, p, w), abs=1e-12)


def test_hand_computed_event() -> None:
    # particle 1: hits 0-3 (w .1 each), particle 2: hits 4-7 (w .15 each), hit 8 noise (w 0)
    pid = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0])
    w = np.array([.1, .1, .1, .1, .15, .15, .15, .15, 0.0])
    # track A = {0,1,2,8}: majority 1 with 3/4 of the track and 3/4 of the particle -> good, 0.3
    # track B = {3,4,5}: majority 2 with 2/3 of the track but 2/4 of the particle (not > 1/2) -> not good
    # track C = {6,7}: particle 2, 2/2 of the track, 2/4 of the particle -> not good
    tracks = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0])
    assert trackml_score(tracks, pid, w) == pytest.approx(0.3)
    # perfect reconstruction scores 1, everything in one track scores 0
    assert trackml_score(pid, pid, w) == pytest.approx(1.0)
    assert trackml_score(np.zeros(9), pid, w) == 0.0
    m = track_metrics(tracks, pid)
    assert m["n_particles"] == 2 and m["n_matched"] == 1 and m["efficiency"] == 0.5
    assert m["n_tracks"] == 1 and m["fake_rate"] == 0.0  # only track A has >= 4 hits, and it is good


def test_tie_goes_to_smallest_particle() -> None:
    pid = np.array([5, 5, 3, 3, 9])
    tracks = np.array([0, 0, 0, 0, 1])
    m = match_tracks(tracks, pid)
    assert m["particle"][0] == 3 and not m["good"][0]  # 2/4 is not a majority of the track


def test_efficiency_and_fake_rate_brute_force() -> None:
    rng = np.random.default_rng(3)
    t, p, _ = random_event(rng, 40, 30)
    got = track_metrics(t, p)
    tracks = {x: [i for i in range(len(t)) if t[i] == x] for x in set(t)}
    n_of = Counter(p)
    matched, fakes, big = set(), 0, 0
    for hits in tracks.values():
        c = Counter(p[i] for i in hits)
        best = max(c.values())
        q = min(k for k, v in c.items() if v == best)
        good = best / len(hits) > .5 and best / n_of[q] > .5
        if good:
            matched.add(q)
        if len(hits) >= 4:
            big += 1
            fakes += not good
    reco = {q for q, n in n_of.items() if q != 0 and n >= 4}
    assert got["efficiency"] == pytest.approx(len(matched & reco) / len(reco))
    assert got["fake_rate"] == pytest.approx(fakes / big)


def test_edge_metrics_hand_case() -> None:
    # particle 1 at distances 1, 2, 3 from the origin; particle 2 two hits; hit 5 noise
    pid = np.array([1, 1, 1, 2, 2, 0])
    r = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 5.0])
    z = np.zeros(6)
    assert true_edges(pid, r, z).T.tolist() == [[0, 1], [1, 2], [3, 4]]
    edges = np.array([[1, 0, 0, 3, 4], [0, 2, 5, 4, 3]])  # (0,1) (0,2) (0,5) (3,4) (3,4 again)
    m = edge_metrics(edges, pid, r, z)
    assert m["n_edges"] == 4
    assert m["edge_efficiency"] == pytest.approx(2 / 3)  # (0,1) and (3,4) of the three consecutive edges
    assert m["edge_purity"] == pytest.approx(3 / 4)  # (0,5) joins noise
