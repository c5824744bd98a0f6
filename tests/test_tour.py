"""The tour: registry, report writing, discovery of apps' tour modules, and a reduced core demo."""

from __future__ import annotations

import json
import math
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from core import tour
from core.tour import TourResult, format_table, register_tour, run_tour, validate_rows

FAKE = "zz_fake_entry"


def _fake_rows(out_dir: Path, quick: bool) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    fig.savefig(out_dir / "fake.png")
    plt.close(fig)
    return [{"app": "fake", "dataset": "toy", "metric": "accuracy", "value": 0.9 if quick else 0.95,
             "baseline": 0.5, "baseline_name": "chance", "seconds": 0.01, "plots": [str(out_dir / "fake.png")]},
            {"app": "fake", "dataset": "toy", "metric": "loss", "value": float("nan"), "baseline": None,
             "baseline_name": "", "seconds": 0.01}]


@pytest.fixture
def fake_entry():
    register_tour(FAKE)(_fake_rows)
    yield FAKE
    tour.unregister_tour(FAKE)


def test_run_tour_writes_report(tmp_path: Path, fake_entry: str) -> None:
    report_dir, results = run_tour(tmp_path, only=[fake_entry], echo=None)
    assert report_dir.parent == tmp_path
    assert [r.name for r in results] == [fake_entry] and results[0].error is None
    md = (report_dir / "report.md").read_text()
    assert "| fake | toy | accuracy | 0.9 | 0.5 (chance) |" in md
    assert f"![fake]({fake_entry}/fake.png)" in md
    data = json.loads((report_dir / "report.json").read_text())
    (entry,) = data["entries"]
    assert entry["name"] == fake_entry and entry["error"] is None
    assert entry["rows"][0]["value"] == 0.9 and entry["rows"][0]["plots"] == [f"{fake_entry}/fake.png"]
    assert entry["rows"][1]["value"] is None  # NaN becomes null: report.json stays valid JSON
    assert (report_dir / fake_entry / "fake.png").exists()
    assert (report_dir / "summary.png").stat().st_size > 0
    assert data["meta"]["quick"] is True


def test_failing_entry_is_reported_and_others_still_run(tmp_path: Path, fake_entry: str) -> None:
    def broken(out_dir: Path, quick: bool) -> list[dict]:
        raise RuntimeError("boom")

    entries = {"broken": broken, fake_entry: _fake_rows}
    report_dir, results = run_tour(tmp_path, entries=entries, echo=None, quick=False)
    by_name = {r.name: r for r in results}
    assert "RuntimeError: boom" in (by_name["broken"].error or "")
    assert by_name[fake_entry].rows[0]["value"] == 0.95  # quick=False reached the entry
    md = (report_dir / "report.md").read_text()
    assert "FAILED" in md and "RuntimeError: boom" in md


def test_table_and_validation() -> None:
    rows = validate_rows("x", [{"app": "a", "dataset": "d", "metric": "m", "value": 1.23456, "baseline": 1,
                                "baseline_name": "b", "seconds": 2.0}])
    text = format_table([TourResult("x", rows, 2.0)])
    header, rule, line = text.splitlines()
    assert header.split() == ["app", "dataset", "metric", "value", "baseline", "seconds"]
    assert line.split() == ["a", "d", "m", "1.235", "1", "(b)", "2.0"]
    with pytest.raises(ValueError):
        validate_rows("x", [{"app": "a"}])
    with pytest.raises(ValueError):
        validate_rows("x", [])
    with pytest.raises(ValueError):
        validate_rows("x", [{**rows[0], "value": "high"}])
    with pytest.raises(ValueError):
        run_tour("unused", only=["no-such-entry"], entries={}, echo=None)


def test_register_rejects_conflicting_names() -> None:
    register_tour("zz_dup")(_fake_rows)
    try:
        register_tour("zz_dup")(_fake_rows)  # re-import of the same function is fine

        def other(out_dir: Path, quick: bool) -> list[dict]:
            return []

        with pytest.raises(ValueError):
            register_tour("zz_dup")(other)
    finally:
        tour.unregister_tour("zz_dup")
    with pytest.raises(ValueError):
        register_tour("a/b")


def test_tools_tour_discovers_app_tours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """An ``apps/<name>/tour.py`` registers itself; a broken one shows up as a failed entry."""
    import apps
    from tools import tour as tour_cli

    pkgs = tmp_path / "pkgs"
    for name, body in {
        "zz_good": """
            from core.tour import register_tour

            @register_tour("zz_good")
            def run(out_dir, quick):
                return [{"app": "zz_good", "dataset": "toy", "metric": "m", "value": 1.0, "baseline": 0.0,
                         "baseline_name": "zero", "seconds": 0.0}]
            """,
        "zz_broken": "import a_module_that_does_not_exist\n",
    }.items():
        (pkgs / name).mkdir(parents=True)
        (pkgs / name / "__init__.py").write_text("")
        (pkgs / name / "tour.py").write_text(textwrap.dedent(body))
    monkeypatch.setattr(apps, "__path__", [*apps.__path__, str(pkgs)])
    try:
        names = tour_cli.discover_tours()
        assert "core" in names and "zz_good" in names and "zz_broken" in names
        code = tour_cli.main(["--only", "zz_good,zz_broken", "--out", str(tmp_path / "out")])
        out = capsys.readouterr().out
        assert code == 1  # the broken app fails the command
        assert "zz_good" in out and "FAILED" in out
        assert len(list((tmp_path / "out").glob("*/report.md"))) == 1
        assert tour_cli.main(["--only", "zz_good", "--out", str(tmp_path / "out")]) == 0
    finally:
        for name in ("zz_good", "zz_broken"):
            tour.unregister_tour(name)
            for mod in (f"apps.{name}", f"apps.{name}.tour"):
                sys.modules.pop(mod, None)


def test_core_demo_reduced_run(tmp_path: Path) -> None:
    """A few epochs of the core demo: finite metrics, a plot, and the contrastive encoder already ahead."""
    from core.demo import DemoConfig, core_demo_tour, run_core_demo

    cfg = DemoConfig(epochs=REDUCED_EPOCHS, plot="pca", shot_draws=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = run_core_demo(tmp_path, cfg)
    assert r["steps"] == REDUCED_EPOCHS * 3  # 898 training images, batch 256, drop_last
    for group in ("probe_acc", "few_shot_acc", "learned", "random"):
        assert all(math.isfinite(v) for v in r[group].values()), group
    assert Path(r["plot"]).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == r["steps"]
    # the learned encoder beats the same architecture at its (identical) random initialisation
    assert r["probe_acc"]["contrastive"] > r["probe_acc"]["random_init"]
    assert r["few_shot_acc"]["contrastive"] > r["few_shot_acc"]["random_init"] + 0.03
    # and its embedding is spread out, unlike the random one's
    assert r["learned"]["uniformity"] < r["random"]["uniformity"] - 0.5
    assert callable(core_demo_tour) and "core" in tour.registered_tours()


REDUCED_EPOCHS = 15
