"""Data formats, errors that name the file and line, trial lists and segments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from apps.speaker.data import (
    SAMPLE_RATE,
    Collection,
    Utterance,
    balanced_trials,
    centre_crop,
    load_collection,
    make_parts,
    make_segments,
    pair_trials,
    read_audio,
    read_trials,
    segment_trials,
    split_speakers,
    write_trials,
)
from apps.speaker.model import random_crops
from apps.speaker.train import Utterances, crop, pad_batch
from core.app import InputError


def _tone(f0: float, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) + 0.01 * rng.normal(size=t.size)
    return (0.1 * x).astype(np.float32)


def _tree(root: Path, n_spk: int = 3, n_utt: int = 2, sr: int = SAMPLE_RATE, ext: str = "wav") -> Path:
    rng = np.random.default_rng(0)
    for s in range(n_spk):
        d = root / f"spk{s}" / "session"
        d.mkdir(parents=True)
        for u in range(n_utt):
            sf.write(d / f"u{u}.{ext}", _tone(100 + 40 * s, 1.0 + 0.5 * u, sr, rng), sr)
    return root


def test_tree_layout_and_resampling(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", sr=8000, ext="flac")
    (root / "stray.wav").write_bytes(b"")  # files directly under ROOT are ignored
    col = load_collection(root).load_audio()
    assert col.speakers == ["spk0", "spk1", "spk2"] and len(col.utterances) == 6
    assert col.utterances[0].key == "spk0/session/u0.flac"
    # 8 kHz -> 16 kHz doubles the sample count and keeps the tone's frequency
    a = col.audio[0]
    assert len(a) == 2 * 8000 and a.dtype == np.float32
    spec = np.abs(np.fft.rfft(a))
    assert np.fft.rfftfreq(len(a), 1 / SAMPLE_RATE)[spec.argmax()] == pytest.approx(100, abs=2)


def test_csv_manifest_and_pattern(tmp_path: Path) -> None:
    _tree(tmp_path / "data")
    man = tmp_path / "m.csv"
    man.write_text("path,speaker\ndata/spk0/session/u0.wav,alice\n\ndata/spk1/session/u0.wav,bob\n")
    col = load_collection(man)
    assert [u.speaker for u in col.utterances] == ["alice", "bob"]
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, u in enumerate(col.utterances):
        (flat / f"{3 + i}_{u.speaker}_{i}.wav").write_bytes(u.path.read_bytes())
    col2 = load_collection(flat, speaker_pattern=r"^\d+_([a-z]+)_")
    assert [u.speaker for u in col2.utterances] == ["alice", "bob"]
    (flat / "nomatch.wav").write_bytes(b"x")
    with pytest.raises(InputError, match="nomatch.wav.*does not match"):
        load_collection(flat, speaker_pattern=r"^\d+_([a-z]+)_")
    with pytest.raises(InputError, match="needs a group"):
        load_collection(flat, speaker_pattern=r"^\d+")


@pytest.mark.parametrize("text, match", [
    ("file,who\n", "line 1.*'path' and 'speaker'"),
    ("path,speaker\ndata/spk0/session/u0.wav\n", "line 2: expected 2 columns"),
    ("path,speaker\ndata/spk0/session/u0.wav,a\nmissing.wav,b\n", "line 3: audio file .*missing.wav does not exist"),
    ("", "empty manifest"),
])
def test_manifest_errors_name_line(tmp_path: Path, text: str, match: str) -> None:
    _tree(tmp_path / "data")
    man = tmp_path / "bad.csv"
    man.write_text(text)
    with pytest.raises(InputError, match=match):
        load_collection(man)


def test_bad_paths_and_audio(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_collection(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no audio files"):
        load_collection(tmp_path / "empty")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(InputError, match="bad.wav: cannot read audio"):
        read_audio(bad)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1], dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(InputError, match="non-finite"):
        read_audio(nan)
    one = _tree(tmp_path / "one", n_spk=1)
    with pytest.raises(InputError, match="1 speaker"):
        load_collection(one)


def test_trial_lists(tmp_path: Path) -> None:
    keys = ["a/1.wav", "a/2.wav", "b/1.wav", "b/2.wav", "c/1.wav"]
    spk = [k.split("/")[0] for k in keys]
    tr = balanced_trials(spk, keys, n_per_class=100, seed=3)
    # only 2 distinct target pairs exist, so 2 of each class; labels agree with the speakers (brute force)
    assert tr.labels.sum() == 2 and len(tr.labels) == 4
    for lab, e, t in zip(tr.labels, tr.enroll, tr.test, strict=True):
        assert e != t and lab == int(spk[e] == spk[t])
    assert len({(min(e, t), max(e, t)) for e, t in zip(tr.enroll, tr.test, strict=True)}) == 4  # no repeats
    again = balanced_trials(spk, keys, n_per_class=100, seed=3)
    assert (again.enroll == tr.enroll).all() and (again.test == tr.test).all()  # fixed seed
    path = tmp_path / "trials.txt"
    write_trials(tr, path)
    back = read_trials(path, keys)
    assert (back.labels == tr.labels).all() and (back.enroll == tr.enroll).all()
    path.write_text("1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n2 a/1.wav c/1.wav\n")
    with pytest.raises(InputError, match="trials.txt line 3: label must be 0 or 1"):
        read_trials(path, keys)
    path.write_text("1 a/1.wav a/2.wav\n0 a/1.wav zzz.wav\n")
    with pytest.raises(InputError, match="line 2: 'zzz.wav' is not a file"):
        read_trials(path, keys)
    path.write_text("1 a/1.wav\n")
    with pytest.raises(InputError, match="line 1: expected 'label enroll test'"):
        read_trials(path, keys)
    path.write_text("1 a/1.wav a/2.wav\n")
    with pytest.raises(InputError, match="both target"):
        read_trials(path, keys)


def test_segments_split_speakers_and_crops() -> None:
    audio = [np.arange(int(3.5 * SAMPLE_RATE), dtype=np.float32), np.arange(SAMPLE_RATE // 2, dtype=np.float32)]
    col = Collection("x", Path("."), [Utterance(Path("a.wav"), "a", "a.wav"), Utterance(Path("b.wav"), "b", "b.wav")],
                     audio)
    segs = make_segments(col, 1.0)
    assert [(s.utt, s.start, s.stop) for s in segs] == [(0, 0, 16000), (0, 16000, 32000), (0, 32000, 48000),
                                                       (1, 0, 8000)]
    tr = segment_trials(segs, 10, 0)
    assert all(lab == int(segs[e].speaker == segs[t].speaker) for lab, e, t in zip(tr.labels, tr.enroll, tr.test,
                                                                                  strict=True))
    train, held = split_speakers([f"s{i}" for i in range(10)], 3, seed=1)
    assert len(held) == 3 and not set(train) & set(held) and sorted(train + held) == sorted(f"s{i}" for i in range(10))
    with pytest.raises(InputError, match="fewer than 2"):
        split_speakers(["a", "b", "c"], 2, 0)
    short = np.arange(5, dtype=np.float32)
    assert crop(short, 12, 0).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]  # wrapped
    waves, lengths = pad_batch([Utterances(audio)[i] for i in range(2)])
    assert waves.shape == (2, len(audio[0])) and lengths.tolist() == [len(a) for a in audio]
    assert waves[1, len(audio[1]):].abs().max() == 0  # zero padding
    torch.manual_seed(0)
    crops = random_crops(waves, lengths, SAMPLE_RATE)
    assert crops.shape == (2, SAMPLE_RATE)
    # a crop of the long utterance is a contiguous window of it (audio[0] is a ramp) inside its length; the short
    # one (0.5 s) is wrapped from its start, like crop()
    x = crops[0].numpy()
    assert (np.diff(x) == 1).all() and 0 <= x[0] <= len(audio[0]) - SAMPLE_RATE
    assert crops[1].numpy().tolist() == crop(audio[1], SAMPLE_RATE, 0).tolist()
    starts = {int(random_crops(waves, lengths, SAMPLE_RATE)[0, 0]) for _ in range(50)}
    assert len(starts) > 40 and max(starts) <= len(audio[0]) - SAMPLE_RATE  # spread over the valid range
    torch.manual_seed(0)
    assert torch.equal(random_crops(waves, lengths, SAMPLE_RATE), crops)  # follows the seeded generator


def test_parts_pair_trials_and_centre_crop() -> None:
    audio = [np.arange(10, dtype=np.float32), np.arange(7, dtype=np.float32), np.arange(9, dtype=np.float32)]
    col = Collection("x", Path("."), [Utterance(Path(f"{k}.wav"), spk, f"{k}.wav") for k, spk in
                                      (("a", "A"), ("b", "B"), ("c", "A"))], audio)
    parts = make_parts(col, 3)
    assert [(g.utt, g.start, g.stop) for g in parts] == [(0, 0, 3), (0, 3, 6), (0, 6, 9), (1, 0, 2), (1, 2, 4),
                                                        (1, 4, 6), (2, 0, 3), (2, 3, 6), (2, 6, 9)]
    spk = [g.speaker for g in parts]
    # every pair counted by hand: speaker A has 6 pieces (15 target pairs), B 3 (3); 6 x 3 = 18 non-target pairs
    tr = pair_trials(spk, [g.key for g in parts], max_nontarget=100, seed=0)
    assert tr.labels.sum() == 18 and (tr.labels == 0).sum() == 18
    assert all(lab == int(spk[e] == spk[t]) and e < t for lab, e, t in zip(tr.labels, tr.enroll, tr.test,
                                                                          strict=True))
    capped = pair_trials(spk, [g.key for g in parts], max_nontarget=5, seed=0)
    assert capped.labels.sum() == 18 and (capped.labels == 0).sum() == 5  # every target, 5 non-targets
    with pytest.raises(InputError, match="no two items share a speaker"):
        pair_trials(["a", "b"], ["1", "2"], 10, 0)
    assert centre_crop(np.arange(10), 4).tolist() == [3, 4, 5, 6]
    assert centre_crop(np.arange(3), 4).tolist() == [0, 1, 2]
