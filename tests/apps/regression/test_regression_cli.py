"""CLI: --help, error paths (exit 2, no report), a tiny end-to-end fit / evaluate / compare, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.regression.__main__ import main
from apps.regression.model import fit_linear_probe

ROOT = Path(__file__).resolve().parents[3]
TINY = ["--epochs", "2", "--supremix_epochs", "1", "--hidden", "16", "--feature_dim", "8", "--no-progress"]


def _csv(path: Path, n: int = 240) -> Path:
    rng = np.random.default_rng(0)
    y = np.floor(rng.exponential(3.0, n)) + 1
    x = np.stack([y + rng.normal(0, 1, n), rng.normal(size=n)], 1)
    path.write_text("f1,f2,y\n" + "\n".join(f"{a:.3f},{b:.3f},{t:g}" for (a, b), t in zip(x, y)) + "\n")
    return path


def test_help_lists_options():
    r = subprocess.run([sys.executable, "-m", "apps.regression", "fit", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    for opt in ("--data", "--target", "--method", "--quick", "--bin_width", "--conr_weight", "--supremix_window"):
        assert opt in r.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (["fit", "--data", "{tmp}/missing.csv", "--target", "y"], "does not exist"),
        (["fit", "--data", "{tmp}/empty.csv", "--target", "y"], "is empty"),
        (["fit", "--data", "{tmp}/toy.csv", "--target", "nope"], "no target column"),
        (["fit", "--data", "{tmp}/toy.csv"], "--target NAME is required"),
        (["fit", "--method", "magic"], "unknown method"),
        (["fit", "--method", "vanilla", "--lds"], "LDS smooths a re-weighting"),
        (["fit", "--method", "supremix", "--conr"], "cannot be combined"),
        (["fit", "--bin_width", "-1"], "bin_width"),
        (["evaluate", "--run_dir", "{tmp}/nothing"], "no trained model"),
        (["fit", "--config", "{tmp}/bad.yaml"], "unknown option"),
    ],
)
def test_error_paths(tmp_path, capsys, args, match):
    _csv(tmp_path / "toy.csv")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    args = [a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "runs")]
    assert main(args) == 2
    assert match in capsys.readouterr().err
    assert not list(tmp_path.rglob("report.json"))


def test_end_to_end_fit_evaluate_compare_resume(tmp_path, capsys):
    data = _csv(tmp_path / "toy.csv")
    out = tmp_path / "runs"
    common = ["--data", str(data), "--target", "y", "--out", str(out), *TINY]
    assert main(["fit", "--method", "vanilla", *common]) == 0
    run = out / "toy" / "vanilla-seed0"
    rep = json.loads((run / "report.json").read_text())
    assert set(rep) >= {"app", "dataset", "method", "metrics", "baselines", "seconds", "config"}
    for k in ("mae_all", "mae_many", "mae_medium", "mae_few", "gm_all", "gm_many", "gm_medium", "gm_few", "mse_all"):
        assert k in rep["metrics"]
    assert rep["app"] == "regression" and "train_median" in rep["baselines"]
    assert (run / "per_bin_error.png").stat().st_size > 0 and (run / "label_histogram.png").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # resume: the finished run is picked up from last.ckpt, not retrained
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert main(["fit", "--method", "vanilla", *common]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step
    # a different configuration in the same run directory is refused
    assert main(["fit", "--method", "vanilla", *common, "--lr", "0.01"]) == 2
    assert main(["evaluate", "--run_dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["compare", "--methods", "vanilla,lds_conr,fds,supremix", "--seeds", "0", *common]) == 0
    summary = json.loads((out / "toy" / "compare" / "report.json").read_text())
    assert summary["method"] == "lds_conr" and set(summary["baselines"]) == {"vanilla", "fds", "supremix"}
    assert "mae_few" in summary["table"]["supremix"] and (out / "toy" / "compare" / "table.md").is_file()
    assert "lds_conr" in capsys.readouterr().out


def test_linear_probe_matches_lstsq():
    rng = np.random.default_rng(0)
    h, y, w = rng.normal(size=(50, 4)), rng.normal(size=50), rng.uniform(0.5, 2, 50)
    a, c = fit_linear_probe(h, y, w, ridge=0.0)
    X = np.concatenate([h, np.ones((50, 1))], 1) * np.sqrt(w)[:, None]
    ref = np.linalg.lstsq(X, y * np.sqrt(w), rcond=None)[0]
    assert np.allclose(np.append(a, c), ref)


def test_interrupted_fit_resumes(tmp_path, monkeypatch):
    import apps.regression.train as train
    from apps.regression.config import RegressionConfig

    data = _csv(tmp_path / "toy.csv")
    cfg = RegressionConfig(data=str(data), target="y", out=str(tmp_path / "runs"), epochs=3, hidden=[16],
                           feature_dim=8, progress=False, method="fds")
    real = train._trainer_kwargs
    # the first attempt "dies" after one epoch: same config, but the trainer stops early
    monkeypatch.setattr(train, "_trainer_kwargs", lambda c, d, e: {**real(c, d, e), "max_epochs": 1})
    run = train.fit(cfg, echo=lambda *_: None)
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["epoch"] == 0
    monkeypatch.setattr(train, "_trainer_kwargs", real)
    train.fit(cfg, echo=lambda *_: None)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 3 * first["global_step"]
    assert len(list((run / "logs").glob("version_*"))) == 2  # the second attempt continued, in a new log


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
