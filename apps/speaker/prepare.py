r"""The ``prepare`` verb: the public releases of full mode, as downloaded, into the app's folder-tree format.

* **LibriSpeech** train-clean-100 (OpenSLR resource 12, ``train-clean-100.tar.gz`` extracted, layout
  ``<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``; or the 251-file copy in GitHub
  ``resemble-ai/Resemblyzer``, ``audio_data/librispeech_train-clean-100/``): the one utterance per speaker listed in
  ``configs/full_librispeech_utterances.txt`` is copied to ``OUT/librispeech/<speaker>/<utterance>.flac``;
* **Free Spoken Digit Dataset** (a clone of GitHub ``Jakobovski/free-spoken-digit-dataset`` or its
  ``recordings/`` folder, names ``<digit>_<speaker>_<index>.wav``): the recordings with index below
  ``--fsdd-max-index`` (45: the 2,700 of the results table) are copied to ``OUT/fsdd/<speaker>/``.

Full mode then reads ``--data OUT/librispeech --test-data OUT/fsdd``. Files are copied unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from core.app import InputError
from core.app.files import atomic_write

__all__ = ["UTTERANCES_FILE", "full_utterances", "prepare_librispeech", "prepare_fsdd"]

UTTERANCES_FILE = Path(__file__).resolve().parent / "configs" / "full_librispeech_utterances.txt"
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")


def full_utterances() -> list[str]:
    """The LibriSpeech utterance ids of full mode (``<speaker>-<chapter>-<utt>``)."""
    return [ln.strip() for ln in UTTERANCES_FILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _copy(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    atomic_write(dst, lambda f: f.write(data))


def prepare_librispeech(src: str | Path, out: str | Path, utterances: Iterable[str] | None = None,
                        log: Callable[[str], None] = print) -> int:
    """Copy ``utterances`` (default: :func:`full_utterances`) found anywhere under ``src`` to
    ``out/<speaker>/<utterance>.flac``; every one must be there. Returns the number of files."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"LibriSpeech folder {src} does not exist")
    wanted = list(utterances if utterances is not None else full_utterances())
    found: dict[str, Path] = {}
    for f in src.rglob("*.flac"):
        if f.stem in wanted and f.stem not in found:
            found[f.stem] = f
    missing = [u for u in wanted if u not in found]
    if missing:
        raise InputError(f"{src}: {len(missing)} of the {len(wanted)} full-mode utterances are missing (first: "
                         f"{', '.join(missing[:3])}.flac); pass the extracted train-clean-100 folder")
    for u in wanted:
        _copy(found[u], out / u.split("-")[0] / f"{u}.flac")
    log(f"LibriSpeech: {len(wanted)} utterances of {len({u.split('-')[0] for u in wanted})} speakers -> {out}")
    return len(wanted)


def prepare_fsdd(src: str | Path, out: str | Path, max_index: int = 45, log: Callable[[str], None] = print) -> int:
    """Copy the FSDD recordings ``<digit>_<speaker>_<index>.wav`` under ``src`` with ``index < max_index`` to
    ``out/<speaker>/``. Returns the number of files."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"FSDD folder {src} does not exist")
    if max_index < 1:
        raise InputError(f"--fsdd-max-index must be >= 1, got {max_index}")
    picked = []
    for f in sorted(src.rglob("*.wav")):
        m = FSDD_NAME.match(f.stem)
        if m and int(m.group(3)) < max_index:
            picked.append((f, m.group(2)))
    if not picked:
        raise InputError(f"{src}: no FSDD recordings <digit>_<speaker>_<index>.wav with index < {max_index}")
    for f, speaker in picked:
        _copy(f, out / speaker / f.name)
    log(f"FSDD: {len(picked)} recordings of {len({s for _, s in picked})} speakers -> {out}")
    return len(picked)
