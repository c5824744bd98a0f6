"""Rebuild ``shared_data/speaker/`` (the speaker app's embedded default) from a ``speaker_verification`` folder.

``--src`` holds ``librispeech_train_clean_100_1utt/`` (the 251 FLAC files of GitHub ``resemble-ai/Resemblyzer``,
``audio_data/librispeech_train-clean-100/``, with LibriSpeech's ``LICENSE.TXT``) and ``fsdd/`` (``recordings/`` and
``speakers.csv`` of GitHub ``Jakobovski/free-spoken-digit-dataset``).

What is kept (deterministic, no randomness):

* ``librispeech/<speaker>/<speaker>-<chapter>-<utt>.ogg``: every one of the 251 LibriSpeech train-clean-100
  utterances (one per speaker), cropped to ``--seconds`` (default 5.0 s) starting ``--offset`` s (default 0.25 s)
  into the file (the whole file when it is shorter), 16 kHz mono, stored as Ogg Vorbis (lossy, about 6 KB/s;
  FLAC would be about 17 KB/s and only fit about 2 s per utterance into the size budget).
* ``fsdd/<speaker>/<digit>_<speaker>_<index>.flac``: the Free Spoken Digit recordings with index
  ``< --fsdd-max-index`` (default 10, i.e. indices 0-9 of every digit and speaker: 600 files), 8 kHz mono,
  converted losslessly from WAV to FLAC.
* ``LICENSE.TXT`` (LibriSpeech's), ``speakers.csv`` (FSDD's speaker table) and ``SOURCE.md``.

Usage::

    python tools/speaker_prepare_data.py --src SPEAKER_VERIFICATION_DIR [--out shared_data/speaker]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]

SOURCE_MD = """# Embedded default data of the speaker app

Rebuilt by `python tools/speaker_prepare_data.py --src DIR` from a `speaker_verification` folder (whose SOURCE.md
notes are summarised below). Layout: the VoxCeleb-style tree `ROOT/<speaker_id>/<file>`.

## `librispeech/` -- training (self-supervised) and held-out LibriSpeech speakers
- **Origin**: LibriSpeech ASR corpus, train-clean-100 (Panayotov et al., 2015, openslr.org resource 12), in the
  copy of GitHub `resemble-ai/Resemblyzer`, folder `audio_data/librispeech_train-clean-100/` (commit
  `15d828edebe06bc72b9cabc8ef8ca5ab2cb457ce`): 251 utterances, one per speaker (125 F / 126 M), 16 kHz.
- **License**: Creative Commons Attribution 4.0 International (CC BY 4.0); see `LICENSE.TXT`.
  Attribution: "LibriSpeech (c) 2014 by Vassil Panayotov".
- **Modification**: every utterance cropped to {seconds} s starting {offset} s into the file (whole file if
  shorter) and re-encoded as Ogg Vorbis (lossy) at 16 kHz to fit the size budget. The complete FLAC files are
  what full mode reads (`python -m apps.speaker prepare`, docs/apps/speaker.md).

## `fsdd/` -- evaluation (6 speakers never seen in training)
- **Origin**: Free Spoken Digit Dataset, GitHub `Jakobovski/free-spoken-digit-dataset`, folder `recordings/`
  (commit `26eb9aaf76e81b692f806f9140c2d2777410d7a1`); `speakers.csv` from its `metadata.py`.
- **License**: Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0). Attribution: Zohar
  Jackson et al., "Free Spoken Digit Dataset" (Zenodo). Share-alike applies to this adapted copy.
- **Modification**: only recording indices 0-{last} of each digit and speaker ({n_fsdd} files of the 2700 in
  the shared copy); WAV converted losslessly to FLAC (8 kHz, 16-bit); files moved into `fsdd/<speaker>/`.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="the speaker_verification folder (see above)")
    ap.add_argument("--out", type=Path, default=ROOT / "shared_data" / "speaker", help="output folder")
    ap.add_argument("--seconds", type=float, default=5.0, help="LibriSpeech crop length (s)")
    ap.add_argument("--offset", type=float, default=0.25, help="LibriSpeech crop start (s)")
    ap.add_argument("--fsdd-max-index", type=int, default=10, help="keep FSDD recordings with index below this")
    args = ap.parse_args()
    libri = args.src / "librispeech_train_clean_100_1utt"
    fsdd = args.src / "fsdd"
    if not libri.is_dir() or not fsdd.is_dir():
        raise SystemExit(f"error: {args.src} must contain librispeech_train_clean_100_1utt/ and fsdd/")
    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "librispeech").mkdir(parents=True)
    for f in sorted(libri.glob("*.flac")):
        x, sr = sf.read(f, dtype="float32")
        a = int(args.offset * sr)
        if len(x) - a < int(args.seconds * sr):
            a = max(0, len(x) - int(args.seconds * sr))
        x = x[a: a + int(args.seconds * sr)]
        spk = f.stem.split("-")[0]
        d = args.out / "librispeech" / spk
        d.mkdir(exist_ok=True)
        sf.write(d / f"{f.stem}.ogg", x, sr, format="OGG", subtype="VORBIS")
    shutil.copy(libri / "LICENSE.TXT", args.out / "LICENSE.TXT")
    n = 0
    for f in sorted((fsdd / "recordings").glob("*.wav")):
        digit, spk, idx = f.stem.split("_")
        if int(idx) >= args.fsdd_max_index:
            continue
        x, sr = sf.read(f, dtype="int16")
        d = args.out / "fsdd" / spk
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{f.stem}.flac", x, sr, format="FLAC", subtype="PCM_16")
        n += 1
    shutil.copy(fsdd / "speakers.csv", args.out / "fsdd" / "speakers.csv")
    (args.out / "SOURCE.md").write_text(SOURCE_MD.format(seconds=args.seconds, offset=args.offset,
                                                         last=args.fsdd_max_index - 1, n_fsdd=n))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
