"""``prepare``: turn a downloaded public release into the app's format.

    python -m apps.regression prepare abalone   --src abalone.data --output data/abalone.csv
    python -m apps.regression prepare sts_b_dir --src STS-B/ --output data/sts_b_dir.npz

* ``abalone``: the UCI Machine Learning Repository release (``abalone.data`` inside ``abalone.zip``: no header,
  comma-separated ``Sex, Length, Diameter, Height, Whole weight, Shucked weight, Viscera weight, Shell weight,
  Rings``) -> a CSV table with a header, columns in the order of the embedded copy (``Rings`` first); train on it
  with ``--data data/abalone.csv --target Rings``.
* ``sts_b_dir``: the folder of ``train_new.tsv``, ``dev_new.tsv``, ``test_new.tsv`` (STS-B-DIR of Yang et al.
  2021) -> frozen all-MiniLM-L6-v2 embeddings of both sentences, int8 (:mod:`apps.regression.embed_sts`); train
  on it with ``--data data/sts_b_dir.npz``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from core.app import InputError, Run, write_text

__all__ = ["prepare", "prepare_abalone", "arguments", "ABALONE_COLUMNS"]

#: the columns of the UCI file, in its order, named as in the embedded copy
ABALONE_COLUMNS = ("Sex", "Length", "Diameter", "Height", "WholeWeight", "ShuckedWeight", "VisceraWeight",
                   "ShellWeight", "Rings")
SEXES = ("M", "F", "I")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=("abalone", "sts_b_dir"), help="which release --src holds")
    p.add_argument("--src", type=Path, required=True,
                   help="abalone: the UCI abalone.data file; sts_b_dir: the folder of train_new / dev_new / "
                        "test_new.tsv")
    p.add_argument("--output", dest="out", type=Path, required=True,
                   help="the file to write (.csv for abalone, .npz for sts_b_dir)")
    p.add_argument("--batch-size", type=int, default=128, help="sts_b_dir: sentences per encoder batch")


def prepare_abalone(src: Path, out: Path) -> int:
    """Convert the UCI ``abalone.data`` into a CSV table with a header; returns the number of rows."""
    src = Path(src)
    if not src.is_file():
        raise InputError(f"{src} does not exist; --src must be the UCI abalone.data file")
    try:
        lines = src.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{src}: not a text file (byte {e.start} is not UTF-8)") from None
    order = ["Rings"] + list(ABALONE_COLUMNS[:-1])
    rows = [",".join(f'"{c}"' for c in order)]
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(ABALONE_COLUMNS):
            raise InputError(f"{src}, line {i}: expected {len(ABALONE_COLUMNS)} comma-separated fields "
                             f"({', '.join(ABALONE_COLUMNS)}), got {len(fields)}")
        rec = dict(zip(ABALONE_COLUMNS, fields))
        if rec["Sex"] not in SEXES:
            raise InputError(f"{src}, line {i}: Sex must be one of {', '.join(SEXES)}, got {rec['Sex']!r}")
        for c in ABALONE_COLUMNS[1:]:
            try:
                ok = math.isfinite(float(rec[c]))
            except ValueError:
                ok = False
            if not ok:
                raise InputError(f"{src}, line {i}: {c} is not a finite number ({rec[c]!r})")
        rows.append(",".join(f'"{rec[c]}"' if c == "Sex" else rec[c] for c in order))
    if len(rows) == 1:
        raise InputError(f"{src} holds no rows")
    write_text(out, "\n".join(rows) + "\n")
    return len(rows) - 1


def prepare(run: Run) -> None:
    """The ``prepare`` verb."""
    a = run.args
    if a.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.what == "abalone":
        n = prepare_abalone(a.src, a.out)
        run.log(f"wrote {a.out} ({n} rows); train with --data {a.out} --target Rings")
    else:
        from apps.regression.embed_sts import embed

        embed(a.src, a.out, a.batch_size, echo=run.log)
        run.log(f"train with --data {a.out}")
