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

Hit weights: :func:`official_weights` recomputes the TrackML weights from truth (order weight x pT weight, see
its docstring; on the embedded real event it reproduces the released weights), :func:`uniform_weights` weighs
every hit of a reconstructible particle alike. :func:`tracking_rates` gives the generic LHCb-style figures (70 %
hit-purity matching: ``efficiency_70``, ``fake_rate_70``, ``clone_rate_70``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["trackml_score", "match_tracks", "track_metrics", "edge_metrics", "true_edges", "efficiency_vs_pt",
           "order_weight", "pt_weight", "official_weights", "uniform_weights", "tracking_rates", "ORDER_TEMPLATE",
           "as_singletons"]


def as_singletons(labels: np.ndarray, alone: np.ndarray) -> np.ndarray:
    """A copy of the track ids ``labels`` where each hit of the mask ``alone`` (noise, unassigned, too short) is
    a one-hit track of its own (fresh ids above the largest), so the figures never count them as one track."""
    labels = np.asarray(labels).astype(np.int64)  # a copy
    alone = np.asarray(alone, dtype=bool)
    labels[alone] = (labels.max() if labels.size else 0) + 1 + np.arange(int(alone.sum()))
    return labels


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


# --- hit weights of the score and the generic (LHCb-style) tracking rates ---------------------------------------

ORDER_TEMPLATE = np.array([10.0, 8.0, 6.0, 5.0, 3.0, 3.0, 3.0, 5.0, 6.0])


def order_weight(rank: np.ndarray, n_hits: np.ndarray) -> np.ndarray:
    """TrackML order weight of the hit at position ``rank`` (0 = first) on a track of ``n_hits`` hits: the
    9-point profile (10, 8, 6, 5, 3, 3, 3, 5, 6) stretched linearly over the track (position ``rank * 8 /
    (n_hits - 1)``, linear interpolation between the profile's points): heavy first hits, light middle hits,
    heavier last hits. A one-hit track gets the first value."""
    rank = np.asarray(rank, dtype=np.float64)
    n = np.asarray(n_hits, dtype=np.float64)
    x = np.where(n > 1, rank * (len(ORDER_TEMPLATE) - 1) / np.maximum(n - 1, 1), 0.0)
    return np.interp(x, np.arange(len(ORDER_TEMPLATE)), ORDER_TEMPLATE)


def pt_weight(pt: np.ndarray) -> np.ndarray:
    """TrackML momentum weight: 0.2 below pT = 0.5 GeV, rising linearly to 1 at 3 GeV, 1 above."""
    return np.clip(0.2 + 0.8 * (np.asarray(pt, dtype=np.float64) - 0.5) / 2.5, 0.2, 1.0)


def _ranks(particle_id: np.ndarray, order_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per hit: its position along its particle's track (by ``order_key``, ties by hit index) and the
    particle's number of hits."""
    pid = np.asarray(particle_id)
    idx = np.arange(len(pid))
    order = np.lexsort((idx, np.asarray(order_key, dtype=np.float64), pid))
    _, inv, cnt = np.unique(pid, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    rank = np.empty(len(pid), dtype=np.int64)
    rank[order] = np.arange(len(pid)) - first[inv[order]]
    return rank, cnt[inv]


def official_weights(particle_id: np.ndarray, order_key: np.ndarray, pt: np.ndarray,
                     exclude: np.ndarray | None = None, min_hits: int = 4) -> np.ndarray:
    r"""The TrackML per-hit weights, recomputed from truth, normalised to sum 1 (all zero if no hit qualifies).

    Hits of a particle are ranked by ``order_key`` (TrackML: :math:`|t_z - v_z|`, the distance along the beam
    from the particle's vertex); hit :math:`i` of a particle with :math:`n` hits and transverse momentum
    :math:`p_T` weighs

    .. math::  w_i \propto w_{p_T}(p_T)\,\frac{o(i, n)}{\sum_{j<n} o(j, n)}

    with :func:`order_weight` :math:`o` and :func:`pt_weight` :math:`w_{p_T}`, so a particle's hits share a
    total weight set by its pT alone. Noise hits (``particle_id`` 0), particles with fewer than ``min_hits``
    hits and hits flagged in ``exclude`` weigh 0; a NaN pT weighs 0.2 (the low-pT value).
    """
    pid = np.asarray(particle_id)
    pt = np.asarray(pt, dtype=np.float64)
    if not (len(pid) == len(np.asarray(order_key)) == len(pt)):
        raise ValueError("particle_id, order_key and pt must have one value per hit")
    if len(pid) == 0:
        return np.zeros(0)
    rank, n = _ranks(pid, order_key)
    o = order_weight(rank, n)
    _, inv = np.unique(pid, return_inverse=True)
    o_sum = np.bincount(inv, weights=o)[inv]
    w = pt_weight(np.where(np.isfinite(pt), pt, 0.0)) * o / o_sum
    w[(pid == 0) | (n < min_hits)] = 0.0
    if exclude is not None:
        w[np.asarray(exclude, dtype=bool)] = 0.0
    s = w.sum()
    return w / s if s > 0 else w


def uniform_weights(particle_id: np.ndarray, min_hits: int = 4) -> np.ndarray:
    """Equal weight for every hit of a particle with at least ``min_hits`` hits, 0 for noise and shorter
    particles; normalised to sum 1 (all zero if no hit qualifies). The TrackML score with these weights is the
    share of reconstructible particles' hits found in double-majority tracks."""
    pid = np.asarray(particle_id)
    _, inv, cnt = np.unique(pid, return_inverse=True, return_counts=True)
    w = ((pid != 0) & (cnt[inv] >= min_hits)).astype(np.float64)
    s = w.sum()
    return w / s if s > 0 else w


def tracking_rates(track_id: np.ndarray, particle_id: np.ndarray, min_hits: int = 4,
                   purity: float = 0.7) -> dict[str, float]:
    """LHCb-style tracking figures (hit-purity matching, no weights).

    A *track* is a reconstructed track with at least ``min_hits`` hits (smaller groups, such as the single hits
    a builder leaves, are not counted). A track is *matched* to particle p when at least ``purity`` (70 %) of
    its hits come from p (p not noise). A particle is *reconstructible* when it is not noise and has at least
    ``min_hits`` hits. Then

    * ``efficiency_70`` = reconstructible particles with at least one matched track / reconstructible particles;
    * ``fake_rate_70`` = unmatched tracks / tracks (LHCb's ghost rate);
    * ``clone_rate_70`` = (matched tracks - particles with a matched track) / matched tracks (every matched
      track beyond the first of its particle is a clone).

    Efficiency is NaN without reconstructible particles; the rates are 0 without tracks.
    """
    track_id = np.asarray(track_id)
    particle_id = np.asarray(particle_id)
    if track_id.shape != particle_id.shape:
        raise ValueError(f"track_id and particle_id must have the same shape, got {track_id.shape} and "
                         f"{particle_id.shape}")
    m = match_tracks(track_id, particle_id)  # majority particle per track (ties: smallest id)
    is_track = m["size"] >= min_hits
    matched = is_track & (m["particle"] != 0) & (m["overlap"] >= purity * m["size"] - 1e-9)
    p_u, p_cnt = np.unique(particle_id, return_counts=True)
    reco_p = p_u[(p_u != 0) & (p_cnt >= min_hits)]
    found = np.unique(m["particle"][matched])
    n_tracks, n_matched = int(is_track.sum()), int(matched.sum())
    return {"efficiency_70": float(np.isin(reco_p, found).sum() / len(reco_p)) if len(reco_p) else float("nan"),
            "fake_rate_70": float((n_tracks - n_matched) / n_tracks) if n_tracks else 0.0,
            "clone_rate_70": float((n_matched - len(found)) / n_matched) if n_matched else 0.0,
            "n_tracks_70": n_tracks, "n_matched_70": n_matched}
