"""Settings of the RL app: one dataclass (offline + online), a quick preset, YAML overrides, validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.rl.agent import AgentConfig
from apps.rl.data import DataError
from core.training.options import check_run_limits, load_yaml_options

__all__ = ["RLConfig", "HELP", "load_yaml", "agent_config"]


@dataclass
class RLConfig:
    """Every option of ``python -m apps.rl`` (see :data:`HELP`)."""

    # where
    data: str | None = None
    env: str | None = None
    run_dir: str = "runs/rl"
    seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    threads: int | None = 1
    progress: bool = True
    accelerator: str = "cpu"
    max_minutes: float | None = None
    # offline representation learning
    methods: list[str] = field(default_factory=lambda: ["taco", "cpc"])
    image_size: int = 64
    pretrain_steps: int = 2000
    pretrain_batch_size: int = 128
    cpc_seq_len: int = 8
    test_fraction: float = 0.25
    bc_epochs: int = 30
    bc_episodes: int = 5
    max_episodes: int | None = None
    checkpoint_every: int = 200
    # online DrQ-v2 (+ TACO / CPC)
    aux: str = "taco"
    compare_aux: list[str] = field(default_factory=lambda: ["none", "taco"])
    frames: int = 100_000
    frame_stack: int = 3
    action_repeat: int = 2
    eval_every_frames: int = 10_000
    eval_episodes: int = 10
    replay_capacity: int = 1_000_000
    # agent hyperparameters (see apps.rl.agent.AgentConfig)
    batch_size: int = 256
    lr: float = 1e-4
    feature_dim: int = 50
    hidden_dim: int = 1024
    nstep: int = 3
    gamma: float = 0.99
    multistep: int = 3
    std_duration: int = 100_000
    num_expl_steps: int = 2000
    update_every_steps: int = 2
    curl: bool = True
    reward_prediction: bool = True
    latent_action_critic: bool = True

    @classmethod
    def quick(cls) -> RLConfig:
        """Pendulum rollouts, short TACO/CPC pre-training and BC, no online run: < 2 min on 2 CPU cores."""
        return cls(run_dir="runs/rl_quick", data="pendulum", pretrain_steps=100, pretrain_batch_size=48,
                   image_size=48, bc_epochs=15, bc_episodes=2, cpc_seq_len=5, checkpoint_every=50,
                   frames=600, eval_every_frames=300, eval_episodes=1, batch_size=32, num_expl_steps=100,
                   update_every_steps=4, hidden_dim=256, std_duration=1000, seeds=[0], max_episodes=16)

    def validate(self) -> RLConfig:
        """Raise :class:`DataError` for settings that cannot work."""
        for name in ("image_size", "pretrain_steps", "bc_epochs", "bc_episodes", "checkpoint_every", "frames",
                     "frame_stack", "action_repeat", "eval_every_frames", "eval_episodes", "replay_capacity",
                     "feature_dim", "hidden_dim", "nstep", "multistep", "std_duration", "update_every_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"{name} must be a positive integer, got {v!r}")
        for name in ("pretrain_batch_size", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 2:
                raise DataError(f"{name} must be an integer >= 2 (InfoNCE needs negatives in the batch), got {v!r}")
        if self.image_size < 16:
            raise DataError(f"image_size must be >= 16 (the conv encoder needs room), got {self.image_size}")
        if self.num_expl_steps < 0:
            raise DataError(f"num_expl_steps must be >= 0, got {self.num_expl_steps}")
        if self.cpc_seq_len <= self.multistep:
            raise DataError(f"cpc_seq_len ({self.cpc_seq_len}) must exceed multistep K ({self.multistep}): CPC "
                            "predicts K steps ahead inside the sequence")
        for name in ("lr",):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise DataError(f"{name} must be a positive number, got {v!r}")
        if not 0 < self.gamma <= 1:
            raise DataError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 < self.test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        bad = [m for m in self.methods if m not in ("taco", "cpc", "random")]
        if bad or not self.methods:
            raise DataError(f"methods must be a non-empty list of taco / cpc / random, got {self.methods}")
        for a in [self.aux, *self.compare_aux]:
            if a not in ("none", "taco", "cpc"):
                raise DataError(f"aux must be none / taco / cpc, got {a!r}")
        if self.max_episodes is not None and self.max_episodes < 4:
            raise DataError(f"max_episodes must be >= 4 or unset, got {self.max_episodes}")
        if self.threads is not None and self.threads < 1:
            raise DataError(f"threads must be >= 1, got {self.threads}")
        if not self.seeds:
            raise DataError("seeds is empty")
        check_run_limits(self.accelerator, self.max_minutes, DataError)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def agent_config(cfg: RLConfig, aux: str | None = None) -> AgentConfig:
    """The agent hyperparameters of a run (``aux`` overrides ``cfg.aux``)."""
    return AgentConfig(
        feature_dim=cfg.feature_dim, hidden_dim=cfg.hidden_dim, lr=cfg.lr, aux_lr=cfg.lr, gamma=cfg.gamma,
        nstep=cfg.nstep, batch_size=cfg.batch_size, std_duration=cfg.std_duration,
        num_expl_steps=cfg.num_expl_steps, update_every_steps=cfg.update_every_steps,
        aux=cfg.aux if aux is None else aux, multistep=cfg.multistep, curl=cfg.curl,
        reward_prediction=cfg.reward_prediction, latent_action_critic=cfg.latent_action_critic)


HELP: dict[str, str] = {
    "data": "offline rollouts: an .npz (imitation format obs/acts/rews/indices/terminal, or "
            "observations/actions/rewards/terminals[/timeouts]), a folder of .npz, or an embedded name "
            "('cartpole', 'pendulum'); default: both embedded files in shared_data/rl/",
    "env": "online task: a DMC pixel task 'domain_task' (cartpole_swingup, reacher_easy ...) or a gymnasium "
           "id with a Box action space (Pendulum-v1); when set, fit/evaluate train/score an online agent",
    "run_dir": "run directory (re-running a command resumes from its checkpoints)",
    "seed": "seed of the run (online fit / evaluate) and of the offline splits and initialisation",
    "seeds": "seeds of the online 'compare' verb",
    "threads": "torch CPU threads",
    "progress": "show progress bars",
    "accelerator": "online agent: Lightning Fabric accelerator (cpu, cuda / gpu, auto); rendering stays on "
                   "MUJOCO_GL",
    "max_minutes": "online: stop a training run after this many minutes of this process (checkpointed; the "
                   "report states the frames reached); unset: train for --frames",
    "methods": "offline representation methods to compare: taco, cpc, random (a random encoder is always "
               "added as the baseline)",
    "image_size": "offline: side of the rendered grayscale frames (the rollouts hold state vectors; frames are "
                  "rasterised from them so the encoder must infer velocities from a 3-frame stack)",
    "pretrain_steps": "offline: gradient steps of TACO / CPC pre-training",
    "pretrain_batch_size": "offline: batch size of TACO pre-training (the InfoNCE negatives are the other rows); "
                           "CPC samples a quarter as many sequences of cpc_seq_len steps",
    "cpc_seq_len": "offline / online CPC: length T of the latent sequence the GRU context runs over (> K)",
    "test_fraction": "offline: share of the episodes held out for the probe / BC evaluation split",
    "bc_epochs": "offline: epochs of the behaviour-cloning head on frozen features",
    "bc_episodes": "offline: environment episodes to measure the BC policy's return",
    "max_episodes": "offline: use at most this many episodes of each data set (quick mode)",
    "checkpoint_every": "offline: pre-training steps between checkpoints",
    "aux": "online fit: auxiliary loss of the agent: none (DrQ-v2), taco, cpc",
    "compare_aux": "online compare: the auxiliary losses to compare",
    "frames": "online: environment frames to train for (agent steps x action repeat)",
    "frame_stack": "online: frames per observation (DrQ-v2: 3)",
    "action_repeat": "online: action repeat (DrQ-v2: 2)",
    "eval_every_frames": "online: frames between evaluations (learning-curve points)",
    "eval_episodes": "online: evaluation episodes per point (the final one also feeds the state probe)",
    "replay_capacity": "online: replay capacity in stored frames (84x84 RGB: 21.2 GB per million)",
    "batch_size": "online: agent batch size (DrQ-v2 256; TACO's code silently uses 1024: an explicit choice here)",
    "lr": "Adam learning rate (agent and auxiliary losses; offline pre-training uses 10x this)",
    "feature_dim": "latent state size z (trunk / state projection)",
    "hidden_dim": "MLP width of actor, critic and TACO heads",
    "nstep": "n of the n-step return",
    "gamma": "discount",
    "multistep": "TACO's K (latent action sequence length) and CPC's prediction steps",
    "std_duration": "online: agent steps of the linear exploration-std schedule 1.0 -> 0.1",
    "num_expl_steps": "online: agent steps of uniform random actions before the policy acts (and updates start)",
    "update_every_steps": "online: agent steps between updates (DrQ-v2: 2)",
    "curl": "TACO: include the CURL term",
    "reward_prediction": "TACO: include the reward-prediction term",
    "latent_action_critic": "TACO: feed the latent action g(a_t) to the critic instead of a_t",
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config of :class:`RLConfig` fields; errors name the file (and line)."""
    return load_yaml_options(path, RLConfig, DataError)
