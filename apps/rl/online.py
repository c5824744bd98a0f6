"""Online DrQ-v2 (+ TACO / CPC) training on Lightning Fabric, resumable exactly, and its final scoring.

The loop, per agent step: act (uniform for the first ``num_expl_steps``, then the actor plus scheduled noise),
step the environment, record the newest frame in the replay buffer, update every ``update_every_steps`` steps,
evaluate every ``eval_every_frames`` frames, begin a new episode where one ends, checkpoint every
``checkpoint_every_frames`` frames and when training stops (``--frames`` reached or ``--max-minutes``).

With several processes (``--devices 2``) every rank steps its own environment (seeded by rank) into its own
replay buffer and samples its own batches; the gradients are averaged over the ranks before every optimiser step
(:func:`apps.rl.checkpoints.average_gradients`), so the agents stay identical. Only the main process evaluates
and writes.

Checkpoint ``<run-dir>/<agent>/seed<S>/last.pt`` (the previous one kept as ``last.prev.pt``; tensors and plain
values only): agent weights, optimiser states, counters and curves, and per rank the python / numpy / torch
generator states, the replay buffer's sampling generator, the ids of its stored episodes (each episode is
written once, to ``replay/rank<R>/<id>.pt``), the episode being recorded and the episode counter. A resume
rebuilds the environment mid-episode by resetting it with the episode's seed and replaying the recorded actions
(checked frame by frame), so a resumed run computes exactly what the uninterrupted run computes.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from apps.rl.agent import AgentConfig, DrQV2Agent
from apps.rl.checkpoints import (
    all_agree,
    average_gradients,
    check_in_sync,
    gather_to_main,
    load_newest_intact,
    save_rotating,
)
from apps.rl.envs import make_env
from apps.rl.probe import state_probe_r2
from apps.rl.replay import ReplayBuffer
from apps.rl.settings import AGENT_NAMES, RLSettings, agent_config
from core.app import CheckpointError, InputError, Run, load_torch, save_torch, write_json
from core.app.hardware import global_rank, note_deadline_stop
from core.negatives.distributed import world_size
from core.training import seed_everything
from core.training.rng import capture_rng_state, restore_rng_state, seed_all, step_seed

__all__ = ["train_agent", "evaluate_agent", "agent_dir", "load_agent", "score_agent", "episode_seed"]

RANK_SEED_STRIDE = 1_000_000  # environment seeds of rank r: seed + r * stride + episode
CURVE_ENV_SEED, CURVE_EPISODE_SEED = 10_000, 20_000  # evaluations during training
SCORE_ENV_SEED, SCORE_EPISODE_SEED = 30_000, 40_000  # the final scoring


def agent_dir(run: Run, aux: str, seed: int | None = None) -> Path:
    """``<run-dir>/<agent>/seed<S>``: drqv2, drqv2+taco or drqv2+cpc."""
    return run.run_dir.method_dir(AGENT_NAMES[aux], seed)


def episode_seed(seed: int, rank_: int, episode: int) -> int:
    return seed + RANK_SEED_STRIDE * rank_ + episode


def _env(s: RLSettings, seed: int):
    return make_env(s.env, seed, frame_stack=s.frame_stack, action_repeat=s.action_repeat)


@torch.no_grad()
def evaluate_agent(agent: DrQV2Agent, env, episodes: int, seed: int,
                   probe_agents: tuple[DrQV2Agent, ...] = ()) -> dict:
    """Returns of the deterministic policy over ``episodes`` episodes; with ``probe_agents``, the latent states
    each of them gives the visited observations, the true states and the episode of every step."""
    returns: list[float] = []
    latents: list[list[np.ndarray]] = [[] for _ in probe_agents]
    states, ep_ids = [], []
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            obs_t = torch.as_tensor(obs)[None]
            for i, a in enumerate(probe_agents):
                latents[i].append(a.latent_state(obs_t)[0].numpy())
            if probe_agents:
                states.append(info["state"])
                ep_ids.append(ep)
            action = agent.act(obs_t, step=0, eval_mode=True)[0].numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    out: dict[str, Any] = {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
                           "returns": returns}
    if probe_agents:
        out.update(latents=[np.stack(z) for z in latents], states=np.stack(states), episode=np.asarray(ep_ids))
    return out


# ---- checkpoints --------------------------------------------------------------------------------------------
def _replay_dir(out: Path, rank_: int) -> Path:
    return out / "replay" / f"rank{rank_}"


def _episode_file(out: Path, rank_: int, ep_id: int) -> Path:
    return _replay_dir(out, rank_) / f"{ep_id:07d}.pt"


def _check_files(out: Path):
    def check(ck: Any) -> None:
        if not isinstance(ck, dict) or ck.get("format") != 1 or "ranks" not in ck:
            raise CheckpointError(f"{out / 'last.pt'} is not a checkpoint of this app's online loop")
        for r, part in enumerate(ck["ranks"]):
            missing = [i for i in part["replay_ids"] if not _episode_file(out, r, i).is_file()]
            if missing:
                raise CheckpointError(f"{_episode_file(out, r, missing[0])} (replay episode of the checkpoint) is "
                                      "missing")
    return check


def _collect_garbage(out: Path, keep: list[set[int]]) -> None:
    """Delete the replay episode files that neither the new nor the previous checkpoint lists."""
    for r, ids in enumerate(keep):
        folder = _replay_dir(out, r)
        if not folder.is_dir():
            continue
        for f in folder.glob("*.pt"):
            m = re.fullmatch(r"(\d+)\.pt", f.name)
            if m and int(m.group(1)) not in ids:
                f.unlink(missing_ok=True)


def load_agent(path: Path) -> tuple[DrQV2Agent, dict]:
    """The agent of an online checkpoint (or of its previous version if it is damaged), on the CPU."""
    found = load_newest_intact(path)
    if found is None:
        raise InputError(f"no trained agent at {path}")
    ck = found[0]
    meta = ck["meta"]
    agent = DrQV2Agent(tuple(meta["obs_shape"]), meta["action_dim"], AgentConfig(**meta["agent_config"]))
    agent.load_state_dict(ck["agent"])
    return agent.eval(), ck


# ---- training -----------------------------------------------------------------------------------------------
def train_agent(run: Run, fabric: Any, aux: str) -> Path:
    """Train (or resume) the online agent with auxiliary loss ``aux`` for ``--frames``; returns its folder."""
    s: RLSettings = run.settings
    out = agent_dir(run, aux)
    r, w = global_rank(), world_size()
    main = r == 0
    device = fabric.device
    acfg = agent_config(s, aux)
    env = _env(s, episode_seed(s.seed, r, 0))
    eval_env = _env(s, s.seed + CURVE_ENV_SEED) if main else None
    obs_shape, action_dim = tuple(int(n) for n in env.observation_space.shape), int(env.action_space.shape[0])
    meta = {"env": s.env, "aux": aux, "seed": s.seed, "obs_shape": list(obs_shape), "action_dim": action_dim,
            "agent_config": dataclasses.asdict(acfg), "frame_stack": s.frame_stack,
            "action_repeat": s.action_repeat}

    seed_everything(s.seed)  # the same initial weights on every rank
    agent = DrQV2Agent(obs_shape, action_dim, acfg)
    opts = agent.make_optimizers()
    _, *wrapped = run.hardware.setup_module(fabric, agent, *opts.values())
    fopts = dict(zip(opts, wrapped, strict=True))
    for o in opts.values():
        average_gradients(o)

    total_steps = s.frames // s.action_repeat
    eval_every = max(s.eval_every_frames // s.action_repeat, 1)
    ckpt_every = max(s.checkpoint_every_frames // s.action_repeat, 1)
    frame_stack = s.frame_stack if len(obs_shape) == 3 else 1  # state tasks are not stacked
    buffer = ReplayBuffer(s.replay_capacity, frame_stack, acfg.nstep, acfg.gamma, multistep=acfg.multistep,
                          seq_len=s.cpc_seq_len if aux == "cpc" else 0, seed=[s.seed, r])
    counters: dict[str, Any] = {"step": 0, "updates": 0, "seconds": 0.0}
    curve: list[dict] = []
    train_returns: list[dict] = []
    mine = {"episode": 0, "ep_return": 0.0}
    unsaved: set[int] = set()
    kept: list[set[int]] = [set() for _ in range(w)]

    def evaluate_now() -> None:
        ev = evaluate_agent(agent, eval_env, s.eval_episodes, seed=s.seed + CURVE_EPISODE_SEED)
        curve.append({"frames": counters["step"] * s.action_repeat, "return_mean": ev["return_mean"],
                      "return_std": ev["return_std"], "seconds": counters["seconds"]})

    def checkpoint() -> None:
        new = [(i, ReplayBuffer.episode_tensors(ep)) for i, ep in zip(buffer.episode_ids, buffer.episodes,
                                                                       strict=True) if i in unsaved]
        unsaved.clear()
        part = {"episode": mine["episode"], "ep_return": mine["ep_return"], "rng": capture_rng_state(),
                "replay_rng": buffer.rng_state(), "replay_ids": list(buffer.episode_ids), "next_id": buffer.next_id,
                "pending": buffer.pending()}
        gathered = gather_to_main((part, new))
        if not main:
            return
        for rk, (_, eps) in enumerate(gathered):
            for ep_id, ep in eps:
                save_torch(_episode_file(out, rk, ep_id), ep)
        ck = {"format": 1, "meta": meta, "agent": agent.state_dict(),
              "optimizers": {k: o.state_dict() for k, o in opts.items()}, "counters": dict(counters),
              "curve": curve, "train_returns": train_returns, "ranks": [g[0] for g in gathered]}
        save_rotating(out / "last.pt", ck)
        ids = [set(g[0]["replay_ids"]) for g in gathered]
        _collect_garbage(out, [a | b for a, b in zip(ids, kept, strict=True)])
        kept[:] = ids

    found = load_newest_intact(out / "last.pt", check=_check_files(out))
    if found is not None:
        ck, path = found
        if len(ck["ranks"]) != w:
            raise InputError(f"{path} was written by {len(ck['ranks'])} process(es); resume it with as many "
                             f"(--devices x --num-nodes), not {w}")
        if ck["meta"]["obs_shape"] != meta["obs_shape"] or ck["meta"]["agent_config"] != meta["agent_config"]:
            raise InputError(f"{path} holds an agent of other settings; pass another --run-dir or delete it")
        agent.load_state_dict(ck["agent"])
        for k, o in opts.items():
            o.load_state_dict(ck["optimizers"][k])
        counters.update(ck["counters"])
        curve[:], train_returns[:] = ck["curve"], ck["train_returns"]
        kept[:] = [set(p["replay_ids"]) for p in ck["ranks"]]
        part = ck["ranks"][r]
        for ep_id in part["replay_ids"]:
            buffer.store(ep_id, ReplayBuffer.episode_arrays(load_torch(_episode_file(out, r, ep_id))))
        buffer.next_id = part["next_id"]
        buffer.set_rng_state(part["replay_rng"])
        mine.update(episode=part["episode"], ep_return=part["ep_return"])
        obs = _resume_episode(run, env, buffer, part["pending"], episode_seed(s.seed, r, mine["episode"]))
        if obs is None:  # the environment did not reproduce the recorded episode: begin the next one
            ep_id = buffer.end_episode()
            if ep_id is not None:
                unsaved.add(ep_id)
            mine["episode"] += 1
            mine["ep_return"] = 0.0
            obs, info = env.reset(seed=episode_seed(s.seed, r, mine["episode"]))
            buffer.start_episode(info["frame"])
        restore_rng_state(part["rng"])
        if counters["step"] < total_steps:
            run.log(f"{AGENT_NAMES[aux]}: resumed {path.name} at agent step {counters['step']} "
                    f"({counters['step'] * s.action_repeat} frames, {counters['updates']} updates)")
    else:
        seed_all(step_seed(s.seed, 0, r))  # exploration noise and augmentation differ between ranks
        obs, info = env.reset(seed=episode_seed(s.seed, r, 0))
        buffer.start_episode(info["frame"])
        if main:
            evaluate_now()

    bar = tqdm(total=total_steps, initial=min(counters["step"], total_steps), unit="step",
               desc=f"{s.env} {AGENT_NAMES[aux]} seed {s.seed}", disable=not (s.progress and main))
    t_last = time.perf_counter()
    stopped = False
    while counters["step"] < total_steps:
        if run.hardware.deadline is not None and all_agree(run.hardware.remaining_seconds() <= 0, device, "any"):
            run.log(f"{AGENT_NAMES[aux]}: --max-minutes reached at agent step {counters['step']} "
                    f"({counters['step'] * s.action_repeat} frames); checkpointed, re-run to continue")
            stopped = True
            note_deadline_stop()
            break
        action = agent.act(torch.as_tensor(obs)[None], counters["step"], eval_mode=False)[0].numpy()
        obs, reward, terminated, truncated, info = env.step(action)
        buffer.add(action, reward, 0.0 if terminated else 1.0, info["frame"])
        mine["ep_return"] += float(reward)
        counters["step"] += 1
        step = counters["step"]
        bar.update(1)
        if (step >= acfg.num_expl_steps and step % acfg.update_every_steps == 0
                and all_agree(len(buffer) > 0, device)):
            metrics = agent.update(buffer.sample(acfg.batch_size), step, fopts, backward=fabric.backward)
            counters["updates"] += 1
            bar.set_postfix(critic=f"{metrics['critic_loss']:.3f}", ret=f"{mine['ep_return']:.0f}")
        if step % eval_every == 0 or step == total_steps:
            counters["seconds"] += time.perf_counter() - t_last
            if main:
                evaluate_now()
            t_last = time.perf_counter()  # evaluation time is not training time
        if terminated or truncated:
            unsaved.add(int(buffer.end_episode()))
            if main:
                train_returns.append({"frames": step * s.action_repeat, "return": mine["ep_return"]})
            mine["episode"] += 1
            mine["ep_return"] = 0.0
            obs, info = env.reset(seed=episode_seed(s.seed, r, mine["episode"]))
            buffer.start_episode(info["frame"])
        if step % ckpt_every == 0 or step == total_steps:
            counters["seconds"] += time.perf_counter() - t_last
            t_last = time.perf_counter()
            checkpoint()
    bar.close()
    check_in_sync(agent, f"{AGENT_NAMES[aux]} on {s.env}")
    if stopped:
        counters["seconds"] += time.perf_counter() - t_last
        if main and (not curve or curve[-1]["frames"] != counters["step"] * s.action_repeat):
            evaluate_now()  # the report states the frames reached
        checkpoint()
    write_json(out / "curve.json", {"curve": curve, "train_returns": train_returns, "seconds": counters["seconds"],
                                    "updates": counters["updates"], "agent_steps": counters["step"]})
    env.close()
    if eval_env is not None:
        eval_env.close()
    return out


def _resume_episode(run: Run, env, buffer: ReplayBuffer, pending: dict[str, torch.Tensor],
                    seed: int) -> np.ndarray | None:
    """Reset ``env`` with the recorded episode's seed and replay its actions, checking every frame; the buffer
    gets the recorded episode back. Returns the current observation, or ``None`` (with a warning) when the
    environment does not reproduce the recording."""
    buffer.set_pending(pending)
    frames = pending["frames"].numpy()
    obs, info = env.reset(seed=seed)
    same = len(frames) > 0 and np.array_equal(info["frame"], frames[0])
    for i, a in enumerate(pending["actions"].numpy()):
        if not same:
            break
        obs, _, _, _, info = env.step(a)
        same = np.array_equal(info["frame"], frames[i + 1])
    if same:
        return obs
    run.log("warning: the environment did not reproduce the recorded episode; the resumed run continues from "
            "a new episode (it is not identical to an uninterrupted run)")
    return None


# ---- scoring ------------------------------------------------------------------------------------------------
def score_agent(s: RLSettings, out: Path) -> dict:
    """Final evaluation of a trained agent: the return over ``eval_episodes`` episodes and the state probe of
    its latent state (and of an untrained agent's, on the same observations) over ``probe_episodes``."""
    agent, ck = load_agent(out / "last.pt")
    meta = ck["meta"]
    torch.manual_seed(s.seed)
    rand = DrQV2Agent(tuple(meta["obs_shape"]), meta["action_dim"],
                      dataclasses.replace(AgentConfig(**meta["agent_config"]), aux="none")).eval()
    env = _env(s, s.seed + SCORE_ENV_SEED)
    n = max(s.eval_episodes, s.probe_episodes)
    ev = evaluate_agent(agent, env, n, seed=s.seed + SCORE_EPISODE_SEED, probe_agents=(agent, rand))
    env.close()
    returns = ev["returns"][:s.eval_episodes]
    probe_eps = ev["episode"] < s.probe_episodes
    probe = state_probe_r2(ev["latents"][0][probe_eps], ev["states"][probe_eps], ev["episode"][probe_eps])
    probe_rand = state_probe_r2(ev["latents"][1][probe_eps], ev["states"][probe_eps], ev["episode"][probe_eps])
    c = ck["counters"]
    return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
            "env_steps": c["step"] * meta["action_repeat"], "agent_steps": c["step"], "updates": c["updates"],
            "state_probe_r2": probe["r2"], "state_probe_r2_random_encoder": probe_rand["r2"],
            "state_probe_r2_per_dim": probe["per_dim"], "probe_refused": probe.get("refused"),
            "train_seconds": c["seconds"],
            "env_steps_per_second": c["step"] * meta["action_repeat"] / max(c["seconds"], 1e-9),
            "curve": ck["curve"], "train_returns": ck["train_returns"]}
