"""TrackML event files: reading, validation and writing.

The standard format of the field (TrackML Particle Tracking Challenge, Amrouche et al. 2019) is one set of
CSV files per event, plain or gzip-compressed, next to one geometry file:

* ``eventXXXXXXXXX-hits.csv``: ``hit_id, x, y, z, volume_id, layer_id, module_id`` (mm);
* ``eventXXXXXXXXX-truth.csv``: ``hit_id, particle_id, tx, ty, tz, tpx, tpy, tpz, weight`` (``particle_id`` 0
  = noise);
* ``eventXXXXXXXXX-particles.csv``: ``particle_id, particle_type, vx, vy, vz, px, py, pz, q, nhits`` (GeV);
* ``eventXXXXXXXXX-cells.csv`` (optional): ``hit_id, ch0, ch1, value`` (read only to check its columns);
* ``detectors.csv``: one row per module, ``volume_id, layer_id, module_id, cx, cy, cz, rot_*, module_t,
  module_minhu, module_maxhu, module_hv, pitch_u, pitch_v``.

``--data`` accepts a folder of events (all ``event*-hits.csv[.gz]`` in it) or one event prefix
(``folder/event000000001``). The embedded default (``--data trackml-subset``, ``shared_data/tracking/``) is a
5,527-hit subset of the real TrackML event 1 (see its SOURCE.md). Bad input raises
:class:`core.app.InputError` naming the file (and line).
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
    "find_detectors", "dataset_name",
]

SHARED = Path(__file__).resolve().parents[2] / "shared_data" / "tracking"
EMBEDDED = "trackml-subset"  # the name of the embedded default data set (``--data trackml-subset``)
HIT_COLUMNS = ("hit_id", "x", "y", "z", "volume_id", "layer_id", "module_id")
TRUTH_COLUMNS = ("hit_id", "particle_id", "tx", "ty", "tz", "tpx", "tpy", "tpz", "weight")
PARTICLE_COLUMNS = ("particle_id", "particle_type", "vx", "vy", "vz", "px", "py", "pz", "q", "nhits")
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
        if self.truth is None:
            raise InputError(f"event {self.name} has no truth file: it cannot be scored or trained on")
        return self.truth["weight"].to_numpy(dtype=np.float64)


def _file(prefix: Path, kind: str) -> Path | None:
    for suffix in (".csv", ".csv.gz"):
        p = prefix.parent / f"{prefix.name}-{kind}{suffix}"
        if p.is_file():
            return p
    return None


def _read_csv(path: Path, columns: tuple[str, ...], index_col: bool = False) -> pd.DataFrame:
    """Read a CSV, check it has ``columns`` and that they are finite numbers; errors name file and line."""
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
    for c in columns:
        col = pd.to_numeric(df[c], errors="coerce")
        bad = ~np.isfinite(col.to_numpy(dtype=np.float64))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{path} line {i + 2}: column {c!r} has a value that is not a finite number "
                            f"({df[c].iloc[i]!r})")
        if c in _INT_COLUMNS:
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
    p = resolve_data(path)
    if p.is_dir():
        prefixes = sorted({p / m.group(1) for f in p.iterdir() if (m := _EVENT_RE.match(f.name))})
        if not prefixes:
            raise InputError(f"{p}: no TrackML event files (eventXXXX-hits.csv[.gz]) in this folder")
        return prefixes
    if _file(p, "hits") is not None:
        return [p]
    if p.is_file():
        m = re.match(r"^(event\d+)-\w+\.csv(\.gz)?$", p.name)
        if m:
            return [p.parent / m.group(1)]
        raise InputError(f"{p}: not a TrackML event file (expected eventXXXX-hits.csv[.gz]) or a folder of them")
    raise InputError(f"data path {p} does not exist")


def read_event(prefix: str | Path, require_truth: bool = False) -> Event:
    """Read one event; truth and particles are optional unless ``require_truth``."""
    prefix = Path(prefix)
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
        truth = _read_csv(truth_path, TRUTH_COLUMNS).sort_values("hit_id").reset_index(drop=True)
        if len(truth) != len(hits) or not np.array_equal(truth["hit_id"].to_numpy(), hits["hit_id"].to_numpy()):
            raise InputError(f"{truth_path}: its hit_id values do not match those of {hits_path.name} "
                            f"({len(truth)} vs {len(hits)} rows)")
        if (truth["weight"] < 0).any():
            i = int(np.flatnonzero((truth["weight"] < 0).to_numpy())[0])
            raise InputError(f"{truth_path} line {i + 2}: negative hit weight")
    elif require_truth:
        raise InputError(f"{prefix}-truth.csv[.gz] does not exist: this step needs the truth of every event")
    particles_path = _file(prefix, "particles")
    if particles_path is not None:
        particles = _read_csv(particles_path, PARTICLE_COLUMNS)
    cells_path = _file(prefix, "cells")
    if cells_path is not None:
        head = pd.read_csv(cells_path, nrows=1)
        missing = [c for c in CELL_COLUMNS if c not in head.columns]
        if missing:
            raise InputError(f"{cells_path} line 1: missing column(s) {missing}")
    return Event(prefix.name, hits, truth, particles)


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
        table = df.loc[:, list(cols)]
        atomic_write(p, lambda f, table=table: table.to_csv(f, index=False, float_format="%.6g",
                                                            compression="gzip" if compress else None))
        out.append(p)
    return out
