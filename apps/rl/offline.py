"""Offline representation learning on trajectory datasets: TACO or CPC pre-training, then probes.

Pipeline for one ``.npz`` of rollouts: render the states to grayscale frames (or use the file's images),
store every episode once in a :class:`ReplayBuffer` (frames uint8, stack of 3 rebuilt at sampling time),
split episodes into train / held-out, pre-train the conv encoder + state projection G with the TACO loss
(InfoNCE of (z_t, u_t..u_{t+K-1}) against z_{t+K}, + CURL + reward prediction) or CPC (GRU context over
z_t..z_{t+T-1} predicting z_{t+k}), on Lightning Fabric (the runner's hardware: with ``--devices 2`` every rank
samples its own batches and the gradients are averaged), checkpointing every ``checkpoint_every`` steps to
``<run-dir>/<method>/seed<S>/<dataset>/last.pt`` (the previous one kept as ``last.prev.pt``; weights, optimiser,
step, losses, and every rank's generator states: a resumed run continues exactly).

Evaluation of each frozen encoder (TACO, CPC, and an untrained random encoder as the baseline):

* ``state_probe_r2``: ridge probe from z = G(f(o_t)) to the true state (CartPole: x, x-dot, theta, theta-dot;
  Pendulum: cos, sin, theta-dot) fitted on training episodes, scored on held-out ones;
* ``bc_return``: a behaviour-cloning head (MLP on the frozen z; cross-entropy for discrete actions, MSE for
  continuous) trained on the training episodes, then rolled out in the gymnasium task (CartPole-v1 /
  Pendulum-v1) from rendered frames; mean return over ``bc_episodes`` episodes. The dataset's own return
  (the expert) is given for reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from apps.rl.agent import AgentConfig, CPCHead, Encoder, TACOHead, random_shift
from apps.rl.checkpoints import (
    all_agree,
    average_gradients,
    check_in_sync,
    gather_to_main,
    load_newest_intact,
    save_rotating,
)
from apps.rl.data import Rollouts, render_states
from apps.rl.probe import state_probe_r2
from apps.rl.replay import ReplayBuffer
from core.app import CheckpointError, InputError, Run
from core.app.hardware import global_rank, note_deadline_stop
from core.negatives.distributed import world_size
from core.training import seed_everything
from core.training.rng import capture_rng_state, restore_rng_state, seed_all, step_seed

__all__ = ["OfflineData", "prepare_offline", "RepresentationModel", "pretrain", "load_encoder", "features",
           "train_bc", "bc_return", "evaluate_encoder", "encoder_dir"]

FRAME_STACK = 3


@dataclass
class OfflineData:
    rollouts: Rollouts
    train: ReplayBuffer      # training episodes (pre-training samples come from here)
    train_ids: list[int]
    test_ids: list[int]
    frames: list[np.ndarray]  # per episode (L+1, 1, S, S) uint8


def encoder_dir(run: Run, method: str, dataset: str) -> Path:
    """``<run-dir>/<method>/seed<S>/<dataset>``."""
    return run.run_dir.method_dir(method) / dataset


def prepare_offline(rollouts: Rollouts, image_size: int, test_fraction: float, multistep: int, nstep: int,
                    gamma: float, seq_len: int, seed: int) -> OfflineData:
    """Render every episode, split the episodes (seeded) and fill the training buffer."""
    frames = [ep.frames if ep.frames is not None else render_states(ep.states, rollouts.task, image_size)
              for ep in rollouts.episodes]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rollouts.episodes))
    n_test = max(1, int(round(test_fraction * len(order))))
    test_ids, train_ids = sorted(order[:n_test].tolist()), sorted(order[n_test:].tolist())
    if not train_ids:
        raise InputError(f"{rollouts.path}: {len(order)} episode(s) leave none for training after the held-out split")
    buf = ReplayBuffer(10**9, FRAME_STACK, nstep, gamma, multistep=multistep, seq_len=seq_len, seed=seed)
    for i in train_ids:
        ep = rollouts.episodes[i]
        discounts = np.ones(len(ep.actions), np.float32)
        if ep.terminal and rollouts.task != "pendulum":  # pendulum episodes end by time limit only
            discounts[-1] = 0.0
        buf.add_episode(frames[i], ep.actions, ep.rewards, discounts)
    if len(buf) == 0:
        raise InputError(f"{rollouts.path}: training episodes are shorter than the sampling horizon "
                         f"({buf.horizon} steps)")
    return OfflineData(rollouts, buf, train_ids, test_ids, frames)


class RepresentationModel(nn.Module):
    """Conv encoder f + the auxiliary head (TACO or CPC, each with its state projection G); z = G(f(o))."""

    def __init__(self, method: str, in_channels: int, image_size: int, action_dim: int, acfg: AgentConfig) -> None:
        super().__init__()
        self.method = method
        self.encoder = Encoder(in_channels, image_size)
        if method == "cpc":
            self.head: nn.Module = CPCHead(self.encoder.repr_dim, acfg)
        else:  # "taco" and "random" (the random baseline is an untrained TACO model)
            self.head = TACOHead(self.encoder.repr_dim, action_dim, acfg)

    @torch.no_grad()
    def latent(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head.state_projection(self.encoder(obs.float()))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.method == "cpc":
            seq = batch["obs_seq"].float()
            B, T = seq.shape[:2]
            return self.head.loss(self.encoder(random_shift(seq.flatten(0, 1))).view(B, T, -1))
        obs = batch["obs"].float()
        h1 = self.encoder(random_shift(obs))
        with torch.no_grad():  # keys: CURL's second view and o_{t+K}
            h2 = self.encoder(random_shift(obs))
            hK = self.encoder(random_shift(batch["obs_k"].float()))
        return self.head.loss(h1, h2, hK, batch["action_seq"], batch["reward"])


def _acfg(cfg) -> AgentConfig:
    return AgentConfig(feature_dim=cfg.feature_dim, hidden_dim=min(cfg.hidden_dim, 256), multistep=cfg.multistep,
                       nstep=cfg.nstep, gamma=cfg.gamma, curl=cfg.curl, reward_prediction=cfg.reward_prediction,
                       cpc_context_dim=cfg.feature_dim)


def build_model(method: str, data: OfflineData, cfg) -> RepresentationModel:
    size = data.frames[0].shape[-1]
    return RepresentationModel(method, data.frames[0].shape[1] * FRAME_STACK, size, data.rollouts.action_dim,
                               _acfg(cfg))


def _check_checkpoint(ck: Any) -> None:
    if not isinstance(ck, dict) or ck.get("format") != 1 or "model" not in ck:
        raise CheckpointError("not a checkpoint of this app's offline pre-training")


def pretrain(run: Run, fabric: Any, method: str, data: OfflineData) -> None:
    """Pre-train ``method`` on ``data`` for ``pretrain_steps`` (resuming from its checkpoint)."""
    s = run.settings
    out = encoder_dir(run, method, data.rollouts.name)
    r, w = global_rank(), world_size()
    seed_everything(s.seed)  # the same initial weights on every rank (and as the random baseline)
    model = build_model(method, data, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr * 10)
    _, fopt = run.hardware.setup_module(fabric, model, opt)
    average_gradients(opt)
    step, losses = 0, []
    found = load_newest_intact(out / "last.pt", check=_check_checkpoint)
    if found is not None:
        ck, path = found
        if len(ck["ranks"]) != w:
            raise InputError(f"{path} was written by {len(ck['ranks'])} process(es); resume it with as many "
                             f"(--devices x --num-nodes), not {w}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, losses = int(ck["step"]), ck["losses"].tolist()
        data.train.set_rng_state(ck["ranks"][r]["replay_rng"])
        restore_rng_state(ck["ranks"][r]["rng"])
        if step < s.pretrain_steps:
            run.log(f"resuming {method} pre-training on {data.rollouts.name} at step {step}")
    else:
        data.train.rng = np.random.default_rng([s.seed, r])  # every rank samples its own batches
        seed_all(step_seed(s.seed, 0, r))

    def save() -> None:
        parts = gather_to_main({"rng": capture_rng_state(), "replay_rng": data.train.rng_state()})
        if parts is not None:
            save_rotating(out / "last.pt", {"format": 1, "method": method, "dataset": data.rollouts.name,
                                            "model": model.state_dict(), "optimizer": opt.state_dict(),
                                            "step": step, "losses": torch.tensor(losses, dtype=torch.float64),
                                            "ranks": parts})

    bar = tqdm(total=s.pretrain_steps, initial=min(step, s.pretrain_steps), desc=f"{data.rollouts.name} {method}",
               disable=not (s.progress and r == 0))
    # CPC: a quarter as many sequences (each of cpc_seq_len steps, all B*T latents are candidates)
    batch_size = s.pretrain_batch_size if method == "taco" else max(2, s.pretrain_batch_size // 4)
    stopped = False
    while step < s.pretrain_steps:
        if run.hardware.deadline is not None and all_agree(run.hardware.remaining_seconds() <= 0, fabric.device,
                                                           "any"):
            run.log(f"{method}: --max-minutes reached at pre-training step {step}; checkpointed, re-run to continue")
            stopped = True
            note_deadline_stop()
            break
        batch = {k: v.to(fabric.device) for k, v in data.train.sample(batch_size, seq=method == "cpc").items()}
        loss, parts = model.loss(batch)
        fopt.zero_grad(set_to_none=True)
        fabric.backward(loss)
        fopt.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        if step % s.checkpoint_every == 0 or step == s.pretrain_steps:
            save()
    bar.close()
    check_in_sync(model, f"{method} pre-training on {data.rollouts.name}")
    if stopped:
        save()


def load_encoder(run: Run, method: str, data: OfflineData) -> tuple[RepresentationModel, dict]:
    """The frozen encoder of ``method`` on ``data`` (the random baseline: the untrained model) on the CPU, and
    ``{"step": ..., "losses": [...]}`` of its pre-training."""
    s = run.settings
    seed_everything(s.seed)
    model = build_model(method, data, s)
    if method == "random":
        return model.eval(), {"step": 0, "losses": []}
    out = encoder_dir(run, method, data.rollouts.name)
    found = load_newest_intact(out / "last.pt", check=_check_checkpoint)
    if found is None:
        raise InputError(f"no pre-trained {method} encoder for {data.rollouts.name} in {out}: run `python -m "
                         "apps.rl fit` with the same options first")
    model.load_state_dict(found[0]["model"])
    return model.eval(), {"step": int(found[0]["step"]), "losses": found[0]["losses"].tolist()}


def stacks(frames: np.ndarray) -> np.ndarray:
    """All frame stacks of an episode, (L+1, 3C, S, S): frame t-2, t-1, t (clamped at 0)."""
    idx = np.clip(np.arange(len(frames))[:, None] + np.arange(-FRAME_STACK + 1, 1)[None], 0, None)
    return frames[idx].reshape(len(frames), -1, *frames.shape[2:])


def features(model: RepresentationModel, data: OfflineData, ids: list[int]) -> tuple[np.ndarray, ...]:
    """(z, true state, action, episode id) of every step t < L of the given episodes."""
    zs, st, ac, g = [], [], [], []
    for i in ids:
        ep, fr = data.rollouts.episodes[i], stacks(data.frames[i])[:-1]
        zs.append(np.concatenate([model.latent(torch.from_numpy(c)).numpy() for c in np.array_split(
            fr, max(len(fr) // 512, 1))]))
        st.append(ep.states[:-1])
        ac.append(ep.actions)
        g.append(np.full(len(fr), i))
    return np.concatenate(zs), np.concatenate(st), np.concatenate(ac), np.concatenate(g)


def train_bc(z: np.ndarray, actions: np.ndarray, discrete: bool, epochs: int, seed: int) -> nn.Module:
    """Behaviour cloning on frozen features: MLP(z) -> logits (discrete, CE) or action (continuous, MSE)."""
    torch.manual_seed(seed)
    mean, std = z.mean(0), z.std(0) + 1e-6
    head = nn.Sequential(nn.Linear(z.shape[1], 256), nn.ReLU(), nn.Linear(256, actions.shape[1]))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    x = torch.from_numpy((z - mean) / std).float()
    y = torch.from_numpy(actions.argmax(1) if discrete else actions).to(torch.long if discrete else torch.float32)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(256):
            out = head(x[idx])
            loss = F.cross_entropy(out, y[idx]) if discrete else F.mse_loss(out, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    head.register_buffer("mean", torch.from_numpy(mean).float())
    head.register_buffer("std", torch.from_numpy(std).float())
    return head.eval()


@torch.no_grad()
def bc_return(model: RepresentationModel, head: nn.Module, rollouts: Rollouts, image_size: int, episodes: int,
              seed: int) -> list[float]:
    """Roll the BC policy out in CartPole-v1 / Pendulum-v1 from rendered frames; per-episode returns."""
    env = gym.make({"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1"}[rollouts.task])
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        frames = [render_states(obs[None], rollouts.task, image_size)[0]] * FRAME_STACK
        done, total = False, 0.0
        while not done:
            o = torch.from_numpy(np.concatenate(frames[-FRAME_STACK:]))[None]
            out = head((model.latent(o) - head.mean) / head.std)[0]
            action = int(out.argmax()) if rollouts.discrete else out.numpy().astype(np.float32)
            obs, r, terminated, truncated, _ = env.step(action)
            total += float(r)
            done = terminated or truncated
            frames.append(render_states(obs[None], rollouts.task, image_size)[0])
        returns.append(total)
    env.close()
    return returns


def evaluate_encoder(s: Any, model: RepresentationModel, data: OfflineData) -> dict:
    """State probe (fit on the training episodes, scored on the held-out ones) and behaviour-cloning return of
    one frozen encoder."""
    rollouts = data.rollouts
    z_tr, s_tr, a_tr, g_tr = features(model, data, data.train_ids)
    z_te, s_te, _, g_te = features(model, data, data.test_ids)
    probe = state_probe_r2(np.concatenate([z_tr, z_te]), np.concatenate([s_tr, s_te]),
                           np.concatenate([g_tr, g_te]),
                           test_mask=np.concatenate([np.zeros(len(g_tr), bool), np.ones(len(g_te), bool)]))
    res: dict[str, Any] = {"state_probe_r2": probe["r2"], "state_probe_r2_per_dim": probe["per_dim"],
                           "probe_refused": probe.get("refused")}
    if rollouts.task is not None:
        head = train_bc(z_tr, a_tr, rollouts.discrete, s.bc_epochs, s.seed)
        rets = bc_return(model, head, rollouts, s.image_size, s.bc_episodes, s.seed + 1000)
        res.update(bc_return_mean=float(np.mean(rets)), bc_return_std=float(np.std(rets)), bc_returns=rets)
    return res
