"""Command line of the anomaly app: error paths, a tiny end-to-end run, resuming, the tour entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest

from apps.anomaly import train as anomaly_train
from apps.anomaly.__main__ import main
from apps.anomaly.config import AnomalyConfig

REPO = Path(__file__).resolve().parents[3]
TINY = ["--width", "4", "--feature-dim", "8", "--projection-dim", "8", "--hidden-dims", "16",
        "--pretrain-epochs", "1", "--epochs", "1", "--compact-epochs", "1", "--batch-size", "16",
        "--pretrain-batch-size", "32", "--no-progress"]


def separable_table(path: Path, n: int = 160, d: int = 6, seed: int = 0) -> Path:
    """Normals around 0, anomalies shifted by +4 in every feature: any sensible detector separates them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.zeros(n, dtype=int)
    y[-20:] = 1
    x[y == 1] += 4.0
    np.savez(path, X=x, y=y)
    return path


def run(args: list[str]) -> int:
    return main(args)


def test_help_lists_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "apps.anomaly", "fit", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--data", "--quick", "--encoder", "--angular-weight", "--k", "--run-dir", "--train-fraction"):
        assert flag in out.stdout


@pytest.mark.parametrize(
    "make, extra, match",
    [
        (lambda p: p / "missing", [], "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", [], "is empty"),
        (lambda p: (p / "data.txt").write_text("1 2 3") and p / "data.txt", [], "data.txt: unsupported"),
        (lambda p: np.savez(p / "noy.npz", X=np.ones((4, 2))) or p / "noy.npz", [], "noy.npz: missing"),
        (lambda p: np.savez(p / "nan.npz", X=np.ones((4, 2)), y=np.array([0, 0, 1, np.nan])) or p / "nan.npz", [],
         "nan.npz: y has NaN"),
        (lambda p: np.savez(p / "inf.npz", X=np.full((4, 2), np.inf), y=np.array([0, 0, 0, 1])) or p / "inf.npz", [],
         "inf.npz: X has NaN"),
        (lambda p: separable_table(p / "t.npz"), ["--train-fraction", "1.5"], "train_fraction"),
        (lambda p: separable_table(p / "t.npz"), ["--normal", "nope"], "unknown table"),
        (lambda p: separable_table(p / "t.npz"), ["--batch-size", "1"], "batch_size"),
        (lambda p: separable_table(p / "t.npz"), ["--k", "1000"], "fewer than k"),
        (lambda p: separable_table(p / "t.npz"), ["--encoder", "no.pt"], "no.pt does not exist"),
        (lambda p: separable_table(p / "t.npz"), ["--pretrain-fraction", "0"], "no pre-training pool"),
    ],
)
def test_bad_input_exits_nonzero_without_report(tmp_path: Path, capsys, make, extra: list[str], match: str) -> None:
    data = make(tmp_path)
    rc = run(["run", "--data", str(data), "--run-dir", str(tmp_path / "runs"), *TINY, *extra])
    assert rc != 0
    assert match in capsys.readouterr().err
    assert not list(tmp_path.rglob("report.json"))


def test_bad_yaml_names_file_and_line(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nlr: [1\n")
    assert run(["fit", "--config", str(cfg), "--data", str(separable_table(tmp_path / "t.npz"))]) == 2
    err = capsys.readouterr().err
    assert "c.yaml line" in err
    cfg.write_text("epochz: 2\n")
    assert run(["fit", "--config", str(cfg)]) == 2
    assert "unknown option(s) ['epochz']" in capsys.readouterr().err


def test_evaluate_before_fit_fails(tmp_path: Path, capsys) -> None:
    data = separable_table(tmp_path / "t.npz")
    assert run(["evaluate", "--data", str(data), "--run-dir", str(tmp_path / "r"), *TINY]) == 2
    assert "run `fit` first" in capsys.readouterr().err
    assert not list(tmp_path.rglob("report.json"))


def test_tiny_end_to_end_table(tmp_path: Path) -> None:
    data = separable_table(tmp_path / "sep.npz")
    runs = tmp_path / "runs"
    assert run(["fit", "--data", str(data), "--run-dir", str(runs), *TINY]) == 0
    assert run(["evaluate", "--data", str(data), "--run-dir", str(runs), *TINY]) == 0
    report = json.loads((runs / "sep" / "report.json").read_text())
    assert {"app", "dataset", "method", "metrics", "baselines", "seconds", "config"} <= set(report)
    assert report["app"] == "anomaly" and report["method"] == "msc"
    m = report["metrics"]
    assert set(m) == {"roc_auc", "average_precision", "per_class"} and list(m["per_class"]) == ["sep"]
    assert m["roc_auc"] > 0.9  # separable by construction
    assert {"knn_pretrained", "compactness", "knn_raw", "isolation_forest"} <= set(report["baselines"])
    assert report["baselines"]["isolation_forest"]["roc_auc"] > 0.9
    assert (runs / "sep" / "report.md").is_file() and (runs / "sep" / "per_class_roc_auc.png").is_file()
    # a different setting in the same run directory is refused rather than mixed
    assert run(["fit", "--data", str(data), "--run-dir", str(runs), *TINY, "--lr", "0.5"]) == 2


def test_tiny_end_to_end_images_with_user_encoder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = rng.integers(0, 60, (90, 10, 10)).astype(np.uint8)
    for c in range(3):  # each class lights up a different band of rows
        x[y == c, 3 * c:3 * c + 3] = 250
    np.savez(tmp_path / "img.npz", X=x, y=y)
    runs = tmp_path / "runs"
    assert run(["pretrain", "--data", str(tmp_path / "img.npz"), "--run-dir", str(runs), *TINY]) == 0
    enc = runs / "img" / "pretrain" / "encoder.pt"
    assert enc.is_file()
    args = ["run", "--data", str(tmp_path / "img.npz"), "--run-dir", str(tmp_path / "r2"), "--encoder", str(enc),
            "--normal", "1", *TINY]
    assert run(args) == 0
    report = json.loads((tmp_path / "r2" / "img" / "report.json").read_text())
    assert list(report["metrics"]["per_class"]) == ["1"] and report["metrics"]["roc_auc"] > 0.8


def test_interrupted_pretraining_resumes(tmp_path: Path, monkeypatch) -> None:
    data = separable_table(tmp_path / "t.npz")
    cfg = AnomalyConfig(data=str(data), run_dir=str(tmp_path / "runs"), width=4, feature_dim=8, projection_dim=8,
                        hidden_dims=[16], pretrain_epochs=3, pretrain_batch_size=16, progress=False)
    exp = anomaly_train.prepare(cfg)
    task = exp.tasks[0]

    class Interrupt(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            if trainer.current_epoch == 2:
                raise RuntimeError("simulated crash")

    original = anomaly_train._trainer_kwargs

    def crashing(*a, **kw):
        out = original(*a, **kw)
        out["callbacks"] = [*out["callbacks"], Interrupt()]
        return out

    monkeypatch.setattr(anomaly_train, "_trainer_kwargs", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        anomaly_train.pretrain(cfg, task, log=lambda *_: None)
    assert (task.pretrain_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (task.pretrain_dir / "encoder.pt").is_file()
    monkeypatch.setattr(anomaly_train, "_trainer_kwargs", original)
    anomaly_train.pretrain(cfg, task, log=lambda *_: None)
    assert (task.pretrain_dir / "encoder.pt").is_file()
    # the second attempt started at epoch 2: its log has no row of epochs 0 or 1
    import csv

    logs = sorted((task.pretrain_dir / "logs").glob("version_*/metrics.csv"))
    assert len(logs) == 2
    epochs = {int(float(r["epoch"])) for r in csv.DictReader(open(logs[1])) if r.get("epoch")}
    assert epochs == {2}


def test_tour_entry_is_registered() -> None:
    import apps.anomaly.tour  # noqa: F401
    from core.tour import registered_tours

    assert "anomaly" in registered_tours()
