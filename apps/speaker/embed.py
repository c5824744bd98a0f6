"""The ``embed`` verb: audio files in, one embedding per file out (``.npy``) with the file list (``.txt``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from apps.speaker.data import AUDIO_EXTENSIONS, SAMPLE_RATE, read_audio
from apps.speaker.evaluate import embed_waves
from apps.speaker.train import load_encoder
from core.app import InputError, write_text
from core.app.files import atomic_write

__all__ = ["collect_files", "embed_files"]


def collect_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The audio files named by ``inputs`` (files, or folders searched recursively), in order."""
    files: list[Path] = []
    for i in inputs:
        p = Path(i)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise InputError(f"{p}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p} does not exist")
    return files


def embed_files(inputs: Sequence[str | Path], output: str | Path, checkpoint: str | Path, *,
                max_seconds: float | None = None, progress: bool = True,
                log: Callable[[str], None] = print) -> np.ndarray:
    """Embed every file with the encoder ``checkpoint``; write ``output`` (N, D) float32 and ``output`` with
    ``.txt`` listing the N files in row order."""
    output = Path(output)
    if output.suffix != ".npy":
        raise InputError(f"--output must end in .npy, got {output}")
    if max_seconds is not None and not max_seconds > 0:
        raise InputError(f"--max-seconds must be > 0, got {max_seconds}")
    encoder = load_encoder(checkpoint)
    files = collect_files(inputs)
    waves = [read_audio(f) for f in files]
    if max_seconds is not None:
        waves = [w[: int(max_seconds * SAMPLE_RATE)] for w in waves]
    emb = embed_waves(encoder, waves, progress, "embedding").astype(np.float32)
    atomic_write(output, lambda f: np.save(f, emb))
    listing = output.with_suffix(".txt")
    write_text(listing, "\n".join(str(f) for f in files) + "\n")
    log(f"{len(files)} embeddings of size {emb.shape[1]}: {output} (file list: {listing})")
    return emb
