"""Score weights (official TrackML recipe, uniform, the choice between them) and the LHCb-style tracking rates,
against hand-computed events, a brute-force definition and the weights of the released TrackML event."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from apps.tracking.data import Event, find_events, read_event, trackml_secondary
from apps.tracking.metrics import official_weights, order_weight, pt_weight, tracking_rates, uniform_weights
from core.app import InputError


def test_order_weight_stretches_the_nine_point_profile_over_the_track() -> None:
    assert np.allclose(order_weight(np.arange(9), np.full(9, 9)), [10, 8, 6, 5, 3, 3, 3, 5, 6])
    # 7 hits: profile positions 0, 4/3, 8/3, 4, 16/3, 20/3, 8 (linear interpolation by hand)
    assert np.allclose(order_weight(np.arange(7), np.full(7, 7)), [10, 8 - 2 / 3, 6 - 2 / 3, 3, 3, 3 + 4 / 3, 6])
    assert np.allclose(order_weight(np.arange(4), np.full(4, 4)), [10, 6 - 2 / 3, 3, 6])
    assert np.allclose(order_weight(np.arange(11), np.full(11, 11)),
                       [10, 8.4, 6.8, 5.6, 4.6, 3, 3, 3, 3.8, 5.2, 6])


def test_pt_weight_is_flat_below_half_a_gev_and_saturates_at_three() -> None:
    assert np.allclose(pt_weight([0.1, 0.5, 1.0, 1.75, 3.0, 50.0]), [0.2, 0.2, 0.36, 0.6, 1.0, 1.0])


def test_official_weights_of_a_hand_computed_event() -> None:
    # particle 1: 4 hits (pT 1 GeV), given out of order; particle 2: 3 hits; particle 3: 5 hits (pT 5); 2 noise
    pid = np.array([1, 3, 1, 2, 0, 3, 1, 3, 2, 3, 1, 3, 2, 0])
    key = np.array([30, 1, 10, 5, 0, 2, 20, 3, 6, 4, 40, 5, 7, 9], dtype=float)
    pt = np.array([1.0 if p == 1 else 5.0 if p == 3 else 0.3 if p == 2 else np.nan for p in pid])
    w = official_weights(pid, key, pt)
    p1 = 0.36 * np.array([10, 16 / 3, 3, 6]) / (10 + 16 / 3 + 3 + 6)  # order by key: 10, 20, 30, 40
    p3 = 1.0 * np.array([10, 6, 3, 3, 6]) / 28  # 5 hits: profile positions 0, 2, 4, 6, 8
    total = p1.sum() + p3.sum()
    expect = np.zeros(len(pid))
    expect[[2, 6, 0, 10]] = p1 / total
    expect[[1, 5, 7, 9, 11]] = p3 / total
    assert np.allclose(w, expect) and np.isclose(w.sum(), 1.0)
    # an excluded particle weighs nothing and the rest renormalises
    w2 = official_weights(pid, key, pt, exclude=pid == 1)
    assert np.allclose(w2[pid == 3], p3 / p3.sum()) and np.all(w2[pid != 3] == 0)
    assert np.all(official_weights(np.zeros(3, dtype=int), np.zeros(3), np.ones(3)) == 0)


def test_official_weights_reproduce_the_release_weights_of_the_embedded_event() -> None:
    ev = read_event(find_events(None)[0], require_truth=True)
    released = ev.truth["weight"].to_numpy()
    mine = ev.official_weights()
    assert np.allclose(mine, released / released.sum(), rtol=1e-4, atol=1e-8)
    # the release zeroes the simulation's secondaries (non-zero lowest 12 id bits) even with 4+ hits
    sec = trackml_secondary(ev.particle_ids())
    assert sec.sum() > 100 and np.all(released[sec] == 0)
    assert np.all(trackml_secondary(np.array([0, 1, 2, 4097])) == 0)  # small ids: never secondaries


def test_uniform_weights() -> None:
    pid = np.array([1, 1, 1, 1, 2, 2, 0, 3, 3, 3, 3, 3])
    w = uniform_weights(pid)
    assert np.allclose(w, np.where(np.isin(pid, [1, 3]), 1 / 9, 0.0))


def _event(weights: list | None, particles: bool = True) -> Event:
    hits = pd.DataFrame({"hit_id": np.arange(1, 7), "x": 1.0, "y": 0.0, "z": np.arange(6.0), "volume_id": 0,
                         "layer_id": 1, "module_id": 1})
    truth = pd.DataFrame({"hit_id": np.arange(1, 7), "particle_id": [5, 5, 5, 5, 0, 0]})
    if weights is not None:
        truth["weight"] = weights
    part = pd.DataFrame({"particle_id": [5], "px": [2.0], "py": [0.0]}) if particles else None
    return Event("event000000001", hits, truth, part)


def test_score_weights_choose_file_official_or_uniform() -> None:
    full = [0.1, 0.2, 0.3, 0.4, 0.0, 0.0]
    w, used = _event(full).score_weights()
    assert used == "file" and np.allclose(w, full)
    for weights in (None, [0.1, np.nan, 0.3, 0.4, 0.0, 0.0], [0.0] * 6):  # missing, partial, all zero
        w, used = _event(weights).score_weights()
        assert used == "official"
        assert np.allclose(w, np.r_[np.array([10, 16 / 3, 3, 6]) / (73 / 3), 0, 0])  # z order = hit order
        with pytest.raises(InputError, match="no complete weight column"):
            _event(weights).score_weights("file")
    w, used = _event(None, particles=False).score_weights()
    assert used == "uniform" and np.allclose(w, [0.25] * 4 + [0, 0])
    with pytest.raises(InputError, match="official weights need the particles"):
        _event(None, particles=False).score_weights("official")
    assert _event(full).score_weights("uniform")[1] == "uniform"
    with pytest.raises(InputError, match="weights must be one of"):
        _event(full).score_weights("best")


def test_tracking_rates_of_a_hand_computed_event() -> None:
    # particles: A (8 hits), B (4), C (4), D (2: not reconstructible), E (3: not reconstructible); 4 noise hits
    rows = []  # (particle, track)
    rows += [("A", 1)] * 5 + [("A", 5)] * 3 + [("noise", 5)]  # T1 = 5 A; T5 = 3 A + 1 noise (75 %): a clone
    rows += [("B", 2)] * 4 + [("noise", 2)]  # T2 = 4 B + 1 noise (80 %): matched
    rows += [("C", 3)] * 2 + [("D", 3)] * 2  # T3: 50 % -> fake
    rows += [("C", 6)] * 2 + [("noise", 6)] * 2  # T6: noise majority -> fake
    rows += [("E", 7)] * 3  # T7: 3 hits, not a track
    ids = {"noise": 0, "A": 1, "B": 2, "C": 3, "D": 4, "E": 5}
    pid = np.array([ids[p] for p, _ in rows])
    trk = np.array([t for _, t in rows])
    r = tracking_rates(trk, pid)
    assert r["n_tracks_70"] == 5 and r["n_matched_70"] == 3
    assert np.isclose(r["efficiency_70"], 2 / 3)  # A and B found among A, B, C
    assert np.isclose(r["fake_rate_70"], 2 / 5)
    assert np.isclose(r["clone_rate_70"], 1 / 3)  # 3 matched tracks, 2 particles


@pytest.mark.parametrize("own, expect", [(7, 1), (6, 0)])
def test_tracking_rates_match_at_seventy_percent(own: int, expect: int) -> None:
    pid = np.array([1] * own + [2, 3, 4, 5, 6, 7, 8][: 10 - own])
    r = tracking_rates(np.zeros(len(pid), dtype=int), pid)
    assert r["n_matched_70"] == expect and np.isclose(r["fake_rate_70"], 1 - expect)


def _brute_rates(track, pid, min_hits=4):
    tracks = {t: [pid[i] for i in range(len(pid)) if track[i] == t] for t in set(track)}
    n_of = Counter(pid)
    reco = {p for p, c in n_of.items() if p != 0 and c >= min_hits}
    matched = []
    for hits in tracks.values():
        if len(hits) < min_hits:
            continue
        p, c = Counter(hits).most_common(1)[0]
        matched.append(p if (p != 0 and c >= 0.7 * len(hits)) else None)
    good = [p for p in matched if p is not None]
    return (len(reco & set(good)) / len(reco), matched.count(None) / len(matched),
            (len(good) - len(set(good))) / len(good))


def test_tracking_rates_agree_with_the_definition_on_random_events() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        sizes = rng.integers(1, 12, size=40)
        pid = np.concatenate([np.full(s, i + 1) for i, s in enumerate(sizes)] + [np.zeros(30, dtype=int)])
        trk = pid * 2 + (rng.random(len(pid)) < 0.3)  # splits
        flip = rng.random(len(pid)) < 0.15
        trk[flip] = rng.integers(0, 30, int(flip.sum())) * 2
        r = tracking_rates(trk, pid)
        eff, fake, clone = _brute_rates(list(trk), list(pid))
        assert np.isclose(r["efficiency_70"], eff) and np.isclose(r["fake_rate_70"], fake)
        assert np.isclose(r["clone_rate_70"], clone)
