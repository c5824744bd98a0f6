"""TrackML event files: reading, validation and writing.

The standard format of the field (TrackML Particle Tracking Challenge, Amrouche et al. 2019) is one set of
CSV files per event, plain or gzip-compressed, next to one geometry file:

* ``eventXXXXXXXXX-hits.csv``: ``hit_id, x, y, z, volume_id, layer_id, module_id`` (mm);
* ``eventXXXXXXXXX-truth.csv``: ``hit_id, particle_id, tx, ty, tz, tpx, tpy, tpz, weight`` (``particle_id`` 0
  = noise); only ``hit_id, particle_id`` are required: without ``weight`` (or with empty weight cells) the
  score's weights are recomputed (:meth:`Event.score_weights`);
* ``eventXXXXXXXXX-particles.csv``: ``particle_id, vx, vy, vz, px, py, pz, q, nhits`` (GeV) as in the
  challenge's release, or with an extra ``particle_type`` column (as the embedded event); only ``particle_id`` is
  required (``px, py`` give the pT of the official weights, ``vz`` the start of the hit order);
* ``eventXXXXXXXXX-cells.csv`` (optional): ``hit_id, ch0, ch1, value`` (read only to check its columns);
* ``detectors.csv``: one row per module, ``volume_id, layer_id, module_id, cx, cy, cz, rot_*, module_t,
  module_minhu, module_maxhu, module_hv, pitch_u, pitch_v``.

``--data`` accepts a folder of events (all ``event*-hits.csv[.gz]`` in it) or one event prefix
(``folder/event000000001``); a folder of generic hit files or one such file (:mod:`apps.tracking.formats`:
``NAME.hits.csv[.gz]`` / ``NAME.hits.json``, for detectors other than TrackML's) is read too. The embedded
default (``--data trackml-subset``, ``shared_data/tracking/``) is a 5,527-hit subset of the real TrackML event 1
(see its SOURCE.md). Bad input raises :class:`core.app.InputError` naming the file (and line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.app import InputError
from core.app.files import atomic_write

__all__ = [
    "EMBEDDED", "Event", "SHARED", "resolve_data", "HIT_COLUMNS", "TRUTH_COLUMNS", "PARTICLE_COLUMNS",
    "DETECTOR_COLUMNS", "find_events", "read_event", "read_events", "write_event", "read_detectors",
    "find_detectors", "dataset_name", "TRUTH_REQUIRED", "PARTICLE_REQUIRED", "WEIGHT_MODES", "trackml_secondary",
]

SHARED = Path(__file__).resolve().parents[2] / "shared_data" / "tracking"
EMBEDDED = "trackml-subset"  # the name of the embedded default data set (``--data trackml-subset``)
HIT_COLUMNS = ("hit_id", "x", "y", "z", "volume_id", "layer_id", "module_id")
TRUTH_COLUMNS = ("hit_id", "particle_id", "tx", "ty", "tz", "tpx", "tpy", "tpz", "weight")
PARTICLE_COLUMNS = ("particle_id", "particle_type", "vx", "vy", "vz", "px", "py", "pz", "q", "nhits")
TRUTH_REQUIRED = ("hit_id", "particle_id")  # the other truth columns are optional
PARTICLE_REQUIRED = ("particle_id",)  # the other particle columns are optional (the challenge has no particle_type)
WEIGHT_MODES = ("auto", "file", "official", "uniform")
CELL_COLUMNS = ("hit_id", "ch0", "ch1", "value")
DETECTOR_COLUMNS = ("volume_id", "layer_id", "module_id", "cx", "cy", "cz", "module_t", "module_minhu",
                    "module_maxhu", "module_hv")
_INT_COLUMNS = {"hit_id", "volume_id", "layer_id", "module_id", "particle_id", "particle_type", "q", "nhits"}
_EVENT_RE = re.compile(r"^(event\d+)-hits\.csv(\.gz)?$")


@dataclass
class Event:
    """One event: hits (always), truth and particles (when known), sorted by ``hit_id``."""

    name: str
    hits: pd.DataFrame
    truth: pd.DataFrame | None = None
    particles: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_hits(self) -> int:
        return len(self.hits)

    def particle_ids(self) -> np.ndarray:
        """Particle id of every hit (0 = noise); requires truth."""
        if self.truth is None:
            raise InputError(f"event {self.name} has no truth file: it cannot be scored or trained on")
        return self.truth["particle_id"].to_numpy()

    def weights(self) -> np.ndarray:
        """Per-hit weights of the score (``auto``: :meth:`score_weights`)."""
        return self.score_weights("auto")[0]

    def has_file_weights(self) -> bool:
        """True when the truth gives a finite weight to every hit and they are not all zero."""
        if self.truth is None or "weight" not in self.truth.columns:
            return False
        w = self.truth["weight"].to_numpy(dtype=np.float64)
        return bool(np.isfinite(w).all() and w.sum() > 0)

    def particle_pt(self) -> np.ndarray | None:
        """pT (GeV) of every hit's particle from the particles table (NaN for unknown particles and noise); None
        when there is no particles table with ``px, py``."""
        p = self.particles
        if p is None or not {"px", "py"} <= set(p.columns):
            return None
        pt = pd.Series(np.hypot(p["px"].to_numpy(dtype=np.float64), p["py"].to_numpy(dtype=np.float64)),
                       index=p["particle_id"].to_numpy())
        pt = pt[~pt.index.duplicated()]
        return pt.reindex(self.particle_ids()).to_numpy(dtype=np.float64)

    def official_weights(self) -> np.ndarray:
        """The TrackML weights recomputed from truth (:func:`apps.tracking.metrics.official_weights`): hits
        ordered by ``|z - vz|`` (true z ``tz`` when the truth has it, else the measured z; the particle's ``vz``
        when known, else 0); in TrackML-release events the secondaries of the simulation
        (:func:`trackml_secondary`) weigh 0 as in the release. Needs particle momenta."""
        from apps.tracking.metrics import official_weights

        pid = self.particle_ids()
        pt = self.particle_pt()
        if pt is None:
            raise InputError(f"event {self.name}: official weights need the particles' px, py (a particles table); "
                             "use --weights uniform (or file)")
        z = (self.truth["tz"] if "tz" in self.truth.columns else self.hits["z"]).to_numpy(dtype=np.float64)
        vz = np.zeros(len(pid))
        if "vz" in self.particles.columns:
            v = self.particles.drop_duplicates("particle_id").set_index("particle_id")["vz"]
            vz = np.nan_to_num(v.reindex(pid).to_numpy(dtype=np.float64))
        exclude = trackml_secondary(pid) if self.meta.get("format", "trackml") == "trackml" else None
        return official_weights(pid, np.abs(z - vz), pt, exclude=exclude)

    def score_weights(self, mode: str = "auto") -> tuple[np.ndarray, str]:
        """(per-hit weights, which) for the score. ``mode``: ``file`` (the truth's weight column; an error when
        missing or partial), ``official`` (:meth:`official_weights`), ``uniform``
        (:func:`apps.tracking.metrics.uniform_weights`), ``auto`` (file weights when every hit has one, else
        official when the particles' momenta are known, else uniform). ``which`` is the mode used."""
        from apps.tracking.metrics import uniform_weights

        pid = self.particle_ids()
        if mode not in WEIGHT_MODES:
            raise InputError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {mode!r}")
        if mode == "auto":
            mode = "file" if self.has_file_weights() else "official" if self.particle_pt() is not None else "uniform"
        if mode == "file":
            if not self.has_file_weights():
                raise InputError(f"event {self.name}: the truth has no complete weight column (missing, empty "
                                 "cells or all zero); use --weights official or uniform")
            return self.truth["weight"].to_numpy(dtype=np.float64), "file"
        if mode == "official":
            return self.official_weights(), "official"
        return uniform_weights(pid), "uniform"


def _file(prefix: Path, kind: str) -> Path | None:
    for suffix in (".csv", ".csv.gz"):
        p = prefix.parent / f"{prefix.name}-{kind}{suffix}"
        if p.is_file():
            return p
    return None


def trackml_secondary(particle_id: np.ndarray) -> np.ndarray:
    """Per hit: the particle is a secondary of the TrackML simulation. Release particle ids carry the vertex in
    their high bits and a non-zero lowest 12 bits for particles the detector simulation created (material
    interactions); the release gives their hits zero weight (on the embedded event: all 41 such particles with
    4+ hits weigh 0, all 377 other particles with 4+ hits weigh > 0). Ids below 2^32 (simulated or converted
    events) are never secondaries."""
    pid = np.asarray(particle_id).astype(np.int64)
    if len(pid) == 0 or pid.max() < 2 ** 32:
        return np.zeros(len(pid), dtype=bool)
    return (pid > 0) & ((pid & 0xFFF) != 0)


def _read_csv(path: Path, columns: tuple[str, ...], index_col: bool = False,
              optional: tuple[str, ...] = (), nan_ok: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV, check it has ``columns`` and that they (and the ``optional`` ones present) are finite numbers
    (empty cells allowed in ``nan_ok``); errors name file and line."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        df = pd.read_csv(path, index_col=0 if index_col else None)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        m = re.search(r"line (\d+)", msg)
        where = f" line {m.group(1)}" if m else ""
        raise InputError(f"{path}{where}: not a readable CSV file ({msg})") from e
    except pd.errors.EmptyInputError as e:
        raise InputError(f"{path}: the file is empty") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path} line 1: missing column(s) {missing}; expected the TrackML columns {list(columns)}")
    if len(df) == 0:
        raise InputError(f"{path}: no rows after the header")
    for c in list(columns) + [c for c in optional if c in df.columns and c not in columns]:
        col = pd.to_numeric(df[c], errors="coerce")
        bad = ~np.isfinite(col.to_numpy(dtype=np.float64))
        if c in nan_ok:
            bad &= df[c].notna().to_numpy() & (df[c].astype(str).str.strip() != "").to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{path} line {i + 2}: column {c!r} has a value that is not a finite number "
                            f"({df[c].iloc[i]!r})")
        if c in _INT_COLUMNS and c not in nan_ok:
            df[c] = col.astype(np.int64)
        else:
            df[c] = col.astype(np.float64)
    return df


def resolve_data(path: str | Path | None) -> Path:
    """The folder or event prefix of ``--data``: the embedded subset for ``None`` / ``trackml-subset``."""
    if path is None or str(path) == EMBEDDED:
        return SHARED
    if str(path).strip() == "":
        raise InputError("the data path is empty")
    return Path(path)


def dataset_name(path: str | Path | None) -> str:
    """A short name for a data path (the folder or prefix name; ``trackml-subset`` for the default)."""
    p = resolve_data(path)
    if p == SHARED:
        return EMBEDDED
    return p.name or str(p)


def find_events(path: str | Path | None) -> list[Path]:
    """Event prefixes (``folder/eventXXXX``) under a folder, or the given prefix itself."""
    from apps.tracking.formats import find_generic, is_generic

    p = resolve_data(path)
    if p.is_dir():
        prefixes = sorted({p / m.group(1) for f in p.iterdir() if (m := _EVENT_RE.match(f.name))})
        if not prefixes:
            prefixes = find_generic(p)
        if not prefixes:
            raise InputError(f"{p}: no TrackML event files (eventXXXX-hits.csv[.gz]) nor generic hit files "
                             "(NAME.hits.csv[.gz] / NAME.hits.json) in this folder")
        return prefixes
    if is_generic(p):
        if not p.is_file():
            raise InputError(f"data path {p} does not exist")
        return [p]
    if _file(p, "hits") is not None:
        return [p]
    if p.is_file():
        m = re.match(r"^(event\d+)-\w+\.csv(\.gz)?$", p.name)
        if m:
            return [p.parent / m.group(1)]
        raise InputError(f"{p}: not a TrackML event file (expected eventXXXX-hits.csv[.gz]) or a folder of them")
    raise InputError(f"data path {p} does not exist")


def read_event(prefix: str | Path, require_truth: bool = False) -> Event:
    """Read one event (a TrackML prefix or a generic hit file); truth and particles are optional unless
    ``require_truth``."""
    from apps.tracking.formats import is_generic, read_generic

    prefix = Path(prefix)
    if is_generic(prefix):
        return read_generic(prefix, require_truth=require_truth)
    hits_path = _file(prefix, "hits")
    if hits_path is None:
        raise InputError(f"{prefix}-hits.csv[.gz] does not exist")
    hits = _read_csv(hits_path, HIT_COLUMNS)
    if hits["hit_id"].duplicated().any():
        i = int(np.flatnonzero(hits["hit_id"].duplicated().to_numpy())[0])
        raise InputError(f"{hits_path} line {i + 2}: duplicate hit_id {hits['hit_id'].iloc[i]}")
    hits = hits.sort_values("hit_id").reset_index(drop=True)
    truth = particles = None
    truth_path = _file(prefix, "truth")
    if truth_path is not None:
        truth = _read_csv(truth_path, TRUTH_REQUIRED, optional=TRUTH_COLUMNS, nan_ok=("weight",))
        truth = truth.sort_values("hit_id").reset_index(drop=True)
        if len(truth) != len(hits) or not np.array_equal(truth["hit_id"].to_numpy(), hits["hit_id"].to_numpy()):
            raise InputError(f"{truth_path}: its hit_id values do not match those of {hits_path.name} "
                            f"({len(truth)} vs {len(hits)} rows)")
        if "weight" in truth.columns and (truth["weight"] < 0).any():
            i = int(np.flatnonzero((truth["weight"] < 0).to_numpy())[0])
            raise InputError(f"{truth_path} line {i + 2}: negative hit weight")
    elif require_truth:
        raise InputError(f"{prefix}-truth.csv[.gz] does not exist: this step needs the truth of every event")
    particles_path = _file(prefix, "particles")
    if particles_path is not None:
        particles = _read_csv(particles_path, PARTICLE_REQUIRED, optional=PARTICLE_COLUMNS)
    cells_path = _file(prefix, "cells")
    if cells_path is not None:
        head = pd.read_csv(cells_path, nrows=1)
        missing = [c for c in CELL_COLUMNS if c not in head.columns]
        if missing:
            raise InputError(f"{cells_path} line 1: missing column(s) {missing}")
    return Event(prefix.name, hits, truth, particles, meta={"format": "trackml"})


def read_events(path: str | Path | None, require_truth: bool = False, limit: int | None = None) -> list[Event]:
    prefixes = find_events(path)
    if limit is not None:
        prefixes = prefixes[:limit]
    return [read_event(p, require_truth=require_truth) for p in prefixes]


def find_detectors(path: str | Path | None) -> Path:
    """``detectors.csv[.gz]`` next to the data (or in its parent), else the embedded geometry."""
    candidates = []
    if path is not None and str(path) != EMBEDDED:
        p = resolve_data(path)
        d = p if p.is_dir() else p.parent
        candidates += [d, d.parent]
    candidates.append(SHARED)
    for d in candidates:
        for name in ("detectors.csv", "detectors.csv.gz"):
            if (d / name).is_file():
                return d / name
    raise InputError(f"no detectors.csv[.gz] near {path} nor in {SHARED}")


def read_detectors(path: str | Path) -> pd.DataFrame:
    """The module table of ``detectors.csv`` (the leading unnamed pandas index column is allowed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"detector file {path} does not exist")
    head = pd.read_csv(path, nrows=0)
    return _read_csv(path, DETECTOR_COLUMNS, index_col=bool(head.columns[0].startswith("Unnamed")
                                                            or head.columns[0] == ""))


def write_event(prefix: str | Path, event: Event, compress: bool = True) -> list[Path]:
    """Write ``prefix-hits/truth/particles.csv[.gz]`` in the TrackML column order (atomically, on the main process
    only: :func:`core.app.files.atomic_write`); returns the paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    ext = ".csv.gz" if compress else ".csv"
    out = []
    for kind, df, cols in (("hits", event.hits, HIT_COLUMNS), ("truth", event.truth, TRUTH_COLUMNS),
                           ("particles", event.particles, PARTICLE_COLUMNS)):
        if df is None:
            continue
        p = prefix.parent / f"{prefix.name}-{kind}{ext}"
        table = df.loc[:, [c for c in cols if c in df.columns]]
        atomic_write(p, lambda f, table=table: table.to_csv(f, index=False, float_format="%.6g",
                                                            compression="gzip" if compress else None))
        out.append(p)
    return out
