"""Command line on the runner, reports, bad input, exact resume of both Fabric loops, several processes."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.rl.__main__ import APP, main
from apps.rl.settings import RLSettings
from core.app import COMMON_FLAGS, load_torch

REPO = Path(__file__).resolve().parents[3]
TINY = ["--data", "pendulum", "--max-episodes", "6", "--pretrain-steps", "4", "--pretrain-batch-size", "8",
        "--image-size", "24", "--bc-episodes", "1", "--bc-epochs", "1", "--cpc-seq-len", "4", "--checkpoint-every",
        "2", "--no-progress", "--hidden-dim", "32", "--threads", "1"]
# a small online agent on a gymnasium state task: 50 agent steps per episode (Pendulum: 200 steps, repeat 4)
ONLINE = ["--env", "Pendulum-v1", "--frames", "400", "--action-repeat", "4", "--eval-every-frames", "400",
          "--eval-episodes", "1", "--probe-episodes", "5", "--batch-size", "8", "--hidden-dim", "16",
          "--feature-dim", "8", "--num-expl-steps", "10", "--no-progress", "--threads", "1"]


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        APP.parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    return out.getvalue()


def test_help_of_every_verb_parses_and_has_the_common_and_app_flags():
    assert set(APP.verbs) == {"fit", "evaluate", "run", "sweep"}
    for verb in APP.verbs:
        text = _help([verb])
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
        assert set(COMMON_FLAGS) <= flags, (verb, set(COMMON_FLAGS) - flags)
        for f in ("--env", "--aux", "--methods", "--frames", "--probe-episodes", "--score-only"):
            assert f in flags, (verb, f)
    assert "--seeds" in _help(["sweep"])


def test_offline_run_writes_report_and_fit_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", *TINY, "--run-dir", str(run)]) == 0
    rep = json.loads((run / "report.json").read_text())
    assert rep["app"] == "rl" and rep["metric"] == "state_probe_r2" and rep["baselines"] == ["random"]
    rows = {r["method"]: r for r in rep["rows"]}
    assert set(rows) == {"taco", "cpc", "random"} and {r["dataset"] for r in rep["rows"]} == {"pendulum_0"}
    assert {"return_mean", "return_std", "env_steps", "state_probe_r2"} <= rows["taco"]["metrics"].keys()
    assert rows["taco"]["metrics"]["env_steps"] == 6 * 200 and rows["taco"]["metrics"]["pretrain_steps"] == 4
    assert set(rep["plots"]) == {"offline_probe_bc.png", "offline_pretrain_loss.png"}
    assert (run / "report.md").exists() and (run / "offline_probe_bc.png").stat().st_size
    ck = run / "taco" / "seed0" / "pendulum_0"
    assert {p.name for p in ck.iterdir()} == {"last.pt", "last.prev.pt"}
    # extend pre-training: the checkpoint at step 4 is picked up, not restarted
    capsys.readouterr()
    assert main(["fit", *TINY, "--pretrain-steps", "6", "--methods", "taco", "--run-dir", str(run)]) == 0
    assert "resuming taco pre-training on pendulum_0 at step 4" in capsys.readouterr().out
    state = load_torch(ck / "last.pt")
    assert state["step"] == 6 and len(state["losses"]) == 6 and len(state["ranks"]) == 1


def test_offline_pretraining_resumes_exactly(tmp_path, monkeypatch):
    """Pre-training interrupted after 5 steps (checkpoint at 4) and resumed ends with the uninterrupted weights."""
    import apps.rl.offline as offline

    args = [*TINY, "--methods", "taco", "--pretrain-steps", "8", "--checkpoint-every", "4"]
    assert main(["fit", *args, "--run-dir", str(tmp_path / "a")]) == 0
    real, calls = offline.RepresentationModel.loss, {"n": 0}

    def interrupting(self, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(offline.RepresentationModel, "loss", interrupting)
    assert main(["fit", *args, "--run-dir", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(offline.RepresentationModel, "loss", real)
    assert load_torch(tmp_path / "b" / "taco" / "seed0" / "pendulum_0" / "last.pt")["step"] == 4
    assert main(["fit", *args, "--run-dir", str(tmp_path / "b")]) == 0
    a, b = (load_torch(tmp_path / d / "taco" / "seed0" / "pendulum_0" / "last.pt") for d in "ab")
    assert b["step"] == 8 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["losses"], b["losses"])


@pytest.mark.parametrize("args,message", [
    (["--data", "/no/such/file.npz"], "does not exist"),
    (["--pretrain-batch-size", "1"], "pretrain_batch_size must be >= 2"),
    (["--cpc-seq-len", "3", "--multistep", "3"], "cpc_seq_len"),
    (["--methods", "byol"], "methods must be one of"),
    (["--env", "cartpole_nonsense"], "unknown DMC task"),
    (["--env", "CartPole-v1"], "needs a Box"),
    (["--accelerator", "tpu"], "accelerator"),
    (["--max-minutes", "0"], "max_minutes"),
    (["--precision", "16-mixed"], "32-bit only"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    run = tmp_path / "r"
    assert main(["run", "--no-progress", "--threads", "1", "--run-dir", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not run.exists() or not any(run.iterdir())


def test_bad_yaml_names_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pretrain_steps: 3\nimage_size: [1,\n")
    assert main(["fit", "--config", str(cfg)]) == 2
    assert "c.yaml line" in capsys.readouterr().err
    cfg.write_text("pretrain_stepz: 3\n")
    assert main(["fit", "--config", str(cfg)]) == 2
    assert "unknown option" in capsys.readouterr().err


def _weights(run_dir: Path, agent: str = "drqv2+taco") -> dict[str, torch.Tensor]:
    return load_torch(run_dir / agent / "seed0" / "last.pt")["agent"]


def test_online_resume_is_exact_after_an_interruption_a_damaged_checkpoint_and_a_time_cap(tmp_path, monkeypatch,
                                                                                           capsys):
    """An online run interrupted mid-episode (after 10 updates; checkpoints every 30 agent steps) and resumed, with
    its newest checkpoint damaged in between, ends with exactly the uninterrupted run's weights; so does a run
    stopped by --max-minutes mid-episode and re-run."""
    import apps.rl.agent as agent_mod
    from core.app.hardware import Hardware

    args = ["fit", *ONLINE, "--aux", "taco", "--checkpoint-every-frames", "120"]
    assert main([*args, "--run-dir", str(tmp_path / "a")]) == 0
    full = _weights(tmp_path / "a")

    real, calls = agent_mod.DrQV2Agent.update, {"n": 0}

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 11:  # updates begin after the first episode (step 52, 54, ...): this is agent step 72,
            # after the checkpoints at steps 30 and 60 (both mid-episode)
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(agent_mod.DrQV2Agent, "update", interrupting)
    assert main([*args, "--run-dir", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(agent_mod.DrQV2Agent, "update", real)
    folder = tmp_path / "b" / "drqv2+taco" / "seed0"
    ck = load_torch(folder / "last.pt")
    assert ck["counters"]["step"] == 60 and len(ck["ranks"][0]["pending"]["actions"]) == 10  # mid-episode
    assert load_torch(folder / "last.prev.pt")["counters"]["step"] == 30
    (folder / "last.pt").write_bytes(b"damaged")  # the newest checkpoint is lost: resume from the one before
    capsys.readouterr()
    assert main([*args, "--run-dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr()
    assert "warning:" in out.err and "last.prev.pt" in out.err and "resumed last.prev.pt at agent step 30" in out.out
    resumed = _weights(tmp_path / "b")
    assert all(torch.equal(full[k], resumed[k]) for k in full)

    # --max-minutes: the loop asks the runner's hardware for the time left; it runs out at agent step 45
    left = {"n": 0}

    def remaining(self):
        left["n"] += 1
        return 1.0 if left["n"] <= 45 else -1.0

    monkeypatch.setattr(Hardware, "remaining_seconds", remaining)
    assert main([*args, "--run-dir", str(tmp_path / "c"), "--max-minutes", "1"]) == 3  # capped
    assert load_torch(tmp_path / "c" / "drqv2+taco" / "seed0" / "last.pt")["counters"]["step"] == 45
    monkeypatch.undo()
    assert main([*args, "--run-dir", str(tmp_path / "c")]) == 0
    capped = _weights(tmp_path / "c")
    assert all(torch.equal(full[k], capped[k]) for k in full)
    replay = sorted(p.name for p in (tmp_path / "c" / "drqv2+taco" / "seed0" / "replay" / "rank0").iterdir())
    assert replay == ["0000000.pt", "0000001.pt"]  # two complete episodes; each written once


def test_online_run_on_a_state_task_writes_report(tmp_path):
    assert main(["run", *ONLINE, "--aux", "cpc", "--cpc-seq-len", "5", "--run-dir", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["metric"] == "return_mean" and rep["data"] == "Pendulum-v1"
    (row,) = rep["rows"]
    assert row["method"] == "drqv2+cpc" and row["metrics"]["env_steps"] == 400 and row["dataset"] == "Pendulum-v1"
    assert {"return_mean", "return_std", "state_probe_r2", "state_probe_r2_random_encoder"} <= row["metrics"].keys()
    assert row["metrics"]["state_probe_r2"] is not None  # 5 probe episodes of 50 steps, 8 features
    assert rep["plots"] == ["learning_curves.png"] and (tmp_path / "learning_curves.png").exists()
    assert json.loads((tmp_path / "drqv2+cpc" / "seed0" / "curve.json").read_text())["agent_steps"] == 100


def test_probe_with_too_few_episodes_is_refused_and_the_report_says_so(tmp_path):
    assert main(["run", *ONLINE, "--aux", "none", "--frames", "200", "--probe-episodes", "2",
                 "--run-dir", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["rows"][0]["metrics"]["state_probe_r2"] is None
    assert any("state probe not reported: 2 episode(s)" in n for n in rep["notes"])
    assert "state probe not reported" in (tmp_path / "report.md").read_text()


def test_max_minutes_caps_fit_and_sweep_score_only_reports_every_seed_without_training(tmp_path, monkeypatch):
    """A fit capped by --max-minutes stops early (checkpointed, curve written); `sweep --score-only` then reports
    every agent x seed as they are (no further training), one row per agent and seed."""
    from core.app.hardware import Hardware

    monkeypatch.setattr(Hardware, "remaining_seconds", lambda self: -1.0)  # the cap is reached at once
    common = [*ONLINE, "--aux", "none", "--frames", "4000", "--run-dir", str(tmp_path)]
    for seed in ("0", "1"):
        assert main(["fit", *common, "--seed", seed, "--max-minutes", "1"]) == 3  # capped
    monkeypatch.undo()
    curve = json.loads((tmp_path / "drqv2" / "seed0" / "curve.json").read_text())
    assert curve["agent_steps"] == 0 and len(curve["curve"]) == 1
    assert main(["sweep", *common, "--seeds", "0", "1", "--score-only"]) == 0
    assert json.loads((tmp_path / "drqv2" / "seed1" / "curve.json").read_text())["agent_steps"] == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["verb"] == "sweep" and [(r["method"], r["seed"]) for r in rep["rows"]] == [("drqv2", 0), ("drqv2", 1)]
    assert rep["summary"][0]["seeds"] == [0, 1] and rep["rows"][0]["metrics"]["env_steps"] == 0
    assert (tmp_path / "seed1" / "report.json").is_file() and (tmp_path / "seed1" / "learning_curves.png").is_file()


def test_dmc_pixel_env_follows_the_drqv2_protocol():
    from apps.rl.envs import make_env

    env = make_env("cartpole_swingup", seed=0)
    obs, info = env.reset(seed=0)
    assert obs.shape == (9, 84, 84) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs[:3], obs[6:])  # reset: the first frame repeated
    obs2, r, term, trunc, info2 = env.step(np.zeros(1, np.float32))
    np.testing.assert_array_equal(obs2[-3:], info2["frame"])
    np.testing.assert_array_equal(obs2[:3], obs[3:6])
    assert info2["state"].shape == (5,) and 0 <= r <= 2  # reward summed over action repeat 2
    env.close()


def test_standard_dmc_task_names_resolve_by_the_longest_domain():
    from apps.rl.envs import dmc_domain_task, make_env

    assert dmc_domain_task("point_mass_easy") == ("point_mass", "easy")
    assert dmc_domain_task("ball_in_cup_catch") == ("ball_in_cup", "catch")
    assert dmc_domain_task("cartpole_swingup") == ("cartpole", "swingup")
    assert dmc_domain_task("humanoid_CMU_stand") == ("humanoid_CMU", "stand")
    assert dmc_domain_task("walker_walk") == ("walker", "walk")
    with pytest.raises(ValueError, match="point_mass_easy"):
        dmc_domain_task("point_mass_esay")
    env = make_env("point_mass_easy", seed=0, image_size=32)
    obs, info = env.reset(seed=0)
    assert obs.shape == (9, 32, 32) and info["state"].shape == (4,) and env.action_space.shape == (2,)
    env.close()
    RLSettings(env="ball_in_cup_catch").validate()


def test_tour_entry_is_registered_with_a_quick_preset_under_budget_settings():
    import apps.rl.tour  # noqa: F401
    from core.tour import registered_tours

    assert "rl" in registered_tours()
    q = RLSettings.quick().validate()
    assert q.data == "pendulum" and q.pretrain_steps <= 150 and q.max_episodes is not None
    assert q.probe_episodes >= 5


def _doc_commands() -> list[list[str]]:
    """The arguments of every ``python -m apps.rl`` command in the code blocks of docs/apps/rl.md."""
    text = (REPO / "docs" / "apps" / "rl.md").read_text()
    cmds = []
    for body in re.findall(r"^```[\w-]*\n(.*?)^```", text, flags=re.M | re.S):
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            if words[1:3] == ["-m", "apps.rl"]:
                cmds.append(words[3:])
    return cmds


def test_every_command_line_of_the_docs_page_parses():
    cmds = _doc_commands()
    assert len(cmds) >= 5 and any(c[0] == "sweep" for c in cmds)
    for argv in cmds:
        args = APP.parser().parse_args(argv)
        APP.settings_from_args(args)  # valid settings (and config files)


@pytest.mark.distributed
def test_two_process_ddp_online_quick_run(tmp_path):
    """``--devices 2 --strategy ddp`` (two gloo CPU processes) on the online quick preset, shortened: every rank
    steps its own environment (rank-dependent seed), the gradients are averaged (the loop checks the ranks' weights
    agree), the main process writes one checkpoint with both ranks' state and the report."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "apps.rl", "run", "--quick", "--env", "Pendulum-v1", "--aux", "taco",
           "--frames", "300", "--num-expl-steps", "40", "--eval-every-frames", "300", "--probe-episodes", "1",
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--threads", "1", "--no-progress",
           "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stdout + out.stderr
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["settings"]["devices"] == 2 and [r["method"] for r in rep["rows"]] == ["drqv2+taco"]
    assert rep["rows"][0]["metrics"]["env_steps"] == 300
    ck = load_torch(run_dir / "drqv2+taco" / "seed0" / "last.pt")
    assert ck["counters"]["updates"] > 0 and len(ck["ranks"]) == 2
    f0, f1 = (p["pending"]["frames"] for p in ck["ranks"])
    assert not torch.equal(f0, f1)  # the ranks collected different episodes
    for r in (0, 1):
        assert (run_dir / "drqv2+taco" / "seed0" / "replay" / f"rank{r}" / "0000000.pt").is_file()
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob(".*.tmp"))
    print(f"2-process quick online run: {time.perf_counter() - t0:.0f} s")


@pytest.mark.parametrize("name,domain,action_dim", [("point_mass_easy", "point_mass", 2),
                                                    ("ball_in_cup_catch", "ball_in_cup", 2),
                                                    ("finger_spin", "finger", 2), ("cheetah_run", "cheetah", 6)])
def test_standard_dmc_tasks_build(name, domain, action_dim):
    """Standard DMC `domain_task` names build a pixel environment (the domain looked up in dm_control's suite)."""
    from apps.rl.envs import dmc_domain_task, make_env

    assert dmc_domain_task(name)[0] == domain
    env = make_env(name, seed=0, image_size=32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (9, 32, 32) and env.action_space.shape == (action_dim,)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert obs.shape == (9, 32, 32) and float(reward) >= 0.0
    env.close()
