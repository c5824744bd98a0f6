r"""A small simulator of straight tracks through a forward detector of planes at fixed z (no magnetic field).

Detector (:class:`PlanarDetector`): ``len(planes_z)`` square silicon planes perpendicular to the beam (z) axis,
at ``planes_z`` (mm), each covering :math:`|x|, |y| \le` ``half_width`` outside a beam hole of radius
``hole_radius``, tiled by square modules of side ``module_size``. A hit's ``layer_id`` is its plane (1, 2, ...),
its ``module_id`` is ``1000 * plane + module index`` on that plane.

Physics (:func:`simulate_planar_event`): ``Poisson(particles)`` charged particles from vertices at
:math:`(N(0, 0.015), N(0, 0.015), N(0, \sigma_z))` mm, pseudo-rapidity uniform in [``eta_min``, ``eta_max``],
azimuth uniform, momentum from :math:`dN/dp \propto p^{-\alpha}` on [``p_min``, ``p_max``] GeV. Without a field a
particle flies in a straight line; at each plane within the acceptance it leaves a hit with probability
``hit_efficiency``, smeared by ``hit_resolution`` (mm) in x and y, and with ``material`` > 0 its direction is
deflected by two Gaussian angles of width :math:`\theta_0 = 13.6\,\mathrm{MeV}/(\beta p)\sqrt{x/X_0}(1 +
0.038\ln(x/X_0))` (Highland). Noise hits (a share ``noise_fraction`` of all hits) lie uniformly on the planes.
The truth weights are the official TrackML weights recomputed from truth
(:func:`apps.tracking.metrics.official_weights`). Events come out in the generic hit format
(:mod:`apps.tracking.formats`), e.g. ``python -m apps.tracking simulate-planar --output DIR``.

Straight tracks need no other change to the pipeline: the DBSCAN baseline's coordinates (x/d, y/d, z/r) are
constant along a straight line from the origin, and the GNN's edge curvature feature is 0 for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from apps.tracking.data import Event
from apps.tracking.metrics import official_weights
from core.app import AppSettings, InputError, option

__all__ = ["PlanarDetector", "simulate_planar_event", "PlanarSettings"]

PION_MASS = 0.13957


@dataclass
class PlanarDetector:
    """Geometry and physics of the planar forward detector (module docstring)."""

    planes_z: list[float] = field(default_factory=lambda: [300.0, 400.0, 500.0, 600.0, 700.0, 800.0])
    half_width: float = 150.0
    hole_radius: float = 10.0
    module_size: float = 50.0
    particles: float = 40.0
    eta_min: float = 2.0
    eta_max: float = 4.0
    p_min: float = 2.0
    p_max: float = 100.0
    p_alpha: float = 2.5
    sigma_z: float = 20.0
    hit_efficiency: float = 0.98
    hit_resolution: float = 0.02
    material: float = 0.01
    noise_fraction: float = 0.05

    def validate(self) -> PlanarDetector:
        z = np.asarray(self.planes_z, dtype=np.float64)
        if len(z) < 2 or not np.all(np.diff(z) > 0) or z[0] <= 0:
            raise InputError(f"planes_z must list at least 2 increasing positive z positions, got {self.planes_z}")
        if not (0 <= self.hole_radius < self.half_width and self.module_size > 0):
            raise InputError("the planar detector needs 0 <= hole_radius < half_width and module_size > 0")
        if not (0 < self.eta_min < self.eta_max and 0 < self.p_min < self.p_max):
            raise InputError("the planar detector needs 0 < eta_min < eta_max and 0 < p_min < p_max")
        if not (0 < self.hit_efficiency <= 1 and 0 <= self.noise_fraction < 1 and self.particles > 0
                and 0 <= self.material < 1 and self.hit_resolution >= 0):
            raise InputError("the planar detector needs hit_efficiency in (0, 1], noise_fraction in [0, 1), "
                             "particles > 0, material in [0, 1) and hit_resolution >= 0")
        return self

    @classmethod
    def from_events(cls, events: list[Event], tolerance: float = 1.0, **physics) -> PlanarDetector:
        """The planes of recorded forward-detector events: every z (mm) at which at least 1 % of the hits lie,
        merged within ``tolerance``; the half width is the largest |x| or |y|, the beam hole the smallest r of the
        hits. ``physics`` overrides the other fields (particles, eta range, ...)."""
        xyz = np.concatenate([ev.hits[["x", "y", "z"]].to_numpy(dtype=np.float64) for ev in events])
        if len(xyz) == 0:
            raise InputError("no hits to infer the planes from")
        z = np.sort(xyz[:, 2])
        groups = np.split(z, np.flatnonzero(np.diff(z) > tolerance) + 1)
        planes = [float(np.median(g)) for g in groups if len(g) >= 0.01 * len(z)]
        if len(planes) < 2 or planes[0] <= 0:
            raise InputError(f"the hits do not lie on at least 2 planes at positive z (found {planes}); the planar "
                             "detector models a forward detector of planes at fixed z > 0")
        r = np.hypot(xyz[:, 0], xyz[:, 1])
        return cls(planes_z=planes, half_width=float(np.abs(xyz[:, :2]).max()), hole_radius=float(r.min()),
                   **physics).validate()

    def modules(self, plane: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = int(np.ceil(2 * self.half_width / self.module_size))
        ix = np.clip(((x + self.half_width) // self.module_size).astype(np.int64), 0, n - 1)
        iy = np.clip(((y + self.half_width) // self.module_size).astype(np.int64), 0, n - 1)
        return 1000 * (plane + 1) + ix * n + iy


def _accept(det: PlanarDetector, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (np.abs(x) <= det.half_width) & (np.abs(y) <= det.half_width) & (np.hypot(x, y) >= det.hole_radius)


def simulate_planar_event(det: PlanarDetector, seed: int, name: str = "event000000000") -> Event:
    """One event of straight tracks (module docstring); deterministic given ``seed``; generic-format truth
    (particle ids 1..n, 0 = noise)."""
    det.validate()
    rng = np.random.default_rng(seed)
    n = max(1, int(rng.poisson(det.particles)))
    vtx = np.stack([rng.normal(0, 0.015, n), rng.normal(0, 0.015, n), rng.normal(0, det.sigma_z, n)], axis=1)
    eta = rng.uniform(det.eta_min, det.eta_max, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    a1 = 1.0 - det.p_alpha
    u = rng.random(n)
    p = (det.p_min ** a1 + u * (det.p_max ** a1 - det.p_min ** a1)) ** (1.0 / a1)
    theta = 2 * np.arctan(np.exp(-eta))
    d = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=1)
    mom = p[:, None] * d
    q = rng.choice([-1, 1], n)
    pos, dirn = vtx.copy(), d.copy()
    rows = []  # (particle index, plane, true x, y, z, direction)
    beta = p / np.sqrt(p ** 2 + PION_MASS ** 2)
    x0 = det.material
    theta0 = 0.0136 / (beta * p) * np.sqrt(x0) * (1 + 0.038 * np.log(x0)) if x0 > 0 else np.zeros(n)
    for k, zk in enumerate(det.planes_z):
        t = (zk - pos[:, 2]) / dirn[:, 2]
        ahead = t > 0
        hit_pos = pos + np.where(ahead, t, 0.0)[:, None] * dirn
        inside = ahead & _accept(det, hit_pos[:, 0], hit_pos[:, 1])
        seen = inside & (rng.random(n) < det.hit_efficiency)
        for i in np.flatnonzero(seen):
            rows.append((i, k, *hit_pos[i]))
        pos = np.where(ahead[:, None], hit_pos, pos)
        if x0 > 0:  # scatter at every crossed plane (hit or not)
            kick = rng.normal(0, 1, (n, 2)) * theta0[:, None]
            tx = dirn[:, 0] / dirn[:, 2] + kick[:, 0]
            ty = dirn[:, 1] / dirn[:, 2] + kick[:, 1]
            nd = np.stack([tx, ty, np.ones(n)], axis=1)
            nd /= np.linalg.norm(nd, axis=1, keepdims=True)
            dirn = np.where(inside[:, None], nd, dirn)
    part = np.array([r[0] for r in rows], dtype=np.int64)
    plane = np.array([r[1] for r in rows], dtype=np.int64)
    txyz = np.array([r[2:] for r in rows], dtype=np.float64).reshape(-1, 3)
    mxyz = txyz.copy()
    mxyz[:, :2] += rng.normal(0, det.hit_resolution, (len(txyz), 2)) if det.hit_resolution > 0 else 0.0
    n_noise = int(rng.poisson(len(part) * det.noise_fraction / (1 - det.noise_fraction))) if len(part) else 0
    nplane = rng.integers(0, len(det.planes_z), n_noise)
    nxy = np.zeros((0, 2))
    while len(nxy) < n_noise:  # uniform on the planes' sensitive area (rejection of the beam hole)
        c = rng.uniform(-det.half_width, det.half_width, (2 * (n_noise - len(nxy)) + 4, 2))
        nxy = np.concatenate([nxy, c[_accept(det, c[:, 0], c[:, 1])]])[:n_noise]
    nxyz = np.concatenate([nxy, np.asarray(det.planes_z, dtype=np.float64)[nplane][:, None]], axis=1)
    pid = np.concatenate([part + 1, np.zeros(n_noise, dtype=np.int64)])
    all_xyz = np.concatenate([mxyz, nxyz])
    all_t = np.concatenate([txyz, nxyz])
    all_plane = np.concatenate([plane, nplane])
    pt = np.hypot(mom[:, 0], mom[:, 1])
    hit_pt = np.where(pid > 0, pt[np.maximum(pid - 1, 0)], np.nan)
    hit_vz = np.where(pid > 0, vtx[np.maximum(pid - 1, 0), 2], 0.0)
    w = official_weights(pid, np.abs(all_t[:, 2] - hit_vz), hit_pt)
    perm = rng.permutation(len(pid))
    hit_id = np.empty(len(pid), dtype=np.int64)
    hit_id[perm] = np.arange(1, len(pid) + 1)
    hits = pd.DataFrame({"hit_id": hit_id, "x": all_xyz[:, 0], "y": all_xyz[:, 1], "z": all_xyz[:, 2],
                         "volume_id": 0, "layer_id": all_plane + 1,
                         "module_id": det.modules(all_plane, all_xyz[:, 0], all_xyz[:, 1])})
    truth = pd.DataFrame({"hit_id": hit_id, "particle_id": pid, "tx": all_t[:, 0], "ty": all_t[:, 1],
                          "tz": all_t[:, 2], "weight": w})
    nh = np.bincount(part, minlength=n)
    particles = pd.DataFrame({"particle_id": np.arange(1, n + 1), "vx": vtx[:, 0], "vy": vtx[:, 1],
                              "vz": vtx[:, 2], "px": mom[:, 0], "py": mom[:, 1], "pz": mom[:, 2], "q": q,
                              "nhits": nh})
    return Event(name, hits.sort_values("hit_id").reset_index(drop=True),
                 truth.sort_values("hit_id").reset_index(drop=True), particles,
                 meta={"format": "generic", "seed": seed, "detector": "planar"})


@dataclass
class PlanarSettings(AppSettings):
    """The options of ``python -m apps.tracking simulate-planar``: straight-track events in a forward detector of
    planes at fixed z, written in the generic hit format."""

    output: str = option("", help="folder to write NAME.hits.csv + NAME.particles.csv into; required")
    events: int = option(1, help="number of events to write", low=1)
    seed: int = option(0, help="seed of the first event (event i: seed + i; its file name carries the seed)", low=0)
    particles: float = option(40.0, help="mean number of particles per event", low=0, low_open=True)
    planes_z: list[float] = option([300.0, 400.0, 500.0, 600.0, 700.0, 800.0],
                                   help="z positions of the detector planes (mm, increasing)", low=0, low_open=True)
    noise_fraction: float = option(0.05, help="share of all hits that are noise", low=0, high=1, high_open=True)
    hit_resolution: float = option(0.02, help="Gaussian hit smearing in x and y (mm)", low=0)
    format: str = option("csv", help="'csv' (NAME.hits.csv) or 'json' (NAME.hits.json)", choices=("csv", "json"))
    like: str = option("", help="recorded events (a folder or file, generic or TrackML format) whose planes, half "
                                "width and beam hole the simulated detector copies (then --planes-z is ignored)")
    run_dir: str = option("", help="not used by simulate-planar (it writes only into --output)", model=False)

    def detector(self) -> PlanarDetector:
        physics = {"particles": self.particles, "noise_fraction": self.noise_fraction,
                   "hit_resolution": self.hit_resolution}
        if self.like.strip():
            from apps.tracking.data import find_events, read_event

            return PlanarDetector.from_events([read_event(p) for p in find_events(self.like)], **physics)
        return PlanarDetector(planes_z=list(self.planes_z), **physics).validate()

    def check(self) -> None:
        if not self.output.strip():
            raise InputError("simulate-planar needs --output DIR (the folder to write the events into)")
        if not self.like.strip():  # --like events are read (and checked) when the verb runs
            self.detector()
