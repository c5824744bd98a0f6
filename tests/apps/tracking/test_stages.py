"""Per-stage diagnostics (edge AUC, reachable particles) and the split of one event by particles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from apps.tracking.data import Event
from apps.tracking.model import edge_auc, reachable_share
from apps.tracking.train import split_by_particles


def test_edge_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    pid = rng.integers(0, 6, 200)
    edges = rng.integers(0, 200, (2, 900))
    y = (pid[edges[0]] == pid[edges[1]]) & (pid[edges[0]] != 0)
    scores = np.round(rng.random(900) + 0.4 * y, 2)  # with ties
    assert edge_auc(edges, scores, pid) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert np.isnan(edge_auc(edges[:, ~y], scores[~y], pid))


def test_reachable_share_by_hand() -> None:
    # particle 1: hits 0-4 (5 hits), edges 0-1-2 joined (3 > 5/2): reachable
    # particle 2: hits 5-10 (6 hits), edges 5-6-7 and 8-9 (largest 3, not > 3): not reachable
    # particle 3: hits 11-12 (2 hits): too small to count; hit 13: noise, edges to it do not help
    pid = np.array([1] * 5 + [2] * 6 + [3, 3, 0])
    edges = np.array([[0, 1, 5, 6, 8, 2, 11, 13], [1, 2, 6, 7, 9, 13, 12, 10]])
    assert reachable_share(len(pid), edges, pid) == pytest.approx(0.5)
    edges2 = np.concatenate([edges, [[7], [8]]], axis=1)  # joins 5-6-7-8-9: 5 > 3
    assert reachable_share(len(pid), edges2, pid) == pytest.approx(1.0)
    assert reachable_share(len(pid), np.zeros((2, 0), dtype=np.int64), pid) == 0.0


def test_split_by_particles_is_a_partition() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    pid = np.where(rng.random(n) < 0.15, 0, rng.integers(1, 301, n))
    hits = pd.DataFrame({"hit_id": np.arange(1, n + 1), "x": rng.normal(size=n), "y": rng.normal(size=n),
                         "z": rng.normal(size=n), "volume_id": 8, "layer_id": 2, "module_id": 1})
    truth = pd.DataFrame({"hit_id": hits.hit_id, "particle_id": pid, "tx": 0.0, "ty": 0.0, "tz": 0.0, "tpx": 0.0,
                          "tpy": 0.0, "tpz": 0.0, "weight": 1.0 / n})
    parts = pd.DataFrame({"particle_id": np.arange(1, 301), "particle_type": 211, "vx": 0.0, "vy": 0.0, "vz": 0.0,
                          "px": 1.0, "py": 0.0, "pz": 0.0, "q": 1, "nhits": 0})
    a, b = split_by_particles(Event("event000000001", hits, truth, parts), 0.5, seed=3)
    ha, hb = set(a.hits.hit_id), set(b.hits.hit_id)
    assert not ha & hb and ha | hb == set(hits.hit_id)
    pa, pb = set(a.particle_ids()) - {0}, set(b.particle_ids()) - {0}
    assert not pa & pb and pa | pb == set(pid) - {0}
    assert len(pa) / (len(pa) + len(pb)) == pytest.approx(0.5, abs=0.08)
    noise_a = (a.particle_ids() == 0).sum() / (pid == 0).sum()
    assert noise_a == pytest.approx(0.5, abs=0.06)
    assert set(a.particles.particle_id) == pa and (a.hits.hit_id.to_numpy() == a.truth.hit_id.to_numpy()).all()
    again = split_by_particles(Event("event000000001", hits, truth, parts), 0.5, seed=3)[0]
    assert again.hits.equals(a.hits)
