"""Interrupted training of the anomaly app resumes exactly: the app's own `fit` (pre-training, MSC and compactness
fine-tuning through core.training.fit_with_resume), crashed at an epoch start and re-run, ends with the same weights
as an uninterrupted run; a damaged last.ckpt falls back to the newest intact epoch checkpoint. Also a 2-process
DDP run of the command line."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from apps.anomaly import train as anomaly_train
from apps.anomaly.__main__ import main
from core.app import load_torch

REPO = Path(__file__).resolve().parents[3]
STAGES = ("pretrain", "msc", "compact")
# 3 epochs per stage, several steps per epoch (160 rows: 96 normal training rows, batches of 16 / 32)
SMALL = ["--width", "4", "--feature-dim", "8", "--projection-dim", "8", "--hidden-dims", "16",
         "--pretrain-epochs", "3", "--epochs", "3", "--compact-epochs", "3", "--batch-size", "16",
         "--pretrain-batch-size", "32", "--no-progress", "--threads", "1", "--no-isolation-forest"]


ORIGINAL_TRAINER_KWARGS = anomaly_train._trainer_kwargs


class SimulatedCrash(RuntimeError):
    pass


class CrashAtEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.epoch:
            raise SimulatedCrash(f"simulated crash at the start of epoch {self.epoch}")


class SlowBatches(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        time.sleep(0.3)


def crash_in(monkeypatch, stage: str | None, epoch: int = 2, callback: L.Callback | None = None) -> None:
    """Make the app's Trainer of ``stage`` (a stage folder name) crash at the start of ``epoch`` (or run
    ``callback``); None: no crash."""
    def kwargs(s, run_dir: Path, epochs: int) -> dict:
        out = ORIGINAL_TRAINER_KWARGS(s, run_dir, epochs)
        if stage is not None and stage in Path(run_dir).parts:
            out["callbacks"] = [*out["callbacks"], callback or CrashAtEpoch(epoch)]
        return out

    monkeypatch.setattr(anomaly_train, "_trainer_kwargs", kwargs)


def table(path: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6))
    y = np.zeros(160, dtype=int)
    y[-20:] = 1
    x[y == 1] += 4.0
    np.savez(path, X=x, y=y)
    return path


def weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {stage: load_torch(run_dir / stage / "seed0" / "t" / "encoder.pt") for stage in STAGES}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    for stage in STAGES:
        assert wa[stage].keys() == wb[stage].keys()
        for k in wa[stage]:
            assert torch.equal(wa[stage][k], wb[stage][k]), (stage, k)


def logged_epochs(stage_dir: Path) -> list[set[int]]:
    """The epochs each attempt (logs/version_K) logged, in order."""
    out = []
    for f in sorted((stage_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        out.append({int(float(r["epoch"])) for r in csv.DictReader(open(f)) if r.get("epoch")})
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run dir) of an uninterrupted `fit`."""
    root = tmp_path_factory.mktemp("reference")
    data = table(root / "t.npz")
    assert main(["fit", "--data", str(data), "--run-dir", str(root / "runs"), *SMALL]) == 0
    return data, root / "runs"


def test_interrupted_and_resumed_fit_equals_uninterrupted(reference, tmp_path: Path, monkeypatch) -> None:
    data, ref = reference
    runs = tmp_path / "runs"
    argv = ["fit", "--data", str(data), "--run-dir", str(runs), *SMALL]
    crash_in(monkeypatch, "pretrain")
    with pytest.raises(SimulatedCrash):
        main(argv)
    assert (runs / "pretrain" / "seed0" / "t" / "checkpoints" / "last.ckpt").is_file()
    assert not (runs / "pretrain" / "seed0" / "t" / "encoder.pt").exists()
    crash_in(monkeypatch, "msc")  # the re-run finishes pre-training, then crashes in MSC fine-tuning
    with pytest.raises(SimulatedCrash):
        main(argv)
    assert (runs / "pretrain" / "seed0" / "t" / "encoder.pt").is_file()
    assert not (runs / "msc" / "seed0" / "t" / "encoder.pt").exists()
    crash_in(monkeypatch, None)
    assert main(argv) == 0
    # each re-run resumed (its log starts at epoch 2) rather than starting over
    assert logged_epochs(runs / "pretrain" / "seed0" / "t") == [{0, 1}, {2}]
    assert logged_epochs(runs / "msc" / "seed0" / "t") == [{0, 1}, {2}]
    assert logged_epochs(runs / "compact" / "seed0" / "t") == [{0, 1, 2}]
    assert_same_weights(runs, ref)


def test_damaged_last_checkpoint_falls_back_to_the_newest_intact_one(reference, tmp_path: Path, monkeypatch,
                                                                     capsys) -> None:
    data, ref = reference
    runs = tmp_path / "runs"
    argv = ["fit", "--data", str(data), "--run-dir", str(runs), *SMALL]
    crash_in(monkeypatch, "msc")
    with pytest.raises(SimulatedCrash):
        main(argv)
    ckpts = runs / "msc" / "seed0" / "t" / "checkpoints"
    epoch_ckpt = next(ckpts.glob("epoch=1-*.ckpt"))
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a write cut short
    crash_in(monkeypatch, None)
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "damaged checkpoint(s) last.ckpt" in warnings[0], err
    assert f"resuming from {epoch_ckpt.name}" in warnings[0], err
    assert "Traceback" not in err
    assert logged_epochs(runs / "msc" / "seed0" / "t") == [{0, 1}, {2}]
    assert_same_weights(runs, ref)  # the epoch-1 checkpoint holds the state last.ckpt held


def test_time_cap_exits_3_and_a_rerun_finishes(tmp_path: Path, monkeypatch, capsys) -> None:
    data = table(tmp_path / "t.npz")
    runs = tmp_path / "runs"
    argv = ["run", "--data", str(data), "--run-dir", str(runs), *SMALL]
    crash_in(monkeypatch, "pretrain", callback=SlowBatches())  # 9 steps of >= 0.3 s: past Lightning's 1 s minimum
    assert main([*argv, "--max-minutes", "0.001"]) == 3
    out = capsys.readouterr().out
    assert "pre-training: stopped by --max-minutes after" in out and "last.ckpt" in out
    assert (runs / "pretrain" / "seed0" / "t" / "checkpoints" / "last.ckpt").is_file()
    assert not (runs / "pretrain" / "seed0" / "t" / "encoder.pt").exists() and not (runs / "report.json").exists()
    crash_in(monkeypatch, None)
    assert main(argv) == 0
    assert all((runs / stage / "seed0" / "t" / "encoder.pt").is_file() for stage in STAGES)
    assert (runs / "report.json").is_file()


@pytest.mark.distributed
def test_two_process_ddp_run_writes_one_report(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "apps.anomaly", "run", "--quick", "--max-images", "200", "--pretrain-epochs", "1",
           "--epochs", "1", "--compact-epochs", "1", "--run-dir", str(runs), "--no-progress",
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in out.stdout + out.stderr  # two processes ran
    assert out.stdout.count("[anomaly] report:") == 1  # only rank 0 reports
    assert [p.relative_to(runs) for p in runs.rglob("report.json")] == [Path("report.json")]
    assert not list(runs.rglob("*.tmp"))
    report = json.loads((runs / "report.json").read_text())
    assert report["settings"]["devices"] == 2
    methods = [r["method"] for r in report["rows"]]
    assert len(methods) == len(set(methods)) and "msc" in methods
    msc = next(r for r in report["rows"] if r["method"] == "msc")
    assert math.isfinite(msc["metrics"]["roc_auc"]) and 0.0 <= msc["metrics"]["roc_auc"] <= 1.0
    for stage in ("msc", "compact"):
        assert (runs / stage / "seed0" / "class_0" / "encoder.pt").is_file()
