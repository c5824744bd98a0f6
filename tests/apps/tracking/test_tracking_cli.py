"""Command line of the tracking app: help, error paths, simulate, a tiny end-to-end run, resuming, other data,
the tour rows, the docs' command lines and a two-process DDP run."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from apps.tracking.__main__ import APP, main
from apps.tracking.config import SimulateSettings, TrackingSettings
from apps.tracking.data import read_event
from apps.tracking.evaluate import METHOD_NAMES
from apps.tracking.tour import tour_rows
from core.app import COMMON_FLAGS
from core.tour import validate_rows

REPO = Path(__file__).resolve().parents[3]
TINY = ["--train-events", "2", "--train-pileup", "1", "--eval-pileup", "1", "--eval-events", "1",
        "--embed-epochs", "1", "--gnn-epochs", "1", "--embed-hidden", "16", "--embed-depth", "1",
        "--gnn-hidden", "8", "--gnn-layers", "1", "--dbscan-eps", "0.05", "--k", "4", "--no-progress",
        "--threads", "1", "--cluster-epochs", "1", "--cluster-dim", "8", "--cluster-layers", "1",
        "--cluster-pivots", "64", "--cluster-candidates", "8"]
METHODS = {"gnn_learned", "gnn", "gnn_cc", "dbscan", "road", "road_gnn"}


def _help(verb: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("verb", ["fit", "evaluate", "run", "sweep", "scale"])
def test_help_of_training_verbs_has_common_and_app_flags(verb: str, capsys) -> None:
    out = _help(verb, capsys)
    for flag in COMMON_FLAGS + ("--eval-data", "--eval-pileup", "--k", "--edge-tau", "--beta-focal",
                                "--noise-fraction", "--multiple-scattering", "--train-source", "--builder"):
        assert flag in out, flag
    assert ("--seeds" in out) == (verb == "sweep")
    assert ("--hits" in out) == (verb == "scale")


def test_simulate_help_is_short_and_has_no_training_options(capsys) -> None:
    out = _help("simulate", capsys)
    assert len(out.splitlines()) < 100 and len(out) < len(_help("fit", capsys)) / 2
    for flag in COMMON_FLAGS + ("--output", "--events", "--pileup", "--plain", "--noise-fraction"):
        assert flag in out, flag
    for flag in ("--out ", "--embed-epochs", "--gnn-hidden", "--train-source", "--eval-data"):
        assert flag not in out, flag


@pytest.mark.parametrize(
    "make, extra, match",
    [
        (lambda p: p / "missing", [], "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", [], "no TrackML event files"),
        (lambda p: (p / "event000000001-hits.csv").write_text("a,b\n1,2\n") and p, [], "line 1: missing column"),
        (lambda p: None, ["--edge-cut", "1.5"], "edge_cut"),
        (lambda p: None, ["--k", "0"], "k must be"),
        (lambda p: None, ["--noise-fraction", "1"], "noise_fraction"),
        (lambda p: None, ["--cluster-dim", "10"], "multiple of 4"),
        (lambda p: None, ["--gnn-aggr", "mean+median"], "gnn_aggr"),
        (lambda p: None, ["--pt-min", "3", "--pt-max", "2"], "pt_min must be below pt_max"),
        (lambda p: None, ["--builder", "magic"], "builder must be one of"),
    ],
)
@pytest.mark.parametrize("verb", ["fit", "evaluate"])
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, capsys, verb, make, extra, match) -> None:
    data = make(tmp_path)
    args = [verb, "--run-dir", str(tmp_path / "run"), *TINY, *extra] + (["--data", str(data)] if data else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err
    assert not (tmp_path / "run").exists()


def test_evaluate_without_fit_says_what_to_do(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    assert "run `python -m apps.tracking fit`" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_simulate_writes_readable_trackml_events(tmp_path: Path, capsys) -> None:
    assert main(["simulate", "--output", str(tmp_path), "--events", "2", "--pileup", "1", "--seed", "5"]) == 0
    assert (tmp_path / "detectors.csv.gz").is_file()
    ev = read_event(tmp_path / "event000000006", require_truth=True)  # event i has seed 5 + i
    assert ev.n_hits > 50 and ev.particles is not None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith("-hits.csv.gz")) == \
        ["event000000005-hits.csv.gz", "event000000006-hits.csv.gz"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    # bad options: exit 2, nothing written
    capsys.readouterr()
    assert main(["simulate", "--events", "1"]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["simulate", "--output", str(tmp_path / "x"), "--events", "0"]) == 2
    assert "events must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):  # renamed flag
        main(["simulate", "--out", str(tmp_path / "x")])


def test_tiny_run_report_resume_other_data_and_tour(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["run", "--run-dir", str(run_dir), *TINY]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["app"] == "tracking" and report["metric"] == "trackml_score" and report["higher_is_better"]
    rows = {(r["dataset"], r["method"]): r for r in report["rows"]}
    assert set(rows) == {(d, m) for d in ("sim-pu1", "trackml-subset") for m in METHODS}
    assert all(r["seed"] == 0 for r in report["rows"])
    for name in ("trackml_score", "efficiency", "fake_rate", "edge_efficiency", "edge_purity"):
        assert name in rows[("trackml-subset", "gnn_learned")]["metrics"]
    assert 0 <= rows[("trackml-subset", "gnn_learned")]["metrics"]["trackml_score"] <= 1
    assert report["extra"]["method"] == "road_gnn"  # the default builder
    assert "road following" in report["extra"]["description"]
    assert set(report["baselines"]) == {"dbscan", "gnn_cc", "gnn", "gnn_learned", "road"}
    assert set(report["extra"]["tuned"]["hybrid"]) == {"gnn_cut", "track_cut", "extend_cut", "fill_cut",
                                                       "fill_min_hits", "fill_quality", "fill_cohesion"}
    for p in report["plots"]:
        assert (run_dir / p).stat().st_size > 0
    assert (run_dir / "report.md").is_file() and (run_dir / "settings.json").is_file()
    models = run_dir / "pipeline" / "seed0"
    # an interrupted GNN stage (its checkpoint is there, the final model is not) resumes instead of restarting
    (models / "gnn" / "gnn.pt").unlink()
    ckpts = sorted((models / "gnn" / "checkpoints").glob("*.ckpt"))
    assert main(["fit", "--run-dir", str(run_dir), *TINY]) == 0
    assert (models / "gnn" / "gnn.pt").is_file()
    assert sorted((models / "gnn" / "checkpoints").glob("*.ckpt")) == ckpts  # no new training steps
    # the same for the learned-clusterer stage
    (models / "cluster" / "cluster.pt").unlink()
    ckpts = sorted((models / "cluster" / "checkpoints").glob("*.ckpt"))
    assert ckpts and main(["fit", "--run-dir", str(run_dir), *TINY]) == 0
    assert (models / "cluster" / "cluster.pt").is_file()
    assert sorted((models / "cluster" / "checkpoints").glob("*.ckpt")) == ckpts
    # a run directory made before some options existed is accepted (they count as their defaults)
    stored = json.loads((run_dir / "settings.json").read_text())
    for key in ("cluster_hops", "cluster_cut", "cluster_lr"):
        del stored["settings"][key]
    (run_dir / "settings.json").write_text(json.dumps(stored))
    assert main(["fit", "--run-dir", str(run_dir), *TINY]) == 0
    # --builder chain makes chaining the headline method; road_gnn becomes a baseline
    assert main(["evaluate", "--run-dir", str(run_dir), *TINY, "--builder", "chain"]) == 0
    chain = json.loads((run_dir / "report.json").read_text())
    assert chain["extra"]["method"] == "gnn" and set(chain["baselines"]) == {"dbscan", "gnn_cc", "gnn_learned", "road",
                                                                    "road_gnn"}
    assert chain["extra"]["per_dataset"]["trackml-subset"]["gnn"]["trackml_score"] == \
        rows[("trackml-subset", "gnn")]["metrics"]["trackml_score"]
    # evaluation on other data writes its own report and keeps the run's
    events = tmp_path / "events"
    assert main(["simulate", "--output", str(events), "--events", "1", "--pileup", "1"]) == 0
    before = (run_dir / "report.json").read_text()
    assert main(["evaluate", "--run-dir", str(run_dir), *TINY, "--eval-data", str(events)]) == 0
    other = json.loads((run_dir / "eval" / "events" / "report.json").read_text())
    assert {r["dataset"] for r in other["rows"]} == {"events"} and other["data"] == str(events)
    assert all((run_dir / "eval" / "events" / p).is_file() for p in other["plots"])
    assert (run_dir / "report.json").read_text() == before
    # other model settings in the same run directory are refused, and nothing is written
    capsys.readouterr()
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert main(["fit", "--run-dir", str(run_dir), *TINY, "--gnn-hidden", "12"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == files
    # the tour's rows of this report are valid (headline builder vs DBSCAN and road following per data set)
    tour = tour_rows(report, run_dir, quick=True, seconds=report["seconds"])
    validate_rows("tracking", tour)
    assert [(r["dataset"], r["baseline_name"]) for r in tour] == [
        (d, METHOD_NAMES[b]) for d in ("sim-pu1", "trackml-subset") for b in ("dbscan", "road")]
    assert tour[2]["value"] == rows[("trackml-subset", "road_gnn")]["metrics"]["trackml_score"]
    assert tour[2]["baseline"] == rows[("trackml-subset", "dbscan")]["metrics"]["trackml_score"]
    assert tour[3]["baseline"] == rows[("trackml-subset", "road")]["metrics"]["trackml_score"]
    assert all(Path(p).is_file() for p in tour[0]["plots"]) and tour[0]["mode"] == "quick"


def test_tour_entry_is_registered() -> None:
    import apps.tracking.tour  # noqa: F401
    from core.tour import registered_tours

    assert "tracking" in registered_tours()


def test_train_and_evaluate_on_user_trackml_folder(tmp_path: Path) -> None:
    data = tmp_path / "events"
    assert main(["simulate", "--output", str(data), "--events", "3", "--pileup", "1", "--seed", "5"]) == 0
    run_dir = tmp_path / "run"
    args = ["run", "--data", str(data), "--train-source", "data", "--run-dir", str(run_dir), *TINY,
            "--eval-events", "0"]  # no simulated test sets: only the user's held-out event
    assert main(args) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["extra"]["headline_dataset"] == "events" and {r["dataset"] for r in report["rows"]} == {"events"}
    assert report["extra"]["per_dataset"]["events"]["gnn_learned"]["trackml_score"] is not None
    # one event cannot be split into training and held-out data
    one = tmp_path / "one"
    assert main(["simulate", "--output", str(one), "--events", "1", "--pileup", "1"]) == 0
    assert main(["fit", "--data", str(one), "--train-source", "data", "--run-dir", str(tmp_path / "r2"), *TINY]) == 2
    assert not (tmp_path / "r2").exists()


def _doc_commands() -> list[list[str]]:
    """The argument lists of every ``python -m apps.tracking`` / ``tools.tracking_scaling`` command of the docs
    page: the lines of its code blocks (with ``\\`` continuations) and its inline code spans."""
    text = (REPO / "docs" / "apps" / "tracking.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    prose = re.sub(r"```bash\n.*?```", "", text, flags=re.S)
    lines = [ln.split(" # ")[0] for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    cmds = []
    for line in lines:
        m = re.search(r"-m (apps\.tracking|tools\.tracking_scaling)\b(.*)", line)
        if m:
            argv = shlex.split(m.group(2))
            cmds.append(argv if m.group(1) == "apps.tracking" else ["scale", *argv])
    return cmds


def test_every_command_line_of_the_docs_page_parses() -> None:
    cmds = _doc_commands()
    assert len(cmds) >= 5 and any(c[0] == "simulate" for c in cmds)
    parser = APP.parser()
    for argv in cmds:
        if "--help" in argv:
            with pytest.raises(SystemExit, match="0"):
                parser.parse_args(argv)
            continue
        args = parser.parse_args(argv)
        cls = SimulateSettings if args.verb == "simulate" else TrackingSettings
        APP.settings_from_args(args, cls)  # valid settings (and config files)


@pytest.mark.distributed
def test_two_process_ddp_run_shards_the_events(tmp_path: Path) -> None:
    """``--devices 2 --strategy ddp`` (two gloo CPU processes): every rank trains on its half of the 4 events (2
    steps per epoch, not 4), the main process tunes and writes the models and the report."""
    run_dir = tmp_path / "run"
    tiny = [a for a in TINY]
    tiny[tiny.index("--train-events") + 1] = "4"
    cmd = [sys.executable, "-m", "apps.tracking", "run", "--run-dir", str(run_dir), *tiny,
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stdout + out.stderr
    models = run_dir / "pipeline" / "seed0"
    for stage in ("embed", "gnn", "cluster"):
        names = {p.name for p in (models / stage / "checkpoints").glob("*.ckpt")}
        assert names == {"last.ckpt", "epoch=0-step=2.ckpt"}, (stage, names)
        assert (models / stage / f"{stage}.pt").is_file()
    report = json.loads((run_dir / "report.json").read_text())
    assert {r["dataset"] for r in report["rows"]} == {"sim-pu1", "trackml-subset"}
    assert "devices" in report["settings"] and report["settings"]["devices"] == 2
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob(".*.tmp"))
