"""The generic hit format (detectors other than TrackML's) and the converter from a per-module JSON layout.

**Generic hit format**: one file per event, ``NAME.hits.csv`` (or ``.hits.csv.gz``) or ``NAME.hits.json``; the
event's name is ``NAME``. A folder of such files (or one file) is accepted by ``--data`` / ``--eval-data``.

* CSV: a header and one row per hit. Required: ``hit_id`` (integer, unique), ``x, y, z`` (mm, finite), and
  ``module_id`` or ``layer_id`` (integers; a missing one is copied from the other). Optional: ``volume_id``
  (default 0), ``particle_id`` (the truth: the hit's particle, 0 = noise; needed to train and to score),
  ``weight`` (per-hit score weight; empty cells allowed: the weights are then recomputed), ``pt`` (GeV, the pT
  of the hit's particle, for the official weights), ``vz`` (mm, the z of the particle's vertex).
* JSON: ``{"event": NAME (optional), "hits": [{"hit_id": 1, "x": .., "y": .., "z": .., "module_id": ..,
  "layer_id": .., "particle_id": ..}, ...], "particles": [{"particle_id": .., "px": .., "py": .., "pz": ..,
  "vx": .., "vy": .., "vz": ..}, ...] (optional)}``, the same keys as the CSV columns.

**Per-module JSON layout** (the input of ``python -m apps.tracking convert``): one event per file,

.. code-block:: json

    {"event": "event0001",
     "modules": [{"module_id": 7, "layer_id": 2,
                  "hits": [{"hit_id": 1, "x": 1.5, "y": -3.0, "z": 600.0, "particle_id": 12}, ...]}, ...],
     "particles": [{"particle_id": 12, "px": 0.1, "py": 0.2, "pz": 5.0, "vz": 0.0}, ...]}

``event`` (default: the file name), ``layer_id`` (default: the module id), ``particle_id`` (default: no truth;
every hit must then lack it) and ``particles`` are optional. Each hit gets its module's ids. Converting writes
``OUTPUT/NAME.hits.csv`` (``--format csv``, the default) or ``OUTPUT/NAME.hits.json``, plus
``OUTPUT/NAME.particles.csv`` when the event lists particles. Bad input raises :class:`core.app.InputError`
naming the file and the module / hit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.app import AppSettings, InputError, option
from core.app.files import atomic_write

__all__ = ["GENERIC_SUFFIXES", "GENERIC_REQUIRED", "GENERIC_OPTIONAL", "is_generic", "find_generic",
           "read_generic", "write_generic", "read_module_json", "convert_path", "ConvertSettings"]

GENERIC_SUFFIXES = (".hits.csv", ".hits.csv.gz", ".hits.json")
GENERIC_REQUIRED = ("hit_id", "x", "y", "z")
GENERIC_OPTIONAL = ("module_id", "layer_id", "volume_id", "particle_id", "weight", "pt", "vz")
_INT = ("hit_id", "module_id", "layer_id", "volume_id", "particle_id")
_PARTICLE_KEYS = ("particle_id", "px", "py", "pz", "vx", "vy", "vz", "q")


def is_generic(path: str | Path) -> bool:
    return str(path).endswith(GENERIC_SUFFIXES)


def find_generic(folder: Path) -> list[Path]:
    """The generic hit files of a folder, sorted by name."""
    return sorted(f for f in folder.iterdir() if f.is_file() and is_generic(f.name))


def _event_name(path: Path) -> str:
    name = path.name
    for suf in GENERIC_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _check_table(df: pd.DataFrame, where: str, nan_ok: tuple[str, ...] = ("weight", "pt", "vz")) -> pd.DataFrame:
    """Required columns present; every known column numeric and finite (NaN allowed in ``nan_ok``); ints cast."""
    missing = [c for c in GENERIC_REQUIRED if c not in df.columns]
    if "module_id" not in df.columns and "layer_id" not in df.columns:
        missing.append("module_id or layer_id")
    if missing:
        raise InputError(f"{where}: missing column(s) {missing}; the generic hit format needs hit_id, x, y, z and "
                         "module_id or layer_id")
    if len(df) == 0:
        raise InputError(f"{where}: no hits")
    df = df.copy()
    for c in GENERIC_REQUIRED + GENERIC_OPTIONAL:
        if c not in df.columns:
            continue
        col = pd.to_numeric(df[c], errors="coerce")
        v = col.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(v)
        if c in nan_ok:
            empty = (df[c].isna() | (df[c].astype(str).str.strip() == "")).to_numpy()
            bad &= ~empty
        if c in _INT:
            bad |= np.isfinite(v) & (v != np.round(v))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            kind = "an integer" if c in _INT else "a finite number"
            raise InputError(f"{where}: hit row {i + 1}: column {c!r} is not {kind} ({df[c].iloc[i]!r})")
        df[c] = col.astype(np.int64) if c in _INT else col.astype(np.float64)
    if df["hit_id"].duplicated().any():
        i = int(np.flatnonzero(df["hit_id"].duplicated().to_numpy())[0])
        raise InputError(f"{where}: hit row {i + 1}: duplicate hit_id {df['hit_id'].iloc[i]}")
    if "particle_id" in df.columns and (df["particle_id"] < 0).any():
        i = int(np.flatnonzero((df["particle_id"] < 0).to_numpy())[0])
        raise InputError(f"{where}: hit row {i + 1}: negative particle_id (0 is noise)")
    if "weight" in df.columns and (df["weight"] < 0).any():
        raise InputError(f"{where}: negative hit weight")
    if "module_id" not in df.columns:
        df["module_id"] = df["layer_id"]
    if "layer_id" not in df.columns:
        df["layer_id"] = df["module_id"]
    if "volume_id" not in df.columns:
        df["volume_id"] = 0
    return df


def _particles_table(rows: list, where: str) -> pd.DataFrame | None:
    if not rows:
        return None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{where}: 'particles' must be a list of objects")
    df = pd.DataFrame(rows)
    if "particle_id" not in df.columns:
        raise InputError(f"{where}: every particle needs a particle_id")
    keep = [c for c in _PARTICLE_KEYS if c in df.columns]
    df = df[keep].copy()
    for c in keep:
        col = pd.to_numeric(df[c], errors="coerce")
        if not np.isfinite(col.to_numpy(dtype=np.float64)).all():
            i = int(np.flatnonzero(~np.isfinite(col.to_numpy(dtype=np.float64)))[0])
            raise InputError(f"{where}: particle {i + 1}: {c!r} is not a finite number ({df[c].iloc[i]!r})")
        df[c] = col.astype(np.int64) if c in ("particle_id", "q") else col.astype(np.float64)
    return df


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise InputError(f"{path}: the top level must be a JSON object")
    return obj


def read_generic(path: str | Path, require_truth: bool = False):
    """One event of the generic hit format (module docstring) as an :class:`apps.tracking.data.Event` (TrackML
    tables: hits ``hit_id, x, y, z, volume_id, layer_id, module_id``; truth ``hit_id, particle_id[, weight]``
    when the file has particle ids; particles from ``particles`` (JSON), ``NAME.particles.csv`` beside it, or
    the ``pt`` / ``vz`` columns)."""
    from apps.tracking.data import HIT_COLUMNS, Event

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    name = _event_name(path)
    particles = None
    if path.name.endswith(".json"):
        obj = _read_json(path)
        hits = obj.get("hits")
        if not isinstance(hits, list) or not all(isinstance(h, dict) for h in hits):
            raise InputError(f"{path}: needs a 'hits' list of objects (hit_id, x, y, z, module_id, ...)")
        df = _check_table(pd.DataFrame(hits), str(path))
        particles = _particles_table(obj.get("particles") or [], str(path))
        name = str(obj.get("event") or name)
    else:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: the file is empty")
        try:
            raw = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as e:
            raise InputError(f"{path}: not a readable CSV file ({str(e).strip().splitlines()[-1]})") from e
        df = _check_table(raw, str(path))
        side = path.parent / f"{name}.particles.csv"
        if side.is_file():
            try:
                particles = _particles_table(pd.read_csv(side).to_dict("records"), str(side))
            except pd.errors.ParserError as e:
                raise InputError(f"{side}: not a readable CSV file") from e
    df = df.sort_values("hit_id").reset_index(drop=True)
    truth = None
    if "particle_id" in df.columns:
        cols = ["hit_id", "particle_id"] + (["weight"] if "weight" in df.columns else [])
        truth = df[cols].copy()
        if particles is None and "pt" in df.columns:  # per-hit pT -> a particles table (pT along x)
            g = df[df["particle_id"] != 0].groupby("particle_id")
            particles = pd.DataFrame({"particle_id": list(g.groups), "px": g["pt"].first().to_numpy(),
                                      "py": np.zeros(len(g.groups))})
            if "vz" in df.columns:
                particles["vz"] = g["vz"].first().to_numpy()
            particles = particles[np.isfinite(particles["px"])]
    elif require_truth:
        raise InputError(f"{path}: no particle_id column: this step needs the truth of every event")
    return Event(name, df.loc[:, list(HIT_COLUMNS)].copy(), truth, particles,
                 meta={"format": "generic", "source": str(path)})


def write_generic(path: str | Path, event, fmt: str = "csv") -> list[Path]:
    """Write an event in the generic format: ``path`` is the folder; returns the files written (atomically)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    h = event.hits.loc[:, ["hit_id", "x", "y", "z", "volume_id", "layer_id", "module_id"]].copy()
    if event.truth is not None:
        t = event.truth.set_index("hit_id")
        h["particle_id"] = t["particle_id"].reindex(h["hit_id"]).to_numpy()
        if "weight" in t.columns:
            h["weight"] = t["weight"].reindex(h["hit_id"]).to_numpy()
    out = []
    if fmt == "json":
        obj = {"event": event.name, "hits": _records(h)}
        if event.particles is not None:
            obj["particles"] = _records(event.particles.loc[:, [c for c in _PARTICLE_KEYS
                                                                if c in event.particles.columns]])
        p = folder / f"{event.name}.hits.json"
        atomic_write(p, lambda f: f.write(json.dumps(obj).encode()))
        return [p]
    p = folder / f"{event.name}.hits.csv"
    atomic_write(p, lambda f: h.to_csv(f, index=False, float_format="%.6g"))
    out.append(p)
    if event.particles is not None:
        q = folder / f"{event.name}.particles.csv"
        cols = [c for c in _PARTICLE_KEYS if c in event.particles.columns]
        atomic_write(q, lambda f: event.particles.loc[:, cols].to_csv(f, index=False, float_format="%.6g"))
        out.append(q)
    return out


def _records(df: pd.DataFrame) -> list[dict]:
    out = []
    for rec in df.to_dict("records"):
        out.append({k: (int(v) if isinstance(v, (np.integer, int)) else
                        None if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in rec.items()})
    return out


def read_module_json(path: str | Path):
    """An event of the per-module JSON layout (module docstring) as an :class:`apps.tracking.data.Event`."""
    from apps.tracking.data import HIT_COLUMNS, Event

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    obj = _read_json(path)
    modules = obj.get("modules")
    if not isinstance(modules, list) or not modules:
        raise InputError(f"{path}: needs a non-empty 'modules' list ({{\"module_id\": .., \"hits\": [..]}})")
    rows = []
    for i, m in enumerate(modules):
        where = f"{path}: module {i + 1}"
        if not isinstance(m, dict) or "module_id" not in m or not isinstance(m.get("hits"), list):
            raise InputError(f"{where}: needs 'module_id' and a 'hits' list")
        for j, hit in enumerate(m["hits"]):
            if not isinstance(hit, dict):
                raise InputError(f"{where} (module_id {m['module_id']}), hit {j + 1}: not an object")
            missing = [k for k in GENERIC_REQUIRED if k not in hit]
            if missing:
                raise InputError(f"{where} (module_id {m['module_id']}), hit {j + 1}: missing {missing}")
            rows.append({**{k: hit[k] for k in ("hit_id", "x", "y", "z", "particle_id") if k in hit},
                         "module_id": m["module_id"], "layer_id": m.get("layer_id", m["module_id"]),
                         "volume_id": m.get("volume_id", 0)})
    if not rows:
        raise InputError(f"{path}: the modules hold no hits")
    df = pd.DataFrame(rows)
    if "particle_id" in df.columns and df["particle_id"].isna().any():
        i = int(np.flatnonzero(df["particle_id"].isna().to_numpy())[0])
        raise InputError(f"{path}: hit_id {rows[i]['hit_id']} has no particle_id while others have one (use 0 "
                         "for noise)")
    df = _check_table(df, str(path)).sort_values("hit_id").reset_index(drop=True)
    truth = df[["hit_id", "particle_id"]].copy() if "particle_id" in df.columns else None
    particles = _particles_table(obj.get("particles") or [], str(path))
    name = str(obj.get("event") or path.name.removesuffix(".json"))
    if not re.fullmatch(r"[\w.\-]+", name):
        raise InputError(f"{path}: event name {name!r} may hold only letters, digits, '_', '-' and '.'")
    return Event(name, df.loc[:, list(HIT_COLUMNS)].copy(), truth, particles, meta={"format": "generic"})


def convert_path(source: str | Path, output: str | Path, fmt: str = "csv") -> list[Path]:
    """Convert one per-module JSON file, or every ``*.json`` of a folder, into generic hit files in ``output``;
    returns the hit files written."""
    source = Path(source)
    if source.is_dir():
        files = sorted(f for f in source.glob("*.json") if not f.name.endswith(".hits.json"))
        if not files:
            raise InputError(f"{source}: no per-module JSON files (*.json) in this folder")
    elif source.is_file():
        files = [source]
    else:
        raise InputError(f"convert input {source} does not exist")
    events = [read_module_json(f) for f in files]  # every file is checked before anything is written
    names = [ev.name for ev in events]
    if len(set(names)) != len(names):
        raise InputError(f"{source}: two files give the same event name; names: {names}")
    out = []
    for ev in events:
        out.append(write_generic(output, ev, fmt)[0])
    return out


@dataclass
class ConvertSettings(AppSettings):
    """The options of ``python -m apps.tracking convert``: per-module JSON events -> the generic hit format."""

    input: str = option("", help="a per-module JSON event file or a folder of them (*.json; layout: "
                                 "docs/apps/tracking.md, 'Other detectors')")
    output: str = option("", help="folder to write NAME.hits.csv (or .hits.json) into; required")
    format: str = option("csv", help="output format: 'csv' (NAME.hits.csv + NAME.particles.csv) or 'json' "
                                     "(NAME.hits.json)", choices=("csv", "json"))
    run_dir: str = option("", help="not used by convert (it writes only into --output)", model=False)

    def check(self) -> None:
        if not self.input.strip():
            raise InputError("convert needs --input FILE_OR_FOLDER (per-module JSON events)")
        if not self.output.strip():
            raise InputError("convert needs --output DIR (the folder to write the generic hit files into)")
