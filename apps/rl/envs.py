"""Environments behind the gymnasium API: DMC pixel tasks (DrQ-v2 protocol) and plain gymnasium state tasks.

DMC: ``dm_control.suite`` wrapped by Farama's ``shimmy.DmControlCompatibilityV0`` (rgb_array rendering at
84x84, camera 0 -- 2 for quadruped, as DrQ-v2), then :class:`ActionRepeat` (2) and :class:`PixelFrameStack` (3).
Tasks go by their standard names ``domain_task``, split against the suite's domains (:func:`dmc_domain_task`).
The observation is the (3*3, 84, 84) uint8 stack; ``info["frame"]`` is the newest (3, 84, 84) frame (what the
replay buffer stores) and ``info["state"]`` the flattened DMC observation (positions, velocities), the
"true physical state" the representation probe regresses on. Rendering is headless (``MUJOCO_GL=egl``).

State tasks: any gymnasium id (``Pendulum-v1`` ...), observation = the state vector itself (frame stack 1).
"""

from __future__ import annotations

import os
from collections import deque

import gymnasium as gym
import numpy as np

__all__ = ["make_env", "is_dmc", "dmc_domain_task", "check_env_name", "ActionRepeat", "PixelFrameStack"]


def is_dmc(name: str) -> bool:
    """'cartpole_swingup', 'point_mass_easy', 'ball_in_cup_catch' ... are DMC tasks (domain_task); gymnasium ids
    carry a version ('Pendulum-v1')."""
    return "_" in name and "-v" not in name


def _suite():
    """``dm_control.suite``, imported headless (``MUJOCO_GL=egl``: dm_control picks its renderer at import)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    # torch imports triton lazily (first optimiser, or Lightning Fabric's import); loading triton after dm_control
    # has loaded EGL segfaults, so force that import first.
    import torch._dynamo  # noqa: F401
    from dm_control import suite

    return suite


def dmc_domain_task(name: str) -> tuple[str, str]:
    """Split a DMC task name into (domain, task) against the suite's own list: the longest domain that prefixes
    ``name`` and has that task ('point_mass_easy' -> ('point_mass', 'easy'), 'ball_in_cup_catch' ->
    ('ball_in_cup', 'catch')). An unknown name raises ``ValueError`` naming close matches."""
    suite = _suite()

    tasks = set(suite.ALL_TASKS)
    for domain in sorted({d for d, _ in tasks}, key=len, reverse=True):
        if name.startswith(domain + "_") and (domain, name[len(domain) + 1:]) in tasks:
            return domain, name[len(domain) + 1:]
    import difflib

    names = sorted(f"{d}_{t}" for d, t in tasks)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "e.g. cartpole_swingup, point_mass_easy, walker_walk"
    raise ValueError(f"unknown DMC task {name!r} ({hint})")


def check_env_name(name: str) -> None:
    """Raise :class:`core.app.InputError` for a task name that names no DMC task / gymnasium id (cheap: builds no
    environment)."""
    from core.app import InputError

    if is_dmc(name):
        try:
            dmc_domain_task(name)
        except ValueError as e:
            raise InputError(str(e)) from None
        return
    try:
        gym.spec(name)
    except gym.error.Error as e:
        raise InputError(f"unknown environment {name!r}: {e}") from None


class ActionRepeat(gym.Wrapper):
    """Repeat each action ``repeat`` times, summing rewards (stops early at the episode end)."""

    def __init__(self, env: gym.Env, repeat: int) -> None:
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class PixelFrameStack(gym.Wrapper):
    """Replace the observation by a stack of the last ``k`` rendered frames (C, H, W) uint8.

    At reset the first frame is repeated k times. ``info`` gets ``frame`` (newest frame) and ``state``.
    """

    def __init__(self, env: gym.Env, k: int) -> None:
        super().__init__(env)
        self.k = k
        self.frames: deque[np.ndarray] = deque(maxlen=k)
        frame = self._render_shape()
        self.observation_space = gym.spaces.Box(0, 255, (frame[0] * k, *frame[1:]), np.uint8)

    def _render_shape(self) -> tuple[int, int, int]:
        kw = self.env.unwrapped.render_kwargs
        return 3, kw["height"], kw["width"]

    def _frame(self) -> np.ndarray:
        return np.ascontiguousarray(self.env.render().transpose(2, 0, 1))

    @staticmethod
    def _state(obs) -> np.ndarray:
        if isinstance(obs, dict):
            return np.concatenate([np.ravel(v) for v in obs.values()]).astype(np.float32)
        return np.asarray(obs, np.float32).ravel()

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        frame = self._frame()
        for _ in range(self.k):
            self.frames.append(frame)
        return np.concatenate(self.frames), {**info, "frame": frame, "state": self._state(obs)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        frame = self._frame()
        self.frames.append(frame)
        return np.concatenate(self.frames), reward, terminated, truncated, {**info, "frame": frame,
                                                                             "state": self._state(obs)}


class StateInfo(gym.Wrapper):
    """State tasks: ``info['frame']`` and ``info['state']`` are the observation vector itself."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        obs = np.asarray(obs, np.float32)
        return obs, {**info, "frame": obs, "state": obs}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs = np.asarray(obs, np.float32)
        return obs, reward, terminated, truncated, {**info, "frame": obs, "state": obs}


class RescaleAction(gym.ActionWrapper):
    """The agent acts in [-1, 1]^A; map to the task's box."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.low, self.high = env.action_space.low, env.action_space.high
        self.action_space = gym.spaces.Box(-1.0, 1.0, env.action_space.shape, np.float32)

    def action(self, a):
        return self.low + (np.clip(a, -1, 1) + 1) * 0.5 * (self.high - self.low)


def make_env(name: str, seed: int, image_size: int = 84, frame_stack: int = 3, action_repeat: int = 2) -> gym.Env:
    """A DMC pixel task (``domain_task``) or a gymnasium state task (``Id-vN``, continuous actions)."""
    if is_dmc(name):
        suite = _suite()
        from shimmy import DmControlCompatibilityV0

        domain, task = dmc_domain_task(name)
        camera = 2 if domain == "quadruped" else 0
        env = DmControlCompatibilityV0(
            suite.load(domain, task, task_kwargs={"random": seed}), render_mode="rgb_array",
            render_kwargs={"width": image_size, "height": image_size, "camera_id": camera})
        env = ActionRepeat(RescaleAction(env), action_repeat)
        return PixelFrameStack(env, frame_stack)
    try:
        env = gym.make(name)
    except gym.error.Error as e:
        raise ValueError(f"unknown environment {name!r}: {e}") from e
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(f"{name} has {type(env.action_space).__name__} actions; the DrQ-v2 agent needs a Box")
    env.reset(seed=seed)
    return StateInfo(ActionRepeat(RescaleAction(env), action_repeat))
