"""CLI: --help, error paths (exit 2, nothing written), a tiny end-to-end run / fit / evaluate / sweep, exact resume,
prepare, the docs' command lines, and a 2-process DDP run."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from apps.regression.__main__ import APP, main
from apps.regression.model import fit_linear_probe
from core.app import COMMON_FLAGS, load_torch

ROOT = Path(__file__).resolve().parents[3]
TINY = ["--epochs", "2", "--supremix-epochs", "1", "--hidden", "16", "--feature-dim", "8", "--no-progress",
        "--threads", "1"]


def _csv(path: Path, n: int = 240) -> Path:
    rng = np.random.default_rng(0)
    y = np.floor(rng.exponential(3.0, n)) + 1
    x = np.stack([y + rng.normal(0, 1, n), rng.normal(size=n)], 1)
    path.write_text("f1,f2,y\n" + "\n".join(f"{a:.3f},{b:.3f},{t:g}" for (a, b), t in zip(x, y)) + "\n")
    return path


@pytest.mark.parametrize("verb", ["fit", "evaluate", "run", "sweep", "prepare"])
def test_help_of_every_verb(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    if verb == "prepare":  # no training options: its own flags only
        assert "--src" in out and "--output" in out and "--epochs" not in out
        return
    for flag in COMMON_FLAGS:
        assert flag in out, flag
    for flag in ("--target", "--methods", "--bin-width", "--conr-weight", "--supremix-window", "--batch-size"):
        assert flag in out, flag
    assert "_" not in " ".join(re.findall(r"--[a-z_-]+", out))  # kebab-case everywhere
    if verb == "sweep":
        assert "--seeds" in out


@pytest.mark.parametrize(
    "args, match",
    [
        (["fit", "--data", "{tmp}/missing.csv", "--target", "y"], "does not exist"),
        (["fit", "--data", "{tmp}/empty.csv", "--target", "y"], "is empty"),
        (["fit", "--data", "{tmp}/toy.csv", "--target", "nope"], "no target column"),
        (["run", "--data", "{tmp}/toy.csv"], "--target NAME is required"),
        (["fit", "--methods", "magic"], "methods must be one of"),
        (["fit", "--methods", "vanilla", "vanilla"], "twice"),
        (["fit", "--methods", "vanilla", "--lds"], "LDS smooths a re-weighting"),
        (["fit", "--methods", "supremix", "--conr"], "cannot be combined"),
        (["fit", "--bin-width", "-1"], "bin_width must be >"),
        (["fit", "--epochs", "0"], "epochs must be >= 1"),
        (["fit", "--lds-ks", "4"], "kernel sizes must be odd"),
        (["run", "--loss", "huber"], "loss must be one of"),
        (["evaluate"], "no trained model"),
        (["fit", "--config", "{tmp}/bad.yaml"], "unknown option"),
        (["sweep", "--seeds", "0", "--few-shot", "9", "--many-shot", "3"], "few_shot"),
        (["prepare", "abalone", "--src", "{tmp}/nothing.data", "--output", "{tmp}/runs/a.csv"], "does not exist"),
        (["prepare", "sts_b_dir", "--src", "{tmp}", "--output", "{tmp}/runs/a.npz"], "train_new.tsv does not exist"),
    ],
)
def test_bad_setting_exits_2_and_writes_nothing(tmp_path, capsys, args, match):
    _csv(tmp_path / "toy.csv")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] != "prepare":
        args += ["--run-dir", str(tmp_path / "runs"), "--threads", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and match in err
    assert not (tmp_path / "runs").exists()


def test_end_to_end_run_fit_evaluate_sweep(tmp_path, capsys):
    data = _csv(tmp_path / "toy.csv")
    out = tmp_path / "runs"
    common = ["--data", str(data), "--target", "y", "--run-dir", str(out), *TINY]
    methods = ["vanilla", "lds_conr", "fds", "supremix"]
    assert main(["run", "--methods", *methods, *common]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["app"] == "regression" and rep["metric"] == "mae_all" and rep["higher_is_better"] is False
    assert [r["method"] for r in rep["rows"]] == [*methods, "hgb_l1", "train_median"]
    assert rep["baselines"] == ["hgb_l1", "train_median"] and rep["headline"] == "lds_conr"
    assert {v["baseline"] for v in rep["versus"]} == {"hgb_l1", "train_median"}
    assert (out / "hgb_l1" / "predictions.pt").is_file()
    for r in rep["rows"]:
        assert r["seed"] == 0
        for k in ("mae_all", "mae_many", "mae_medium", "mae_few", "gm_all", "gm_few", "mse_all"):
            assert k in r["metrics"]
        assert math.isfinite(r["metrics"]["mae_all"]) and r["metrics"]["mae_all"] > 0
    assert set(rep["extra"]["per_bin"]) == {*methods, "hgb_l1", "train_median"}
    assert "vanilla" in rep["extra"]["val_metrics"] and "hgb_l1" in rep["extra"]["val_metrics"]
    assert rep["plots"] == ["per_bin_error.png", "label_histogram.png"]
    assert (out / "per_bin_error.png").stat().st_size > 0 and (out / "label_histogram.png").is_file()
    assert (out / "report.md").is_file() and (out / "settings.json").is_file()
    ckpt = out / "vanilla" / "seed0" / "checkpoints" / "last.ckpt"
    assert (out / "supremix" / "seed0" / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    model = load_torch(out / "fds" / "seed0" / "model.pt")  # weights_only: plain state dict
    assert model["method"] == "fds" and model["epochs_done"] == model["epochs"] == 2
    # a finished run is picked up from last.ckpt, not retrained
    step = load_torch(ckpt)["global_step"]
    assert main(["fit", "--methods", "vanilla", *common]) == 0
    assert load_torch(ckpt)["global_step"] == step
    # other model settings in the same run directory are refused before anything is written
    capsys.readouterr()
    assert main(["fit", "--methods", "vanilla", *common, "--lr", "0.01"]) == 2
    assert "holds a run made with other settings" in capsys.readouterr().err
    # evaluate alone rewrites the report (the same numbers) for the methods asked
    (out / "report.json").unlink()
    assert main(["evaluate", "--methods", "vanilla", "fds", *common]) == 0
    again = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in again["rows"]] == ["vanilla", "fds", "hgb_l1", "train_median"]
    assert again["rows"][2] == rep["rows"][4]  # the trees' fit is read back from the run directory
    assert again["rows"][0] == rep["rows"][0] and again["rows"][1] == rep["rows"][2]
    # sweep: one report over seeds (seed 0 reused), each seed's report in seed<S>/
    assert main(["sweep", "--seeds", "0", "1", "--methods", "vanilla", *common]) == 0
    sw = json.loads((out / "report.json").read_text())
    assert sw["verb"] == "sweep" and sorted((r["method"], r["seed"]) for r in sw["rows"]) == [
        ("hgb_l1", 0), ("hgb_l1", 1), ("train_median", 0), ("train_median", 1), ("vanilla", 0), ("vanilla", 1)]
    assert (out / "seed1" / "report.json").is_file() and (out / "vanilla" / "seed1" / "model.pt").is_file()
    assert sw["rows"][0]["metrics"] == rep["rows"][0]["metrics"]
    van = next(s for s in sw["summary"] if s["method"] == "vanilla")
    assert van["seeds"] == [0, 1] and van["metrics"]["mae_all"]["std"] > 0


class _Crash(RuntimeError):
    pass


class _CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise _Crash(f"killed at step {self.step}")


@pytest.mark.parametrize("method", ["conr", "lds_fds"])
def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path, monkeypatch, method):
    """A fit killed mid-epoch and re-run gives the very weights (and test MAE) of an uninterrupted fit: data order,
    views, dropout and FDS statistics depend on (seed, epoch, step) only."""
    import apps.regression.train as train

    data = _csv(tmp_path / "toy.csv", n=400)
    args = ["run", "--methods", method, "--data", str(data), "--target", "y", "--epochs", "3", "--batch-size", "32",
            "--hidden", "16", "--feature-dim", "8", "--dropout", "0.1", "--no-progress", "--threads", "1"]
    assert main([*args, "--run-dir", str(tmp_path / "a")]) == 0
    real = train.fit_with_resume
    monkeypatch.setattr(train, "fit_with_resume", lambda *a, **k: real(*a, extra_callbacks=[_CrashAt(8)], **k))
    with pytest.raises(_Crash):  # 5 steps per epoch: killed in the middle of the second epoch
        main([*args, "--run-dir", str(tmp_path / "b")])
    out = tmp_path / "b" / method / "seed0"
    assert load_torch(out / "checkpoints" / "last.ckpt")["global_step"] == 5 and not (out / "model.pt").exists()
    monkeypatch.setattr(train, "fit_with_resume", real)
    assert main([*args, "--run-dir", str(tmp_path / "b")]) == 0
    assert len(list((out / "logs").glob("version_*"))) == 2  # the second attempt resumed (a new log)
    a = load_torch(tmp_path / "a" / method / "seed0" / "model.pt")["state_dict"]
    b = load_torch(out / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((tmp_path / d / "report.json").read_text())["rows"][0]["metrics"] for d in "ab")
    assert ra == rb


def test_prepare_abalone_from_the_uci_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = [f"{rng.choice(['M', 'F', 'I'])},{rng.uniform(0.1, 0.8):.3f},{rng.uniform(0.1, 0.6):.3f},0.1,0.5,0.2,"
             f"0.1,0.15,{int(rng.integers(1, 20))}" for _ in range(60)]
    src = tmp_path / "abalone.data"
    src.write_text("\n".join(lines) + "\n")
    assert main(["prepare", "abalone", "--src", str(src), "--output", str(tmp_path / "a.csv")]) == 0
    text = (tmp_path / "a.csv").read_text().splitlines()
    embedded = (ROOT / "shared_data" / "regression" / "abalone" / "abalone.csv").read_text().splitlines()[0]
    assert text[0] == embedded and len(text) == 61
    f = lines[0].split(",")
    assert text[1] == ",".join([f[8], f'"{f[0]}"', *f[1:8]])
    from apps.regression.config import RegressionSettings
    from apps.regression.data import load_data

    d = load_data(RegressionSettings(data=str(tmp_path / "a.csv"), target="Rings"))
    assert d.in_dim == 8 and d.categorical_names == ["Sex"] and sum(len(v) for v in d.y.values()) == 60
    src.write_text(lines[0] + "\nM,0.1,0.2\n")
    capsys.readouterr()
    assert main(["prepare", "abalone", "--src", str(src), "--output", str(tmp_path / "b.csv")]) == 2
    assert "abalone.data, line 2: expected 9" in capsys.readouterr().err and not (tmp_path / "b.csv").exists()


def test_configs_and_docs_commands_parse():
    """Every YAML config validates, and every command line of the docs page parses with valid settings."""
    for cfg in sorted((ROOT / "apps" / "regression" / "configs").glob("*.yaml")):
        for quick in ([], ["--quick"]):
            args = APP.parser().parse_args(["run", "--config", str(cfg), *quick])
            s = APP.settings_from_args(args)
            assert s.methods and not Path(s.run_dir).is_absolute() and ".." not in Path(s.run_dir).parts
    doc = (ROOT / "docs" / "apps" / "regression.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", doc, flags=re.S))
    commands = re.findall(r"^(?:\.venv/bin/)?python -m apps\.regression ([^#\n]+)", blocks, flags=re.M)
    commands += [" ".join(c.split()) for c in re.findall(r"`(?:\.venv/bin/)?python -m apps\.regression ([^`]+)`", doc)]
    assert len(commands) >= 8
    for c in commands:
        argv = shlex.split(c.strip())
        if "--help" in argv:
            continue
        args = APP.parser().parse_args(argv)
        if APP.verbs[args.verb].settings is not False:
            APP.settings_from_args(args)


def test_linear_probe_matches_lstsq():
    rng = np.random.default_rng(0)
    h, y, w = rng.normal(size=(50, 4)), rng.normal(size=50), rng.uniform(0.5, 2, 50)
    a, c = fit_linear_probe(h, y, w, ridge=0.0)
    X = np.concatenate([h, np.ones((50, 1))], 1) * np.sqrt(w)[:, None]
    ref = np.linalg.lstsq(X, y * np.sqrt(w), rcond=None)[0]
    assert np.allclose(np.append(a, c), ref)


def test_tour_is_registered():
    import apps.regression.tour  # noqa: F401
    from core.tour import registered_tours

    assert "regression" in registered_tours()


def test_views_do_not_touch_batchnorm_statistics():
    from apps.regression.model import frozen_bn_stats
    from core.encoders import MLPEncoder

    enc = MLPEncoder(3, [4], 2).train()
    x = torch.randn(8, 3)
    before = enc.net[1].running_mean.clone()
    with frozen_bn_stats(enc):
        enc(x + 5)
    assert torch.equal(before, enc.net[1].running_mean) and enc.net[1].momentum == 0.1
    enc(x)
    assert not torch.equal(before, enc.net[1].running_mean)


@pytest.mark.distributed
def test_run_quick_on_two_ddp_processes(tmp_path):
    """``run --quick`` on 2 gloo CPU processes: one report (written by rank 0) with a finite MAE."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "apps.regression", "run", "--quick", "--methods", "vanilla", "--epochs", "2",
           "--run-dir", str(out), "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--threads", "1",
           "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.relative_to(out) for p in out.rglob("report.json")] == [Path("report.json")]
    rep = json.loads((out / "report.json").read_text())
    (row,) = [r for r in rep["rows"] if r["method"] == "vanilla"]
    assert math.isfinite(row["metrics"]["mae_all"]) and 0 < row["metrics"]["mae_all"] < 10
    assert rep["mode"] == "quick" and rep["settings"]["devices"] == 2
    assert (out / "vanilla" / "seed0" / "model.pt").is_file()
