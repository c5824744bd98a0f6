"""Measure DrQ-v2 (+TACO) agent steps per second on a DMC pixel task on CPU (env + update every 2 steps)."""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from apps.rl.agent import AgentConfig, DrQV2Agent
from apps.rl.envs import make_env
from apps.rl.replay import ReplayBuffer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--task", default="cartpole_swingup")
    p.add_argument("--aux", default="none")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    env = make_env(a.task, seed=0)
    obs, info = env.reset(seed=0)
    buf = ReplayBuffer(100_000, 3, 3, 0.99, multistep=3, seq_len=4 if a.aux == "cpc" else 0)
    buf.start_episode(info["frame"])
    t0 = time.perf_counter()
    n = 0
    for _ in range(2):
        done = False
        while not done:
            act = np.random.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            obs, r, te, tr, info = env.step(act)
            buf.add(act, r, 1.0 - float(te), info["frame"])
            n += 1
            done = te or tr
        buf.end_episode()
        obs, info = env.reset()
        buf.start_episode(info["frame"])
    env_sps = n / (time.perf_counter() - t0)
    agent = DrQV2Agent(env.observation_space.shape, env.action_space.shape[0],
                       AgentConfig(aux=a.aux, batch_size=a.batch_size))
    opts = agent.make_optimizers()
    agent.update(buf.sample(a.batch_size), 5000, opts)
    t0 = time.perf_counter()
    ts = 0.0
    for _ in range(a.updates):
        s0 = time.perf_counter()
        b = buf.sample(a.batch_size)
        ts += time.perf_counter() - s0
        agent.update(b, 5000, opts)
    upd = (time.perf_counter() - t0) / a.updates
    print(f"task={a.task} aux={a.aux} batch={a.batch_size} threads={a.threads}: env {env_sps:.1f} agent steps/s "
          f"(action repeat 2, render incl.); update {upd * 1000:.0f} ms (sampling {ts / a.updates * 1000:.0f} ms); "
          f"=> {1 / (1 / env_sps + upd / 2):.2f} agent steps/s with an update every 2 steps")


if __name__ == "__main__":
    main()
