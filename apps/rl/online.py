"""Online DrQ-v2 (+ TACO / CPC) training on Lightning Fabric, with resumable checkpoints and evaluation.

The loop, top to bottom: act (uniform for the first ``num_expl_steps``, then the actor plus scheduled noise),
step the environment, store the newest frame in the replay buffer, update every ``update_every_steps``
steps, evaluate every ``eval_every_frames`` frames, checkpoint at every episode end (agent, optimisers, step
counters, curves, RNG states; written atomically). The replay buffer is not saved: after a resume it refills,
and updates wait until one episode is complete again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from lightning.fabric import Fabric
from tqdm.auto import tqdm

from apps.rl.agent import DrQV2Agent
from apps.rl.config import RLConfig, agent_config
from apps.rl.envs import make_env
from apps.rl.probe import state_probe_r2
from apps.rl.replay import ReplayBuffer
from core.training import seed_everything

__all__ = ["train_online", "evaluate_agent", "online_run_dir", "load_agent", "save_atomic"]


def online_run_dir(cfg: RLConfig, aux: str, seed: int) -> Path:
    return Path(cfg.run_dir) / "online" / f"{cfg.env}_{aux}_seed{seed}"


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def evaluate_agent(agent: DrQV2Agent, env, episodes: int, seed: int, collect: bool = False) -> dict:
    """Mean/std return of the deterministic policy; with ``collect``, the latent and true states it visited."""
    returns, latents, states, ep_ids, observations = [], [], [], [], []
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            obs_t = torch.as_tensor(obs)[None]
            if collect:
                observations.append(obs)
                latents.append(agent.latent_state(obs_t)[0].numpy())
                states.append(info["state"])
                ep_ids.append(ep)
            action = agent.act(obs_t, step=0, eval_mode=True)[0].numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    out = {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)), "returns": returns}
    if collect:
        out.update(latents=np.stack(latents), states=np.stack(states), episode=np.asarray(ep_ids),
                   observations=np.stack(observations))
    return out


def load_agent(path: Path) -> tuple[DrQV2Agent, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    agent = DrQV2Agent(tuple(ckpt["obs_shape"]), ckpt["action_dim"], ckpt["agent_config"])
    agent.load_state_dict(ckpt["agent"])
    return agent, ckpt


def train_online(cfg: RLConfig, aux: str, seed: int) -> Path:
    """Train one online agent; resumes from ``<run>/last.pt``. Returns the run directory."""
    run = online_run_dir(cfg, aux, seed)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({**cfg.to_dict(), "aux": aux, "seed": seed}, indent=1))
    fabric = Fabric(accelerator=cfg.accelerator, devices=1)
    seed_everything(seed)
    acfg = agent_config(cfg, aux)
    env = make_env(cfg.env, seed, frame_stack=cfg.frame_stack, action_repeat=cfg.action_repeat)
    eval_env = make_env(cfg.env, seed + 10_000, frame_stack=cfg.frame_stack, action_repeat=cfg.action_repeat)
    obs_shape, action_dim = env.observation_space.shape, env.action_space.shape[0]
    agent = DrQV2Agent(obs_shape, action_dim, acfg)
    opts = agent.make_optimizers()
    fabric.setup_module(agent)  # device placement; the loop calls the agent's methods directly
    total_steps = cfg.frames // cfg.action_repeat
    eval_every = max(cfg.eval_every_frames // cfg.action_repeat, 1)
    state = {"step": 0, "episode": 0, "updates": 0, "curve": [], "train_returns": [], "seconds": 0.0}
    ckpt_path = run / "last.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        agent.load_state_dict(ckpt["agent"])
        for name, opt in opts.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        state = ckpt["state"]
        torch.set_rng_state(ckpt["torch_rng"])
        print(f"[rl] resumed {run} at agent step {state['step']} (episode {state['episode']}); "
              "the replay buffer refills")
    seq_len = cfg.cpc_seq_len if aux == "cpc" else 0
    frame_stack = cfg.frame_stack if len(obs_shape) == 3 else 1  # state tasks are not stacked
    buffer = ReplayBuffer(cfg.replay_capacity, frame_stack, acfg.nstep, acfg.gamma, multistep=acfg.multistep,
                          seq_len=seq_len, seed=seed + state["episode"])

    def checkpoint() -> None:
        save_atomic({"agent": agent.state_dict(), "optimizers": {k: o.state_dict() for k, o in opts.items()},
                     "state": state, "torch_rng": torch.get_rng_state(), "obs_shape": obs_shape,
                     "action_dim": action_dim, "agent_config": acfg, "env": cfg.env, "aux": aux, "seed": seed},
                    ckpt_path)

    def evaluate_now() -> None:
        ev = evaluate_agent(agent, eval_env, cfg.eval_episodes, seed=seed + 20_000)
        state["curve"].append({"frames": state["step"] * cfg.action_repeat, "return_mean": ev["return_mean"],
                               "return_std": ev["return_std"], "seconds": state["seconds"]})

    obs, info = env.reset(seed=seed + state["episode"])
    buffer.start_episode(info["frame"])
    ep_return, t_last = 0.0, time.perf_counter()
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"{cfg.env} {aux} seed {seed}", unit="step",
               disable=not cfg.progress)
    if not state["curve"]:
        evaluate_now()
    deadline = None if cfg.max_minutes is None else time.perf_counter() + 60 * cfg.max_minutes
    while state["step"] < total_steps:
        if deadline is not None and time.perf_counter() > deadline:
            print(f"[rl] {run}: max_minutes={cfg.max_minutes} reached at agent step {state['step']} "
                  f"({state['step'] * cfg.action_repeat} frames); stopping")
            evaluate_now()
            break
        action = agent.act(torch.as_tensor(obs)[None], state["step"], eval_mode=False)[0].numpy()
        obs, reward, terminated, truncated, info = env.step(action)
        buffer.add(action, reward, 0.0 if terminated else 1.0, info["frame"])
        ep_return += float(reward)
        state["step"] += 1
        bar.update(1)
        if (state["step"] >= acfg.num_expl_steps and state["step"] % acfg.update_every_steps == 0
                and len(buffer) > 0):
            metrics = agent.update(buffer.sample(acfg.batch_size), state["step"], opts, backward=fabric.backward)
            state["updates"] += 1
            bar.set_postfix(critic=f"{metrics['critic_loss']:.3f}", ret=f"{ep_return:.0f}")
        if state["step"] % eval_every == 0 or state["step"] == total_steps:
            now = time.perf_counter()
            state["seconds"] += now - t_last
            t_last = now
            evaluate_now()
            t_last = time.perf_counter()  # evaluation time is not training time
        if terminated or truncated:
            buffer.end_episode()
            state["train_returns"].append({"frames": state["step"] * cfg.action_repeat, "return": ep_return})
            state["episode"] += 1
            now = time.perf_counter()
            state["seconds"] += now - t_last
            t_last = now
            checkpoint()
            obs, info = env.reset(seed=seed + state["episode"])
            buffer.start_episode(info["frame"])
            ep_return = 0.0
    bar.close()
    state["seconds"] += time.perf_counter() - t_last
    checkpoint()
    (run / "curve.json").write_text(json.dumps({"curve": state["curve"], "train_returns": state["train_returns"],
                                                "seconds": state["seconds"], "updates": state["updates"],
                                                "agent_steps": state["step"]}, indent=1))
    return run


def score_online(cfg: RLConfig, run: Path) -> dict:
    """Final evaluation of a trained run: returns, state probe of its latent state vs a random encoder."""
    agent, ckpt = load_agent(run / "last.pt")
    env = make_env(ckpt["env"], ckpt["seed"] + 30_000, frame_stack=cfg.frame_stack, action_repeat=cfg.action_repeat)
    ev = evaluate_agent(agent, env, cfg.eval_episodes, seed=ckpt["seed"] + 40_000, collect=True)
    probe = state_probe_r2(ev["latents"], ev["states"], ev["episode"])
    rand = DrQV2Agent(tuple(ckpt["obs_shape"]), ckpt["action_dim"],
                      dataclasses.replace(ckpt["agent_config"], aux="none"))
    rand_latents = np.concatenate([rand.latent_state(torch.as_tensor(o)).numpy()
                                   for o in np.array_split(ev["observations"], max(len(ev["observations"]) // 256, 1))])
    probe_rand = state_probe_r2(rand_latents, ev["states"], ev["episode"])
    state = ckpt["state"]
    return {"return_mean": ev["return_mean"], "return_std": ev["return_std"],
            "env_steps": state["step"] * cfg.action_repeat, "agent_steps": state["step"],
            "state_probe_r2": probe["r2"], "state_probe_r2_random_encoder": probe_rand["r2"],
            "train_seconds": state["seconds"],
            "env_steps_per_second": state["step"] * cfg.action_repeat / max(state["seconds"], 1e-9),
            "curve": state["curve"], "train_returns": state["train_returns"]}

