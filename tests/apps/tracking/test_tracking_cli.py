"""Command line of the tracking app: help, error paths, simulate, a tiny end-to-end run, resuming, the tour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apps.tracking.__main__ import main
from apps.tracking.data import read_event
from core.tour import validate_rows

REPO = Path(__file__).resolve().parents[3]
TINY = ["--train-events", "2", "--train-pileup", "1", "--eval-pileup", "1", "--eval-events", "1",
        "--embed-epochs", "1", "--gnn-epochs", "1", "--embed-hidden", "16", "--embed-depth", "1",
        "--gnn-hidden", "8", "--gnn-layers", "1", "--dbscan-eps", "0.05", "--k", "4", "--no-progress",
        "--threads", "1", "--cluster-epochs", "1", "--cluster-dim", "8", "--cluster-layers", "1",
        "--cluster-pivots", "64", "--cluster-candidates", "8"]


def test_help_lists_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "apps.tracking", "fit", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    for flag in ("--data", "--quick", "--config", "--run-dir", "--eval-pileup", "--k", "--edge-tau", "--beta-focal",
                 "--noise-fraction", "--multiple-scattering", "--train-source"):
        assert flag in out.stdout


@pytest.mark.parametrize(
    "make, extra, match",
    [
        (lambda p: p / "missing", [], "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", [], "no TrackML event files"),
        (lambda p: (p / "event000000001-hits.csv").write_text("a,b\n1,2\n") and p, [], "line 1: missing column"),
        (lambda p: None, ["--edge-cut", "1.5"], "edge_cut"),
        (lambda p: None, ["--k", "0"], "k must be"),
        (lambda p: None, ["--noise-fraction", "1"], "noise_fraction"),
    ],
)
def test_bad_input_exits_nonzero_without_report(tmp_path: Path, capsys, make, extra, match) -> None:
    data = make(tmp_path)
    args = ["evaluate", "--run-dir", str(tmp_path / "run"), *extra] + (["--data", str(data)] if data else [])
    assert main(args) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run" / "report.json").exists()


def test_evaluate_without_fit_says_what_to_do(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    assert "run `python -m apps.tracking fit`" in capsys.readouterr().err


def test_simulate_writes_readable_trackml_events(tmp_path: Path) -> None:
    assert main(["simulate", "--out", str(tmp_path), "--events", "2", "--pileup", "1"]) == 0
    assert (tmp_path / "detectors.csv.gz").is_file()
    ev = read_event(tmp_path / "event000000001", require_truth=True)
    assert ev.n_hits > 50 and ev.particles is not None


def test_tiny_run_report_resume_and_tour(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["run", "--run-dir", str(run_dir), *TINY]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert {"app", "dataset", "method", "metrics", "baselines", "seconds", "config"} <= set(report)
    for name in ("trackml_score", "efficiency", "fake_rate", "edge_efficiency", "edge_purity"):
        assert name in report["metrics"]
    assert 0 <= report["metrics"]["trackml_score"] <= 1
    assert "learned clusterer" in report["method"]  # the default builder
    assert set(report["baselines"]) == {"dbscan", "gnn_cc", "gnn"}
    assert set(report["metrics"]["per_dataset"]) == {"sim-pu1", "trackml-subset"}
    for p in report["plots"]:
        assert Path(p).stat().st_size > 0
    assert (run_dir / "report.md").is_file()
    # an interrupted GNN stage (its checkpoint is there, the final model is not) resumes instead of restarting
    (run_dir / "gnn" / "gnn.pt").unlink()
    ckpts = sorted((run_dir / "gnn" / "checkpoints").glob("*.ckpt"))
    assert main(["fit", "--run-dir", str(run_dir), *TINY]) == 0
    assert (run_dir / "gnn" / "gnn.pt").is_file()
    assert sorted((run_dir / "gnn" / "checkpoints").glob("*.ckpt")) == ckpts  # no new training steps
    # the same for the learned-clusterer stage
    (run_dir / "cluster" / "cluster.pt").unlink()
    ckpts = sorted((run_dir / "cluster" / "checkpoints").glob("*.ckpt"))
    assert ckpts and main(["fit", "--run-dir", str(run_dir), *TINY]) == 0
    assert (run_dir / "cluster" / "cluster.pt").is_file()
    assert sorted((run_dir / "cluster" / "checkpoints").glob("*.ckpt")) == ckpts
    # a run directory made before the clusterer options existed is still accepted (and its config completed)
    old = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({k: v for k, v in old.items() if not k.startswith("cluster")}))
    assert main(["fit", "--run-dir", str(run_dir), *TINY]) == 0
    assert json.loads((run_dir / "config.json").read_text()) == old
    # --builder chain makes chaining the headline method; the learned clusterer becomes a baseline
    assert main(["evaluate", "--run-dir", str(run_dir), *TINY, "--builder", "chain"]) == 0
    chain = json.loads((run_dir / "report.json").read_text())
    assert "chaining" in chain["method"] and set(chain["baselines"]) == {"dbscan", "gnn_cc", "gnn_learned"}
    assert chain["metrics"]["trackml_score"] == report["baselines"]["gnn"]["trackml_score"]
    # other model settings in the same run directory are refused
    capsys.readouterr()
    assert main(["fit", "--run-dir", str(run_dir), *TINY, "--gnn-hidden", "12"]) == 2
    assert "other settings" in capsys.readouterr().err
    # the tour's rows are valid
    rows = [{"app": "tracking (GNN)", "dataset": n, "metric": "TrackML score", "value": v["trackml_score"],
             "baseline": report["baselines"]["dbscan"]["per_dataset"][n]["trackml_score"], "baseline_name": "DBSCAN",
             "seconds": report["seconds"]} for n, v in report["metrics"]["per_dataset"].items()]
    validate_rows("tracking", rows)


def test_tour_entry_is_registered() -> None:
    import apps.tracking.tour  # noqa: F401
    from core.tour import registered_tours

    assert "tracking" in registered_tours()


def test_train_and_evaluate_on_user_trackml_folder(tmp_path: Path) -> None:
    data = tmp_path / "events"
    assert main(["simulate", "--out", str(data), "--events", "3", "--pileup", "1", "--first-seed", "5"]) == 0
    run_dir = tmp_path / "run"
    args = ["run", "--data", str(data), "--train-source", "data", "--run-dir", str(run_dir), *TINY,
            "--eval-pileup"]  # no simulated test sets: only the user's held-out event
    assert main(args) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["dataset"] == "events" and set(report["metrics"]["per_dataset"]) == {"events"}
    assert report["metrics"]["per_dataset"]["events"]["trackml_score"] is not None
    # one event cannot be split into training and held-out data
    one = tmp_path / "one"
    assert main(["simulate", "--out", str(one), "--events", "1", "--pileup", "1"]) == 0
    assert main(["fit", "--data", str(one), "--train-source", "data", "--run-dir", str(tmp_path / "r2"), *TINY]) == 2
