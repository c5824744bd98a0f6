r"""Tracking metrics: the official TrackML score, track efficiency / fake rate, edge efficiency / purity.

TrackML score (LAL/trackml-library definition, Amrouche et al. 2019). For every reconstructed track
:math:`T` let :math:`p^*` be its majority particle (most hits of :math:`T`; ties go to the smallest particle
id). :math:`T` is *good* iff

.. math::  \frac{n(T \cap p^*)}{n(T)} > \tfrac12 \quad\text{and}\quad \frac{n(T \cap p^*)}{n(p^*)} > \tfrac12,

with :math:`n(p^*)` counting *all* truth hits of :math:`p^*`. The score is
:math:`\sum_{T\ \mathrm{good}} \sum_{h \in T \cap p^*} w_h / \sum_h w_h`; noise hits and particles with at most
three hits carry zero weight in the truth files. Because both fractions exceed one half, a particle is the
majority particle of at most one good track, so no hit is counted twice.

Track efficiency = matched reconstructable particles / reconstructable particles (non-noise, at least
``min_hits`` = 4 hits), a particle being matched when a good track has it as majority particle. Fake rate =
reconstructed tracks with at least ``min_hits`` hits that are not good / all reconstructed tracks with at least
``min_hits`` hits.
"""

from __future__ import annotations

import numpy as np

__all__ = ["trackml_score", "match_tracks", "track_metrics", "edge_metrics", "true_edges", "efficiency_vs_pt"]


def match_tracks(track_id: np.ndarray, particle_id: np.ndarray) -> dict[str, np.ndarray]:
    """Double-majority matching per reconstructed track.

    Returns arrays over the unique tracks: ``track`` (ids), ``size`` n(T), ``particle`` p*, ``overlap``
    n(T & p*), ``particle_size`` n(p*), ``good`` (bool), and ``hit_good`` (per hit: in T & p* of a good T).
    """
    track_id = np.asarray(track_id)
    particle_id = np.asarray(particle_id)
    if track_id.shape != particle_id.shape:
        raise ValueError(f"track_id and particle_id must have the same shape, got {track_id.shape} and "
                         f"{particle_id.shape}")
    t_u, t_inv = np.unique(track_id, return_inverse=True)
    p_u, p_inv, p_cnt = np.unique(particle_id, return_inverse=True, return_counts=True)
    # count hits per (track, particle) pair
    pair = t_inv.astype(np.int64) * len(p_u) + p_inv
    pairs, pair_inv, pair_cnt = np.unique(pair, return_inverse=True, return_counts=True)
    pt, pp = pairs // len(p_u), pairs % len(p_u)
    # majority particle per track: sort by track, count desc, particle id asc; take the first
    order = np.lexsort((p_u[pp], -pair_cnt, pt))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pt[order][1:] != pt[order][:-1]
    best = order[first]  # one per track, in track order
    size = np.bincount(t_inv, minlength=len(t_u))
    overlap = pair_cnt[best]
    psize = p_cnt[pp[best]]
    good = (2 * overlap > size) & (2 * overlap > psize)
    good_pair = np.zeros(len(pairs), dtype=bool)
    good_pair[best[good]] = True
    return {"track": t_u, "size": size, "particle": p_u[pp[best]], "overlap": overlap, "particle_size": psize,
            "good": good, "hit_good": good_pair[pair_inv]}


def trackml_score(track_id: np.ndarray, particle_id: np.ndarray, weight: np.ndarray) -> float:
    """Official TrackML score of one event (module docstring); 0 if the total weight is 0."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.shape != np.shape(track_id):
        raise ValueError("weight must have one value per hit")
    total = weight.sum()
    if total <= 0:
        return 0.0
    m = match_tracks(track_id, particle_id)
    return float(weight[m["hit_good"]].sum() / total)


def track_metrics(track_id: np.ndarray, particle_id: np.ndarray, min_hits: int = 4) -> dict[str, float]:
    """``efficiency``, ``fake_rate`` and counts (module docstring)."""
    m = match_tracks(track_id, particle_id)
    p_u, p_cnt = np.unique(particle_id, return_counts=True)
    reco_p = p_u[(p_u != 0) & (p_cnt >= min_hits)]
    matched = np.intersect1d(m["particle"][m["good"]], reco_p)
    big = m["size"] >= min_hits
    n_big = int(big.sum())
    return {"efficiency": len(matched) / len(reco_p) if len(reco_p) else float("nan"),
            "fake_rate": float((big & ~m["good"]).sum() / n_big) if n_big else 0.0,
            "n_particles": len(reco_p), "n_tracks": n_big, "n_matched": len(matched)}


def efficiency_vs_pt(track_id: np.ndarray, particle_id: np.ndarray, pt_of_particle: dict | None,
                     bins: np.ndarray, min_hits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(matched, total) reconstructable particles per pT bin."""
    m = match_tracks(track_id, particle_id)
    p_u, p_cnt = np.unique(particle_id, return_counts=True)
    reco_p = p_u[(p_u != 0) & (p_cnt >= min_hits)]
    if pt_of_particle is None or len(reco_p) == 0:
        return np.zeros(len(bins) - 1), np.zeros(len(bins) - 1)
    pts = np.array([pt_of_particle.get(int(p), np.nan) for p in reco_p])
    is_m = np.isin(reco_p, m["particle"][m["good"]])
    tot, _ = np.histogram(pts, bins)
    mat, _ = np.histogram(pts[is_m], bins)
    return mat, tot


def true_edges(particle_id: np.ndarray, r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Consecutive-hit truth edges (2, M): each particle's hits ordered by distance from the origin, i < j."""
    pid = np.asarray(particle_id)
    d = np.hypot(r, z)
    order = np.lexsort((d, pid))
    ps = pid[order]
    same = (ps[1:] == ps[:-1]) & (ps[1:] != 0)
    a, b = order[:-1][same], order[1:][same]
    return np.stack([np.minimum(a, b), np.maximum(a, b)])


def edge_metrics(edges: np.ndarray, particle_id: np.ndarray, r: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """Edge efficiency (share of consecutive-hit truth edges present) and purity (share of edges joining two
    hits of one particle) of an undirected edge set (2, E)."""
    pid = np.asarray(particle_id)
    n = len(pid)
    e = np.asarray(edges)
    if e.size == 0:
        return {"edge_efficiency": 0.0, "edge_purity": float("nan"), "n_edges": 0}
    lo, hi = np.minimum(e[0], e[1]).astype(np.int64), np.maximum(e[0], e[1]).astype(np.int64)
    key = np.unique(lo * n + hi)
    t = true_edges(pid, r, z)
    tkey = t[0].astype(np.int64) * n + t[1]
    eff = float(np.isin(tkey, key).mean()) if len(tkey) else float("nan")
    a, b = key // n, key % n
    purity = float(((pid[a] == pid[b]) & (pid[a] != 0)).mean())
    return {"edge_efficiency": eff, "edge_purity": purity, "n_edges": int(len(key))}
