"""The command line end to end on a tiny data set: run, report, recommend, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.recommendation.__main__ import build_parser, main
from apps.recommendation.config import HELP, RecConfig
from apps.recommendation.evaluate import METRICS
from apps.recommendation.train import build_module, load_model, prepare

TINY = ["--dim", "16", "--heads", "2", "--batch-size", "16", "--eval-every", "1", "--no-progress", "--threads", "1"]


def _tiny(path: Path, n_users: int = 60, n_items: int = 30, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for u in range(n_users):
            n = int(rng.integers(3, 12))
            f.write(" ".join(map(str, [u + 1, *rng.integers(1, n_items + 1, n)])) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("rec")
    data, runs = _tiny(root / "tiny.txt"), str(root / "runs")
    assert main(["run", "--data", data, "--run-dir", runs, "--epochs", "2", *TINY]) == 0
    return data, runs


def test_help_explains_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--help"])
    text = capsys.readouterr().out
    for name in HELP:
        assert "--" + name.replace("_", "-") in text


def test_run_writes_the_report(fitted: tuple[str, str]) -> None:
    _, runs = fitted
    out = Path(runs) / "tiny"
    report = json.loads((out / "report.json").read_text())
    assert {"app", "dataset", "method", "metrics", "baselines", "seconds", "config"} <= set(report)
    assert report["app"] == "recommendation" and report["method"] == "mclrec"
    assert set(report["metrics"]) == set(METRICS)
    assert set(report["baselines"]) == {"sasrec", "cl4srec", "duorec", "pop"}
    for m in report["baselines"].values():
        assert set(m) == set(METRICS) and all(0 <= v <= 1 for v in m.values())
        assert m["hr@5"] <= m["hr@10"] <= m["hr@20"] and m["ndcg@5"] <= m["ndcg@20"] <= m["hr@20"]
    assert (out / "report.md").is_file() and (out / "test_metrics.png").is_file()
    fit = json.loads((out / "seed0" / "mclrec" / "fit.json").read_text())
    assert fit["epochs_run"] == 2 and [h["epoch"] for h in fit["history"]] == [1, 2]


def test_recommend_excludes_seen_items(fitted: tuple[str, str], capsys: pytest.CaptureFixture) -> None:
    data, runs = fitted
    history = ["3", "7", "7", "12"]
    assert main(["recommend", "--data", data, "--run-dir", runs, "--items", *history, "--k", "5", *TINY]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " item " in ln]
    got = [ln.split()[2] for ln in lines]
    assert len(got) == 5 and not set(got) & set(history)
    # reference: rank every unseen item by the model's score, one at a time
    cfg = RecConfig(data=data, run_dir=runs, dim=16, heads=2, batch_size=16, eval_every=1, epochs=2)
    exp = prepare(cfg)
    model = load_model(cfg, exp, "mclrec", 0)
    with torch.no_grad():
        h = model.encoder(torch.tensor([[exp.data.item_id(i) for i in history]]))[0, -1]
        scores = model.encoder.item_weights() @ h
    unseen = [i for i in range(1, exp.data.n_items + 1) if exp.data.item_labels[i - 1] not in history]
    want = sorted(unseen, key=lambda i: -float(scores[i]))[:5]
    assert got == [exp.data.item_labels[i - 1] for i in want]
    # a user of the data set: none of its items comes back
    assert main(["recommend", "--data", data, "--run-dir", runs, "--user", "1", "--k", "5", *TINY]) == 0
    seq = set(exp.data.sequences[exp.data.users.index("1")].tolist())
    got = [ln.split()[2] for ln in capsys.readouterr().out.splitlines() if " item " in ln]
    assert not {exp.data.item_id(g) for g in got} & seq
    assert main(["recommend", "--data", data, "--run-dir", runs, "--items", "999", *TINY]) == 2


def test_missing_seeds_error_or_skip(fitted: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--seeds 0 1 with only seed 0 fitted: an error by default; with --missing-seeds skip the report holds seed 0
    alone, with the same metrics as a seed-0 evaluation."""
    import shutil

    data, runs = fitted
    runs = str(shutil.copytree(runs, tmp_path / "runs"))
    args = ["evaluate", "--data", data, "--run-dir", runs, "--methods", "sasrec", "mclrec", *TINY]
    assert main([*args, "--seeds", "0"]) == 0
    want = json.loads((Path(runs) / "tiny" / "report.json").read_text())
    capsys.readouterr()
    assert main([*args, "--seeds", "0", "1"]) == 2
    assert "seed 1" in capsys.readouterr().err
    assert main([*args, "--seeds", "0", "1", "--missing-seeds", "skip"]) == 0
    assert "nothing fitted for seed 1; skipped" in capsys.readouterr().out
    got = json.loads((Path(runs) / "tiny" / "report.json").read_text())
    for m in ("sasrec", "mclrec"):
        assert [r["seed"] for r in got["results"][m]["per_seed"]] == [0]
        assert got["results"][m]["mean"] == pytest.approx(want["results"][m]["mean"], abs=1e-12)
    assert "| 1 (0) |" in (Path(runs) / "tiny" / "report.md").read_text()
    assert main([*args, "--seeds", "1", "--missing-seeds", "skip"]) == 2  # no seed at all: still an error
    assert "for any of seeds [1]" in capsys.readouterr().err


def test_interrupted_fit_resumes(tmp_path: Path) -> None:
    data, runs = _tiny(tmp_path / "tiny.txt", seed=1), str(tmp_path / "runs")
    args = ["fit", "--data", data, "--run-dir", runs, "--methods", "sasrec", *TINY]
    assert main([*args, "--epochs", "1"]) == 0
    method_dir = Path(runs) / "tiny" / "seed0" / "sasrec"
    first = torch.load(method_dir / "checkpoints" / "last.ckpt", weights_only=False)
    (method_dir / "model.pt").unlink()  # as if the run had been killed after its first epoch
    assert main([*args, "--epochs", "3"]) == 0
    last = torch.load(method_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 3 * first["global_step"]
    fit = json.loads((method_dir / "fit.json").read_text())
    assert [h["epoch"] for h in fit["history"]] == [1, 2, 3]
    # last.ckpt carries the best-model callback's state *after* this epoch's update: a run resumed from it must
    # not think an older, lower score is the best (it would overwrite best.ckpt with worse weights)
    best_state = next(v for k, v in last["callbacks"].items() if "ModelCheckpoint" in k and "val/ndcg@10" in k)
    best_val = max(h["val"]["ndcg@10"] for h in fit["history"])
    assert float(best_state["best_model_score"]) == pytest.approx(best_val, rel=1e-6)
    # other settings in the same run directory are refused
    assert main([*args, "--dim", "32"]) == 2


def test_bad_input_exits_nonzero_without_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = str(tmp_path / "runs")
    assert main(["run", "--data", str(tmp_path / "missing.txt"), "--run-dir", runs]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,timestamp\na,1,1\na,2,inf\n")
    assert main(["run", "--data", str(bad), "--run-dir", runs]) == 2
    assert "line 3" in capsys.readouterr().err
    good = _tiny(tmp_path / "ok.txt")
    assert main(["run", "--data", good, "--run-dir", runs, "--batch-size", "1"]) == 2
    assert main(["run", "--data", good, "--run-dir", runs, "--methods", "gru4rec"]) == 2
    assert main(["run", "--data", good, "--run-dir", runs, "--dim", "15", "--heads", "2"]) == 2
    assert main(["run", "--data", good, "--run-dir", runs, "--training", "sessions"]) == 2
    assert "training must be" in capsys.readouterr().err
    assert main(["run", "--data", good, "--run-dir", runs, "--training", "prefixes", "--cl-positions", "all"]) == 2
    assert "needs training='all_positions'" in capsys.readouterr().err
    assert main(["evaluate", "--data", good, "--run-dir", runs, *TINY]) == 2  # nothing fitted yet
    assert "run `fit` first" in capsys.readouterr().err
    assert not list(Path(tmp_path).rglob("report.json"))


def test_module_builds_for_every_method(tmp_path: Path) -> None:
    cfg = RecConfig(data=_tiny(tmp_path / "t.txt"), run_dir=str(tmp_path), dim=16, heads=2)
    exp = prepare(cfg)
    for m in ("sasrec", "cl4srec", "duorec", "mclrec"):
        module = build_module(cfg, exp, m)
        assert module.method == m and module.encoder.item_emb.num_embeddings == exp.data.n_items + 1
    assert hasattr(build_module(cfg, exp, "mclrec"), "aug1")
    # the papers' prefix samples train every method too (one target per row, DuoRec's partner by that target)
    pcfg = RecConfig(data=_tiny(tmp_path / "t.txt"), run_dir=str(tmp_path), dim=16, heads=2, training="prefixes")
    pexp = prepare(pcfg)
    from apps.recommendation.train import train_loader

    batch = next(iter(train_loader(pcfg, pexp, "duorec", 0)))
    assert ((batch["targets"] > 0).sum(1) == 1).all()
    assert torch.equal(batch["targets"][torch.arange(len(batch["lengths"])), batch["lengths"] - 1],
                       batch["last_target"])
    for m in ("sasrec", "cl4srec", "duorec", "mclrec"):
        module = build_module(pcfg, pexp, m)
        if m != "mclrec":
            assert torch.isfinite(module.contrastive_step(batch)["loss"])


def test_tour_entry_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from apps.recommendation import tour
    from core.tour import registered_tours, validate_rows

    data = _tiny(tmp_path / "tiny.txt", seed=2)
    tiny = dataclasses.replace(RecConfig.quick(), data=data, max_users=None, max_items=None, dim=16, heads=2,
                               batch_size=16, epochs=1, eval_every=1)
    monkeypatch.setattr(tour.RecConfig, "quick", classmethod(lambda cls: tiny))
    assert registered_tours()["recommendation"] is tour.recommendation_tour
    rows = validate_rows("recommendation", tour.recommendation_tour(tmp_path / "out", True))
    report = json.loads((tmp_path / "out" / "tiny" / "report.json").read_text())
    assert rows[0]["value"] == report["metrics"]["hr@10"]
    assert rows[0]["baseline"] == report["baselines"]["sasrec"]["hr@10"]
    assert all(Path(p).is_file() for p in rows[0]["plots"])


def test_max_minutes_caps_a_fit_and_keeps_a_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, runs = _tiny(tmp_path / "tiny.txt", seed=2), str(tmp_path / "runs")
    args = ["fit", "--data", data, "--run-dir", runs, "--methods", "sasrec", *TINY]
    assert main([*args, "--epochs", "100", "--max-minutes", "0.0005"]) == 0  # 30 ms: stops long before epoch 100
    method_dir = Path(runs) / "tiny" / "seed0" / "sasrec"
    fit = json.loads((method_dir / "fit.json").read_text())
    assert fit["stopped_early"] and fit["epochs_run"] < 100 and fit["accelerator"] == "cpu"
    assert (method_dir / "model.pt").is_file()
    # the cap and the accelerator are not model settings: the same run directory evaluates without them
    assert main(["evaluate", "--data", data, "--run-dir", runs, "--methods", "sasrec", *TINY]) == 0
    assert fit["stopped_by_time"]
    # a larger limit continues the capped run from its last checkpoint (not from scratch), up to --epochs
    first_lines = (method_dir / "history.jsonl").read_text().splitlines()
    assert main([*args, "--epochs", "3", "--max-minutes", "10"]) == 0
    assert "continuing from its last checkpoint" in capsys.readouterr().out
    fit2 = json.loads((method_dir / "fit.json").read_text())
    assert fit2["epochs_run"] == 3 and not fit2["stopped_by_time"]
    lines = (method_dir / "history.jsonl").read_text().splitlines()
    assert lines[: len(first_lines)] == first_lines and len(lines) == 3
    assert main([*args, "--epochs", "3", "--max-minutes", "10"]) == 0  # finished: skipped
    assert "continuing" not in capsys.readouterr().out
    for bad, name in ((["--accelerator", "tpu"], "accelerator"), (["--max-minutes", "-1"], "max_minutes")):
        assert main([*args, *bad]) == 2
        assert name in capsys.readouterr().err
