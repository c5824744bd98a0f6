r"""A fast helix simulator that writes TrackML-format events on the real TrackML detector geometry.

Geometry (:class:`Geometry`): every ``(volume_id, layer_id)`` of ``detectors.csv`` becomes an ideal surface,
a cylinder :math:`r = R_\ell` over :math:`|z| \le Z_\ell` (barrel volumes, whose module centres share one
radius) or a disc :math:`z = Z_\ell` over :math:`R^{min}_\ell \le r \le R^{max}_\ell` (end-caps, whose module
centres share one z); the extents add the module half-lengths. A hit's ``module_id`` is the module of that
layer with the nearest centre.

Physics (:func:`simulate_event`): ``n_vertices ~ Poisson(pileup)`` collisions at the beam spot
(:math:`\sigma_{x,y}` = 15 um, :math:`\sigma_z` = 55 mm), each with ``Poisson(particles_per_vertex)``
charged pions: :math:`\eta \sim N(0, \sigma_\eta)` inside :math:`|\eta| \le \eta_{max}` (``eta_sigma`` = 0:
uniform there), :math:`\phi \sim U(-\pi, \pi)`, charge :math:`\pm 1`, and :math:`p_T` on
:math:`[p_T^{min}, p_T^{max}]` from a log-normal (``pt_spectrum='lognormal'``: median ``pt_median``, width of
:math:`\ln p_T` ``pt_sigma``) or a power law :math:`dN/dp_T \propto p_T^{-\alpha}` (``'power'``). A share
``secondary_fraction`` of the particles are secondaries: their vertex is displaced from the collision by an
exponential distance of mean ``secondary_radius`` (mm) transversely, in an azimuth within about 0.3 rad of their
own, and along z by that distance times :math:`\sinh\eta`. The defaults are calibrated to the statistics of the
embedded real TrackML event (``python -m apps.tracking simulate --compare``; docs/apps/tracking.md).
In a uniform solenoid field :math:`B \hat z` the track is a helix of radius

.. math::  R\,[\mathrm{m}] = \frac{p_T\,[\mathrm{GeV}]}{0.3\,|q|\,B\,[\mathrm{T}]},

turning clockwise (seen from +z) for positive charge. It is followed in exact helix steps of arc length
``step_mm`` until it leaves the tracker (r > 1030 mm or |z| > 3000 mm) or completes half a turn in the
transverse plane (so r grows monotonically and each surface is crossed at most once; loopers are cut
there). Each crossing of a surface within its extent gives a hit; the measured position is the crossing
point smeared in the two directions of the surface, by ``hit_resolution`` (mm) or, with ``pitch_resolution``, by
the layer's pitch / sqrt(12) from ``detectors.csv`` (``pitch_u`` in r-phi, ``pitch_v`` along z on cylinders and
along r on discs). A share ``double_hit_rate`` of the crossings leave a second hit, as on overlapping modules:
2-6 mm further along the track in r (cylinders) or |z| (discs), smeared independently. With
``multiple_scattering``, the direction is deflected at each crossing by two independent Gaussian angles of
width (Highland) :math:`\theta_0 = \frac{13.6\,\mathrm{MeV}}{\beta p}\sqrt{x/X_0}\,(1 + 0.038 \ln(x/X_0))`
with ``material`` = :math:`x/X_0` per layer. Noise hits (a share ``noise_fraction`` of all hits) are placed
uniformly on random surfaces.

Truth weights follow the TrackML recipe in spirit (the exact official table is unverified): zero for noise and
for particles with at most 3 hits; otherwise an order weight (10, 8, 6, 5 at either end of the track, 3 in the
middle) times a pT weight (0.2 below 0.5 GeV, rising linearly to 1 at 3 GeV); normalised to sum 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.neighbors import KDTree

from apps.tracking.data import Event, read_detectors
from core.app import InputError

__all__ = ["SimConfig", "Geometry", "simulate_event", "trackml_weights", "helix_radius_mm", "R_MAX", "Z_MAX",
           "event_statistics", "STAT_NAMES"]

R_MAX, Z_MAX = 1030.0, 3000.0
PION_MASS = 0.13957


@dataclass
class SimConfig:
    """Settings of :func:`simulate_event` (see the module docstring)."""

    pileup: float = 10.0
    particles_per_vertex: float = 50.0
    pt_min: float = 0.1
    pt_max: float = 50.0
    pt_alpha: float = 3.0
    eta_max: float = 4.0
    bfield: float = 2.0
    hit_resolution: float = 0.05
    noise_fraction: float = 0.15
    multiple_scattering: bool = True
    material: float = 0.02
    step_mm: float = 5.0
    pt_spectrum: str = "lognormal"
    pt_median: float = 0.42
    pt_sigma: float = 0.75
    eta_sigma: float = 2.1
    double_hit_rate: float = 0.25
    secondary_fraction: float = 0.2
    secondary_radius: float = 100.0
    pitch_resolution: bool = True

    def validate(self) -> SimConfig:
        if not (math.isfinite(self.pileup) and self.pileup > 0):
            raise InputError(f"pileup must be a positive number, got {self.pileup}")
        if not (math.isfinite(self.particles_per_vertex) and self.particles_per_vertex > 0):
            raise InputError(f"particles_per_vertex must be positive, got {self.particles_per_vertex}")
        if not (0 < self.pt_min < self.pt_max and math.isfinite(self.pt_max)):
            raise InputError(f"need 0 < pt_min < pt_max, got {self.pt_min}, {self.pt_max}")
        if not (math.isfinite(self.pt_alpha) and self.pt_alpha > 1):
            raise InputError(f"pt_alpha must be > 1 (a normalisable power law), got {self.pt_alpha}")
        if not 0 < self.eta_max <= 5:
            raise InputError(f"eta_max must be in (0, 5], got {self.eta_max}")
        if not (math.isfinite(self.bfield) and self.bfield > 0):
            raise InputError(f"bfield must be positive (tesla), got {self.bfield}")
        if not (math.isfinite(self.hit_resolution) and self.hit_resolution >= 0):
            raise InputError(f"hit_resolution must be >= 0 (mm), got {self.hit_resolution}")
        if not 0 <= self.noise_fraction < 1:
            raise InputError(f"noise_fraction must be in [0, 1), got {self.noise_fraction}")
        if not (math.isfinite(self.material) and 0 < self.material < 1):
            raise InputError(f"material (x/X0 per layer) must be in (0, 1), got {self.material}")
        if self.pt_spectrum not in ("power", "lognormal"):
            raise InputError(f"pt_spectrum must be 'power' or 'lognormal', got {self.pt_spectrum!r}")
        if not (math.isfinite(self.pt_median) and self.pt_median > 0 and math.isfinite(self.pt_sigma)
                and self.pt_sigma > 0):
            raise InputError(f"pt_median and pt_sigma must be positive, got {self.pt_median}, {self.pt_sigma}")
        if not (math.isfinite(self.eta_sigma) and self.eta_sigma >= 0):
            raise InputError(f"eta_sigma must be >= 0 (0: uniform in eta), got {self.eta_sigma}")
        for name in ("double_hit_rate", "secondary_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not (math.isfinite(self.secondary_radius) and self.secondary_radius > 0):
            raise InputError(f"secondary_radius must be positive (mm), got {self.secondary_radius}")
        if not 0.1 <= self.step_mm <= 20:
            raise InputError(f"step_mm must be in [0.1, 20] (layers are >= 30 mm apart), got {self.step_mm}")
        return self


def helix_radius_mm(pt: np.ndarray | float, bfield: float, charge: float = 1.0) -> np.ndarray | float:
    """Transverse radius of curvature in mm: R = pT / (0.3 |q| B), pT in GeV, B in tesla."""
    return 1000.0 * np.asarray(pt) / (0.3 * abs(charge) * bfield)


class Geometry:
    """Ideal cylinders and discs from ``detectors.csv`` (see the module docstring)."""

    def __init__(self, detectors: pd.DataFrame) -> None:
        d = detectors
        r = np.hypot(d["cx"].to_numpy(), d["cy"].to_numpy())
        half = np.maximum(d["module_maxhu"].to_numpy(), d["module_hv"].to_numpy())
        rows = []
        self._trees: dict[tuple[int, int], tuple[KDTree, np.ndarray]] = {}
        has_pitch = "pitch_u" in d.columns and "pitch_v" in d.columns
        pitch = []
        for (vol, lay), idx in d.groupby(["volume_id", "layer_id"]).indices.items():
            rr, zz, hh = r[idx], d["cz"].to_numpy()[idx], half[idx]
            if np.ptp(rr) < 0.05 * rr.mean() + 5:  # barrel: one radius
                rows.append((vol, lay, 0, rr.mean(), zz.min() - hh.max(), zz.max() + hh.max(), 0.0))
            elif np.ptp(zz) < 50:  # end-cap disc: one z
                rows.append((vol, lay, 1, zz.mean(), max(rr.min() - hh.max(), 0.0), rr.max() + hh.max(), 0.0))
            else:
                raise InputError(f"detector layer volume {vol} layer {lay} is neither a cylinder nor a disc")
            # binary readout: a uniform error over one pitch, sigma = pitch / sqrt(12) (u: fine, r-phi; v: coarse)
            pitch.append((np.median(d["pitch_u"].to_numpy()[idx]), np.median(d["pitch_v"].to_numpy()[idx]))
                         if has_pitch else (np.nan, np.nan))
            centres = d[["cx", "cy", "cz"]].to_numpy()[idx]
            self._trees[(int(vol), int(lay))] = (KDTree(centres), d["module_id"].to_numpy()[idx])
        t = np.array(rows, dtype=np.float64)
        self.volume, self.layer, self.is_disc = t[:, 0].astype(int), t[:, 1].astype(int), t[:, 2].astype(bool)
        self.pos, self.lo, self.hi = t[:, 3], t[:, 4], t[:, 5]
        self.sigma_u, self.sigma_v = (np.array(pitch, dtype=np.float64) / math.sqrt(12)).T
        self.cyl = np.flatnonzero(~self.is_disc)[np.argsort(self.pos[~self.is_disc])]
        self.disc = np.flatnonzero(self.is_disc)[np.argsort(self.pos[self.is_disc])]

    @classmethod
    def from_file(cls, path) -> Geometry:
        return cls(read_detectors(path))

    @property
    def n_surfaces(self) -> int:
        return len(self.pos)

    def areas(self) -> np.ndarray:
        """Surface areas in mm^2 (noise hits are spread in proportion)."""
        cyl = 2 * np.pi * self.pos * (self.hi - self.lo)
        disc = np.pi * (self.hi ** 2 - self.lo ** 2)
        return np.where(self.is_disc, disc, cyl)

    def modules(self, surface: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        """``module_id`` of the module with the nearest centre on each hit's surface."""
        out = np.zeros(len(surface), dtype=np.int64)
        for s in np.unique(surface):
            m = surface == s
            tree, ids = self._trees[(int(self.volume[s]), int(self.layer[s]))]
            out[m] = ids[tree.query(xyz[m], k=1, return_distance=False)[:, 0]]
        return out


def trackml_weights(pid: np.ndarray, order: np.ndarray, nhits: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """TrackML-style hit weights (module docstring), normalised to sum 1 (all zero if nothing qualifies).

    Args: per hit: particle id (0 noise), position along its track (0 = first), its particle's hit count and pT.
    """
    ends = np.array([10.0, 8.0, 6.0, 5.0])
    k = np.minimum(order, np.maximum(nhits - 1 - order, 0))
    w_order = np.where(k < len(ends), ends[np.minimum(k, len(ends) - 1)], 3.0)
    w_pt = np.clip(0.2 + 0.8 * (pt - 0.5) / 2.5, 0.2, 1.0)
    w = w_order * w_pt
    w[(pid == 0) | (nhits <= 3)] = 0.0
    s = w.sum()
    return w / s if s > 0 else w


def _sample_pt(rng: np.random.Generator, n: int, cfg: SimConfig) -> np.ndarray:
    """pT on [pt_min, pt_max]: log-normal (median ``pt_median``, log-width ``pt_sigma``; resampled until inside)
    or the inverse-CDF sample of dN/dpT ~ pT^-alpha (``pt_spectrum='power'``)."""
    if cfg.pt_spectrum == "lognormal":
        out = np.empty(n)
        todo = np.arange(n)
        while len(todo):
            v = cfg.pt_median * np.exp(cfg.pt_sigma * rng.standard_normal(len(todo)))
            ok = (v >= cfg.pt_min) & (v <= cfg.pt_max)
            out[todo[ok]] = v[ok]
            todo = todo[~ok]
        return out
    a = 1.0 - cfg.pt_alpha
    u = rng.random(n)
    lo, hi = cfg.pt_min ** a, cfg.pt_max ** a
    return (lo + u * (hi - lo)) ** (1.0 / a)


def _sample_eta(rng: np.random.Generator, n: int, cfg: SimConfig) -> np.ndarray:
    """Pseudo-rapidity: Gaussian of width ``eta_sigma`` resampled into |eta| <= eta_max (0: uniform there)."""
    if cfg.eta_sigma <= 0:
        return rng.uniform(-cfg.eta_max, cfg.eta_max, n)
    out = rng.normal(0, cfg.eta_sigma, n)
    bad = np.abs(out) > cfg.eta_max
    while bad.any():
        out[bad] = rng.normal(0, cfg.eta_sigma, int(bad.sum()))
        bad = np.abs(out) > cfg.eta_max
    return out


def _propagate(geo: Geometry, pos: np.ndarray, mom: np.ndarray, q: np.ndarray, cfg: SimConfig,
               rng: np.random.Generator) -> list[tuple[np.ndarray, ...]]:
    """Follow all particles in helix steps; returns per step (particle, surface, xyz, momentum) crossings."""
    n = len(pos)
    pos, mom = pos.copy(), mom.copy()
    turned = np.zeros(n)  # accumulated transverse turning angle
    alive = np.ones(n, dtype=bool)
    k = 0.3 * cfg.bfield / 1000.0  # GeV / mm per unit charge
    cyl_r, disc_z = geo.pos[geo.cyl], geo.pos[geo.disc]
    out = []
    ds = cfg.step_mm
    while alive.any():
        idx = np.flatnonzero(alive)
        p0, m0 = pos[idx], mom[idx]
        pt = np.hypot(m0[:, 0], m0[:, 1])
        p = np.sqrt(pt ** 2 + m0[:, 2] ** 2)
        dth = -q[idx] * k * ds / p  # turning angle of the transverse momentum over arc length ds
        c, s = np.cos(dth), np.sin(dth)
        ux, uy = m0[:, 0] / pt, m0[:, 1] / pt
        # exact helix chord: integral of the rotating unit vector over the step
        small = np.abs(dth) < 1e-9
        dth_safe = np.where(small, 1.0, dth)
        a_ = np.where(small, 1.0, s / dth_safe)
        b_ = np.where(small, 0.0, (1.0 - c) / dth_safe)
        lt = ds * pt / p
        p1 = p0.copy()
        p1[:, 0] += lt * (a_ * ux - b_ * uy)
        p1[:, 1] += lt * (b_ * ux + a_ * uy)
        p1[:, 2] += ds * m0[:, 2] / p
        m1 = m0.copy()
        m1[:, 0] = pt * (c * ux - s * uy)
        m1[:, 1] = pt * (s * ux + c * uy)
        r0, r1 = np.hypot(p0[:, 0], p0[:, 1]), np.hypot(p1[:, 0], p1[:, 1])
        hits_p, hits_s, hits_f = [], [], []
        # cylinders crossed outwards: R in (r0, r1]
        i0, i1 = np.searchsorted(cyl_r, r0, side="right"), np.searchsorted(cyl_r, r1, side="right")
        for j in np.flatnonzero(i1 > i0):
            for t in range(i0[j], i1[j]):
                f = (cyl_r[t] - r0[j]) / (r1[j] - r0[j])
                hits_p.append(j), hits_s.append(geo.cyl[t]), hits_f.append(f)
        z0, z1 = p0[:, 2], p1[:, 2]
        lo_z, hi_z = np.minimum(z0, z1), np.maximum(z0, z1)
        i0, i1 = np.searchsorted(disc_z, lo_z, side="right"), np.searchsorted(disc_z, hi_z, side="right")
        for j in np.flatnonzero(i1 > i0):
            for t in range(i0[j], i1[j]):
                f = (disc_z[t] - z0[j]) / (z1[j] - z0[j])
                hits_p.append(j), hits_s.append(geo.disc[t]), hits_f.append(f)
        if hits_p:
            j, srf, f = np.array(hits_p), np.array(hits_s), np.array(hits_f)[:, None]
            xyz = p0[j] + f * (p1[j] - p0[j])
            r = np.hypot(xyz[:, 0], xyz[:, 1])
            cyl = ~geo.is_disc[srf]  # the chord's point is within ~1e-5 mm of the cylinder: put it on it
            xyz[cyl, :2] *= (geo.pos[srf[cyl]] / np.maximum(r[cyl], 1e-9))[:, None]
            r[cyl] = geo.pos[srf[cyl]]
            coord = np.where(geo.is_disc[srf], r, xyz[:, 2])
            ok = (coord >= geo.lo[srf]) & (coord <= geo.hi[srf])
            j, srf, xyz = j[ok], srf[ok], xyz[ok]
            if len(j):
                out.append((idx[j], srf, xyz, m1[j].copy()))
                if cfg.multiple_scattering:
                    m1[j] = _scatter(m1[j], cfg.material, rng)
        pos[idx], mom[idx] = p1, m1
        turned[idx] += np.abs(dth)
        r1 = np.hypot(p1[:, 0], p1[:, 1])
        gone = (r1 > R_MAX) | (np.abs(p1[:, 2]) > Z_MAX) | (turned[idx] >= np.pi)
        alive[idx[gone]] = False
    return out


def _scatter(mom: np.ndarray, material: float, rng: np.random.Generator) -> np.ndarray:
    """Deflect momenta by two Gaussian angles of the Highland width (direction only; |p| kept)."""
    p = np.linalg.norm(mom, axis=1)
    e = np.sqrt(p ** 2 + PION_MASS ** 2)
    beta = p / e
    theta0 = 0.0136 / (beta * p) * math.sqrt(material) * (1 + 0.038 * math.log(material))
    u = mom / p[:, None]
    # two unit vectors orthogonal to u
    ref = np.where(np.abs(u[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    v = np.cross(u, ref)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = np.cross(u, v)
    a, b = rng.normal(size=(2, len(p), 1)) * theta0[None, :, None]
    d = u + a * v + b * w
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * p[:, None]


def _smear(geo: Geometry, srf: np.ndarray, xyz: np.ndarray, sigma: float, rng: np.random.Generator,
           pitch: bool = False) -> np.ndarray:
    """Gaussian smearing in the surface: r-phi and z on cylinders, r-phi and r on discs; stays on the surface.
    ``pitch``: the surface's pitch / sqrt(12) (fine in r-phi, coarse along the strips) where the geometry has
    pitches, else ``sigma`` in both directions."""
    su = np.full(len(srf), float(sigma))
    sv = su.copy()
    if pitch:
        su = np.where(np.isfinite(geo.sigma_u[srf]), geo.sigma_u[srf], su)
        sv = np.where(np.isfinite(geo.sigma_v[srf]), geo.sigma_v[srf], sv)
    if not (su.any() or sv.any()):
        return xyz
    r = np.hypot(xyz[:, 0], xyz[:, 1])
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    a, b = rng.standard_normal(size=(2, len(r))) * np.stack([su, sv])
    disc = geo.is_disc[srf]
    phi = phi + a / np.maximum(r, 1.0)
    r = np.where(disc, np.clip(r + b, geo.lo[srf], geo.hi[srf]), r)
    z = np.where(disc, xyz[:, 2], np.clip(xyz[:, 2] + b, geo.lo[srf], geo.hi[srf]))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _noise(geo: Geometry, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = geo.areas()
    srf = rng.choice(geo.n_surfaces, size=n, p=a / a.sum())
    phi = rng.uniform(-np.pi, np.pi, n)
    u = rng.random(n)
    lo, hi = geo.lo[srf], geo.hi[srf]
    disc = geo.is_disc[srf]
    r_disc = np.sqrt(lo ** 2 + u * (hi ** 2 - lo ** 2))  # uniform in area
    r = np.where(disc, r_disc, geo.pos[srf])
    z = np.where(disc, geo.pos[srf], lo + u * (hi - lo))
    return srf, np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def simulate_event(geo: Geometry, cfg: SimConfig, seed: int, name: str = "event000000000") -> Event:
    """One TrackML-format event (hits, truth, particles) from ``cfg``; deterministic given ``seed``."""
    cfg.validate()
    rng = np.random.default_rng(seed)
    n_vtx = max(1, int(rng.poisson(cfg.pileup)))
    per = rng.poisson(cfg.particles_per_vertex, size=n_vtx)
    n = int(per.sum())
    if n == 0:
        per[0], n = 1, 1
    vtx = np.stack([rng.normal(0, 0.015, n_vtx), rng.normal(0, 0.015, n_vtx), rng.normal(0, 55.0, n_vtx)], axis=1)
    v = np.repeat(vtx, per, axis=0)
    pt = _sample_pt(rng, n, cfg)
    eta = _sample_eta(rng, n, cfg)
    phi = rng.uniform(-np.pi, np.pi, n)
    q = rng.choice([-1.0, 1.0], n)
    mom = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=1)
    if cfg.secondary_fraction > 0:  # secondaries: born at a displaced vertex, roughly along their own direction
        sec = np.flatnonzero(rng.random(n) < cfg.secondary_fraction)
        d = np.minimum(rng.exponential(cfg.secondary_radius, len(sec)), 0.5 * R_MAX)
        psi = phi[sec] + rng.normal(0, 0.3, len(sec))
        v = v.copy()
        v[sec, 0] += d * np.cos(psi)
        v[sec, 1] += d * np.sin(psi)
        v[sec, 2] = np.clip(v[sec, 2] + d * np.sinh(eta[sec]), -0.9 * Z_MAX, 0.9 * Z_MAX)
    crossings = _propagate(geo, v, mom, q, cfg, rng)
    if crossings:
        part = np.concatenate([c[0] for c in crossings])
        srf = np.concatenate([c[1] for c in crossings])
        txyz = np.concatenate([c[2] for c in crossings])
        tmom = np.concatenate([c[3] for c in crossings])
    else:
        part, srf = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        txyz, tmom = np.zeros((0, 3)), np.zeros((0, 3))
    seq = np.arange(len(part), dtype=np.float64)
    if cfg.double_hit_rate > 0 and len(part):
        # overlapping modules: a second hit of the same layer a few mm further along the track
        dup = np.flatnonzero(rng.random(len(part)) < cfg.double_hit_rate)
        u = tmom[dup] / np.linalg.norm(tmom[dup], axis=1, keepdims=True)
        disc = geo.is_disc[srf[dup]]
        rhat = txyz[dup, :2] / np.maximum(np.hypot(txyz[dup, 0], txyz[dup, 1]), 1e-9)[:, None]
        along = np.where(disc, np.abs(u[:, 2]), np.abs((u[:, :2] * rhat).sum(1)))  # d(r or |z|) per unit path
        delta = rng.uniform(2.0, 6.0, len(dup)) / np.maximum(along, 0.05)
        part, srf = np.concatenate([part, part[dup]]), np.concatenate([srf, srf[dup]])
        txyz = np.concatenate([txyz, txyz[dup] + u * delta[:, None]])
        tmom, seq = np.concatenate([tmom, tmom[dup]]), np.concatenate([seq, seq[dup] + 0.5])
    # order along each track = order of crossing (steps are chronological; double hits right after theirs)
    order_idx = np.lexsort((seq, part))
    part, srf, txyz, tmom = part[order_idx], srf[order_idx], txyz[order_idx], tmom[order_idx]
    nh = np.bincount(part, minlength=n)
    first = np.concatenate([[0], np.cumsum(nh)[:-1]])
    order = np.arange(len(part)) - first[part]
    mxyz = _smear(geo, srf, txyz, cfg.hit_resolution, rng, cfg.pitch_resolution)
    n_noise = int(rng.poisson(len(part) * cfg.noise_fraction / (1 - cfg.noise_fraction))) if len(part) else 0
    nsrf, nxyz = _noise(geo, n_noise, rng)
    pid_of = np.arange(1, n + 1, dtype=np.int64)  # particle ids 1..n; 0 is noise
    all_srf = np.concatenate([srf, nsrf])
    all_xyz = np.concatenate([mxyz, nxyz])
    pid = np.concatenate([pid_of[part], np.zeros(n_noise, dtype=np.int64)])
    w = trackml_weights(pid, np.concatenate([order, np.zeros(n_noise, dtype=np.int64)]),
                        np.concatenate([nh[part], np.zeros(n_noise, dtype=np.int64)]),
                        np.concatenate([pt[part], np.zeros(n_noise)]))
    perm = rng.permutation(len(pid))  # hit ids carry no truth information
    hit_id = np.empty(len(pid), dtype=np.int64)
    hit_id[perm] = np.arange(1, len(pid) + 1)
    hits = pd.DataFrame({"hit_id": hit_id, "x": all_xyz[:, 0], "y": all_xyz[:, 1], "z": all_xyz[:, 2],
                         "volume_id": geo.volume[all_srf], "layer_id": geo.layer[all_srf],
                         "module_id": geo.modules(all_srf, all_xyz)})
    t_xyz = np.concatenate([txyz, nxyz])
    t_mom = np.concatenate([tmom, np.zeros((n_noise, 3))])
    truth = pd.DataFrame({"hit_id": hit_id, "particle_id": pid, "tx": t_xyz[:, 0], "ty": t_xyz[:, 1],
                          "tz": t_xyz[:, 2], "tpx": t_mom[:, 0], "tpy": t_mom[:, 1], "tpz": t_mom[:, 2],
                          "weight": w})
    particles = pd.DataFrame({"particle_id": pid_of, "particle_type": np.where(q > 0, 211, -211),
                              "vx": v[:, 0], "vy": v[:, 1], "vz": v[:, 2], "px": mom[:, 0], "py": mom[:, 1],
                              "pz": mom[:, 2], "q": q.astype(np.int64), "nhits": nh})
    hits = hits.sort_values("hit_id").reset_index(drop=True)
    truth = truth.sort_values("hit_id").reset_index(drop=True)
    return Event(name, hits, truth, particles, meta={"pileup": cfg.pileup, "n_vertices": n_vtx, "seed": seed})


STAT_NAMES = {"hits": "hits per event", "noise": "noise share of hits", "particles": "particles with hits",
              "hits_per_particle": "hits per particle (mean)", "pt_median": "pT median of particles with hits (GeV)",
              "pt_below_0.2": "share of them below 0.2 GeV", "pt_above_1": "share of them above 1 GeV",
              "abs_eta_median": "median of abs(eta)", "secondaries": "share with a vertex > 1 mm from the beam line",
              "double_hits": "share of (particle, layer) with 2+ hits", "strip_z_error": "long-strip barrel z error "
              "(mm, rms hit - truth)"}


def event_statistics(ev: Event) -> dict[str, float]:
    """Statistics that compare a simulated event with a real one (:data:`STAT_NAMES`); needs truth and particles.
    They describe the event (densities, spectra, hit errors); none of them uses a reconstruction."""
    h, t, p = ev.hits, ev.truth, ev.particles
    pid = t["particle_id"].to_numpy()
    real = pid != 0
    u, cnt = np.unique(pid[real], return_counts=True)
    ps = p.set_index("particle_id").reindex(u)
    pt = np.hypot(ps["px"], ps["py"]).to_numpy()
    eta = np.arcsinh(ps["pz"].to_numpy() / np.maximum(pt, 1e-12))
    vr = np.hypot(ps["vx"], ps["vy"]).to_numpy()
    layers = pd.DataFrame({"p": pid[real], "v": h["volume_id"].to_numpy()[real], "l": h["layer_id"].to_numpy()[real]})
    per_layer = layers.groupby(["p", "v", "l"]).size()
    strips = (h["volume_id"].to_numpy() == 17) & real
    return {"hits": float(len(h)), "noise": float((~real).mean()), "particles": float(len(u)),
            "hits_per_particle": float(cnt.mean()) if len(cnt) else float("nan"),
            "pt_median": float(np.nanmedian(pt)), "pt_below_0.2": float(np.nanmean(pt < 0.2)),
            "pt_above_1": float(np.nanmean(pt > 1.0)), "abs_eta_median": float(np.nanmedian(np.abs(eta))),
            "secondaries": float(np.nanmean(vr > 1.0)), "double_hits": float((per_layer > 1).mean()),
            "strip_z_error": float(np.sqrt(np.mean((h["z"].to_numpy() - t["tz"].to_numpy())[strips] ** 2)))
            if strips.any() else float("nan")}
