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
from core.tour import (
    TourResult,
    compare_to_baseline,
    format_table,
    headline,
    higher_is_better,
    register_tour,
    row_note,
    run_tour,
    summary_figure,
    validate_rows,
    write_report,
)

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
    assert "| fake | toy | accuracy | quick | 0.9 | 0.5 (chance) | wins |" in md
    assert f"![fake]({fake_entry}/fake.png)" in md
    data = json.loads((report_dir / "report.json").read_text())
    (entry,) = data["entries"]
    assert entry["name"] == fake_entry and entry["error"] is None
    assert entry["rows"][0]["value"] == 0.9 and entry["rows"][0]["plots"] == [f"{fake_entry}/fake.png"]
    assert entry["rows"][1]["value"] is None  # NaN becomes null: report.json stays valid JSON
    assert (report_dir / fake_entry / "fake.png").exists()
    assert (report_dir / "summary.png").stat().st_size > 0
    assert data["meta"]["quick"] is True and data["meta"]["mode"] == "quick"
    assert [r["mode"] for r in entry["rows"]] == ["quick", "quick"]
    assert entry["rows"][0]["vs_baseline"] == "wins" and entry["rows"][0]["note"] is None


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
    assert header.split() == ["app", "dataset", "metric", "mode", "value", "baseline", "vs", "baseline", "seconds",
                              "note"]
    assert line.split() == ["a", "d", "m", "quick", "1.235", "1", "(b)", "wins", "2.0"]
    with pytest.raises(ValueError):
        validate_rows("x", [{"app": "a"}])
    with pytest.raises(ValueError):
        validate_rows("x", [])
    with pytest.raises(ValueError):
        validate_rows("x", [{**rows[0], "value": "high"}])
    with pytest.raises(ValueError):
        validate_rows("x", [{**rows[0], "higher_is_better": "no"}])
    with pytest.raises(ValueError):
        validate_rows("x", [{**rows[0], "full_mode_ref": ""}])
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


# --- the summary plot, the mode column and the loss notes ------------------------------------------------------

LONG_BASELINE = "kNN on features of an ImageNet-pre-trained ResNet-152 with batch-norm statistics re-estimated"


def _row(app: str, dataset: str, metric: str, value: float, baseline: float | None, baseline_name: str,
         **extra) -> dict:
    return {"app": app, "dataset": dataset, "metric": metric, "value": value, "baseline": baseline,
            "baseline_name": baseline_name, "seconds": 1.0, **extra}


def _results() -> list[TourResult]:
    """Seven entries like the real tour's: wins and losses in both directions, two data sets, a failure."""
    ref, core = "docs/apps/fake_anomaly.md", "core (SimCLR demo)"
    return [
        TourResult("core", [_row(core, "digits", "linear-probe accuracy (test)", 0.95, 0.88, "random"),
                            _row(core, "digits", "linear-probe accuracy (test)", 0.95, 0.97, "raw pixels"),
                            _row(core, "digits", "alignment, lower is better", 0.4, 0.9, "random")]),
        TourResult("anomaly", [
            _row("anomaly (MSC)", "mnist (normal digit 0)", "ROC-AUC (mean)", 0.91, 0.95, LONG_BASELINE,
                 full_mode_ref=ref),
            _row("anomaly (MSC)", "mnist (normal digit 0)", "ROC-AUC (mean)", 0.91, 0.80, "Isolation Forest",
                 full_mode_ref=ref),
            _row("anomaly (MSC)", "adbench (tables 4_breastw, 6_cardio, 38_thyroid)", "ROC-AUC (mean)", 0.97, 0.90,
                 "ECOD", full_mode_ref=ref)]),
        TourResult("speaker", [_row("speaker (NT-Xent-AM)", "fsdd", "EER", 0.30, 0.20, "mfcc", higher_is_better=False,
                                    full_mode_ref="docs/apps/speaker.md"),
                               _row("speaker (NT-Xent-AM)", "fsdd", "EER", 0.30, 0.40, "untrained",
                                    higher_is_better=False, full_mode_ref="docs/apps/speaker.md")]),
        TourResult("regression", [_row("regression (ConR)", "abalone", "mae_few (conr), lower is better", 2.0, 2.5,
                                       "vanilla L1", higher_is_better=False)]),
        TourResult("rl", [_row("rl (TACO)", "pendulum", "state-probe R^2", -0.2, 0.1, "random encoder")]),
        TourResult("tracking", [], 0.5, "Traceback (most recent call last):\nRuntimeError: boom"),
        TourResult("recommendation", [_row("recommendation (MCLRec)", "beauty", "HR@10", 0.05, None, "")]),
    ]


def _unwrap(text: str) -> str:
    return " ".join(text.split())


def _is_red(patch) -> bool:
    from matplotlib.colors import to_rgba

    return patch.get_facecolor() == pytest.approx(to_rgba("tab:red"))


def test_loss_detection_in_both_directions() -> None:
    assert compare_to_baseline(0.8, 0.9, higher_better=True) == "loses"
    assert compare_to_baseline(0.9, 0.8, higher_better=True) == "wins"
    assert compare_to_baseline(0.3, 0.2, higher_better=False) == "loses"
    assert compare_to_baseline(0.2, 0.3, higher_better=False) == "wins"
    assert compare_to_baseline(0.5, 0.5 * (1 + 1e-5), higher_better=True) == "ties"
    assert compare_to_baseline(-0.2, 0.1, higher_better=True) == "loses"  # negative R^2 is still compared
    assert compare_to_baseline(0.5, None) is None and compare_to_baseline(float("nan"), 0.1) is None
    # direction: the row's key wins, else the metric's name
    assert higher_is_better({"metric": "EER (lower is better)"}) is False
    assert higher_is_better({"metric": "mae_few (conr)"}) is False
    assert higher_is_better({"metric": "EER"}) is False
    assert higher_is_better({"metric": "ROC-AUC (mean)"}) is True
    assert higher_is_better({"metric": "HR@10 (full ranking, test)"}) is True
    assert higher_is_better({"metric": "uniformity, lower is better"}) is False
    assert higher_is_better({"metric": "EER", "higher_is_better": True}) is True
    # the note: lower-is-better EER 0.3 vs 0.2 loses, higher-is-better accuracy 0.8 vs 0.9 loses
    lost_low = _row("s", "d", "EER", 0.3, 0.2, "mfcc", full_mode_ref="docs/apps/speaker.md")
    lost_high = _row("a", "d", "accuracy", 0.8, 0.9, "b", full_mode_ref="docs/apps/anomaly.md")
    assert row_note(lost_low) == "quick mode does not show the benefit; full mode: docs/apps/speaker.md"
    assert row_note(lost_high) == "quick mode does not show the benefit; full mode: docs/apps/anomaly.md"
    assert row_note({**lost_low, "value": 0.1}) == "" and row_note({**lost_high, "value": 0.95}) == ""
    assert row_note({**lost_high, "value": 0.9}).startswith("quick mode does not show the benefit")  # a tie
    assert "quick mode" not in row_note(lost_high, "full")


def test_headline_takes_the_best_baseline_per_dataset() -> None:
    res = _results()
    (core,) = headline(res[0].rows)
    assert (core["baseline_name"], core["baseline"], core["vs_baseline"]) == ("raw pixels", 0.97, "loses")
    mnist, adbench = headline(res[1].rows)
    assert mnist["baseline_name"] == LONG_BASELINE and mnist["vs_baseline"] == "loses"
    assert adbench["baseline"] == 0.90 and adbench["vs_baseline"] == "wins"
    (speaker,) = headline(res[2].rows)  # lower is better: the best baseline is the smallest EER
    assert (speaker["baseline_name"], speaker["vs_baseline"], speaker["higher_is_better"]) == ("mfcc", "loses", False)
    (regression,) = headline(res[3].rows)
    assert regression["vs_baseline"] == "wins"  # 2.0 < 2.5 with lower is better


def test_summary_figure_has_one_panel_per_entry_with_full_labels() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    results = _results()
    fig = summary_figure(results)
    assert len(fig.axes) == len(results) == 7  # one panel per entry, none left over
    assert len(summary_figure(results[:2]).axes) == 2 and summary_figure([]) is None
    by_name = {ax.get_title(loc="left").split(":")[0]: ax for ax in fig.axes}
    assert set(by_name) == {r.name for r in results}

    anomaly = by_name["anomaly"]
    labels = [_unwrap(t.get_text()) for t in anomaly.get_yticklabels()]
    # nothing cut: the full long baseline name and data-set name are there (wrapped over lines)
    assert f"best baseline: {LONG_BASELINE}" in labels
    assert "anomaly (MSC) on adbench (tables 4_breastw, 6_cardio, 38_thyroid)" in labels
    assert any("\n" in t.get_text() for t in anomaly.get_yticklabels())  # long labels wrap instead
    assert len(anomaly.patches) == 4  # method and best baseline on each of the two data sets
    # the title names the metric and its direction
    assert "ROC-AUC (mean) (higher is better)" in _unwrap(anomaly.get_title(loc="left"))
    assert "EER (lower is better)" in _unwrap(by_name["speaker"].get_title(loc="left"))
    assert _unwrap(by_name["regression"].get_title(loc="left")).startswith(
        "regression: mae_few (conr) (lower is better)")

    # every label and title lies inside the saved image
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer, box = canvas.get_renderer(), fig.bbox
    for ax in fig.axes:
        for text in [*ax.get_yticklabels(), ax.title, ax._left_title, *ax.texts]:
            if not text.get_text():
                continue
            ext = text.get_window_extent(renderer)
            assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1, text.get_text()
            assert ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1, text.get_text()


def test_summary_figure_marks_losing_headlines_in_both_directions() -> None:
    fig = summary_figure(_results())
    by_name = {ax.get_title(loc="left").split(":")[0]: ax for ax in fig.axes}
    # losers: core (accuracy, higher better), speaker (EER, lower better), rl (negative R^2), anomaly (mnist)
    for name in ("core", "speaker", "rl", "anomaly"):
        ax = by_name[name]
        title = _unwrap(ax.get_title(loc="left"))
        assert "LOSES" in title and "quick mode does not show the benefit" in title, name
        assert _is_red(ax.patches[0]), name  # the headline bar
        assert not _is_red(ax.patches[1]), name  # its baseline
    assert "full mode: docs/apps/fake_anomaly.md" in _unwrap(by_name["anomaly"].get_title(loc="left"))
    assert not _is_red(by_name["anomaly"].patches[2])  # adbench: MSC wins there
    # winners: regression (MAE 2.0 < 2.5, lower better) and a headline without baseline
    for name in ("regression", "recommendation"):
        ax = by_name[name]
        assert "LOSES" not in ax.get_title(loc="left") and not any(_is_red(p) for p in ax.patches), name
    assert "FAILED" in by_name["tracking"].get_title(loc="left")
    assert any("RuntimeError: boom" in t.get_text() for t in by_name["tracking"].texts)


@pytest.mark.parametrize("quick", [True, False])
def test_report_rows_carry_the_mode_and_the_loss_notes(tmp_path: Path, quick: bool) -> None:
    mode = "quick" if quick else "full"

    def entry(out_dir: Path, quick_: bool) -> list[dict]:
        return [_row("spk", "fsdd", "EER", 0.30, 0.20, "mfcc", higher_is_better=False,
                     full_mode_ref="docs/apps/spk.md"),
                _row("spk", "fsdd", "EER", 0.30, 0.40, "untrained", higher_is_better=False,
                     full_mode_ref="docs/apps/spk.md")]

    def core_entry(out_dir: Path, quick_: bool) -> list[dict]:  # no full_mode_ref: the core's default page
        return [_row("core", "digits", "accuracy", 0.5, 0.9, "raw pixels")]

    def broken(out_dir: Path, quick_: bool) -> list[dict]:
        raise RuntimeError("boom")

    report_dir, _ = run_tour(tmp_path, entries={"spk": entry, "core": core_entry, "broken": broken}, quick=quick,
                             echo=None)
    md = (report_dir / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    header, *rows = table
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells == ["app", "dataset", "metric", "mode", "value", "baseline", "vs baseline", "seconds", "note"]
    assert len(rows) == 4
    for line in rows:  # every row, failed ones included, says how it ran
        assert [c.strip() for c in line.strip("|").split("|")][3] == mode
    lose, win, core_row, failed = ([c.strip() for c in line.strip("|").split("|")] for line in rows)
    assert lose[6] == "loses" and win[6] == "wins" and core_row[6] == "loses" and failed[2] == "FAILED"
    assert win[8] == ""
    if quick:
        assert lose[8] == "quick mode does not show the benefit; full mode: docs/apps/spk.md"
        assert core_row[8] == "quick mode does not show the benefit; full mode: docs/core.md"
    else:
        assert lose[8] and "quick mode" not in lose[8]
    data = json.loads((report_dir / "report.json").read_text())
    assert data["meta"]["mode"] == mode
    spk = next(e for e in data["entries"] if e["name"] == "spk")
    assert [r["mode"] for r in spk["rows"]] == [mode, mode]
    assert [r["vs_baseline"] for r in spk["rows"]] == ["loses", "wins"]
    assert [r["higher_is_better"] for r in spk["rows"]] == [False, False]
    assert spk["headline"][0]["baseline_name"] == "mfcc" and spk["headline"][0]["vs_baseline"] == "loses"
    assert (spk["rows"][0]["note"] or "").startswith("quick mode" if quick else "loses")
    assert spk["rows"][1]["note"] is None
    assert (report_dir / "summary.png").stat().st_size > 0


def test_write_report_takes_the_mode_from_meta(tmp_path: Path) -> None:
    rows = validate_rows("x", [_row("a", "d", "accuracy", 0.9, 0.5, "chance")])
    write_report(tmp_path, [TourResult("x", rows, 1.0)], {"quick": False})
    assert "| a | d | accuracy | full | 0.9 | 0.5 (chance) | wins |" in (tmp_path / "report.md").read_text()


def test_apps_name_their_full_mode_page() -> None:
    """Each app's tour rows point at docs/apps/<app>.md for the full-mode figure."""
    apps_dir = Path(__file__).resolve().parents[1] / "apps"
    tours = sorted(apps_dir.glob("*/tour.py"))
    assert tours
    for path in tours:
        assert f'"full_mode_ref": "docs/apps/{path.parent.name}.md"' in path.read_text(), path
