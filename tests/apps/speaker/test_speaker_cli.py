"""End to end through the command line on a tiny synthetic data set: report, evaluation on other data, resume, bad
input, embed, prepare, help, configs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from apps.speaker.__main__ import APP, main
from apps.speaker.config import VARIANTS, SpeakerSettings
from core.app import COMMON_FLAGS, InputError, load_torch

REPO = Path(__file__).resolve().parents[3]


def _write_speakers(root: Path, n_spk: int, n_utt: int, seconds: float, sr: int, seed: int) -> Path:
    """Synthetic 'speakers': harmonic tones with a speaker-specific pitch and spectral tilt."""
    rng = np.random.default_rng(seed)
    for s in range(n_spk):
        d = root / f"s{s:02d}"
        d.mkdir(parents=True)
        f0, tilt = 90 + 25 * s, 0.5 + 0.2 * s
        for u in range(n_utt):
            t = np.arange(int(seconds * sr)) / sr
            vib = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
            x = sum(np.sin(2 * np.pi * f0 * k * vib * t) / k ** tilt for k in range(1, 8))
            x = 0.05 * x * (1 + 0.5 * np.sin(2 * np.pi * 3 * t + u)) + 0.002 * rng.normal(size=t.size)
            sf.write(d / f"u{u}.wav", x.astype(np.float32), sr)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("speaker_data")
    return (_write_speakers(base / "train", 10, 1, 2.5, 16000, 0),
            _write_speakers(base / "eval", 3, 3, 0.6, 8000, 1))


def _args(data: tuple[Path, Path], run: Path, *extra: str) -> list[str]:
    return ["--data", str(data[0]), "--test-data", str(data[1]), "--run-dir", str(run), "--encoder", "ecapa",
            "--width", "8", "--embed-dim", "8", "--epochs", "1", "--batch-size", "4", "--holdout-speakers", "2",
            "--val-speakers", "2",
            "--n-trials", "15", "--segment-seconds", "1.0", "--crop-seconds", "1.0", "--threads", "1",
            "--no-progress", "--losses", "aam_sym", *extra]


def _eers(report: dict) -> dict[tuple[str, str], float]:
    return {(r["method"], r["dataset"]): r["metrics"]["eer"] for r in report["rows"]}


def test_run_report_other_data_resume_and_embed(data: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["run", *_args(data, run)]) == 0
    root = run / "aam_sym" / "seed0"
    rep = json.loads((run / "report.json").read_text())
    assert rep["app"] == "speaker" and rep["verb"] == "run" and rep["metric"] == "eer"
    assert rep["higher_is_better"] is False and set(rep["baselines"]) == {"mfcc", "untrained"}
    eers = _eers(rep)
    assert set(eers) == {(m, d) for m in ("aam_sym", "mfcc", "untrained") for d in ("eval", "heldout")}
    for r in rep["rows"]:
        assert r["seed"] == 0 and set(r["metrics"]) == {"eer", "min_dcf_p01", "min_dcf_p05"}
        assert 0 <= r["metrics"]["eer"] <= 1 and 0 <= r["metrics"]["min_dcf_p01"] <= 1
    assert set(rep["extra"]["eval_sets"]) == {"eval", "heldout"}
    assert rep["extra"]["train"]["aam_sym"]["global_step"] >= 1
    for f in ("report.md", "det.png", "score_histograms.png", "trials_eval.txt", "trials_heldout.txt",
              "settings.json"):
        assert (run / f).is_file(), f
    assert set(rep["plots"]) == {"det.png", "score_histograms.png", "learning_curve.png"}
    assert rep["headline"] == "aam_sym" and (run / "learning_curve.png").is_file()
    for f in ("encoder.pt", "checkpoints/last.ckpt", "train_stats.json", "val_curve.json", "val_curve.png",
              "best_encoder.pt"):
        assert (root / f).is_file(), f
    # the validation curve: the untrained start (epoch 0) and the one epoch; the encoder kept is the best one
    curve = json.loads((root / "val_curve.json").read_text())
    assert curve["epoch"] == [0, 1] and curve["best_eer"] == min(curve["eer"])
    assert curve["n_target"] == 2 * 6  # 2 validation speakers x 4 pieces: C(4, 2) target pairs each
    stats = json.loads((root / "train_stats.json").read_text())
    assert stats["best_epoch"] == curve["epoch"][curve["eer"].index(curve["best_eer"])]
    assert stats["train_speakers"] == 6 and stats["val_speakers"] == 2 and stats["selected"] == "best_validated"
    best, kept = load_torch(root / "best_encoder.pt")["state_dict"], load_torch(root / "encoder.pt")["state_dict"]
    assert all(np.array_equal(best[k].numpy(), kept[k].numpy()) for k in best)
    # 3-s crops, noisy copies and AS-norm: more sets and rows; the headline becomes the AS-norm row
    assert main(["evaluate", *_args(data, run, "--crop-eval-seconds", "0.5", "--eval-noise-snr", "5",
                                    "--asnorm-top", "3")]) == 0
    rep4 = json.loads((run / "report.json").read_text())
    e4 = _eers(rep4)
    sets = {"eval", "heldout", "eval_snr5", "heldout_snr5", "eval_0.5s", "heldout_0.5s", "eval_snr5_0.5s",
            "heldout_snr5_0.5s"}
    assert {d for _, d in e4} == sets and rep4["headline"] == "aam_sym_asnorm"
    assert {m for m, _ in e4} == {"aam_sym", "aam_sym_asnorm", "mfcc", "untrained"}
    assert e4[("aam_sym", "heldout")] == pytest.approx(eers[("aam_sym", "heldout")])  # the clean sets are unchanged
    assert e4[("mfcc", "eval")] == pytest.approx(eers[("mfcc", "eval")])
    # the generated trial list is valid for --trials: evaluating with it reproduces the metrics exactly
    assert main(["evaluate", *_args(data, run, "--trials", str(run / "trials_eval.txt"))]) == 0
    rep2 = json.loads((run / "report.json").read_text())
    assert _eers(rep2)[("aam_sym", "eval")] == pytest.approx(eers[("aam_sym", "eval")])
    # evaluate on other data: its own report in <run-dir>/eval/<name>/, the run's report untouched
    other = data[1].parent / "other"
    if not other.exists():
        other.symlink_to(data[1], target_is_directory=True)
    before = (run / "report.json").read_bytes()
    assert main(["evaluate", *_args(data, run, "--eval-data", str(other))]) == 0
    assert (run / "report.json").read_bytes() == before
    rep3 = json.loads((run / "eval" / "other" / "report.json").read_text())
    assert {d for _, d in _eers(rep3)} == {"other"} and (run / "eval" / "other" / "trials_other.txt").is_file()
    assert _eers(rep3)[("aam_sym", "other")] == pytest.approx(eers[("aam_sym", "eval")])  # same audio, same seed
    # a second run finds the encoder and does not train again
    capsys.readouterr()
    assert main(["run", *_args(data, run)]) == 0
    assert "skipping fit" in capsys.readouterr().out
    # embed: one row per file, equal to what evaluate embeds
    out = tmp_path / "emb.npy"
    files = sorted(data[1].rglob("*.wav"))
    assert main(["embed", str(data[1]), "--output", str(out), "--run-dir", str(run), "--loss", "aam_sym",
                 "--no-progress", "--threads", "1"]) == 0
    emb = np.load(out)
    assert emb.shape == (len(files), 8) and np.isfinite(emb).all()
    assert out.with_suffix(".txt").read_text().split() == [str(f) for f in files]
    assert main(["embed", str(data[1]), "--output", str(tmp_path / "e.csv"), "--run-dir", str(run),
                 "--loss", "aam_sym"]) == 2
    assert "--output must end in .npy" in capsys.readouterr().err


def test_sweep_over_seeds_reports_mean_and_std(data: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["sweep", "--seeds", "0", "1", *_args(data, run, "--losses", "simclr", "am")]) == 0
    rep = json.loads((run / "report.json").read_text())
    assert rep["verb"] == "sweep" and {r["seed"] for r in rep["rows"]} == {0, 1}
    assert {(r["method"], r["seed"]) for r in rep["rows"]} == {(m, s) for m in ("simclr", "am", "mfcc", "untrained")
                                                               for s in (0, 1)}
    for seed in (0, 1):
        assert json.loads((run / f"seed{seed}" / "report.json").read_text())["rows"][0]["seed"] == seed
        assert (run / f"seed{seed}" / "eer_by_method.png").is_file()
        for loss in ("simclr", "am"):
            assert (run / loss / f"seed{seed}" / "encoder.pt").is_file()
    summary = {(x["method"], x["dataset"]): x for x in rep["summary"]}
    assert summary[("am", "eval")]["seeds"] == [0, 1] and "std" in summary[("am", "eval")]["metrics"]["eer"]


def test_interrupted_fit_resumes_exactly(data: tuple[Path, Path], tmp_path: Path) -> None:
    """A fit interrupted after epoch 1 of 3 and resumed ends with the uninterrupted fit's weights, bit for bit
    (crops, augmentation and data order all follow the step- and epoch-seeded generators)."""
    import shutil

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["fit", *_args(data, whole, "--epochs", "3", "--no-select-best")]) == 0
    steps = json.loads((whole / "aam_sym" / "seed0" / "train_stats.json").read_text())["global_step"]
    shutil.copytree(whole, cut)
    root = cut / "aam_sym" / "seed0"
    # the state after a kill during epoch 2: the epoch-1 checkpoint, no later one, no final encoder
    (root / "encoder.pt").unlink()
    for ckpt in (root / "checkpoints").glob("*.ckpt"):
        if not ckpt.name.startswith("epoch=0-"):
            ckpt.unlink()
    assert main(["fit", *_args(data, cut, "--epochs", "3", "--no-select-best")]) == 0
    # the validation curve continued where the checkpoint left it, with the uninterrupted fit's values
    assert json.loads((root / "val_curve.json").read_text()) == json.loads(
        (whole / "aam_sym" / "seed0" / "val_curve.json").read_text())
    stats = json.loads((root / "train_stats.json").read_text())
    assert stats["global_step"] == steps  # counted over the whole run
    assert stats["steps_last_attempt"] == steps * 2 // 3 and stats["utterances_per_second"] > 0
    a = load_torch(whole / "aam_sym" / "seed0" / "encoder.pt")["state_dict"]
    b = load_torch(root / "encoder.pt")["state_dict"]
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


@pytest.mark.parametrize("extra, match", [
    (["--data", "/nonexistent/path"], "does not exist"),
    (["--lr", "nan"], "lr must be finite"),
    (["--holdout-speakers", "9"], "leaves fewer than 2"),
    (["--val-speakers", "7"], "val_speakers=7 leaves fewer than 2"),
    (["--snr-low-db", "9", "--snr-high-db", "3"], "must not exceed"),
    (["--batch-size", "1"], "batch_size must be >= 2"),
    (["--losses", "simclr_sym", "--queue-size", "16"], "needs a non-symmetric loss"),
    (["--losses", "triplet"], "losses must be one of"),
    (["--encoder", "ecapa", "--width", "6"], "divisible by 4"),
    (["--trials", "/nonexistent/trials.txt"], "trial list /nonexistent/trials.txt does not exist"),
])
def test_bad_setting_exits_2_and_writes_nothing(data: tuple[Path, Path], tmp_path: Path, capsys, extra: list[str],
                                                match: str) -> None:
    run = tmp_path / "run"
    assert main(["run", *_args(data, run), *extra]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and match in err
    assert not run.exists() or not any(run.rglob("*"))


def test_bad_trial_list_names_the_line(data: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    trials = tmp_path / "t.txt"
    trials.write_text("1 s00/u0.wav s00/u1.wav\n0 s00/u0.wav s01/u0.wav\n1 s00/u0.wav\n")
    run = tmp_path / "run"
    assert main(["run", *_args(data, run, "--trials", str(trials))]) == 2
    assert "t.txt line 3" in capsys.readouterr().err
    assert not run.exists() or not any(run.rglob("*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", *_args(data, run), "--eval-data", str(empty)]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_help_of_every_verb(capsys) -> None:
    parser = APP.parser()
    settings_flags = ["--" + f.name.replace("_", "-") for f in dataclasses.fields(SpeakerSettings)]
    for verb in ("fit", "evaluate", "run", "sweep"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([verb, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        for flag in (*COMMON_FLAGS, *settings_flags):
            assert flag in text, (verb, flag)
    for verb, flags in (("embed", ("--output", "--checkpoint", "--run-dir", "--seed", "--threads", "--progress",
                                   "--loss", "--max-seconds")),
                        ("prepare", ("--librispeech", "--fsdd", "--output", "--fsdd-max-index"))):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([verb, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        for flag in flags:
            assert flag in text, (verb, flag)
        assert "--epochs" not in text  # short: no training options
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--help"])
    assert "--seeds" in capsys.readouterr().out


def _settings(*argv: str) -> SpeakerSettings:
    return APP.settings_from_args(APP.parser().parse_args(["fit", *argv]))


def test_quick_preset_yaml_layering_and_losses(tmp_path: Path) -> None:
    q = _settings("--quick")
    assert q.seed == 0 and q.epochs == 20 and q.run_dir == "runs/speaker_quick" and q.losses == ["am_sym"]
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 3\nlosses: [am]\n")
    s = _settings("--quick", "--config", str(y), "--epochs", "4")
    assert s.epochs == 4 and s.losses == ["am"] and s.warmup_steps == SpeakerSettings.quick().warmup_steps
    assert _settings("--losses", "all").losses == list(VARIANTS)
    assert _settings("--losses", "am", "am", "simclr").losses == ["am", "simclr"]
    y.write_text("epochs: [3\n")
    with pytest.raises(InputError, match="c.yaml line"):
        _settings("--config", str(y))
    y.write_text("nonsense: 1\n")
    with pytest.raises(InputError, match="unknown option"):
        _settings("--config", str(y))


def test_full_config_needs_data_and_stays_in_the_repository(tmp_path: Path, capsys) -> None:
    import yaml

    full = REPO / "apps" / "speaker" / "configs" / "full.yaml"
    values = yaml.safe_load(full.read_text())
    assert not any(isinstance(v, str) and ".." in v for v in values.values())
    run = tmp_path / "run"
    assert main(["run", "--config", str(full), "--run-dir", str(run)]) == 2
    assert "no training data: pass --data PATH" in capsys.readouterr().err
    assert not run.exists()
    s = _settings("--config", str(full), "--data", "d/librispeech", "--test-data", "d/fsdd")
    assert s.losses == list(VARIANTS) and s.epochs == 60 and s.seed == 0 and s.holdout_speakers == 51


def test_prepare_copies_the_releases_into_the_tree_layout(data: tuple[Path, Path], tmp_path: Path) -> None:
    from apps.speaker.data import load_collection
    from apps.speaker.prepare import full_utterances, prepare_librispeech

    ids = full_utterances()
    assert len(ids) == 251 and len({u.split("-")[0] for u in ids}) == 251
    wav = next(data[0].rglob("*.wav")).read_bytes()
    libri = tmp_path / "LibriSpeech" / "train-clean-100"
    for u in ids[:3] + ["19-198-0001"]:  # OpenSLR layout <speaker>/<chapter>/<id>.flac (content: any audio)
        spk, chapter, _ = u.split("-")
        (libri / spk / chapter).mkdir(parents=True, exist_ok=True)
        (libri / spk / chapter / f"{u}.flac").write_bytes(wav)
    out = tmp_path / "prepared"
    assert prepare_librispeech(libri, out / "librispeech", ids[:3], log=lambda m: None) == 3
    col = load_collection(out / "librispeech")
    assert sorted(u.key for u in col.utterances) == sorted(f"{u.split('-')[0]}/{u}.flac" for u in ids[:3])
    with pytest.raises(InputError, match="248 of the 251 full-mode utterances are missing"):
        prepare_librispeech(libri, out / "x", log=lambda m: None)
    fsdd = tmp_path / "free-spoken-digit-dataset" / "recordings"
    fsdd.mkdir(parents=True)
    for name in ("0_george_0", "3_george_44", "3_george_45", "9_theo_2"):
        (fsdd / f"{name}.wav").write_bytes(wav)
    (fsdd.parent / "README.md").write_text("not audio")
    assert main(["prepare", "--fsdd", str(fsdd.parent), "--output", str(out)]) == 0
    col = load_collection(out / "fsdd")
    assert sorted(u.key for u in col.utterances) == ["george/0_george_0.wav", "george/3_george_44.wav",
                                                     "theo/9_theo_2.wav"]
    assert main(["prepare", "--output", str(out)]) == 2


def test_cpc_pretraining_and_moco_queue(data: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    from apps.speaker.train import load_encoder

    run = tmp_path / "run"
    args = _args(data, run, "--cpc-epochs", "1", "--cpc-steps", "2", "--queue-size", "8", "--no-select-best")
    args[args.index("--losses") + 1] = "am"
    assert main(["fit", *args]) == 0
    root = run / "am" / "seed0"
    cpc_enc, final = load_encoder(root / "cpc" / "encoder.pt"), load_encoder(root / "encoder.pt")
    assert (root / "cpc" / "checkpoints" / "last.ckpt").is_file()
    # the contrastive stage started from the CPC weights and then moved away from them
    a, b = cpc_enc.state_dict(), final.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    ckpt = load_torch(root / "checkpoints" / "last.ckpt")  # weights_only: only tensors and plain values
    assert int(ckpt["state_dict"]["queue.n_filled"]) > 0  # the MoCo queue is part of the checkpoint


@pytest.mark.slow
def test_two_process_run_writes_one_report(data: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "apps.speaker", "run", *_args(data, run), "--accelerator", "cpu", "--devices", "2",
           "--strategy", "ddp", "--batch-size", "3"]  # 6 training utterances: one batch of 3 per device
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads((run / "report.json").read_text())
    assert len(rep["rows"]) == 6
    stats = json.loads((run / "aam_sym" / "seed0" / "train_stats.json").read_text())
    assert stats["devices"] == 2 and stats["selected"] == "best_validated"
    assert json.loads((run / "aam_sym" / "seed0" / "val_curve.json").read_text())["epoch"] == [0, 1]
