"""Command line of the anomaly app (on the core runner): help and flags, bad input, tiny end-to-end runs, the
configs and docs commands, the tour rows."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest

from apps.anomaly.__main__ import APP, main
from apps.anomaly.config import CONFIG_DIR, AnomalySettings
from core.app import COMMON_FLAGS

REPO = Path(__file__).resolve().parents[3]
TINY = ["--width", "4", "--feature-dim", "8", "--projection-dim", "8", "--hidden-dims", "16",
        "--pretrain-epochs", "1", "--epochs", "1", "--compact-epochs", "1", "--batch-size", "16",
        "--pretrain-batch-size", "32", "--no-progress", "--threads", "1"]


def separable_table(path: Path, n: int = 160, d: int = 6, seed: int = 0) -> Path:
    """Normals around 0, anomalies shifted by +4 in every feature: any sensible detector separates them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.zeros(n, dtype=int)
    y[-20:] = 1
    x[y == 1] += 4.0
    np.savez(path, X=x, y=y)
    return path


def banded_images(path: Path) -> Path:
    """3 classes of 10x10 images; each class lights up its own band of rows."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = rng.integers(0, 60, (90, 10, 10)).astype(np.uint8)
    for c in range(3):
        x[y == c, 3 * c:3 * c + 3] = 250
    np.savez(path, X=x, y=y)
    return path


def _help(verb: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        APP.parser().parse_args([verb, "--help"])
    assert e.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("verb", ["pretrain", "fit", "evaluate", "run", "sweep"])
def test_help_of_every_verb_has_the_common_and_app_flags(verb: str) -> None:
    text = _help(verb)
    for flag in (*COMMON_FLAGS, "--encoder-checkpoint", "--angular-weight", "--k", "--train-fraction", "--normal",
                 "--pretrain-epochs", "--isolation-forest"):
        assert flag in text, (verb, flag)
    assert "--encoder " not in text and "--encoder\n" not in text  # the checkpoint flag is --encoder-checkpoint
    if verb == "sweep":
        assert "--seeds" in text


def test_unknown_flag_exits_2() -> None:
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["fit", "--encoder", "x.pt"])
    assert e.value.code == 2 and "error:" in err.getvalue()


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
        (lambda p: separable_table(p / "t.npz"), ["--train-fraction", "1.5"], "train_fraction must be < 1"),
        (lambda p: separable_table(p / "t.npz"), ["--normal", "nope"], "unknown table"),
        (lambda p: separable_table(p / "t.npz"), ["--batch-size", "1"], "batch_size must be >= 2"),
        (lambda p: separable_table(p / "t.npz"), ["--epochs", "0"], "epochs must be >= 1"),
        (lambda p: separable_table(p / "t.npz"), ["--corruption-mode", "zero"], "corruption_mode must be one of"),
        (lambda p: separable_table(p / "t.npz"), ["--lr", "-1"], "lr must be > 0"),
        (lambda p: separable_table(p / "t.npz"), ["--k", "1000"], "fewer than k"),
        (lambda p: separable_table(p / "t.npz"), ["--encoder-checkpoint", "no.pt"], "no.pt does not exist"),
        (lambda p: separable_table(p / "t.npz"), ["--pretrain-fraction", "0"], "no pre-training pool"),
        (lambda p: separable_table(p / "t.npz"), ["--msc-weight", "1.5"], "msc_weight must be 'auto' or a number"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, capsys, make, extra: list[str], match: str) -> None:
    data = make(tmp_path)
    runs = tmp_path / "runs"
    rc = main(["run", "--data", str(data), "--run-dir", str(runs), *TINY, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error:" in err and match in err, err
    assert not runs.exists()  # nothing written to the run directory, not even settings.json


def test_bad_yaml_names_file_and_line(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nlr: [1\n")
    assert main(["fit", "--config", str(cfg), "--data", str(separable_table(tmp_path / "t.npz"))]) == 2
    assert "c.yaml line" in capsys.readouterr().err
    cfg.write_text("epochz: 2\n")
    assert main(["fit", "--config", str(cfg)]) == 2
    assert "unknown option(s) ['epochz']" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_configs_validate_and_stay_in_the_repository(config: Path) -> None:
    s = APP.settings_from_args(APP.parser().parse_args(["run", "--config", str(config)]))
    assert isinstance(s, AnomalySettings) and s.data in ("mnist", "adbench")
    run_dir = (REPO / s.run_dir).resolve()
    assert not Path(s.run_dir).is_absolute() and run_dir.is_relative_to(REPO)


def test_docs_commands_parse() -> None:
    page = (REPO / "docs" / "apps" / "anomaly.md").read_text()
    lines = [ln for ln in page.splitlines() if ln.startswith(".venv/bin/python -m apps.anomaly ")]
    assert len(lines) >= 5
    for line in lines:
        argv = shlex.split(line, comments=True)[3:]
        args = APP.parser().parse_args(argv)
        APP.settings_from_args(args)


def test_evaluate_before_fit_fails(tmp_path: Path, capsys) -> None:
    data = separable_table(tmp_path / "t.npz")
    assert main(["evaluate", "--data", str(data), "--run-dir", str(tmp_path / "r"), *TINY]) == 2
    assert "run `fit` first" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_tiny_end_to_end_table(tmp_path: Path, capsys) -> None:
    from apps.anomaly.tour import _rows
    from core.tour import validate_rows

    data = separable_table(tmp_path / "sep.npz")
    runs = tmp_path / "runs"
    assert main(["fit", "--data", str(data), "--run-dir", str(runs), *TINY]) == 0
    for stage in ("pretrain", "msc", "compact"):  # <run-dir>/<method>/seed<S>/<task>
        assert (runs / stage / "seed0" / "sep" / "encoder.pt").is_file()
    assert json.loads((runs / "settings.json").read_text())["settings"]["data"] == str(data)
    assert main(["evaluate", "--data", str(data), "--run-dir", str(runs), *TINY]) == 0
    report = json.loads((runs / "report.json").read_text())
    assert report["app"] == "anomaly" and report["schema"] == 1 and report["metric"] == "roc_auc"
    assert report["higher_is_better"] is True and report["verb"] == "evaluate"
    rows = {r["method"]: r for r in report["rows"]}
    assert {r["dataset"] for r in report["rows"]} == {"sep"} and len(rows) == len(report["rows"])
    assert {"msc_raw", "msc", "knn_pretrained", "compactness", "knn_raw", "isolation_forest"} <= set(rows)
    assert set(report["baselines"]) == set(rows) - {"msc_raw"} and report["headline"] == "msc_raw"
    assert set(rows["msc"]["metrics"]) == {"roc_auc", "average_precision"} and rows["msc"]["seed"] == 0
    assert rows["msc"]["metrics"]["roc_auc"] > 0.9 and rows["msc_raw"]["metrics"]["roc_auc"] > 0.9  # separable
    assert rows["isolation_forest"]["metrics"]["roc_auc"] > 0.9
    assert report["plots"] == ["per_class_roc_auc.png", "msc_score_histograms.png"]
    assert all((runs / p).is_file() for p in report["plots"]) and (runs / "report.md").is_file()
    assert report["extra"]["tasks"] == ["sep"] and "protocol" in report["extra"]
    tour_rows = validate_rows("anomaly", _rows(report, runs, 1.0, quick=True))
    assert len(tour_rows) == len(rows) - 1 and tour_rows[0]["value"] == rows["msc_raw"]["metrics"]["roc_auc"]
    assert {"mode", "full_mode_ref", "higher_is_better"} <= set(tour_rows[0]) and tour_rows[0]["plots"]
    # evaluation-only options may change in the same run directory; a model setting may not
    assert main(["evaluate", "--data", str(data), "--run-dir", str(runs), *TINY, "--k", "3",
                 "--no-isolation-forest"]) == 0
    assert "isolation_forest" not in {r["method"] for r in json.loads((runs / "report.json").read_text())["rows"]}
    capsys.readouterr()
    assert main(["fit", "--data", str(data), "--run-dir", str(runs), *TINY, "--lr", "0.5"]) == 2
    assert "holds a run made with other settings (lr: None there, 0.5 now)" in capsys.readouterr().err


def test_tiny_images_pretrain_then_user_encoder(tmp_path: Path, capsys) -> None:
    data = banded_images(tmp_path / "img.npz")
    runs = tmp_path / "runs"
    assert main(["pretrain", "--data", str(data), "--run-dir", str(runs), *TINY]) == 0
    enc = runs / "pretrain" / "seed0" / "encoder.pt"  # images: one encoder for every normal class
    assert enc.is_file()
    assert main(["pretrain", "--data", str(data), "--run-dir", str(tmp_path / "r3"), "--encoder-checkpoint",
                 str(enc), *TINY]) == 2
    assert "makes no sense" in capsys.readouterr().err
    r2 = tmp_path / "r2"
    assert main(["run", "--data", str(data), "--run-dir", str(r2), "--encoder-checkpoint", str(enc),
                 "--normal", "1", "2", *TINY]) == 0
    assert not (r2 / "pretrain").exists()
    report = json.loads((r2 / "report.json").read_text())
    msc = {r["dataset"]: r["metrics"]["roc_auc"] for r in report["rows"] if r["method"] == "msc_raw"}
    assert set(msc) == {"class 1", "class 2"}
    mean = report["extra"]["mean"]["msc_raw"]["roc_auc"]
    assert mean == pytest.approx((msc["class 1"] + msc["class 2"]) / 2) and mean > 0.8
    assert {v["dataset"] for v in report["versus"]} == {"class 1", "class 2"}  # no "mean" row among the tasks
    assert "knn_bn_adapted" in {r["method"] for r in report["rows"]}


def test_sweep_runs_each_seed_in_its_own_folder(tmp_path: Path) -> None:
    data = separable_table(tmp_path / "t.npz")
    runs = tmp_path / "runs"
    assert main(["sweep", "--seeds", "0", "1", "--data", str(data), "--run-dir", str(runs), *TINY,
                 "--no-isolation-forest"]) == 0
    for seed in (0, 1):
        assert (runs / "msc" / f"seed{seed}" / "t" / "encoder.pt").is_file()
        assert (runs / f"seed{seed}" / "report.json").is_file()
    report = json.loads((runs / "report.json").read_text())
    assert report["verb"] == "sweep" and sorted({r["seed"] for r in report["rows"]}) == [0, 1]
    msc = next(s for s in report["summary"] if s["method"] == "msc_raw")
    assert msc["seeds"] == [0, 1] and math.isfinite(msc["metrics"]["roc_auc"]["std"])


def test_tour_entry_is_registered() -> None:
    import apps.anomaly.tour  # noqa: F401
    from core.tour import registered_tours

    assert "anomaly" in registered_tours()
