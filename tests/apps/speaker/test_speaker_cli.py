"""End to end through the command line on a tiny synthetic data set: report, resume, bad input, embed, help."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from apps.speaker.__main__ import build_parser, main
from apps.speaker.config import SpeakerConfig


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
    return ["--data", str(data[0]), "--eval-data", str(data[1]), "--run-dir", str(run), "--encoder", "ecapa",
            "--width", "8", "--embed-dim", "8", "--epochs", "1", "--batch-size", "4", "--holdout-speakers", "2",
            "--n-trials", "15", "--segment-seconds", "1.0", "--crop-seconds", "1.0", "--threads", "1",
            "--no-progress", "--loss", "aam_sym", *extra]


def test_run_report_resume_and_embed(data: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["run", *_args(data, run)]) == 0
    root = run / "aam_sym"
    rep = json.loads((root / "report.json").read_text())
    assert {"app", "dataset", "method", "metrics", "baselines", "seconds", "config"} <= set(rep)
    assert rep["app"] == "speaker" and rep["method"] == "aam_sym" and set(rep["baselines"]) == {"mfcc", "untrained"}
    for m in (rep["metrics"], *rep["baselines"].values()):
        assert {"eer", "min_dcf_p01", "min_dcf_p05", "eval_eer", "heldout_eer"} <= set(m)
        assert m["eer"] == m["eval_eer"] and 0 <= m["eer"] <= 1 and 0 <= m["min_dcf_p01"] <= 1
    for f in ("report.md", "det.png", "score_histograms.png", "trials_eval.txt", "trials_heldout.txt", "encoder.pt",
              "checkpoints/last.ckpt", "train_stats.json"):
        assert (root / f).is_file(), f
    # the generated trial list is valid for --trials: evaluating with it reproduces the metrics exactly
    assert main(["evaluate", *_args(data, run, "--trials", str(root / "trials_eval.txt"))]) == 0
    rep2 = json.loads((root / "report.json").read_text())
    assert rep2["metrics"]["eer"] == pytest.approx(rep["metrics"]["eer"])
    # a second run finds the encoder and does not train again
    capsys.readouterr()
    assert main(["run", *_args(data, run)]) == 0
    assert "skipping fit" in capsys.readouterr().out
    # embed: one row per file, equal to what evaluate embeds
    out = tmp_path / "emb.npy"
    files = sorted(data[1].rglob("*.wav"))
    assert main(["embed", str(data[1]), "--out", str(out), "--checkpoint", str(root / "encoder.pt"),
                 "--no-progress"]) == 0
    emb = np.load(out)
    assert emb.shape == (len(files), 8) and np.isfinite(emb).all()
    assert out.with_suffix(".txt").read_text().split() == [str(f) for f in files]


def test_interrupted_fit_resumes_from_last_checkpoint(data: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["fit", *_args(data, run)]) == 0
    root = run / "aam_sym"
    steps_one = json.loads((root / "train_stats.json").read_text())["global_step"]
    # pretend the 2-epoch fit was interrupted after epoch 1: the checkpoint is there, the final encoder is not
    (root / "encoder.pt").unlink()
    cfg = json.loads((root / "config.json").read_text())
    cfg["epochs"] = 2
    (root / "config.json").write_text(json.dumps(cfg))
    assert main(["fit", *_args(data, run), "--epochs", "2"]) == 0
    stats = json.loads((root / "train_stats.json").read_text())
    assert stats["global_step"] == 2 * steps_one  # counted over the whole run
    assert stats["utterances_per_second"] > 0
    assert stats["steps_last_attempt"] == steps_one  # this attempt ran only the second epoch


@pytest.mark.parametrize("extra, match", [
    (["--data", "/nonexistent/path"], "does not exist"),
    (["--lr", "nan"], "lr must be a positive finite number"),
    (["--holdout-speakers", "9"], "leaves fewer than 2"),
    (["--batch-size", "1"], "batch_size must be an integer >= 2"),
    (["--loss", "simclr_sym", "--queue-size", "16"], "needs a non-symmetric loss"),
])
def test_bad_input_exits_nonzero_without_report(data: tuple[Path, Path], tmp_path: Path, capsys, extra: list[str],
                                                 match: str) -> None:
    run = tmp_path / "run"
    assert main(["run", *_args(data, run), *extra]) == 2
    assert match in capsys.readouterr().err
    assert not list(run.rglob("report.json"))


def test_bad_trial_list_names_the_line(data: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    trials = tmp_path / "t.txt"
    trials.write_text("1 s00/u0.wav s00/u1.wav\n0 s00/u0.wav s01/u0.wav\n1 s00/u0.wav\n")
    run = tmp_path / "run"
    assert main(["run", *_args(data, run, "--trials", str(trials))]) == 2
    assert "t.txt line 3" in capsys.readouterr().err
    assert not list(run.rglob("report.json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", *_args(data, run), "--eval-data", str(empty)]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_help_explains_every_option(capsys) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(SpeakerConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    with pytest.raises(SystemExit):
        parser.parse_args(["embed", "--help"])
    assert "--checkpoint" in capsys.readouterr().out


def test_quick_preset_is_valid_and_yaml_layering(tmp_path: Path) -> None:
    from apps.speaker.__main__ import config_from_args

    y = tmp_path / "c.yaml"
    y.write_text("epochs: 3\nloss: am\n")
    cfg = config_from_args(build_parser().parse_args(["fit", "--quick", "--config", str(y), "--epochs", "4"]))
    assert cfg.epochs == 4 and cfg.loss == "am" and cfg.encoder == SpeakerConfig.quick().encoder
    y.write_text("epochs: [3\n")
    with pytest.raises(ValueError, match="c.yaml line"):
        config_from_args(build_parser().parse_args(["fit", "--config", str(y)]))
    y.write_text("nonsense: 1\n")
    with pytest.raises(ValueError, match="unknown option"):
        config_from_args(build_parser().parse_args(["fit", "--config", str(y)]))
    shutil.rmtree(tmp_path)


def test_cpc_pretraining_and_moco_queue(data: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    from apps.speaker.train import load_encoder

    run = tmp_path / "run"
    args = _args(data, run, "--cpc-epochs", "1", "--cpc-steps", "2", "--queue-size", "8")
    args[args.index("--loss") + 1] = "am"
    assert main(["fit", *args]) == 0
    root = run / "am"
    cpc_enc, final = load_encoder(root / "cpc" / "encoder.pt"), load_encoder(root / "encoder.pt")
    assert (root / "cpc" / "checkpoints" / "last.ckpt").is_file()
    # the contrastive stage started from the CPC weights and then moved away from them
    a, b = cpc_enc.state_dict(), final.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(ckpt["state_dict"]["queue.n_filled"]) > 0  # the MoCo queue is part of the checkpoint
