"""Offline representation learning on trajectory datasets: TACO or CPC pre-training, then probes.

Pipeline for one ``.npz`` of rollouts: render the states to grayscale frames (or use the file's images),
store every episode once in a :class:`ReplayBuffer` (frames uint8, stack of 3 rebuilt at sampling time),
split episodes into train / held-out, pre-train the conv encoder + state projection G with the TACO loss
(InfoNCE of (z_t, u_t..u_{t+K-1}) against z_{t+K}, + CURL + reward prediction) or CPC (GRU context over
z_t..z_{t+T-1} predicting z_{t+k}), on Lightning Fabric, checkpointing atomically (an interrupted run resumes).

Evaluation of each frozen encoder (TACO, CPC, and an untrained random encoder as the baseline):

* ``state_probe_r2``: ridge probe from z = G(f(o_t)) to the true state (CartPole: x, x-dot, theta, theta-dot;
  Pendulum: cos, sin, theta-dot) fitted on training episodes, scored on held-out ones;
* ``bc_return``: a behaviour-cloning head (MLP on the frozen z; cross-entropy for discrete actions, MSE for
  continuous) trained on the training episodes, then rolled out in the gymnasium task (CartPole-v1 /
  Pendulum-v1) from rendered frames; mean return over ``bc_episodes`` episodes. The dataset's own return
  (the expert) is given for reference.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn
from tqdm.auto import tqdm

from apps.rl.agent import AgentConfig, CPCHead, Encoder, TACOHead, random_shift
from apps.rl.data import Rollouts, render_states
from apps.rl.probe import state_probe_r2
from apps.rl.replay import ReplayBuffer
from core.training import seed_everything

__all__ = ["OfflineData", "prepare_offline", "RepresentationModel", "pretrain", "features", "train_bc",
           "bc_return", "evaluate_offline", "offline_dir"]

FRAME_STACK = 3


@dataclass
class OfflineData:
    rollouts: Rollouts
    train: ReplayBuffer      # training episodes (pre-training samples come from here)
    train_ids: list[int]
    test_ids: list[int]
    frames: list[np.ndarray]  # per episode (L+1, 1, S, S) uint8


def offline_dir(run_dir: str, name: str) -> Path:
    return Path(run_dir) / "offline" / name


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
        raise ValueError(f"{rollouts.path}: {len(order)} episode(s) leave none for training after the held-out split")
    buf = ReplayBuffer(10**9, FRAME_STACK, nstep, gamma, multistep=multistep, seq_len=seq_len, seed=seed)
    for i in train_ids:
        ep = rollouts.episodes[i]
        discounts = np.ones(len(ep.actions), np.float32)
        if ep.terminal and rollouts.task != "pendulum":  # pendulum episodes end by time limit only
            discounts[-1] = 0.0
        buf.add_episode(frames[i], ep.actions, ep.rewards, discounts)
    if len(buf) == 0:
        raise ValueError(f"{rollouts.path}: training episodes are shorter than the sampling horizon "
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


def pretrain(method: str, data: OfflineData, cfg, out: Path) -> RepresentationModel:
    """Pre-train (resuming from ``out/<method>.pt``); ``method='random'`` returns the untrained model."""
    seed_everything(cfg.seed)
    model = build_model(method, data, cfg)
    if method == "random":
        return model.eval()
    out.mkdir(parents=True, exist_ok=True)
    fabric = Fabric(accelerator="cpu", devices=1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr * 10)
    model, opt = fabric.setup(model, opt)
    ckpt_path = out / f"{method}.pt"
    state = {"step": 0, "losses": []}
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        data.train.rng = np.random.default_rng(cfg.seed + state["step"])
        torch.set_rng_state(ckpt["torch_rng"])
        if state["step"] < cfg.pretrain_steps:
            print(f"[rl] resuming {method} pre-training at step {state['step']}")

    def save() -> None:
        tmp = ckpt_path.with_suffix(".pt.tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                    "torch_rng": torch.get_rng_state(), "method": method}, tmp)
        tmp.replace(ckpt_path)

    bar = tqdm(total=cfg.pretrain_steps, initial=state["step"], desc=f"{data.rollouts.name} {method}",
               disable=not cfg.progress)
    while state["step"] < cfg.pretrain_steps:
        # CPC: a quarter as many sequences (each of cpc_seq_len steps, all B*T latents are candidates)
        batch = cfg.pretrain_batch_size if method == "taco" else max(2, cfg.pretrain_batch_size // 4)
        loss, parts = model.loss(data.train.sample(batch))
        opt.zero_grad(set_to_none=True)
        fabric.backward(loss)
        opt.step()
        state["step"] += 1
        state["losses"].append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.pretrain_steps:
            save()
    bar.close()
    raw = model.module if hasattr(model, "module") else model
    return raw.eval()


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


def evaluate_offline(cfg, rollouts: Rollouts, methods: list[str], out: Path) -> dict:
    """Pre-train every method (resuming), then probe + BC each frozen encoder; returns per-method metrics."""
    seq_len = cfg.cpc_seq_len if "cpc" in methods else 0
    data = prepare_offline(rollouts, cfg.image_size, cfg.test_fraction, cfg.multistep, cfg.nstep, cfg.gamma,
                           seq_len, cfg.seed)
    results = {}
    for method in methods:
        t0 = time.perf_counter()
        model = pretrain(method, data, cfg, out)
        seconds = time.perf_counter() - t0
        z_tr, s_tr, a_tr, g_tr = features(model, data, data.train_ids)
        z_te, s_te, _, g_te = features(model, data, data.test_ids)
        # probe: fit on training episodes, score on the held-out ones (split_by_group holds out the last ids)
        probe = state_probe_r2(np.concatenate([z_tr, z_te]), np.concatenate([s_tr, s_te]),
                               np.concatenate([np.zeros(len(g_tr)), np.ones(len(g_te))]), test_fraction=0.5)
        res = {"state_probe_r2": probe["r2"], "state_probe_r2_per_dim": probe["per_dim"],
               "pretrain_seconds": seconds}
        if rollouts.task is not None:
            head = train_bc(z_tr, a_tr, rollouts.discrete, cfg.bc_epochs, cfg.seed)
            rets = bc_return(model, head, rollouts, cfg.image_size, cfg.bc_episodes, cfg.seed + 1000)
            res.update(bc_return_mean=float(np.mean(rets)), bc_return_std=float(np.std(rets)), bc_returns=rets)
        if method != "random":
            ck = torch.load(out / f"{method}.pt", map_location="cpu", weights_only=False)
            res["loss_curve"] = ck["state"]["losses"]
        results[method] = res
    results["_dataset"] = {"episodes": len(rollouts.episodes), "steps": rollouts.steps,
                           "train_episodes": len(data.train_ids), "test_episodes": len(data.test_ids),
                           "expert_return": float(np.mean([e.rewards.sum() for e in rollouts.episodes])),
                           "task": rollouts.task, "discrete": rollouts.discrete}
    (out / "results.json").write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "loss_curve"}
                                                  for k, v in results.items()}, indent=1))
    return results
