"""Settings of the RL app: one dataclass on the runner's :class:`~core.app.AppSettings` (offline + online), a
quick preset, and the cross-field checks."""

from __future__ import annotations

from dataclasses import dataclass

from apps.rl.agent import AgentConfig
from core.app import AppSettings, InputError, option

__all__ = ["RLSettings", "agent_config", "AUX", "AGENT_NAMES"]

AUX = ("none", "taco", "cpc")
#: report / folder name of the online agent of each auxiliary loss
AGENT_NAMES = {"none": "drqv2", "taco": "drqv2+taco", "cpc": "drqv2+cpc"}


@dataclass
class RLSettings(AppSettings):
    """Every option of ``python -m apps.rl`` (offline pre-training and the online agent)."""

    data: str = option("embedded", help="offline rollouts: an .npz (imitation format obs/acts/rews/indices/"
                                        "terminal, or observations/actions/rewards/terminals[/timeouts]), a "
                                        "folder of .npz, or an embedded name: 'cartpole', 'pendulum', or "
                                        "'embedded' (both, shared_data/rl/); ignored with --env")
    env: str | None = option(None, help="online task: a DMC pixel task 'domain_task' (cartpole_swingup, "
                                        "point_mass_easy, ball_in_cup_catch ...) or a gymnasium id with a Box "
                                        "action space (Pendulum-v1); set: fit / evaluate train / score online "
                                        "agents instead of the offline encoders")
    # offline representation learning
    methods: list[str] = option(["taco", "cpc"], help="offline: representation methods to pre-train and compare "
                                                      "(a random encoder is always added as the baseline)",
                                choices=("taco", "cpc", "random"), model=False)
    image_size: int = option(64, help="offline: side of the rendered grayscale frames (the rollouts hold state "
                                      "vectors; the encoder must infer velocities from a 3-frame stack)", low=16)
    pretrain_steps: int = option(2000, help="offline: gradient steps of TACO / CPC pre-training (raising it on "
                                            "a re-run continues the pre-training)", low=1, model=False)
    pretrain_batch_size: int = option(128, help="offline: batch size of TACO pre-training (the InfoNCE negatives "
                                                "are the other rows); CPC samples a quarter as many sequences of "
                                                "cpc_seq_len steps", low=2)
    cpc_seq_len: int = option(8, help="offline / online CPC: length T of the latent sequence the GRU context runs "
                                      "over (> multistep)", low=2)
    test_fraction: float = option(0.25, help="offline: share of the episodes held out for the probe / BC "
                                             "evaluation split", low=0, high=1, low_open=True, high_open=True)
    bc_epochs: int = option(30, help="offline evaluate: epochs of the behaviour-cloning head on frozen features",
                            low=1, model=False)
    bc_episodes: int = option(5, help="offline evaluate: environment episodes to measure the BC policy's return",
                              low=1, model=False)
    max_episodes: int | None = option(None, help="offline: use at most this many episodes of each data set",
                                      low=4)
    checkpoint_every: int = option(200, help="offline: pre-training steps between checkpoints", low=1,
                                   model=False)
    # online DrQ-v2 (+ TACO / CPC)
    aux: list[str] = option(["none", "taco"], help="online: the agents to train and compare, by auxiliary loss: "
                                                   "none (DrQ-v2, the baseline), taco, cpc", choices=AUX,
                            model=False)
    frames: int = option(100_000, help="online: environment frames to train for (agent steps x action repeat; "
                                       "raising it on a re-run continues training)", low=1, model=False)
    frame_stack: int = option(3, help="online: frames per observation (DrQ-v2: 3)", low=1)
    action_repeat: int = option(2, help="online: action repeat (DrQ-v2: 2)", low=1)
    eval_every_frames: int = option(10_000, help="online: frames between evaluations (learning-curve points)",
                                    low=1, model=False)
    eval_episodes: int = option(10, help="online: evaluation episodes per learning-curve point and of the final "
                                         "return", low=1, model=False)
    probe_episodes: int = option(10, help="online evaluate: episodes of the trained policy whose latent states "
                                          "feed the state probe (the probe is not reported below 5)", low=1,
                                 model=False)
    checkpoint_every_frames: int = option(10_000, help="online: frames between checkpoints (one is also written "
                                                       "when training stops)", low=1, model=False)
    replay_capacity: int = option(1_000_000, help="online: replay capacity in stored frames (84x84 RGB: 21.2 GB "
                                                  "per million)", low=1)
    score_only: bool = option(False, help="online run / sweep: score the agents as they are, without training "
                                          "them further (e.g. after fits capped by --max-minutes)", model=False)
    # agent hyperparameters (see apps.rl.agent.AgentConfig)
    batch_size: int = option(256, help="online: agent batch size (DrQ-v2 256; TACO's code silently uses 1024: "
                                       "an explicit choice here)", low=2)
    lr: float = option(1e-4, help="Adam learning rate (agent and auxiliary losses; offline pre-training uses 10x "
                                  "this)", low=0, low_open=True)
    feature_dim: int = option(50, help="latent state size z (trunk / state projection)", low=1)
    hidden_dim: int = option(1024, help="MLP width of actor, critic and TACO heads", low=1)
    nstep: int = option(3, help="n of the n-step return", low=1)
    gamma: float = option(0.99, help="discount", low=0, high=1, low_open=True)
    multistep: int = option(3, help="TACO's K (latent action sequence length) and CPC's prediction steps", low=1)
    std_duration: int = option(100_000, help="online: agent steps of the linear exploration-std schedule "
                                             "1.0 -> 0.1", low=1)
    num_expl_steps: int = option(2000, help="online: agent steps of uniform random actions before the policy "
                                            "acts (and updates start)", low=0)
    update_every_steps: int = option(2, help="online: agent steps between updates (DrQ-v2: 2)", low=1)
    curl: bool = option(True, help="TACO: include the CURL term")
    reward_prediction: bool = option(True, help="TACO: include the reward-prediction term")
    latent_action_critic: bool = option(True, help="TACO: feed the latent action g(a_t) to the critic instead "
                                                   "of a_t")

    @classmethod
    def quick(cls) -> RLSettings:
        """Offline: Pendulum rollouts, short TACO / CPC pre-training and BC (< 2 min on 2 CPU cores). With
        ``--env Pendulum-v1``: a few hundred environment steps of two small online agents."""
        return cls(data="pendulum", pretrain_steps=100, pretrain_batch_size=48, image_size=48, bc_epochs=15,
                   bc_episodes=2, cpc_seq_len=5, checkpoint_every=50, max_episodes=16, frames=600,
                   eval_every_frames=300, eval_episodes=1, probe_episodes=5, checkpoint_every_frames=200,
                   batch_size=32, num_expl_steps=100, update_every_steps=4, hidden_dim=256, std_duration=1000)

    def check(self) -> None:
        if self.cpc_seq_len <= self.multistep:
            raise InputError(f"cpc_seq_len ({self.cpc_seq_len}) must exceed multistep K ({self.multistep}): CPC "
                             "predicts K steps ahead inside the sequence")
        if not self.methods:
            raise InputError("methods must name at least one of taco, cpc, random")
        if not self.aux:
            raise InputError("aux must name at least one of none, taco, cpc")
        if self.precision not in ("32-true", "32"):
            raise InputError(f"precision {self.precision!r}: the RL loops train in 32-bit only (32-true)")
        if self.env is not None:
            from apps.rl.envs import check_env_name

            check_env_name(self.env)


def agent_config(s: RLSettings, aux: str) -> AgentConfig:
    """The agent hyperparameters of an online run with auxiliary loss ``aux``."""
    return AgentConfig(
        feature_dim=s.feature_dim, hidden_dim=s.hidden_dim, lr=s.lr, aux_lr=s.lr, gamma=s.gamma,
        nstep=s.nstep, batch_size=s.batch_size, std_duration=s.std_duration,
        num_expl_steps=s.num_expl_steps, update_every_steps=s.update_every_steps,
        aux=aux, multistep=s.multistep, curl=s.curl,
        reward_prediction=s.reward_prediction, latent_action_critic=s.latent_action_critic)
