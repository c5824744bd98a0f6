"""Command line, reports, bad input, and resuming interrupted offline / online training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from apps.rl.__main__ import build_parser, main
from apps.rl.config import RLConfig

TINY = ["--data", "pendulum", "--max-episodes", "4", "--pretrain-steps", "4", "--pretrain-batch-size", "8",
        "--image-size", "24", "--bc-episodes", "1", "--bc-epochs", "1", "--cpc-seq-len", "4", "--checkpoint-every",
        "2", "--no-progress", "--hidden-dim", "32"]


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(RLConfig):
        assert "--" + f.name.replace("_", "-") in text


def test_offline_run_writes_report_and_fit_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", *TINY, "--run-dir", str(run)]) == 0
    rep = json.loads((run / "offline" / "report.json").read_text())
    assert {"app", "dataset", "method", "metrics", "baselines", "seconds", "config"} <= rep.keys()
    assert rep["app"] == "rl" and rep["method"] == "taco" and set(rep["baselines"]) == {"cpc", "random"}
    assert {"return_mean", "return_std", "env_steps", "state_probe_r2"} <= rep["metrics"].keys()
    assert rep["metrics"]["env_steps"] == 4 * 200
    assert (run / "offline" / "report.md").exists() and (run / "offline" / "offline_probe_bc.png").stat().st_size
    # extend pre-training: the checkpoint at step 4 is picked up, not restarted
    assert main(["fit", *TINY, "--pretrain-steps", "6", "--methods", "taco", "--run-dir", str(run)]) == 0
    assert "resuming taco pre-training at step 4" in capsys.readouterr().out
    ck = torch.load(run / "offline" / "pendulum_0" / "taco.pt", weights_only=False)
    assert ck["state"]["step"] == 6 and len(ck["state"]["losses"]) == 6


@pytest.mark.parametrize("args,message", [
    (["--data", "/no/such/file.npz"], "does not exist"),
    (["--pretrain-batch-size", "1"], "pretrain_batch_size"),
    (["--cpc-seq-len", "3", "--multistep", "3"], "cpc_seq_len"),
    (["--methods", "byol"], "methods"),
    (["--env", "cartpole_nonsense"], "unknown DMC task"),
])
def test_bad_input_exits_2_without_report(tmp_path, capsys, args, message):
    run = tmp_path / "r"
    assert main(["run", "--no-progress", "--run-dir", str(run), *args]) == 2
    assert message in capsys.readouterr().err
    assert not list(run.rglob("report.json")) if run.exists() else True


def test_bad_yaml_names_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pretrain_steps: 3\nimage_size: [1,\n")
    assert main(["fit", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml line" in err
    cfg.write_text("pretrain_stepz: 3\n")
    assert main(["fit", "--config", str(cfg)]) == 2
    assert "unknown option" in capsys.readouterr().err


def test_online_fit_resumes_agent_optimisers_and_counters(tmp_path, monkeypatch):
    """Interrupt an online run mid-episode, resume it, and check it continues from the last checkpoint."""
    import apps.rl.online as online

    cfg = RLConfig(env="Pendulum-v1", run_dir=str(tmp_path), frames=800, eval_every_frames=800, eval_episodes=1,
                   batch_size=8, hidden_dim=16, num_expl_steps=20, update_every_steps=2, progress=False,
                   feature_dim=8, aux="taco", action_repeat=4)  # 50 agent steps per episode
    real = online.make_env
    calls = {"n": 0}

    class Interrupting:
        def __init__(self, env):
            self.env = env

        def __getattr__(self, name):
            return getattr(self.env, name)

        def step(self, a):
            calls["n"] += 1
            if calls["n"] == 125:  # inside the third training episode
                raise KeyboardInterrupt
            return self.env.step(a)

    envs = iter([Interrupting(real("Pendulum-v1", 0, action_repeat=4)), real("Pendulum-v1", 1, action_repeat=4)])
    monkeypatch.setattr(online, "make_env", lambda *a, **k: next(envs))
    with pytest.raises(KeyboardInterrupt):
        online.train_online(cfg, "taco", 0)
    run = online.online_run_dir(cfg, "taco", 0)
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["state"]["step"] == 100 and ck["state"]["episode"] == 2
    # updates need one complete episode in the buffer: steps 52, 54, ..., 100
    assert ck["state"]["updates"] == 25
    assert int(ck["optimizers"]["actor"]["state"][0]["step"]) == 25
    saved = {k: v.clone() for k, v in ck["agent"].items()}

    monkeypatch.setattr(online, "make_env", real)
    loaded = {}
    orig_load = online.DrQV2Agent.load_state_dict

    def spy(self, sd, *a, **k):
        loaded.update({k2: v.clone() for k2, v in sd.items()})
        return orig_load(self, sd, *a, **k)

    monkeypatch.setattr(online.DrQV2Agent, "load_state_dict", spy)
    online.train_online(cfg, "taco", 0)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["state"]["step"] == 200 and ck["state"]["episode"] == 4
    # after a resume the buffer refills: no update until the first new episode is complete (step 150)
    assert ck["state"]["updates"] == 50
    assert int(ck["optimizers"]["actor"]["state"][0]["step"]) == 50  # Adam state carried over
    assert [p["frames"] for p in ck["state"]["train_returns"]] == [200, 400, 600, 800]
    curve = json.loads((run / "curve.json").read_text())
    assert curve["agent_steps"] == 200 and np.isfinite(curve["curve"][-1]["return_mean"])


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


def test_tour_entry_is_registered_with_a_quick_preset_under_budget_settings():
    import apps.rl.tour  # noqa: F401
    from core.tour import registered_tours

    assert "rl" in registered_tours()
    q = RLConfig.quick().validate()
    assert q.data == "pendulum" and q.pretrain_steps <= 150 and q.max_episodes is not None


def test_online_run_on_a_state_task_writes_report(tmp_path):
    args = ["run", "--env", "Pendulum-v1", "--aux", "cpc", "--run-dir", str(tmp_path), "--frames", "400",
            "--action-repeat", "4", "--eval-every-frames", "400", "--eval-episodes", "2", "--batch-size", "8",
            "--hidden-dim", "16", "--num-expl-steps", "10", "--cpc-seq-len", "5", "--no-progress"]
    assert main(args) == 0
    run = tmp_path / "online" / "Pendulum-v1_cpc_seed0"
    rep = json.loads((run / "report.json").read_text())
    assert rep["method"] == "drqv2+cpc" and rep["metrics"]["env_steps"] == 400
    assert {"return_mean", "return_std", "env_steps", "state_probe_r2"} <= rep["metrics"].keys()
    assert "random_encoder" in rep["baselines"] and (run / "learning_curve.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--accelerator", "tpu"], "accelerator"),
    (["--max-minutes", "0"], "max_minutes"),
])
def test_bad_device_options_exit_2(tmp_path, capsys, args, message):
    assert main(["run", "--no-progress", "--run-dir", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err


def test_max_minutes_stops_online_training_and_score_only_does_not_train(tmp_path, monkeypatch):
    """A run capped by max_minutes stops early (checkpointed, curve written); compare --score-only reports the
    runs as they are instead of training them on to --frames."""
    from types import SimpleNamespace

    import apps.rl.online as online

    clock = iter(range(0, 10**6, 2))  # the training loop's clock advances 2 s per reading: the cap hits quickly
    monkeypatch.setattr(online, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    common = ["--env", "Pendulum-v1", "--run-dir", str(tmp_path), "--frames", "4000", "--action-repeat", "4",
              "--eval-every-frames", "4000", "--eval-episodes", "2", "--batch-size", "8", "--hidden-dim", "16",
              "--num-expl-steps", "10", "--no-progress"]
    assert main(["fit", *common, "--aux", "none", "--max-minutes", "1"]) == 0
    run = tmp_path / "online" / "Pendulum-v1_none_seed0"
    curve = json.loads((run / "curve.json").read_text())
    assert 0 < curve["agent_steps"] < 1000  # stopped well before 4000 frames / 4
    steps = curve["agent_steps"]
    assert main(["compare", *common, "--compare-aux", "none", "--seeds", "0", "--score-only"]) == 0
    assert json.loads((run / "curve.json").read_text())["agent_steps"] == steps  # not trained further
    rep = json.loads((tmp_path / "online" / "compare_Pendulum-v1" / "report.json").read_text())
    assert rep["metrics"]["env_steps"] == steps * 4
