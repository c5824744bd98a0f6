r"""Classical road-following track finder: the non-learned baseline that a learned pipeline has to beat.

1. **Seeds** (:func:`find_seeds`): hit triplets :math:`h_1, h_2, h_3` from the inner region
   (:math:`r <` ``seed_r_max``), on three different surfaces and ordered in :math:`r`. A doublet must point back
   to the beam line in r-z (:math:`|z_0| \le` ``z0_max`` with :math:`z_0 = z_1 - r_1 (z_2 - z_1)/(r_2 - r_1)`)
   and its azimuth difference must stay within what a helix of :math:`p_T \ge` ``pt_min`` can bend
   (:math:`|\Delta\phi| \le \arcsin(r_2/2R_{min}) - \arcsin(r_1/2R_{min})` + a margin for the impact
   parameter, :math:`R_{min} = p_T^{min} / (0.3 B)`). A triplet is two doublets sharing the middle hit whose
   circle in x-y has radius :math:`\ge R_{min}` and transverse impact parameter
   :math:`|d_0| = ||c| - R| \le` ``d0_max``, and whose two r-z slopes (polar angles) differ by at most
   ``seed_dtheta``. Seeds are ranked by that angle difference plus the scaled impact parameter.
2. **Extension** (:func:`follow`): the helix fitted to the track's hits so far (algebraic least-squares circle
   in x-y; a straight line :math:`z = z_0 + t\,s` in the transverse arc length :math:`s`) is followed outwards.
   A hit ahead on the circle (arc angle in the direction of motion, 3-d path at most ``max_gap``) is inside
   the road when its distance to the circle is below ``win_xy`` and its distance to the r-z line below
   ``win_z``; both windows grow linearly with the 3-d path from the last hit (``win_*_slope`` per 100 mm,
   for multiple scattering and the extrapolation error). Of the road's hits, the nearest layer (smallest
   path; hits within ``layer_tol`` of it count as that layer) gives the next hit: the one nearest the
   prediction (windows-normalised distance). The helix is refitted and the search repeated until the road
   is empty.
3. **Selection** (:func:`road_tracks`): candidates from all seeds (a seed whose three hits lie on one earlier
   candidate is skipped) are sorted best first (more hits, then smaller mean normalised residual) and
   accepted greedily with hits used once: a candidate keeps its still-unused hits and is accepted when at
   least ``min_hits`` remain. Other hits are left unassigned (track id 0).

Everything is numpy on CPU; the cuts are plain numbers (:class:`RoadConfig`), tuned on training events by
:func:`tune_road` (never on the events it is scored on).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from core.app import InputError

__all__ = ["RoadConfig", "find_seeds", "fit_circle", "follow", "road_tracks", "tune_road", "ROAD_GRID", "EdgeScores",
           "road_candidates", "select_tracks", "hybrid_tracks", "extend_tracks", "fill_leftovers", "helix_quality",
           "tune_hybrid", "HYBRID_GRID", "FAKE_MARGIN"]


@dataclass(frozen=True)
class RoadConfig:
    """Cuts of the road-following finder (module docstring); lengths in mm, momenta in GeV, field in tesla."""

    bfield: float = 2.0
    pt_min: float = 0.15
    seed_r_max: float = 200.0
    z0_max: float = 200.0
    d0_max: float = 3.0
    seed_dtheta: float = 0.02
    max_gap: float = 450.0
    win_xy: float = 1.0
    win_xy_slope: float = 1.0
    win_z: float = 2.0
    win_z_slope: float = 2.0
    layer_tol: float = 15.0
    min_hits: int = 4
    max_seeds: int = 20000

    def check(self) -> RoadConfig:
        for name in ("bfield", "pt_min", "seed_r_max", "z0_max", "d0_max", "seed_dtheta", "max_gap", "win_xy",
                     "win_z", "layer_tol"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"road following: {name} must be a positive number, got {v}")
        for name in ("win_xy_slope", "win_z_slope"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InputError(f"road following: {name} must be >= 0, got {getattr(self, name)}")
        if self.min_hits < 3 or self.max_seeds < 1:
            raise InputError(f"road following: min_hits must be >= 3 and max_seeds >= 1, got {self.min_hits}, "
                             f"{self.max_seeds}")
        return self

    @property
    def r_min(self) -> float:
        """Smallest helix radius (mm) of the curvature bound: pT_min / (0.3 B)."""
        return 1000.0 * self.pt_min / (0.3 * self.bfield)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_circle(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) least-squares circle through points: centre (cx, cy) and radius. Coordinates are
    shifted to their mean first (numerically stable for the nearly straight tracks of high pT)."""
    mx, my = float(np.mean(x)), float(np.mean(y))
    u, v = x - mx, y - my
    w = u * u + v * v
    n = float(len(u))
    suu, svv, suv = float(u @ u), float(v @ v), float(u @ v)
    m = np.array([[suu, suv, 0.0], [suv, svv, 0.0], [0.0, 0.0, n]])  # sum(u) = sum(v) = 0 after the shift
    rhs = np.array([float(u @ w), float(v @ w), float(w.sum())])
    try:
        sol = np.linalg.solve(m, rhs)
    except np.linalg.LinAlgError:  # collinear points: a huge circle
        sol = np.linalg.lstsq(m, rhs, rcond=None)[0]
    cx, cy = sol[0] / 2, sol[1] / 2
    r2 = sol[2] + cx * cx + cy * cy
    return float(cx + mx), float(cy + my), float(math.sqrt(max(r2, 1e-12)))


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _circles(p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Circumcircles of triangles in x-y (rows): centres (n, 2), radii and the orientation sign."""
    ax, ay = p1[:, 0], p1[:, 1]
    bx, by = p2[:, 0], p2[:, 1]
    cx, cy = p3[:, 0], p3[:, 1]
    d = 2 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    d_safe = np.where(np.abs(d) < 1e-9, 1e-9, d)
    a2, b2, c2 = ax * ax + ay * ay, bx * bx + by * by, cx * cx + cy * cy
    ux = (a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / d_safe
    uy = (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / d_safe
    rad = np.hypot(ax - ux, ay - uy)
    rad = np.where(np.abs(d) < 1e-9, np.inf, rad)
    return np.stack([ux, uy], axis=1), rad, np.sign(d)


def find_seeds(xyz: np.ndarray, surface: np.ndarray, cfg: RoadConfig) -> np.ndarray:
    """Triplet seeds (module docstring) as rows of three hit indices (inner to outer), best first."""
    r = np.hypot(xyz[:, 0], xyz[:, 1])
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    inner = np.flatnonzero(r < cfg.seed_r_max)
    inner = inner[np.argsort(r[inner], kind="stable")]
    if len(inner) < 3:
        return np.zeros((0, 3), dtype=np.int64)
    two_r = 2 * cfg.r_min
    # doublets: every ordered pair of inner hits (chunked), filtered by the beam-line and curvature bounds
    pairs = []
    m = len(inner)
    ri, zi, fi, si = r[inner], xyz[inner, 2], phi[inner], surface[inner]
    chunk = max(1, 2_000_000 // m)
    for s0 in range(0, m, chunk):
        a = np.arange(s0, min(m, s0 + chunk))
        dr = ri[None, :] - ri[a, None]
        ok = (dr > 1.0) & (si[None, :] != si[a, None])
        dz = zi[None, :] - zi[a, None]
        z0 = zi[a, None] - ri[a, None] * dz / np.where(ok, dr, 1.0)
        ok &= np.abs(z0) <= cfg.z0_max
        bend = (np.arcsin(np.minimum(ri[None, :] / two_r, 1.0)) - np.arcsin(np.minimum(ri[a, None] / two_r, 1.0))
                + cfg.d0_max / np.maximum(ri[a, None], 1.0))
        ok &= np.abs(_wrap(fi[None, :] - fi[a, None])) <= bend
        ok &= np.hypot(dr, dz) <= cfg.max_gap
        ia, ib = np.nonzero(ok)
        pairs.append(np.stack([a[ia], ib], axis=1))
    d = np.concatenate(pairs)
    if len(d) < 2:
        return np.zeros((0, 3), dtype=np.int64)
    # triplets: doublets (a, b) and (b, c) sharing the middle hit
    order = np.argsort(d[:, 0], kind="stable")
    outer = d[order]
    starts = np.searchsorted(outer[:, 0], np.arange(m + 1))
    cnt = starts[d[:, 1] + 1] - starts[d[:, 1]]
    first = np.repeat(np.arange(len(d)), cnt)
    offs = np.arange(len(first)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    second = starts[d[first, 1]] + offs
    t = np.stack([d[first, 0], d[first, 1], outer[second, 1]], axis=1)
    if len(t) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    h = inner[t]
    ok = (surface[h[:, 0]] != surface[h[:, 2]])
    centre, rad, _ = _circles(xyz[h[:, 0]], xyz[h[:, 1]], xyz[h[:, 2]])
    d0 = np.abs(np.hypot(centre[:, 0], centre[:, 1]) - rad)
    d0 = np.where(np.isfinite(rad), d0, 0.0)
    ok &= (rad >= cfg.r_min) & (d0 <= cfg.d0_max)
    th1 = np.arctan2(xyz[h[:, 1], 2] - xyz[h[:, 0], 2], r[h[:, 1]] - r[h[:, 0]])
    th2 = np.arctan2(xyz[h[:, 2], 2] - xyz[h[:, 1], 2], r[h[:, 2]] - r[h[:, 1]])
    dth = np.abs(th2 - th1)
    ok &= dth <= cfg.seed_dtheta
    h, quality = h[ok], (dth / cfg.seed_dtheta + d0 / cfg.d0_max)[ok]
    h = h[np.argsort(quality, kind="stable")]
    return h[: cfg.max_seeds]


class _Helix:
    """Circle in x-y and line z = z0 + t s (s: transverse arc length from the first hit) through some hits."""

    def __init__(self, pts: np.ndarray) -> None:
        self.cx, self.cy, self.R = fit_circle(pts[:, 0], pts[:, 1])
        ang = np.arctan2(pts[:, 1] - self.cy, pts[:, 0] - self.cx)
        steps = _wrap(np.diff(ang))
        self.sense = 1.0 if steps.sum() >= 0 else -1.0
        s = np.concatenate([[0.0], np.cumsum(np.abs(steps))]) * self.R
        self.ang0 = ang[0]
        sm, zm = s.mean(), pts[:, 2].mean()
        var = float(((s - sm) ** 2).sum())
        self.t = float(((s - sm) * (pts[:, 2] - zm)).sum() / var) if var > 1e-12 else 0.0
        self.z0 = float(zm - self.t * sm)
        self.s_last = float(s[-1])
        self.ang_last = float(ang[-1])
        self.res_xy = np.abs(np.hypot(pts[:, 0] - self.cx, pts[:, 1] - self.cy) - self.R)
        self.res_z = np.abs(pts[:, 2] - (self.z0 + self.t * s)) / math.sqrt(1 + self.t * self.t)

    def road(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For hits ahead: 3-d path from the last hit, distance to the circle, distance to the r-z line."""
        ang = np.arctan2(xyz[:, 1] - self.cy, xyz[:, 0] - self.cx)
        da = _wrap(ang - self.ang_last) * self.sense
        da = np.where(da < -1e-6, np.inf, np.maximum(da, 0.0))
        ds = da * self.R
        s = self.s_last + np.where(np.isfinite(ds), ds, 0.0)  # hits behind keep an infinite path (never taken)
        path = ds * math.sqrt(1 + self.t * self.t)
        res_xy = np.abs(np.hypot(xyz[:, 0] - self.cx, xyz[:, 1] - self.cy) - self.R)
        res_z = np.abs(xyz[:, 2] - (self.z0 + self.t * s)) / math.sqrt(1 + self.t * self.t)
        return path, res_xy, res_z


class EdgeScores:
    """Learned scores of hit pairs (the GNN's edge scores on the kNN graph), looked up by pair in either
    direction; a pair that is no edge of the graph has no score (NaN). A pair listed twice keeps its higher score."""

    def __init__(self, n: int, edges: np.ndarray, scores: np.ndarray) -> None:
        e = np.asarray(edges, dtype=np.int64).reshape(2, -1)
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if s.shape[0] != e.shape[1]:
            raise InputError(f"edge scores: {e.shape[1]} edges but {s.shape[0]} scores")
        self.n = int(n)
        keys = np.minimum(e[0], e[1]) * self.n + np.maximum(e[0], e[1])
        order = np.argsort(keys, kind="stable")
        keys, s = keys[order], s[order]
        self.keys, start = np.unique(keys, return_index=True)
        self.scores = np.maximum.reduceat(s, start) if len(s) else s

    def __call__(self, i, j) -> np.ndarray:
        """Score of the pairs (i, j) (broadcast), NaN where the pair is no edge."""
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        k = np.minimum(i, j) * self.n + np.maximum(i, j)
        if len(self.keys) == 0:
            return np.full(k.shape, np.nan)
        pos = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
        return np.where(self.keys[pos] == k, self.scores[pos], np.nan)


def follow(xyz: np.ndarray, seed: np.ndarray, free: np.ndarray, cfg: RoadConfig,
           phi_index: tuple[np.ndarray, np.ndarray] | None = None,
           veto: tuple[EdgeScores, float] | None = None) -> tuple[list[int], float]:
    """Extend one seed outwards along its helix (module docstring, step 2) over the hits with ``free`` True;
    returns the track's hit indices (seed first) and its mean normalised residual. ``phi_index`` (the hits'
    order by azimuth and the sorted azimuths) only speeds up the search. ``veto`` = (edge scores, cut): a hit
    joined to the track's last hit by a graph edge scoring below the cut is not taken (pairs without an edge
    are not vetoed)."""
    track = [int(i) for i in seed]
    helix = _Helix(xyz[track])
    # candidate pool: free hits in the azimuth range the seed's helix can still reach, near its circle (a
    # generous road) and ahead of it
    last = xyz[track[-1]]
    r_last = math.hypot(last[0], last[1])
    span = math.asin(min(1.0, 1100.0 / (2 * helix.R))) - math.asin(min(1.0, r_last / (2 * helix.R))) + 0.1
    if phi_index is not None and span < np.pi:
        order, phi_sorted = phi_index
        f = math.atan2(last[1], last[0])
        lo, hi = f - span, f + span
        parts = [order[np.searchsorted(phi_sorted, max(lo, -np.pi)):np.searchsorted(phi_sorted, min(hi, np.pi))]]
        if lo < -np.pi:
            parts.append(order[np.searchsorted(phi_sorted, lo + 2 * np.pi):])
        if hi > np.pi:
            parts.append(order[:np.searchsorted(phi_sorted, hi - 2 * np.pi)])
        pool = np.concatenate(parts)
        pool = pool[free[pool]]
    else:
        pool = np.flatnonzero(free)
    pool = pool[~np.isin(pool, track)]
    if len(pool):
        path, rxy, rz = helix.road(xyz[pool])
        wide = 20 * (cfg.win_xy + cfg.win_xy_slope * 10) + 20
        keep = np.isfinite(path) & (rxy < wide) & (rz < 20 * (cfg.win_z + cfg.win_z_slope * 10) + 20)
        pool = pool[keep]
    taken = np.zeros(len(pool), dtype=bool)
    while len(pool) and not taken.all():
        path, rxy, rz = helix.road(xyz[pool])
        wxy = cfg.win_xy + cfg.win_xy_slope * path / 100.0
        wz = cfg.win_z + cfg.win_z_slope * path / 100.0
        ok = (~taken) & (path <= cfg.max_gap) & (rxy <= wxy) & (rz <= wz)
        if veto is not None and ok.any():
            ok &= ~(veto[0](track[-1], pool) < veto[1])  # NaN (no edge) compares False: not vetoed
        if not ok.any():
            break
        idx = np.flatnonzero(ok)
        near = idx[path[idx] <= path[idx].min() + cfg.layer_tol]
        norm = (rxy[near] / wxy[near]) ** 2 + (rz[near] / wz[near]) ** 2
        j = near[int(np.argmin(norm))]
        taken[j] = True
        track.append(int(pool[j]))
        helix = _Helix(xyz[track])
        if helix.R < 0.5 * cfg.r_min:  # the fit turned into a tight curl: stop
            track.pop()
            break
    quality = float(np.mean(helix.res_xy / cfg.win_xy + helix.res_z / cfg.win_z))
    return track, quality


def _inputs(xyz, surface, cfg):
    cfg = (cfg or RoadConfig()).check()
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise InputError(f"road following needs hit positions of shape (n, 3), got {xyz.shape}")
    n = len(xyz)
    surface = np.zeros(n, dtype=np.int64) - 1 if surface is None else np.asarray(surface)
    if surface.shape != (n,):
        raise InputError(f"road following: surface ids must have shape ({n},), got {surface.shape}")
    if surface.min(initial=0) < 0:  # no surfaces given: every hit its own (seeds only need distinct ones)
        surface = np.arange(n)
    return xyz, surface, cfg


def road_candidates(xyz: np.ndarray, surface: np.ndarray | None = None, cfg: RoadConfig | None = None,
                    veto: tuple[EdgeScores, float] | None = None) -> list[tuple[list[int], float, float]]:
    """Candidate tracks of every seed (module docstring, steps 1-2): (hit indices, mean normalised residual,
    mean learned score of its consecutive hit pairs that are graph edges, NaN without ``veto`` or such pairs).
    With ``veto`` = (edge scores, cut), seeds with a hit pair scoring below the cut are dropped and extensions
    across such pairs are not taken (:func:`follow`)."""
    xyz, surface, cfg = _inputs(xyz, surface, cfg)
    n = len(xyz)
    if n < 3:
        return []
    seeds = find_seeds(xyz, surface, cfg)
    if veto is not None and len(seeds):
        low = (veto[0](seeds[:, 0], seeds[:, 1]) < veto[1]) | (veto[0](seeds[:, 1], seeds[:, 2]) < veto[1])
        seeds = seeds[~low]
    free = np.ones(n, dtype=bool)
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    phi_order = np.argsort(phi, kind="stable")
    phi_index = (phi_order, phi[phi_order])
    owner = np.full(n, -1, dtype=np.int64)
    cands: list[tuple[list[int], float, float]] = []
    for sd in seeds:
        o = owner[sd]
        if o[0] >= 0 and o[0] == o[1] == o[2]:
            continue  # the seed lies on an earlier candidate
        track, q = follow(xyz, sd, free, cfg, phi_index, veto)
        if len(track) < cfg.min_hits:
            continue
        owner[np.array(track)[owner[track] < 0]] = len(cands)
        g = float("nan")
        if veto is not None:
            sc = veto[0](track[:-1], track[1:])
            g = float(np.nanmean(sc)) if np.isfinite(sc).any() else float("nan")
        cands.append((track, q, g))
    return cands


def select_tracks(n: int, cands: list[tuple[list[int], float, float]], min_hits: int = 4,
                  track_cut: float = 0.0) -> np.ndarray:
    """Track id per hit (0 = unassigned) from candidates (module docstring, step 3): best first (more hits, then
    smaller residual), hits used once, a candidate kept with at least ``min_hits`` unused hits. Candidates whose
    mean learned pair score is below ``track_cut`` are dropped first (those without a score are kept)."""
    cands = [c for c in cands if not (c[2] < track_cut)]
    order = sorted(range(len(cands)), key=lambda i: (-len(cands[i][0]), cands[i][1]))
    labels = np.zeros(n, dtype=np.int64)
    used = np.zeros(n, dtype=bool)
    tid = 0
    for i in order:
        t = np.array(cands[i][0])
        t = t[~used[t]]
        if len(t) >= min_hits:
            tid += 1
            labels[t] = tid
            used[t] = True
    return labels


def road_tracks(xyz: np.ndarray, surface: np.ndarray | None = None, cfg: RoadConfig | None = None) -> np.ndarray:
    """Track id per hit (0 = unassigned) from road following (module docstring)."""
    xyz, surface, cfg = _inputs(xyz, surface, cfg)
    return select_tracks(len(xyz), road_candidates(xyz, surface, cfg), cfg.min_hits)


def helix_quality(xyz: np.ndarray, cfg: RoadConfig) -> float:
    """Mean normalised residual of the helix fitted to hits (ordered by transverse radius): the
    ``res_xy / win_xy + res_z / win_z`` of :func:`follow`'s candidates."""
    pts = xyz[np.argsort(np.hypot(xyz[:, 0], xyz[:, 1]), kind="stable")]
    h = _Helix(pts)
    return float(np.mean(h.res_xy / cfg.win_xy + h.res_z / cfg.win_z))


def extend_tracks(labels: np.ndarray, xyz: np.ndarray, edges: np.ndarray, scores: np.ndarray,
                  cut: float) -> np.ndarray:
    """Grow the tracks of ``labels`` (id > 0; 0 = unassigned) along learned edges: from a track's outermost hit
    (distance from the origin) the highest-scoring graph edge above ``cut`` to an unassigned hit farther out is
    followed, then from that hit, and so on until no such edge is left; likewise inwards from its innermost hit
    (to hits closer to the origin). Tracks grow one after the other in the order of their ids (road following's
    selection order, best first); a hit joins at most one track. Road following stops where its helix windows
    miss the next hit (a layer gap, a double hit, the step between detector volumes); the rest of the particle
    then stays unassigned and the part found holds less than half of its hits: a fake track under the double
    majority. The GNN edges reach past such gaps."""
    n = len(labels)
    e = np.asarray(edges, dtype=np.int64).reshape(2, -1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != e.shape[1]:
        raise InputError(f"extend tracks: {e.shape[1]} edges but {s.shape[0]} scores")
    out = np.asarray(labels, dtype=np.int64).copy()
    keep = s > cut
    a = np.concatenate([e[0, keep], e[1, keep]])
    b = np.concatenate([e[1, keep], e[0, keep]])
    sc = np.concatenate([s[keep], s[keep]])
    order = np.argsort(a, kind="stable")
    a, b, sc = a[order], b[order], sc[order]
    start = np.searchsorted(a, np.arange(n + 1))
    d = np.linalg.norm(np.asarray(xyz, dtype=np.float64), axis=1)
    for t in np.unique(out[out > 0]):
        hits = np.flatnonzero(out == t)
        for sign in (1.0, -1.0):  # outwards from the outermost hit, then inwards from the innermost
            last = int(hits[np.argmax(sign * d[hits])])
            while True:
                nb, ns = b[start[last]:start[last + 1]], sc[start[last]:start[last + 1]]
                ok = (out[nb] == 0) & (sign * (d[nb] - d[last]) > 0)
                if not ok.any():
                    break
                last = int(nb[ok][np.argmax(ns[ok])])
                out[last] = t
    return out


def fill_leftovers(labels: np.ndarray, xyz: np.ndarray, edges: np.ndarray, scores: np.ndarray, cut: float,
                   min_hits: int, max_quality: float | None = None, cfg: RoadConfig | None = None,
                   min_cohesion: float | None = None) -> np.ndarray:
    """Add best-neighbour chaining tracks (:func:`apps.tracking.model.chain_tracks`, edges scoring above ``cut``)
    built only from the hits ``labels`` leaves unassigned (0); tracks of fewer than ``min_hits`` hits stay
    unassigned, and so do those whose fitted helix has a mean normalised residual (:func:`helix_quality`, windows
    of ``cfg``) above ``max_quality``, and those whose cohesion (the mean score of all graph edges between two of
    their hits, kept by the chaining or not) is below ``min_cohesion``."""
    from apps.tracking.model import chain_tracks

    n = len(labels)
    free = labels == 0
    e = np.asarray(edges).reshape(2, -1)
    keep = free[e[0]] & free[e[1]]
    ch = chain_tracks(n, e[:, keep], np.asarray(scores)[keep], np.asarray(xyz), cut, min_hits)
    out = labels.copy()
    ids, cnt = np.unique(ch[free], return_counts=True)
    good = ids[cnt >= min_hits]
    if min_cohesion is not None and len(good):
        inside = keep & (ch[e[0]] == ch[e[1]])
        lab = np.searchsorted(ids, ch[e[0, inside]])
        tot = np.bincount(lab, weights=np.asarray(scores, dtype=np.float64)[inside], minlength=len(ids))
        num = np.bincount(lab, minlength=len(ids))
        coh = tot / np.maximum(num, 1)
        good = good[coh[np.searchsorted(ids, good)] >= min_cohesion]
    if max_quality is not None and len(good):
        cfg = cfg or RoadConfig()
        good = np.array([g for g in good if helix_quality(xyz[ch == g], cfg) <= max_quality], dtype=ids.dtype)
    new = free & np.isin(ch, good)
    _, inv = np.unique(ch[new], return_inverse=True)
    out[new] = labels.max(initial=0) + 1 + inv
    return out


def hybrid_tracks(xyz: np.ndarray, surface: np.ndarray | None, cfg: RoadConfig, edges: np.ndarray,
                  scores: np.ndarray, gnn_cut: float, track_cut: float = 0.0, fill_cut: float | None = None,
                  fill_min_hits: int = 4, fill_quality: float | None = None,
                  fill_cohesion: float | None = None, extend_cut: float | None = None) -> np.ndarray:
    """Road following steered by learned edge scores (``road_gnn``): seeds and extensions across graph edges
    scoring below ``gnn_cut`` are vetoed, candidates whose mean pair score is below ``track_cut`` dropped; with
    ``extend_cut``, the selected tracks then grow along the edges above it onto unassigned hits
    (:func:`extend_tracks`); with ``fill_cut``, chaining on the edges above it adds tracks of at least
    ``fill_min_hits`` hits whose helix fits within ``fill_quality`` and whose mean internal edge score is at least
    ``fill_cohesion`` (:func:`fill_leftovers`) from the hits still unassigned."""
    xyz, surface, cfg = _inputs(xyz, surface, cfg)
    # scores lie in [0, 1]: without a veto or a track cut the look-ups change nothing, so they are skipped
    veto = (EdgeScores(len(xyz), edges, scores), gnn_cut) if gnn_cut > 0 or track_cut > 0 else None
    labels = select_tracks(len(xyz), road_candidates(xyz, surface, cfg, veto), cfg.min_hits, track_cut)
    if extend_cut is not None:
        labels = extend_tracks(labels, xyz, edges, scores, extend_cut)
    if fill_cut is not None:
        labels = fill_leftovers(labels, xyz, edges, scores, fill_cut, max(cfg.min_hits, fill_min_hits),
                                fill_quality, cfg, fill_cohesion)
    return labels


ROAD_GRID = (({"win_xy": 0.5, "win_z": 1.0}, {"win_xy": 2.0, "win_z": 4.0}), ({"d0_max": 10.0},),
             ({"seed_dtheta": 0.05},), ({"win_xy_slope": 2.0, "win_z_slope": 4.0},))


def tune_road(events: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], base: RoadConfig | None = None,
              grid: tuple[tuple[dict, ...], ...] = ROAD_GRID) -> tuple[RoadConfig, dict]:
    """Greedy coordinate search from ``base``: for each axis of ``grid`` (alternative settings of a few cuts) keep
    the alternative, or the current cuts, with the best mean TrackML score on ``events`` (xyz, surface, particle
    id, weight): training events only. Returns the chosen cuts and the score of every setting tried."""
    from apps.tracking.metrics import as_singletons, trackml_score

    def scored(lab: np.ndarray, pid: np.ndarray, w: np.ndarray) -> float:  # unassigned hits: no track
        return trackml_score(as_singletons(lab, lab == 0), pid, w)

    def score(c: RoadConfig) -> float:
        return float(np.mean([scored(road_tracks(x, srf, c), pid, w) for x, srf, pid, w in events]))

    best = base or RoadConfig()
    best_score = score(best)
    scores = {"default": best_score}
    for axis in grid:
        current = best
        for g in axis:
            c = replace(current, **g)
            sc = scores[",".join(f"{k}={v:g}" for k, v in g.items())] = score(c)
            if sc > best_score:
                best_score, best = sc, c
    return best, scores


HYBRID_GRID = {"gnn_cut": (0.0, 0.1, 0.3), "track_cut": (0.0, 0.5), "extend_cut": (None, 0.5, 0.7, 0.8),
               "fill_cut": (None, 0.5, 0.8), "fill_min_hits": (4, 6, 8), "fill_quality": (None, 1.0),
               "fill_cohesion": (None, 0.7, 0.85)}
FAKE_MARGIN = 0.01


def tune_hybrid(events: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                cfg: RoadConfig, grid: dict = HYBRID_GRID, fake_margin: float = FAKE_MARGIN) -> tuple[dict, dict]:
    """The cuts of :func:`hybrid_tracks` (every combination of ``grid``) chosen on ``events`` (xyz, surface,
    particle id, weight, edges, edge scores): training events only. The choice: the best mean TrackML score among
    the combinations whose mean fake rate is at least ``fake_margin`` below that of plain road following (no veto,
    no cut, no growing, no filling: the first combination; when none is, those no higher than it), at equal scores
    the lower fake rate; the candidates are built once per ``gnn_cut`` (the slow part), the other cuts only change
    the selection. Returns the chosen cuts and (score, fake rate) of every combination."""
    from apps.tracking.metrics import as_singletons, track_metrics, trackml_score

    if not (math.isfinite(fake_margin) and fake_margin >= 0):
        raise InputError(f"tune_hybrid: fake_margin must be a number >= 0, got {fake_margin}")
    res: dict[str, list[tuple[float, float]]] = {}
    for x, srf, pid, w, e, sc in events:
        x, srf, cfg = _inputs(x, srf, cfg)
        es = EdgeScores(len(x), e, sc)
        for g in grid["gnn_cut"]:
            cands = road_candidates(x, srf, cfg, (es, g) if g > 0 else None)
            for t in grid["track_cut"]:
                if g == 0 and t > 0:
                    continue  # without the veto the candidates carry no score
                sel = select_tracks(len(x), cands, cfg.min_hits, t)
                for xc in grid.get("extend_cut", (None,)):
                    lab = sel if xc is None else extend_tracks(sel, x, e, sc, xc)
                    for f in grid["fill_cut"]:
                        for m in grid["fill_min_hits"] if f is not None else (cfg.min_hits,):
                            for qc, co in itertools.product(*(grid[k] if f is not None else (None,)
                                                              for k in ("fill_quality", "fill_cohesion"))):
                                out = lab if f is None else fill_leftovers(lab, x, e, sc, f, max(m, cfg.min_hits),
                                                                            qc, cfg, co)
                                key = json.dumps({"gnn_cut": g, "track_cut": t, "extend_cut": xc, "fill_cut": f,
                                                  "fill_min_hits": m, "fill_quality": qc, "fill_cohesion": co})
                                alone = as_singletons(out, out == 0)  # unassigned: no track
                                res.setdefault(key, []).append((trackml_score(alone, pid, w),
                                                                track_metrics(alone, pid, cfg.min_hits)["fake_rate"]))
    mean = {k: tuple(float(a) for a in np.mean(v, axis=0)) for k, v in res.items()}
    plain = next(iter(mean.values()))[1]
    ok = {k: v for k, v in mean.items() if v[1] <= plain - fake_margin + 1e-12}
    if not ok:
        ok = {k: v for k, v in mean.items() if v[1] <= plain + 1e-12}
    best = max(ok, key=lambda k: (ok[k][0], -ok[k][1]))  # equal scores: the fewer fakes, then the smaller cuts
    return json.loads(best), {k: {"trackml_score": v[0], "fake_rate": v[1]} for k, v in mean.items()}
