"""The ``embed`` command: audio files in, one embedding per file out (``.npy``) with the file list (``.txt``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apps.speaker.data import AUDIO_EXTENSIONS, SAMPLE_RATE, DataError, read_audio
from apps.speaker.evaluate import embed_waves
from apps.speaker.train import load_encoder

__all__ = ["collect_files", "embed_files"]


def collect_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The audio files named by ``inputs`` (files, or folders searched recursively), in order."""
    files: list[Path] = []
    for i in inputs:
        p = Path(i)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise DataError(f"{p}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist")
    return files


def embed_files(inputs: Sequence[str | Path], out: str | Path, *, checkpoint: str | Path | None = None,
                run_dir: str = "runs/speaker", loss: str = "am_sym", max_seconds: float | None = None,
                progress: bool = True) -> np.ndarray:
    """Embed every file with the encoder ``checkpoint`` (default ``run_dir/loss/encoder.pt``); write ``out``."""
    out = Path(out)
    if out.suffix != ".npy":
        raise DataError(f"--out must end in .npy, got {out}")
    if max_seconds is not None and not max_seconds > 0:
        raise DataError(f"max_seconds must be > 0, got {max_seconds}")
    encoder = load_encoder(checkpoint if checkpoint is not None else Path(run_dir) / loss / "encoder.pt")
    files = collect_files(inputs)
    waves = [read_audio(f) for f in files]
    if max_seconds is not None:
        waves = [w[: int(max_seconds * SAMPLE_RATE)] for w in waves]
    emb = embed_waves(encoder, waves, progress, "embedding").astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, out)
    out.with_suffix(".txt").write_text("\n".join(str(f) for f in files) + "\n")
    print(f"[speaker] {len(files)} embeddings of size {emb.shape[1]}: {out} (file list: {out.with_suffix('.txt')})")
    return emb
