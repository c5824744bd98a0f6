"""Data of the regression app: tables (CSV / TSV / Parquet), the embedded defaults, the DIR split.

* ``--data table.csv --target NAME``: one table; a long-tailed train split and balanced val / test
  splits are drawn from it by label bin (:func:`apps.regression.dir.dir_split`).
* ``--data folder/`` with ``train.*``, ``val.*`` (or ``dev.*`` / ``valid.*``) and ``test.*``: pre-split
  tables, used as they are.
* ``--data abalone`` (the default: UCI Abalone, target ``Rings``, DIR split made here) or ``--data sts_b_dir``
  (STS-B-DIR of Yang et al. 2021, each sentence encoded once by a frozen all-MiniLM-L6-v2, see
  :mod:`apps.regression.embed_sts`; pair features ``[|u - v|, u * v, cos(u, v)]``), both embedded in
  ``shared_data/regression/``.
* ``--data pairs.npz``: sentence-pair embeddings made by ``python -m apps.regression prepare sts_b_dir``
  from the STS-B-DIR release (pre-split; the same pair features).

Numeric features are standardised with the training split's mean and std; categorical columns (text, bool or
category dtype, or named by ``--categorical``; at most 250 distinct values) become integer codes, 0 for a value
the training split does not hold (the models embed them: :class:`apps.regression.model.TabularEncoder`).
Every problem with the input raises :class:`core.app.InputError` naming
the file (and the line, for CSV).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.regression.config import RegressionSettings
from apps.regression.dir import bin_counts, bin_index, dir_split, scaled_shot_thresholds, shot_groups
from core.app import InputError

__all__ = ["DIRData", "read_table", "load_data", "SHARED"]

SHARED = Path(__file__).resolve().parents[2] / "shared_data" / "regression"
SPLITS = ("train", "val", "test")
_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
#: most distinct training values of a categorical column (the gradient-boosted trees baseline's limit, 255 bins)
MAX_CATEGORIES = 250


@dataclass
class DIRData:
    """Standardised features, targets and the DIR bookkeeping of one data set."""

    name: str
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    feature_names: list[str]
    bin_width: float
    origin: float
    n_bins: int
    bins: dict[str, np.ndarray] = field(default_factory=dict)
    train_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U6"))
    many: int = 100
    few: int = 20
    correlations: bool = False
    #: categorical columns: ``x[:, n_num:]`` holds their integer codes (0 = unknown), ``cardinalities[j]`` codes each
    cardinalities: list[int] = field(default_factory=list)
    categorical_names: list[str] = field(default_factory=list)

    @property
    def in_dim(self) -> int:
        """Columns of ``x``: the standardised numeric features, then one code per categorical column."""
        return self.x["train"].shape[1]

    @property
    def n_num(self) -> int:
        return self.in_dim - len(self.cardinalities)

    def bin_centers(self) -> np.ndarray:
        return self.origin + (np.arange(self.n_bins) + 0.5) * self.bin_width

    def summary(self) -> str:
        g = {k: int((self.groups == k).sum()) for k in ("many", "medium", "few")}
        return (f"{self.name}: train/val/test = {len(self.y['train'])}/{len(self.y['val'])}/{len(self.y['test'])}, "
                f"{self.n_num} numeric + {len(self.cardinalities)} categorical features, {self.n_bins} bins of width "
                f"{self.bin_width:g}; shot thresholds "
                f"many > {self.many}, few < {self.few} -> bins many/medium/few = {g['many']}/{g['medium']}/{g['few']}")


# ------------------------------------------------------------------------------------------- reading
def read_table(path: str | Path):
    """Read a CSV / TSV / Parquet file into a DataFrame; :class:`InputError` on any problem."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"data path {path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a table file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            df = pd.read_csv(path, sep=sep, quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL)
        else:
            raise InputError(f"{path}: unknown table format {suffix!r}; use .csv, .tsv or .parquet")
    except InputError:
        raise
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a text table (byte {e.start} is not UTF-8)") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty (no header)") from None
    except pd.errors.ParserError as e:
        raise InputError(f"{path}: malformed {suffix[1:].upper()} ({str(e).strip()})") from None
    except Exception as e:  # pyarrow errors for a broken Parquet file and the like
        raise InputError(f"{path}: could not read as {suffix[1:]} ({type(e).__name__}: {e})") from None
    if len(df) == 0:
        raise InputError(f"{path} has a header but no rows")
    df.attrs["path"] = str(path)
    df.attrs["csv"] = suffix != ".parquet" and suffix != ".pq"
    return df


def _where(df, i: int) -> str:
    """'file, line N' (CSV: header is line 1) or 'file, row N' (Parquet) of the i-th row."""
    return f"{df.attrs['path']}, line {i + 2}" if df.attrs.get("csv") else f"{df.attrs['path']}, row {i}"


def _targets(df, target: str) -> np.ndarray:
    import pandas as pd

    if target not in df.columns:
        raise InputError(f"{df.attrs['path']}: no target column {target!r}; columns are {list(df.columns)}")
    y = pd.to_numeric(df[target], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{_where(df, i)}: target {target!r} is not a finite number ({df[target].iloc[i]!r}); "
                        f"{bad.size} such row(s)")
    return y


class _Featurizer:
    """Column selection, categorical columns as integer codes (vocabulary fitted on train), finite checks.

    A feature column is **categorical** when its dtype is not numeric (text / object, bool, pandas category) or
    when ``--categorical`` names it; every other column is numeric. A categorical column with K distinct training
    values gets codes 1..K (sorted by their text); 0 is the *unknown* code, for a value never seen in training.
    Missing values of a categorical column are a category of their own (``"nan"``).
    """

    def __init__(self, train_df, target: str, features: list[str] | None, categorical: list[str] | None = None) -> None:
        import pandas as pd

        cols = list(features) if features else [c for c in train_df.columns if c != target]
        missing = [c for c in cols if c not in train_df.columns]
        if missing:
            raise InputError(f"{train_df.attrs['path']}: feature column(s) {missing} not found; "
                            f"columns are {list(train_df.columns)}")
        if target in cols:
            raise InputError(f"the target {target!r} cannot also be a feature")
        if not cols:
            raise InputError(f"{train_df.attrs['path']}: no feature columns besides the target {target!r}")
        declared = list(categorical or [])
        unknown = [c for c in declared if c not in cols]
        if unknown:
            raise InputError(f"{train_df.attrs['path']}: --categorical names {unknown}, which are not feature "
                            f"columns; features are {cols}")
        self.categories: dict[str, dict[str, int]] = {}
        for c in cols:
            s = train_df[c]
            if c in declared or not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
                values = sorted(s.astype(str).unique())
                if len(values) > MAX_CATEGORIES:
                    raise InputError(f"{train_df.attrs['path']}: categorical column {c!r} has {len(values)} distinct "
                                    f"values (at most {MAX_CATEGORIES}); leave it out with --features")
                self.categories[c] = {v: i + 1 for i, v in enumerate(values)}
        self.numeric = [c for c in cols if c not in self.categories]
        self.categorical = [c for c in cols if c in self.categories]
        self.names = self.numeric + self.categorical

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, the unknown code 0 included (K + 1)."""
        return [len(self.categories[c]) + 1 for c in self.categorical]

    def __call__(self, df) -> tuple[np.ndarray, np.ndarray]:
        """``(numeric (n, n_num) float64, codes (n, n_cat) int64)`` of a table."""
        import pandas as pd

        missing = [c for c in self.numeric + self.categorical if c not in df.columns]
        if missing:
            raise InputError(f"{df.attrs['path']}: feature column(s) {missing} not found")
        num = np.zeros((len(df), len(self.numeric)), np.float64)
        for j, c in enumerate(self.numeric):
            v = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                i = int(bad[0])
                raise InputError(f"{_where(df, i)}: feature {c!r} is not a finite number ({df[c].iloc[i]!r})")
            num[:, j] = v
        codes = np.zeros((len(df), len(self.categorical)), np.int64)
        for j, c in enumerate(self.categorical):
            codes[:, j] = df[c].astype(str).map(self.categories[c]).fillna(0).to_numpy(np.int64)
        return num, codes


def _find_split_files(folder: Path) -> dict[str, Path]:
    names = {"train": ("train",), "val": ("val", "dev", "valid", "validation"), "test": ("test",)}
    files = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in _TABLE_SUFFIXES]
    found = {}
    for split, stems in names.items():
        hits = [p for p in files if p.stem.lower() in stems]
        if not hits:
            raise InputError(f"{folder}: pre-split data needs train.*, val.* (or dev.*) and test.* tables "
                            f"(.csv/.tsv/.parquet); found {[p.name for p in files]}")
        found[split] = hits[0]
    return found


# --------------------------------------------------------------------------------------------- loading
def _default_width(y: np.ndarray) -> float:
    if np.allclose(y, np.round(y)) and len(np.unique(y)) <= 100:
        return 1.0
    span = float(y.max() - y.min())
    return span / 50 if span > 0 else 1.0


def _load_pairs(path: Path) -> tuple[dict, dict, list[str]]:
    """Sentence-pair features from a ``prepare sts_b_dir`` file (int8 embeddings of both sentences + scores)."""
    from apps.regression.embed_sts import dequantize

    if not path.is_file():
        raise InputError(f"{path} is missing; make it with `python -m apps.regression prepare sts_b_dir`")
    try:
        z = np.load(path)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # a truncated or foreign file
        raise InputError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    need = [f"{s}_{k}" for s in SPLITS for k in ("u_q", "u_s", "v_q", "v_s", "y")]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise InputError(f"{path}: not a sentence-pair file of `prepare sts_b_dir` (missing arrays {missing[:3]})")
    x, y = {}, {}
    for s in SPLITS:
        u, v = dequantize(arrays[f"{s}_u_q"], arrays[f"{s}_u_s"]), dequantize(arrays[f"{s}_v_q"], arrays[f"{s}_v_s"])
        cos = (u * v).sum(1, keepdims=True) / (np.linalg.norm(u, axis=1, keepdims=True)
                                               * np.linalg.norm(v, axis=1, keepdims=True) + 1e-8)
        x[s] = np.concatenate([np.abs(u - v), u * v, cos], 1).astype(np.float64)
        y[s] = arrays[f"{s}_y"].astype(np.float64)
        if not np.isfinite(y[s]).all():
            raise InputError(f"{path}: {s} scores hold non-finite values")
    dim = x["train"].shape[1] // 2
    names = [f"absdiff_{i}" for i in range(dim)] + [f"prod_{i}" for i in range(dim)] + ["cosine"]
    return x, y, names


def load_data(s: RegressionSettings) -> DIRData:
    """Load, split (DIR protocol where needed), standardise and bin the data of the settings ``s``."""
    split_made = False
    if s.data == "sts_b_dir" or str(s.data).endswith(".npz"):
        path = SHARED / "sts_b_dir" / "minilm.npz" if s.data == "sts_b_dir" else Path(s.data)
        x, y, names = _load_pairs(path)
        name, corr = ("sts_b_dir" if s.data == "sts_b_dir" else path.stem), True
        codes = {k: np.zeros((len(y[k]), 0), np.int64) for k in SPLITS}
        cards: list[int] = []
        width = s.bin_width or (0.1 if s.data == "sts_b_dir" else _default_width(y["train"]))
    else:
        if s.data == "abalone":
            path, target, name = SHARED / "abalone" / "abalone.csv", s.target or "Rings", "abalone"
        else:
            path, name = Path(s.data), Path(s.data).stem
            if not s.target:
                raise InputError("--target NAME is required with --data PATH")
            target = s.target
        if str(path) == "" or not path.exists():
            raise InputError(f"data path {path} does not exist")
        if path.is_dir():
            files = _find_split_files(path)
            dfs = {k: read_table(files[k]) for k in SPLITS}
            feat = _Featurizer(dfs["train"], target, s.features, s.categorical)
            parts = {k: feat(dfs[k]) for k in SPLITS}
            x, codes = {k: v[0] for k, v in parts.items()}, {k: v[1] for k, v in parts.items()}
            y = {k: _targets(dfs[k], target) for k in SPLITS}
        else:
            df = read_table(path)
            feat = _Featurizer(df, target, s.features, s.categorical)
            (x_all, c_all), y_all = feat(df), _targets(df, target)
            split_made = True
        names, cards = feat.names, feat.cardinalities
        corr = False
        width = s.bin_width or (1.0 if name == "abalone" else _default_width(y["train"] if not split_made else y_all))
        if split_made:
            if len(y_all) < 10:
                raise InputError(f"{path}: {len(y_all)} rows are too few for a train / val / test split")
            origin0 = np.floor(y_all.min() / width) * width
            tr, va, te = dir_split(bin_index(y_all, width, origin0), s.per_bin, s.max_fraction, s.split_seed)
            if len(va) == 0 or len(te) == 0:
                raise InputError(f"{path}: no bin has enough samples for balanced val / test splits with bin width "
                                 f"{width:g} and max_fraction {s.max_fraction}; use a larger --bin-width")
            x = {"train": x_all[tr], "val": x_all[va], "test": x_all[te]}
            codes = {"train": c_all[tr], "val": c_all[va], "test": c_all[te]}
            y = {"train": y_all[tr], "val": y_all[va], "test": y_all[te]}
    for j in range(len(cards)):  # a category absent from the training split is unknown (code 0) in val / test
        seen = np.zeros(cards[j], bool)
        seen[codes["train"][:, j]] = True
        for k in ("val", "test"):
            codes[k][:, j] = np.where(seen[codes[k][:, j]], codes[k][:, j], 0)
    if np.ptp(y["train"]) == 0:
        raise InputError(f"{name}: every training target has the same value; nothing to regress")
    mean, std = x["train"].mean(0), x["train"].std(0)
    std = np.where(std > 1e-12, std, 1.0)
    x = {k: np.concatenate([(x[k] - mean) / std, codes[k]], 1).astype(np.float32) for k in SPLITS}
    y = {k: y[k].astype(np.float32) for k in SPLITS}
    all_y = np.concatenate([y[k] for k in SPLITS])
    origin = float(np.floor(all_y.min() / width + 1e-6) * width)
    bins = {k: bin_index(y[k], width, origin) for k in SPLITS}
    n_bins = int(max(b.max() for b in bins.values())) + 1
    if n_bins > 100_000:
        raise InputError(f"bin width {width:g} gives {n_bins} bins; use a larger --bin-width")
    counts = bin_counts(bins["train"], n_bins)
    many, few = scaled_shot_thresholds(len(y["train"]))
    many = s.many_shot if s.many_shot is not None else many
    few = s.few_shot if s.few_shot is not None else few
    return DIRData(name=name, x=x, y=y, feature_names=names, bin_width=float(width), origin=origin, n_bins=n_bins,
                   bins=bins, train_counts=counts, groups=shot_groups(counts, many, few), many=many, few=few,
                   correlations=corr, cardinalities=cards, categorical_names=names[len(names) - len(cards):])
