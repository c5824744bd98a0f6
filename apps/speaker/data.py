r"""Data of the speaker app: audio collections in the field's standard formats, trial lists, segment trials.

Formats (:func:`load_collection`):

* a **folder tree** ``ROOT/<speaker_id>/**/*.{wav,flac,ogg}`` (the VoxCeleb layout): the first folder level
  names the speaker; files directly under ``ROOT`` are ignored;
* a **flat folder** with the speaker in the file name, given by a regular expression whose first group is the
  speaker (``speaker_pattern``; e.g. ``^(\d+)-`` for LibriSpeech names ``<speaker>-<chapter>-<utt>.flac``,
  ``^\d+_([a-z]+)_`` for FSDD names ``<digit>_<speaker>_<index>.wav``);
* a **CSV manifest** with a header containing ``path`` and ``speaker`` (paths relative to the CSV's folder
  or absolute).

Audio is read with :mod:`soundfile`, mixed down to mono and resampled to 16 kHz (:data:`SAMPLE_RATE`).

Trial lists use the VoxCeleb format, one trial per line: ``label enroll test`` with ``label`` 1 (same speaker)
or 0, and ``enroll`` / ``test`` paths relative to the collection root (or absolute). Without a list,
:func:`balanced_trials` draws one from the speaker labels with a fixed seed; :func:`segment_trials` builds
trials between non-overlapping segments of utterances (same-session positives), for speakers that have a
single utterance each (the held-out LibriSpeech speakers).

The aliases ``librispeech`` and ``fsdd`` name the embedded defaults in ``shared_data/speaker/``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from core.app import InputError, write_text

__all__ = [
    "SAMPLE_RATE", "AUDIO_EXTENSIONS", "SHARED", "ALIASES", "Utterance", "Collection",
    "resolve_path", "load_collection", "read_audio", "split_speakers", "Trials", "read_trials", "write_trials",
    "balanced_trials", "Segment", "make_segments", "make_parts", "segment_trials", "pair_trials", "centre_crop",
]

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
SHARED = Path(__file__).resolve().parents[2] / "shared_data" / "speaker"
ALIASES = {"librispeech": SHARED / "librispeech", "fsdd": SHARED / "fsdd"}


@dataclass
class Utterance:
    path: Path
    speaker: str
    key: str  # the path relative to the collection root, as written in trial lists


@dataclass
class Collection:
    """The utterances of a data set (and their decoded audio, once :meth:`load_audio` ran)."""

    name: str
    root: Path
    utterances: list[Utterance]
    audio: list[np.ndarray] = field(default_factory=list)

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})

    def subset(self, speakers: set[str]) -> Collection:
        keep = [i for i, u in enumerate(self.utterances) if u.speaker in speakers]
        audio = [self.audio[i] for i in keep] if self.audio else []
        return Collection(self.name, self.root, [self.utterances[i] for i in keep], audio)

    def load_audio(self, progress: bool = False) -> Collection:
        if not self.audio:
            it = self.utterances
            if progress:
                from tqdm import tqdm

                it = tqdm(it, desc=f"reading {self.name}", leave=False)
            self.audio = [read_audio(u.path) for u in it]
        return self

    def seconds(self) -> float:
        return sum(len(a) for a in self.audio) / SAMPLE_RATE


def resolve_path(data: str | Path) -> tuple[str, Path]:
    """(dataset name, path) of ``--data``: an alias of the embedded data or a user path."""
    if str(data) in ALIASES:
        return str(data), ALIASES[str(data)]
    p = Path(data)
    if not p.exists():
        raise InputError(f"data path {p} does not exist")
    return (p.stem if p.is_file() else p.name) or "data", p


def read_audio(path: Path) -> np.ndarray:
    """Mono float32 waveform at 16 kHz; errors name the file."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise InputError(f"{path}: cannot read audio ({e})") from e
    x = x.mean(axis=1)
    if x.size == 0:
        raise InputError(f"{path}: empty audio file")
    if not np.isfinite(x).all():
        raise InputError(f"{path}: audio contains non-finite samples")
    if sr != SAMPLE_RATE:
        import torchaudio.functional as AF

        x = AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _from_tree(root: Path) -> list[Utterance]:
    utts = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
                utts.append(Utterance(f, d.name, f.relative_to(root).as_posix()))
    return utts


def _from_csv(path: Path) -> list[Utterance]:
    text = path.read_text(errors="replace").splitlines()
    if not text:
        raise InputError(f"{path}: empty manifest")
    reader = csv.reader(text)
    header = [h.strip().lower() for h in next(reader)]
    if "path" not in header or "speaker" not in header:
        raise InputError(f"{path} line 1: the manifest header must name the columns 'path' and 'speaker', "
                        f"got {header}")
    ip, isp = header.index("path"), header.index("speaker")
    utts = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(ip, isp):
            raise InputError(f"{path} line {line_no}: expected {len(header)} columns, got {len(row)}")
        rel, spk = row[ip].strip(), row[isp].strip()
        if not rel or not spk:
            raise InputError(f"{path} line {line_no}: empty path or speaker")
        f = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        if not f.is_file():
            raise InputError(f"{path} line {line_no}: audio file {f} does not exist")
        utts.append(Utterance(f, spk, rel))
    return utts


def _from_pattern(root: Path, pattern: str) -> list[Utterance]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise InputError(f"speaker pattern {pattern!r} is not a valid regular expression ({e})") from e
    if rx.groups < 1:
        raise InputError(f"speaker pattern {pattern!r} needs a group (...) capturing the speaker")
    utts = []
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
            m = rx.search(f.stem)
            if m is None or not m.group(1):
                raise InputError(f"{f}: the file name does not match the speaker pattern {pattern!r}")
            utts.append(Utterance(f, m.group(1), f.relative_to(root).as_posix()))
    return utts


def load_collection(data: str | Path, *, min_speakers: int = 2, speaker_pattern: str | None = None) -> Collection:
    """The utterances of ``data`` (alias, folder tree, flat folder + ``speaker_pattern``, or CSV manifest);
    audio is not read yet."""
    name, p = resolve_path(data)
    if speaker_pattern:
        if not p.is_dir():
            raise InputError(f"{p}: a speaker pattern needs a folder of audio files")
        utts = _from_pattern(p, speaker_pattern)
        if not utts:
            raise InputError(f"{p}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        root = p
    elif p.is_dir():
        utts = _from_tree(p)
        if not utts:
            raise InputError(f"{p}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in ROOT/<speaker>/... "
                            "sub-folders")
        root = p
    elif p.suffix.lower() == ".csv":
        utts = _from_csv(p)
        if not utts:
            raise InputError(f"{p}: the manifest lists no files")
        root = p.parent
    else:
        raise InputError(f"{p}: expected a folder ROOT/<speaker>/*.wav|flac|ogg or a CSV manifest (path,speaker)")
    n_spk = len({u.speaker for u in utts})
    if n_spk < min_speakers:
        raise InputError(f"{p}: {n_spk} speaker(s); at least {min_speakers} are needed")
    return Collection(name, root, utts)


def split_speakers(speakers: list[str], n_holdout: int, seed: int) -> tuple[list[str], list[str]]:
    """(training speakers, held-out speakers): ``n_holdout`` drawn at random with ``seed``."""
    if n_holdout < 0 or n_holdout > len(speakers) - 2:
        raise InputError(f"holdout_speakers={n_holdout} leaves fewer than 2 of {len(speakers)} speakers to train on")
    rng = np.random.default_rng(seed)
    held = set(rng.choice(len(speakers), size=n_holdout, replace=False).tolist()) if n_holdout else set()
    return ([s for i, s in enumerate(speakers) if i not in held], [s for i, s in enumerate(speakers) if i in held])


# ------------------------------------------------------------------------------------------------ trials
@dataclass
class Trials:
    labels: np.ndarray  # (T,) 1 = target (same speaker), 0 = non-target
    enroll: np.ndarray  # (T,) indices into the evaluated items
    test: np.ndarray
    keys: list[str]  # key of every item (for writing the list)


def read_trials(path: Path, keys: list[str]) -> Trials:
    """Parse a VoxCeleb trial list (``label enroll test``) against the items named ``keys``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"trial list {path} does not exist")
    index = {k: i for i, k in enumerate(keys)}
    lab, en, te = [], [], []
    for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise InputError(f"{path} line {line_no}: expected 'label enroll test', got {line.strip()!r}")
        if parts[0] not in ("0", "1"):
            raise InputError(f"{path} line {line_no}: label must be 0 or 1, got {parts[0]!r}")
        for k in parts[1:]:
            if k not in index:
                raise InputError(f"{path} line {line_no}: {k!r} is not a file of the evaluation data")
        lab.append(int(parts[0]))
        en.append(index[parts[1]])
        te.append(index[parts[2]])
    if not lab:
        raise InputError(f"{path}: no trials")
    labels = np.asarray(lab)
    if labels.min() == labels.max():
        raise InputError(f"{path}: trials need both target (1) and non-target (0) labels")
    return Trials(labels, np.asarray(en), np.asarray(te), keys)


def write_trials(trials: Trials, path: Path) -> None:
    """Write ``trials`` as a VoxCeleb list (atomically, main process only)."""
    lines = [f"{int(lab)} {trials.keys[e]} {trials.keys[t]}"
             for lab, e, t in zip(trials.labels, trials.enroll, trials.test, strict=True)]
    write_text(path, "\n".join(lines) + "\n")


def balanced_trials(speakers: list[str], keys: list[str], n_per_class: int, seed: int) -> Trials:
    """``n_per_class`` target and as many non-target pairs of distinct items, drawn without repetition
    (fewer when the data has fewer distinct pairs), with a fixed seed."""
    spk = np.asarray(speakers)
    n = len(spk)
    same = spk[:, None] == spk[None, :]
    iu = np.triu_indices(n, k=1)
    is_target = same[iu]
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(is_target)
    neg = np.flatnonzero(~is_target)
    if len(pos) == 0:
        raise InputError("no two utterances share a speaker: cannot build target trials (give a trial list)")
    if len(neg) == 0:
        raise InputError("a single speaker: cannot build non-target trials")
    k = min(n_per_class, len(pos), len(neg))
    chosen = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)])
    chosen = chosen[rng.permutation(len(chosen))]
    return Trials(is_target[chosen].astype(int), iu[0][chosen], iu[1][chosen], keys)


@dataclass
class Segment:
    utt: int  # index of the utterance
    start: int  # sample offsets
    stop: int
    speaker: str
    key: str


def make_segments(col: Collection, seconds: float, max_per_utt: int = 6) -> list[Segment]:
    """Non-overlapping ``seconds``-long segments of every utterance (at most ``max_per_utt``, at least one:
    the whole utterance when it is shorter)."""
    n = int(round(seconds * SAMPLE_RATE))
    segs = []
    for i, (u, a) in enumerate(zip(col.utterances, col.audio, strict=True)):
        k = max(1, min(max_per_utt, len(a) // n))
        for j in range(k):
            start, stop = (j * n, (j + 1) * n) if len(a) >= n else (0, len(a))
            segs.append(Segment(i, start, stop, u.speaker, f"{u.key}@{start / SAMPLE_RATE:g}-{stop / SAMPLE_RATE:g}"))
    return segs


def make_parts(col: Collection, parts: int) -> list[Segment]:
    """Every utterance cut into ``parts`` equal, non-overlapping, contiguous pieces (the whole utterance shared out:
    the longest same-session trial sides it allows); an utterance with fewer than ``parts`` samples gives one."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    segs = []
    for i, (u, a) in enumerate(zip(col.utterances, col.audio, strict=True)):
        k = min(parts, len(a))
        n = len(a) // k
        for j in range(k):
            start, stop = j * n, (j + 1) * n
            segs.append(Segment(i, start, stop, u.speaker, f"{u.key}@{start / SAMPLE_RATE:g}-{stop / SAMPLE_RATE:g}"))
    return segs


def centre_crop(wave: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` samples in the middle of ``wave`` (all of it when it is not longer)."""
    if len(wave) <= n:
        return wave
    a = (len(wave) - n) // 2
    return wave[a: a + n]


def pair_trials(speakers: list[str], keys: list[str], max_nontarget: int, seed: int) -> Trials:
    """Every target pair of distinct items (same speaker), and every non-target pair, or ``max_nontarget`` of them
    drawn without repetition (seeded) when there are more."""
    spk = np.asarray(speakers)
    iu = np.triu_indices(len(spk), k=1)
    is_target = spk[iu[0]] == spk[iu[1]]
    pos, neg = np.flatnonzero(is_target), np.flatnonzero(~is_target)
    if len(pos) == 0:
        raise InputError("no two items share a speaker: cannot build target trials")
    if len(neg) == 0:
        raise InputError("a single speaker: cannot build non-target trials")
    rng = np.random.default_rng(seed)
    if len(neg) > max_nontarget:
        neg = np.sort(rng.choice(neg, max_nontarget, replace=False))
    chosen = np.concatenate([pos, neg])
    return Trials(is_target[chosen].astype(int), iu[0][chosen], iu[1][chosen], keys)


def segment_trials(segs: list[Segment], n_per_class: int, seed: int) -> Trials:
    """Balanced trials between segments: targets are segments of the same speaker, non-targets of others."""
    return balanced_trials([s.speaker for s in segs], [s.key for s in segs], n_per_class, seed)

