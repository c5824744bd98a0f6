"""The command line end to end on a tiny data set: run, sweep, report, recommend, resume, time cap, bad input,
DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.recommendation.__main__ import APP, main
from apps.recommendation.config import RecConfig
from apps.recommendation.evaluate import METRICS
from apps.recommendation.train import build_module, load_model, prepare
from core.app import COMMON_FLAGS, load_torch, read_json

REPO = Path(__file__).resolve().parents[3]
TINY = ["--dim", "16", "--heads", "2", "--batch-size", "16", "--eval-every", "1", "--no-progress", "--threads", "1",
        "--accelerator", "cpu"]


def _tiny(path: Path, n_users: int = 60, n_items: int = 30, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for u in range(n_users):
            n = int(rng.integers(3, 12))
            f.write(" ".join(map(str, [u + 1, *rng.integers(1, n_items + 1, n)])) + "\n")
    return str(path)


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("rec")
    data, runs = _tiny(root / "tiny.txt"), str(root / "runs")
    assert main(["run", "--data", data, "--run-dir", runs, "--epochs", "2", *TINY]) == 0
    return data, runs


@pytest.mark.parametrize("verb", ["fit", "evaluate", "run", "recommend", "sweep"])
def test_help_of_every_verb_lists_the_common_and_app_flags(verb: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in COMMON_FLAGS:
        assert flag in text, flag
    for f in dataclasses.fields(RecConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert ("--seeds" in text) == (verb == "sweep")
    assert ("--items" in text) == (verb == "recommend")


def test_run_writes_the_report(fitted: tuple[str, str]) -> None:
    _, runs = fitted
    report = read_json(Path(runs) / "report.json")
    assert report["app"] == "recommendation" and report["metric"] == "hr@10" and report["higher_is_better"]
    assert report["baselines"] == ["sasrec", "pop"]  # the encoder without a contrastive term, and popularity
    assert report["headline"] == "mclrec"
    assert sorted(v["baseline"] for v in report["versus"]) == ["pop", "sasrec"]
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"sasrec", "cl4srec", "duorec", "mclrec", "pop"}
    for r in rows.values():
        m = r["metrics"]
        assert r["seed"] == 0 and set(METRICS) <= set(m) and all(0 <= m[k] <= 1 for k in METRICS)
        assert m["hr@5"] <= m["hr@10"] <= m["hr@20"] and m["ndcg@5"] <= m["ndcg@20"] <= m["hr@20"]
    assert "val_ndcg@10" in rows["mclrec"]["metrics"] and report["extra"]["fit"]["mclrec"]["epochs_run"] == 2
    assert report["extra"]["dataset"] == "tiny" and report["extra"]["stats"]["users"] == 60
    assert report["plots"] == ["test_metrics.png", "validation_ndcg10.png"]
    assert all((Path(runs) / p).is_file() for p in report["plots"]) and (Path(runs) / "report.md").is_file()
    # <run-dir>/<method>/seed<S>/
    fit = read_json(Path(runs) / "mclrec" / "seed0" / "fit.json")
    assert fit["epochs_run"] == 2 and [h["epoch"] for h in fit["history"]] == [1, 2]
    assert read_json(Path(runs) / "settings.json")["settings"]["dim"] == 16


def test_report_headline_is_the_contrastive_method_against_pop_and_sasrec(fitted: tuple[str, str],
                                                                          tmp_path: Path) -> None:
    from apps.recommendation.evaluate import evaluate_methods, headline_method
    from core.app import Report

    assert headline_method(["sasrec", "cl4srec", "duorec", "mclrec"]) == "mclrec"
    assert headline_method(["sasrec", "duorec", "cl4srec"]) == "duorec"
    assert headline_method(["sasrec"]) is None
    data, runs = fitted
    cfg = RecConfig(data=data, run_dir=runs, dim=16, heads=2, batch_size=16, eval_every=1, epochs=2)
    exp = prepare(cfg)
    folders = {m: Path(runs) / m / "seed0" for m in ("sasrec", "cl4srec", "duorec", "mclrec")}
    report = evaluate_methods(cfg, exp, folders, Report(app="recommendation", metric="hr@10"), tmp_path)
    assert report.headline == "mclrec" and report.baselines == ["sasrec", "pop"]
    alone = evaluate_methods(cfg, exp, {"sasrec": folders["sasrec"]}, Report(app="recommendation", metric="hr@10"),
                             tmp_path)
    assert alone.baselines == ["pop"] and alone.headline is None  # SASRec alone is the method, not a baseline


def _top(out: str) -> list[str]:
    return [ln.split()[2] for ln in out.splitlines() if " item " in ln and "score" in ln]


def test_recommend_excludes_seen_items(fitted: tuple[str, str], capsys: pytest.CaptureFixture) -> None:
    data, runs = fitted
    history = ["3", "7", "7", "12"]
    base = ["recommend", "--data", data, "--run-dir", runs, *TINY]
    assert main([*base, "--items", *history, "--k", "5", "--method", "mclrec"]) == 0
    got = _top(capsys.readouterr().out)
    assert len(got) == 5 and not set(got) & set(history)
    # reference: rank every unseen item by the model's score, one at a time
    cfg = RecConfig(data=data, run_dir=runs, dim=16, heads=2, batch_size=16, eval_every=1, epochs=2)
    exp = prepare(cfg)
    model = load_model(cfg, exp, Path(runs) / "mclrec" / "seed0", "mclrec")
    with torch.no_grad():
        h = model.encoder(torch.tensor([[exp.data.item_id(i) for i in history]]))[0, -1]
        scores = model.encoder.item_weights() @ h
    unseen = [i for i in range(1, exp.data.n_items + 1) if exp.data.item_labels[i - 1] not in history]
    want = sorted(unseen, key=lambda i: -float(scores[i]))[:5]
    assert got == [exp.data.item_labels[i - 1] for i in want]
    # a user of the data set: none of its items comes back
    assert main([*base, "--user", "1", "--k", "5"]) == 0
    seq = set(exp.data.sequences[exp.data.users.index("1")].tolist())
    got = _top(capsys.readouterr().out)
    assert len(got) == 5 and not {exp.data.item_id(g) for g in got} & seq
    assert main([*base, "--items", "999"]) == 2
    assert main([*base, "--items", "3", "--k", "0"]) == 2


def test_recommend_defaults_to_the_best_validated_method(fitted: tuple[str, str], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Not the last of --methods: the fitted method with the highest best validation NDCG@10 in its fit.json."""
    data, _ = fitted
    runs = shutil.copytree(fitted[1], tmp_path / "runs")
    base = ["recommend", "--data", data, "--run-dir", str(runs), "--items", "3", "7", "--k", "3", *TINY]

    def set_val(method: str, value: float) -> None:
        path = runs / method / "seed0" / "fit.json"
        info = json.loads(path.read_text())
        for h in info["history"]:
            if "val" in h:
                h["val"]["ndcg@10"] = value
        path.write_text(json.dumps(info))

    def chosen(*extra: str) -> str:
        assert main([*base, *extra]) == 0
        out = capsys.readouterr().out
        return re.search(r"top-3 of (\w+) \(seed 0; best validation NDCG@10", out).group(1)

    for m, v in (("sasrec", 0.10), ("cl4srec", 0.40), ("duorec", 0.20), ("mclrec", 0.30)):
        set_val(m, v)
    assert chosen() == "cl4srec"
    (runs / "cl4srec" / "seed0" / "model.pt").unlink()  # among the fitted ones only
    assert chosen() == "mclrec"
    assert chosen("--methods", "sasrec", "duorec") == "duorec"  # among --methods
    # the default answers exactly as --method with that method
    assert main([*base, "--methods", "sasrec", "duorec"]) == 0
    default = _top(capsys.readouterr().out)
    assert main([*base, "--method", "duorec"]) == 0
    out = capsys.readouterr().out
    assert "top-3 of duorec (seed 0; --method)" in out and _top(out) == default
    assert main([*base, "--seed", "3"]) == 2  # nothing fitted for seed 3
    assert "nothing fitted" in capsys.readouterr().err


def test_seed_is_one_int_and_sweep_runs_every_seed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--seeds` was silently read as a prefix of another flag; now `--seed` is the one seed, `--seeds` belongs to
    sweep, and each method x seed lives in <run-dir>/<method>/seed<S> with one report over the seeds."""
    data, runs = _tiny(tmp_path / "tiny.txt", seed=3), tmp_path / "runs"
    args = ["--data", data, "--run-dir", str(runs), "--methods", "sasrec", "mclrec", "--epochs", "1", *TINY]
    with pytest.raises(SystemExit) as e:
        main(["run", *args, "--seeds", "0", "1"])
    assert e.value.code == 2 and "unrecognized arguments: --seeds" in capsys.readouterr().err
    assert not runs.exists()
    assert main(["sweep", *args, "--seeds", "0", "1"]) == 0
    for m in ("sasrec", "mclrec"):
        assert sorted(p.name for p in (runs / m).iterdir()) == ["seed0", "seed1"]
        assert (runs / m / "seed1" / "model.pt").is_file()
    report = read_json(runs / "report.json")
    assert report["verb"] == "sweep" and report["baselines"] == ["sasrec", "pop"]
    assert sorted((r["method"], r["seed"]) for r in report["rows"]) == [
        (m, s) for m in ("mclrec", "pop", "sasrec") for s in (0, 1)]
    summary = {s["method"]: s for s in report["summary"]}
    assert summary["sasrec"]["seeds"] == [0, 1] and summary["sasrec"]["metrics"]["hr@10"]["std"] >= 0
    assert "±" in (runs / "report.md").read_text()
    seed1 = read_json(runs / "seed1" / "report.json")
    assert (runs / "seed1" / "test_metrics.png").is_file()
    # evaluate --seed 1 on the same run directory tests the very models of the sweep's seed 1
    assert main(["evaluate", *args, "--seed", "1"]) == 0
    again = read_json(runs / "report.json")
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in seed1["rows"]]
    seed0 = {r["method"]: r["metrics"] for r in read_json(runs / "seed0" / "report.json")["rows"]}
    assert seed0["sasrec"] != {r["method"]: r["metrics"] for r in seed1["rows"]}["sasrec"]  # seeds differ


def test_interrupted_fit_resumes(tmp_path: Path) -> None:
    data, runs = _tiny(tmp_path / "tiny.txt", seed=1), str(tmp_path / "runs")
    args = ["fit", "--data", data, "--run-dir", runs, "--methods", "sasrec", *TINY]
    assert main([*args, "--epochs", "1"]) == 0
    method_dir = Path(runs) / "sasrec" / "seed0"
    first = load_torch(method_dir / "checkpoints" / "last.ckpt")
    (method_dir / "model.pt").unlink()  # as if the run had been killed after its first epoch
    assert main([*args, "--epochs", "3"]) == 0
    last = load_torch(method_dir / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 3 * first["global_step"]
    fit = read_json(method_dir / "fit.json")
    assert [h["epoch"] for h in fit["history"]] == [1, 2, 3]
    # last.ckpt carries the best-model callback's state *after* this epoch's update: a run resumed from it must
    # not think an older, lower score is the best (it would overwrite best.ckpt with worse weights)
    best_state = next(v for k, v in last["callbacks"].items() if "ModelCheckpoint" in k and "val/ndcg@10" in k)
    best_val = max(h["val"]["ndcg@10"] for h in fit["history"])
    assert float(best_state["best_model_score"]) == pytest.approx(best_val, rel=1e-6)
    # other settings in the same run directory are refused
    assert main([*args, "--dim", "32"]) == 2


def test_training_order_changes_every_epoch_under_lightning(tmp_path: Path) -> None:
    """Lightning sets the epoch of the loader's sampler (it never did for the former batch_sampler)."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    from apps.recommendation.train import train_loader

    cfg = RecConfig(data=_tiny(tmp_path / "t.txt", n_users=200), run_dir=str(tmp_path), dim=16, heads=2,
                    batch_size=8, bucket_pool=2)
    exp = prepare(cfg)
    loader = train_loader(cfg, exp, "sasrec", 0)
    orders = []
    for epoch in (0, 1, 0):
        _set_sampler_epoch(loader, epoch)
        orders.append([b["items"].tolist() for b in loader])
    assert orders[0] == orders[2] and orders[0] != orders[1] and len(orders[0]) == len(loader)


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "seed must be >= 0"),
    (["--batch-size", "1"], "batch_size must be >= 2"),
    (["--methods", "gru4rec"], "methods must be one of"),
    (["--methods", "sasrec", "sasrec"], "lists a method twice"),
    (["--dim", "15", "--heads", "2"], "divisible by heads"),
    (["--training", "sessions"], "training must be one of"),
    (["--training", "prefixes", "--cl-positions", "all"], "needs training='all_positions'"),
    (["--dropout", "1"], "dropout must be < 1"),
    (["--accelerator", "tpu"], "accelerator must be one of"),
    (["--max-minutes", "-1"], "max_minutes must be > 0"),
])
def test_bad_setting_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                                message: str) -> None:
    runs = tmp_path / "runs"
    assert main(["run", "--data", _tiny(tmp_path / "ok.txt"), "--run-dir", str(runs), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not runs.exists()


def test_bad_data_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    assert main(["run", "--data", str(tmp_path / "missing.txt"), "--run-dir", str(runs)]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,timestamp\na,1,1\na,2,inf\n")
    assert main(["run", "--data", str(bad), "--run-dir", str(runs)]) == 2
    assert "line 3" in capsys.readouterr().err
    good = _tiny(tmp_path / "ok.txt")
    assert main(["evaluate", "--data", good, "--run-dir", str(runs), *TINY]) == 2  # nothing fitted yet
    assert "run `fit` first" in capsys.readouterr().err
    assert not runs.exists()


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
    from apps.recommendation import tour
    from core.tour import registered_tours, validate_rows

    data = _tiny(tmp_path / "tiny.txt", seed=2)
    tiny = dataclasses.replace(RecConfig.quick(), data=data, max_users=None, max_items=None, dim=16, heads=2,
                               batch_size=16, epochs=1, eval_every=1, threads=1)
    monkeypatch.setattr(RecConfig, "quick", classmethod(lambda cls: dataclasses.replace(tiny)))
    assert registered_tours()["recommendation"] is tour.recommendation_tour
    rows = validate_rows("recommendation", tour.recommendation_tour(tmp_path / "out", True))
    report = read_json(tmp_path / "out" / "report.json")
    metrics = {r["method"]: r["metrics"] for r in report["rows"]}
    assert rows[0]["value"] == metrics["mclrec"]["hr@10"] and rows[0]["baseline"] == metrics["sasrec"]["hr@10"]
    assert rows[1]["baseline"] == metrics["pop"]["hr@10"] and rows[2]["value"] == metrics["mclrec"]["ndcg@10"]
    assert all(r["mode"] == "quick" and r["higher_is_better"] and r["full_mode_ref"] for r in rows)
    assert all(Path(p).is_file() for p in rows[0]["plots"])


def test_time_cap_keeps_a_model_and_a_rerun_continues(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--max-minutes is the runner's cap (checked at epoch ends through fit_with_resume): the capped
    method keeps its best model, is marked stopped_by_time, and `fit` with a larger cap continues it."""
    data, runs = _tiny(tmp_path / "tiny.txt", seed=2), str(tmp_path / "runs")
    args = ["fit", "--data", data, "--run-dir", runs, "--methods", "sasrec", *TINY, "--patience", "1000"]
    assert main([*args, "--epochs", "100000", "--max-minutes", "0.0005"]) == 3  # capped: exit 3
    method_dir = Path(runs) / "sasrec" / "seed0"
    fit = read_json(method_dir / "fit.json")
    assert fit["stopped_by_time"] and fit["stopped_early"] and 0 < fit["epochs_run"] < 100000
    assert fit["accelerator"] == "cpu" and (method_dir / "model.pt").is_file()
    assert "stopped by the time cap (re-run to continue)" in capsys.readouterr().out
    # the cap and the accelerator are not model settings: the same run directory evaluates without them
    assert main(["evaluate", "--data", data, "--run-dir", runs, "--methods", "sasrec", *TINY]) == 0
    # a larger limit continues the capped run from its last checkpoint (not from scratch), up to --epochs
    first_lines = (method_dir / "history.jsonl").read_text().splitlines()
    n = fit["epochs_run"] + 2
    assert main([*args, "--epochs", str(n), "--max-minutes", "10"]) == 0
    assert "continuing from its last checkpoint" in capsys.readouterr().out
    fit2 = read_json(method_dir / "fit.json")
    assert fit2["epochs_run"] == n and not fit2["stopped_by_time"]
    lines = (method_dir / "history.jsonl").read_text().splitlines()
    assert lines[: len(first_lines)] == first_lines and len(lines) == n
    assert main([*args, "--epochs", str(n), "--max-minutes", "10"]) == 0  # finished: skipped
    assert "continuing" not in capsys.readouterr().out


@pytest.mark.slow  # ~50 s on the loaded 2-core machine: two subprocess runs, one of them two gloo processes
@pytest.mark.distributed
def test_two_process_ddp_run_shards_the_length_buckets(tmp_path: Path) -> None:
    """`--accelerator cpu --devices 2 --strategy ddp`: two gloo processes; the length-bucket sampler gives each rank
    half of the epoch's batches (equal counts), both ranks validate on every user and agree on the best model, and
    rank 0 alone writes one report."""
    data = _tiny(tmp_path / "tiny.txt", n_users=120, seed=4)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "apps.recommendation", "run", "--data", data, "--methods", "sasrec", "duorec",
            "mclrec", "--epochs", "2", *TINY]
    one = subprocess.run([*base, "--run-dir", str(tmp_path / "one")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*base, "--run-dir", str(tmp_path / "two"), "--devices", "2", "--strategy", "ddp"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run done in") == 1
    from apps.recommendation.train import train_loader

    cfg = RecConfig(data=data, run_dir="unused", dim=16, heads=2, batch_size=16)
    batches = len(train_loader(cfg, prepare(cfg), "sasrec", 0))  # one process, per epoch
    for m in ("sasrec", "duorec", "mclrec"):
        f1, f2 = (read_json(tmp_path / k / m / "seed0" / "fit.json") for k in ("one", "two"))
        assert f2["devices"] == 2 and f1["devices"] == 1 and f2["epochs_run"] == 2
        assert len(f2["history"]) == 2  # one writer
        s1 = load_torch(tmp_path / "one" / m / "seed0" / "checkpoints" / "last.ckpt")["global_step"]
        s2 = load_torch(tmp_path / "two" / m / "seed0" / "checkpoints" / "last.ckpt")["global_step"]
        per_batch = s1 // (2 * batches)  # optimiser steps per batch (MCLRec: three, Lightning counts each)
        assert s1 == 2 * batches * per_batch and s2 == 2 * (batches // 2) * per_batch, (m, s1, s2)
    report = read_json(tmp_path / "two" / "report.json")
    assert sorted(r["method"] for r in report["rows"]) == ["duorec", "mclrec", "pop", "sasrec"]


def _doc_commands() -> list[list[str]]:
    """Every command line of docs/apps/recommendation.md as argv after ``python -m apps.recommendation``: the full
    ones (code blocks and inline code) and the inline ``fit --config ...`` forms, placeholders (M, N, S, [...],
    ``--config ...``) filled in. The page's one quote of the earlier command line (``--missing-seeds``) is left out."""
    import shlex

    text = (REPO / "docs" / "apps" / "recommendation.md").read_text()
    flat = text.replace("\n", " ")
    found = re.findall(r"^(?:\.venv/bin/)?python -m apps\.recommendation ([^\n`]*)", text, flags=re.M)
    found += re.findall(r"`(?:\.venv/bin/)?python -m apps\.recommendation ([^`]*)`", flat)
    found += re.findall(r"`((?:fit|evaluate|run|sweep|recommend) --[^`]*)`", flat)
    out = []
    for cmd in found:
        cmd = cmd.split("  #")[0].split(" # ")[0].replace("[", "").replace("]", "").replace("--config ...", "")
        if "--missing-seeds" in cmd:
            continue
        fill = {"M": "sasrec", "N": "10", "S": "1"}
        out.append([fill.get(tok, tok) for tok in shlex.split(cmd)])
    return out


def test_every_command_of_the_docs_page_parses() -> None:
    commands = _doc_commands()
    assert len(commands) >= 15
    parser = APP.parser()
    for argv in commands:
        args = parser.parse_args(argv)  # exits (SystemExit 2) on an unknown or malformed flag
        if getattr(args, "config", None):
            assert (REPO / args.config).is_file(), argv
            APP.settings_from_args(args)  # the config's keys and values are valid too
