"""The app runner (core.app): settings metadata and layering, the command line, run directories, reports, files,
checkpoint safety and fallback, exact resume, the thread default and the multi-process launch."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core.app import COMMON_FLAGS, AppSettings, CheckpointError, InputError, Report, RunDir, load_torch, option
from core.app.files import read_json, save_torch, write_json
from core.app.hardware import Hardware, use
from core.app.report import summarize
from core.app.settings import fingerprint, load_yaml
from core.app.threads import default_threads, physical_cores
from core.negatives.distributed import default_gather, resolve_gather
from core.training import fit_with_resume, seed_everything
from core.training.resume import find_resume_checkpoint
from tests.core import toy_app

REPO = Path(__file__).resolve().parents[2]


@dataclass
class S(AppSettings):
    lr: float = option(1e-3, help="learning rate", low=0, low_open=True)
    kind: str = option("a", help="kind", choices=("a", "b"))
    widths: list[int] = option([4, 8], help="widths", low=1)
    note: str | None = option(None, help="free text", model=False)


# ---- settings ---------------------------------------------------------------------------------------------------
def test_settings_validate_against_metadata():
    assert S().validate().lr == 1e-3
    for bad, word in [(dict(lr=0.0), "lr must be > 0"), (dict(kind="c"), "kind must be one of a, b"),
                      (dict(widths=[4, 0]), "widths must be >= 1"), (dict(lr="x"), "lr must be a number"),
                      (dict(devices=0), "devices must be >= 1"), (dict(seed=True), "seed must be an integer"),
                      (dict(lr=float("nan")), "lr must be finite"), (dict(strategy="horovod"), "strategy must be")]:
        with pytest.raises(InputError, match=word):
            S(**bad).validate()
    assert S(lr=1).validate().lr == 1.0 and isinstance(S(lr=1).validate().lr, float)


def test_yaml_errors_name_the_file_and_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 0.1\nbogus: 3\n")
    with pytest.raises(InputError, match=r"c\.yaml: unknown option\(s\) \['bogus'\]"):
        load_yaml(p, S)
    p.write_text("lr: [0.1\n")
    with pytest.raises(InputError, match=r"c\.yaml line \d+: invalid YAML"):
        load_yaml(p, S)
    with pytest.raises(InputError, match="does not exist"):
        load_yaml(tmp_path / "none.yaml", S)
    p.write_text("max-minutes: 2\n")
    assert load_yaml(p, S) == {"max_minutes": 2}


def test_layering_defaults_then_yaml_then_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 7\nbatch_size: 16\n")
    args = toy_app.APP.parser().parse_args(["fit", "--quick", "--config", str(cfg), "--batch-size", "8"])
    s = toy_app.APP.settings_from_args(args)
    assert (s.epochs, s.batch_size, s.temperature) == (7, 8, 0.5)  # yaml over quick preset, flag over yaml
    assert s.run_dir == "runs/toy_quick"
    s = toy_app.APP.settings_from_args(toy_app.APP.parser().parse_args(["fit"]))
    assert (s.epochs, s.run_dir) == (4, "runs/toy")


def test_config_over_quick_says_which_preset_values_it_replaces(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 7\nbatch_size: 16\n")  # the quick preset sets epochs (2), not batch_size
    toy_app.APP.settings_from_args(toy_app.APP.parser().parse_args(["fit", "--quick", "--config", str(cfg)]))
    err = capsys.readouterr().err
    assert "epochs = 7 from" in err and "--quick preset's 2" in err and "batch_size" not in err
    toy_app.APP.settings_from_args(toy_app.APP.parser().parse_args(["fit", "--quick", "--config", str(cfg),
                                                                      "--epochs", "3"]))
    assert capsys.readouterr().err == ""  # a flag overrides both: nothing replaced silently
    toy_app.APP.settings_from_args(toy_app.APP.parser().parse_args(["fit", "--config", str(cfg)]))
    assert capsys.readouterr().err == ""


def test_fingerprint_ignores_non_model_fields():
    assert fingerprint(S()) == fingerprint(S(threads=3, note="x", devices=4, run_dir="elsewhere", seed=5))
    assert fingerprint(S()) != fingerprint(S(lr=0.5))


# ---- command line ------------------------------------------------------------------------------------------------
def test_every_verb_has_the_common_flags_spelled_once():
    parser = toy_app.APP.parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    for verb, p in sub.choices.items():
        flags = {s for a in p._actions for s in a.option_strings}
        missing = [f for f in COMMON_FLAGS if f not in flags]
        assert not missing, (verb, missing)
        assert not any("_" in f for f in flags), verb
    sweep_flags = {s for a in sub.choices["sweep"]._actions for s in a.option_strings}
    assert "--seeds" in sweep_flags and "--seeds" not in {s for a in sub.choices["fit"]._actions
                                                          for s in a.option_strings}


def test_no_abbreviated_flags():
    with pytest.raises(SystemExit):
        toy_app.APP.parser().parse_args(["sweep", "--seed", "1"])  # --seed is not taken for --seeds


def test_bad_setting_exits_2_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = toy_app.main(["run", "--quick", "--run-dir", str(run_dir), "--temperature", "0", "--threads", "1"])
    assert rc == 2
    assert "error: temperature must be > 0" in capsys.readouterr().err
    assert not run_dir.exists()
    rc = toy_app.main(["run", "--quick", "--run-dir", str(run_dir), "--batch-size", "300", "--threads", "1"])
    assert rc == 2 and not run_dir.exists()


def test_run_writes_one_report_and_refuses_other_settings(tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["--quick", "--run-dir", str(run_dir), "--threads", "1", "--no-progress", "--accelerator", "cpu"]
    assert toy_app.main(["run", *base]) == 0
    report = read_json(run_dir / "report.json")
    assert report["schema"] == 1 and report["app"] == "toy" and report["mode"] == "quick"
    assert report["metric"] == "probe_accuracy" and report["baselines"] == ["raw"]
    assert {r["method"] for r in report["rows"]} == {"infonce", "raw"}
    assert report["command"].startswith("python -m apps.toy run --quick")
    assert (run_dir / "infonce" / "seed0" / "model.pt").is_file()
    assert "| infonce |" in (run_dir / "report.md").read_text()
    assert report["headline"] == "infonce" and [v["baseline"] for v in report["versus"]] == ["raw"]
    assert "## infonce against each baseline" in (run_dir / "report.md").read_text()
    assert toy_app.main(["fit", *base, "--temperature", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "holds a run made with other settings (temperature: 0.5 there, 0.3 now)" in err
    assert toy_app.main(["evaluate", *base, "--threads", "2"]) == 0  # threads do not change the model


def test_sweep_reports_mean_and_std_over_seeds(tmp_path):
    run_dir = tmp_path / "run"
    rc = toy_app.main(["sweep", "--quick", "--seeds", "0", "1", "--run-dir", str(run_dir), "--threads", "1",
                       "--no-progress", "--accelerator", "cpu", "--epochs", "1"])
    assert rc == 0
    seeds = [read_json(run_dir / f"seed{s}" / "report.json") for s in (0, 1)]
    combined = read_json(run_dir / "report.json")
    accs = [next(r for r in rep["rows"] if r["method"] == "infonce")["metrics"]["probe_accuracy"] for rep in seeds]
    entry = next(s for s in combined["summary"] if s["method"] == "infonce")
    assert entry["seeds"] == [0, 1]
    assert entry["metrics"]["probe_accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    assert entry["metrics"]["probe_accuracy"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert (run_dir / "infonce" / "seed1" / "model.pt").is_file()
    assert seeds[0]["seconds"] + seeds[1]["seconds"] <= combined["seconds"] + 0.05  # each seed: its own time


# ---- run directory, report, files ---------------------------------------------------------------------------------
def test_report_versus_counts_wins_ties_losses_per_dataset():
    from core.app.report import Report

    rep = Report(app="t", metric="mae", higher_is_better=False, headline="m")
    # data set a: m 1.0 vs b1 2.0 (wins), vs b2 0.5 (loses); data set c: two seeds, m 1.0 +- 0.1414 vs b1 1.1
    # (difference 0.1 < std: tie), b2 absent there; "other" is neither headline nor baseline
    rep.add("m", {"mae": 1.0}, dataset="a")
    rep.add("b1", {"mae": 2.0}, dataset="a", baseline=True)
    rep.add("b2", {"mae": 0.5}, dataset="a", baseline=True)
    rep.add("other", {"mae": 0.1}, dataset="a")
    rep.add("m", {"mae": 0.9}, dataset="c", seed=0)
    rep.add("m", {"mae": 1.1}, dataset="c", seed=1)
    rep.add("b1", {"mae": 1.1}, dataset="c", seed=0, baseline=True)
    rep.add("b1", {"mae": 1.1}, dataset="c", seed=1, baseline=True)
    vs = {(v["dataset"], v["baseline"]): v for v in rep.versus()}
    assert set(vs) == {("a", "b1"), ("a", "b2"), ("c", "b1")}
    assert vs["a", "b1"]["outcome"] == "wins" and vs["a", "b1"]["difference"] == pytest.approx(-1.0)
    assert vs["a", "b2"]["outcome"] == "loses"
    assert vs["c", "b1"]["outcome"] == "ties" and vs["c", "b1"]["difference"] == pytest.approx(-0.1)
    summary = {s["baseline"]: s for s in rep.versus_summary()}
    assert (summary["b1"]["wins"], summary["b1"]["ties"], summary["b1"]["losses"]) == (1, 1, 0)
    assert summary["b1"]["headline_mean"] == pytest.approx(1.0)
    assert summary["b1"]["baseline_mean"] == pytest.approx(1.55)
    assert (summary["b2"]["wins"], summary["b2"]["losses"], summary["b2"]["datasets"]) == (0, 1, 1)
    md = rep.markdown(rep.to_dict(command="x"))
    assert "| b1 | 1 | 1 | 0 | 2 |" in md and "| a | wins (-1) | LOSES (+0.5) |" in md
    assert Report(app="t", metric="mae", baselines=["b1"]).versus() == []  # no headline: no comparison


def test_run_dir_check_claim_and_eval_dir(tmp_path):
    rd = RunDir(tmp_path / "r", S())
    rd.check()
    assert not (tmp_path / "r").exists()  # check never writes
    rd.claim()
    assert read_json(tmp_path / "r" / "settings.json")["fingerprint"] == fingerprint(S())
    RunDir(tmp_path / "r", S(threads=2, seed=3)).claim()
    with pytest.raises(InputError, match="kind: 'a' there, 'b' now"):
        RunDir(tmp_path / "r", S(kind="b")).check()
    assert rd.method_dir("m", 2) == tmp_path / "r" / "m" / "seed2"
    assert rd.eval_dir("../data/other events.csv.gz") == tmp_path / "r" / "eval" / "other_events.csv.gz"


def test_summarize_and_best_by_hand():
    rep = Report(app="x", metric="mae", higher_is_better=False)
    rep.add("a", {"mae": 1.0}, seed=0)
    rep.add("a", {"mae": 3.0}, seed=1)
    rep.add("b", {"mae": 1.5}, seed=0, baseline=True)
    s = {e["method"]: e for e in summarize(rep.rows)}
    assert s["a"]["metrics"]["mae"] == {"mean": 2.0, "std": pytest.approx(2 ** 0.5)}
    assert s["a"]["seeds"] == [0, 1]
    assert rep.best()["method"] == "a" and rep.best(baselines=True)["method"] == "b"
    md = rep.markdown(rep.to_dict(command="cmd"))
    assert "| a | 2 | 2.0000 ± 1.4142 |" in md and "b (baseline)" in md and "lower is better" in md


def test_atomic_json_and_read_errors_name_the_file(tmp_path):
    p = write_json(tmp_path / "a" / "f.json", {"x": torch.tensor(2.5)})
    assert read_json(p) == {"x": 2.5}
    assert [q.name for q in p.parent.iterdir()] == ["f.json"]  # no temporary file left
    p.write_text('{"x": ')
    with pytest.raises(InputError, match=r"fit history .*f\.json is not valid JSON"):
        read_json(p, "fit history")
    with pytest.raises(InputError, match=r"none\.json does not exist"):
        read_json(tmp_path / "none.json")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.target}",))


def test_crafted_pickle_is_refused_with_one_line(tmp_path):
    target = tmp_path / "pwned"
    _Exploit.target = target
    bad = tmp_path / "model.pt"
    torch.save({"state": _Exploit()}, bad)
    with pytest.raises(CheckpointError) as e:
        load_torch(bad)
    assert not target.exists()
    assert "\n" not in str(e.value) and "refused to load" in str(e.value) and str(bad) in str(e.value)
    good = save_torch(tmp_path / "ok.pt", {"w": torch.ones(2), "epoch": 3, "names": ["a"]})
    assert load_torch(good)["epoch"] == 3
    for damaged in (pickle.dumps([1, 2])[:-3], good.read_bytes()[:100], b"not a checkpoint", b"PK\x03\x04" + b"x" * 40):
        bad.write_bytes(damaged)
        with pytest.raises(CheckpointError, match="is damaged or not a torch file") as e:
            load_torch(bad)
        assert "\n" not in str(e.value)


# ---- checkpoints and resume -------------------------------------------------------------------------------------
class _Net(torch.nn.Module):
    pass


class _Module(__import__("lightning").LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, i):
        x, y = batch
        return ((self.net(x + 0.1 * torch.randn_like(x)) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class _StopAt(__import__("lightning").Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated kill")


def _fit(run_dir, epochs=4, stop=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16, shuffle=True)
    seed_everything(0)
    module = _Module()
    kw = dict(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False)
    with use(Hardware(accelerator="cpu")):
        try:
            fit_with_resume(kw, module, loader, run_dir, extra_callbacks=[_StopAt(stop)] if stop else [])
        except RuntimeError as e:
            assert "simulated kill" in str(e)
    return module


def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path):
    whole = _fit(tmp_path / "a")
    _fit(tmp_path / "b", stop=2)
    torch.manual_seed(12345)  # a new process would start from another generator state
    resumed = _fit(tmp_path / "b")
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_damaged_last_checkpoint_falls_back_to_newest_intact(tmp_path, capsys):
    _fit(tmp_path / "r", epochs=3)
    ckpts = tmp_path / "r" / "checkpoints"
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2])
    warnings: list[str] = []
    chosen = find_resume_checkpoint(tmp_path / "r", warn=warnings.append)
    assert chosen.name == "epoch=2-step=18.ckpt"
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "damaged checkpoint(s) last.ckpt" in warnings[0] and "resuming from epoch=2-step=18.ckpt" in warnings[0]
    module = _fit(tmp_path / "r", epochs=4)  # resumes from epoch 2 and finishes
    assert "damaged" in capsys.readouterr().err
    assert module.trainer.current_epoch == 4


# ---- threads, hardware, gather -----------------------------------------------------------------------------------
def test_default_threads_counts_idle_cores_and_processes():
    cores = physical_cores()
    assert default_threads(processes=1, load=0.0) == cores
    assert default_threads(processes=2, load=0.0) == max(1, cores // 2)
    assert default_threads(processes=1, load=float(cores)) == 1
    assert default_threads(processes=1, load=cores - 1.0) == 1


def test_hardware_kwargs():
    kw = Hardware(accelerator="cpu", devices=2).trainer_kwargs()
    assert kw["strategy"] == "ddp" and kw["devices"] == 2 and "sync_batchnorm" not in kw  # no CPU SyncBatchNorm
    assert Hardware(accelerator="gpu", devices=2).trainer_kwargs()["sync_batchnorm"] is True
    assert Hardware(accelerator="gpu", devices=1).trainer_kwargs()["strategy"] == "auto"
    assert "max_time" not in Hardware(deadline=0.0).trainer_kwargs()  # the deadline stops at an epoch end


def test_deadline_stops_at_an_epoch_end_and_resume_stays_exact(tmp_path):
    """--max-minutes stops at the first epoch end past the deadline; re-running (with a later deadline) finishes,
    and the weights equal an uncapped run's (Lightning's max_time would cut the epoch and skip its rest)."""
    import time

    from core.training.resume import stopped_by_deadline

    whole = _fit(tmp_path / "a")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16, shuffle=True)
    seed_everything(0)
    module = _Module()
    kw = dict(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False)

    class Slow(__import__("lightning").Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 1:
                time.sleep(1.0)  # the deadline passes during the first epoch

    with use(Hardware(accelerator="cpu", deadline=time.monotonic() + 0.5)):
        trainer = fit_with_resume(kw, module, loader, tmp_path / "b", extra_callbacks=[Slow()])
        assert stopped_by_deadline(trainer) and trainer.current_epoch == 1 and trainer.global_step == 6
        again = fit_with_resume(kw, _Module(), loader, tmp_path / "b")  # still past it: one more epoch
        assert stopped_by_deadline(again) and again.global_step == 12
    resumed = _fit(tmp_path / "b")
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_gather_default_is_off_without_a_process_group():
    assert resolve_gather(None) is False
    with default_gather(True):
        assert resolve_gather(None) is False  # one process: nothing to gather
        assert resolve_gather("ring") == "ring"
    with pytest.raises(ValueError):
        with default_gather("all"):
            pass


@pytest.mark.distributed
def test_two_process_run_gathers_and_writes_one_report(tmp_path):
    """``--devices 2 --strategy ddp`` on the CPU: two gloo processes; the loss gathers negatives from both ranks
    (no app code for it), each rank trains on half the batches, rank 0 alone writes, and the probe accuracy is
    within a few points of the one-process run's."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "tests.core.toy_app", "run", "--quick", "--threads", "1", "--no-progress",
            "--accelerator", "cpu"]
    one = subprocess.run([*base, "--run-dir", str(tmp_path / "one")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*base, "--run-dir", str(tmp_path / "two"), "--devices", "2", "--strategy", "ddp"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    seed_dir = tmp_path / "two" / "infonce" / "seed0"
    assert json.loads((seed_dir / "gather.json").read_text()) == ["(True, 2)"]
    assert json.loads((seed_dir / "gather_rank1.json").read_text()) == ["(True, 2)"]
    assert json.loads((tmp_path / "one" / "infonce" / "seed0" / "gather.json").read_text()) == ["(False, 1)"]
    assert sorted(p.name for p in (seed_dir / "checkpoints").iterdir()) == [
        "epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]  # 8 batches per epoch split over 2 ranks
    acc = {k: next(r for r in read_json(tmp_path / k / "report.json")["rows"] if r["method"] == "infonce")
           ["metrics"]["probe_accuracy"] for k in ("one", "two")}
    assert abs(acc["one"] - acc["two"]) < 0.1
    assert two.stdout.count("run done in") == 1  # one process prints


def test_a_capped_run_exits_3_and_a_rerun_finishes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["fit", "--quick", "--run-dir", str(run_dir), "--threads", "1", "--no-progress", "--accelerator", "cpu"]
    assert toy_app.main([*base, "--max-minutes", "0.00001"]) == 3  # stops at the end of epoch 1 of 2
    assert "--max-minutes stopped training" in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "infonce" / "seed0" / "checkpoints").iterdir()) == [
        "epoch=0-step=8.ckpt", "last.ckpt"]
    assert toy_app.main(base) == 0
    assert (run_dir / "infonce" / "seed0" / "checkpoints" / "epoch=1-step=16.ckpt").is_file()
    # a fit that ends its last epoch after the deadline is complete, not capped
    assert toy_app.main([*base, "--run-dir", str(tmp_path / "one"), "--epochs", "1", "--max-minutes", "0.00001"]) == 0


def test_ctrl_c_inside_a_lightning_fit_exits_130_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    import signal

    run_dir = tmp_path / "run"
    base = ["fit", "--quick", "--run-dir", str(run_dir), "--threads", "1", "--no-progress", "--accelerator", "cpu"]
    step = toy_app.ToyModule.contrastive_step
    calls = []

    def interrupted_step(self, batch):
        calls.append(1)
        if len(calls) == 11:  # in epoch 2 of 2 (8 steps per epoch): a real SIGINT, as Ctrl-C sends
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch)

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(toy_app.ToyModule, "contrastive_step", interrupted_step)
    assert toy_app.main(base) == 130
    assert "interrupted: re-run the same command" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # the runner's handler is gone again
    ckpts = run_dir / "infonce" / "seed0" / "checkpoints"
    assert (ckpts / "epoch=0-step=8.ckpt").is_file()  # the finished epoch is kept
    monkeypatch.setattr(toy_app.ToyModule, "contrastive_step", step)
    assert toy_app.main(base) == 0
    assert (ckpts / "epoch=1-step=16.ckpt").is_file()
