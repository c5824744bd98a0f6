"""Offline trajectory data (``.npz``) and the pixel rendering of classic-control states.

Two ``.npz`` layouts are read (arrays in the file, one row per time step):

* imitation's flattened trajectories: ``obs`` (T+N, D) with one extra final observation per trajectory,
  ``acts`` (T, ...), ``rews`` (T,), ``indices`` (N-1,) split points, ``terminal`` (N,);
* the D4RL-style layout named by the issue: ``observations`` (T, D), ``actions`` (T, ...), ``rewards`` (T,),
  ``terminals`` (T,) and optionally ``timeouts`` (T,); an episode ends where either is set, and its last row's
  next observation is unknown, so each episode of L rows gives L-1 transitions.

``observations`` may also be images (T, H, W[, C]) uint8, with the probe target in an optional ``states``
array. Vector observations of the two known tasks (CartPole, 4-d; Pendulum, 3-d = cos, sin, theta-dot) are
rasterised into grayscale frames by :func:`render_states` (gymnasium's renderer needs pygame, which this
project does not depend on); one frame shows positions only, so velocities must come from the frame stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.app import InputError

__all__ = ["Episode", "Rollouts", "load_rollouts", "resolve_data", "render_states", "SHARED", "ALIASES", "task_of",
           "EMBEDDED", "dataset_name"]

SHARED = Path(__file__).resolve().parents[2] / "shared_data" / "rl"
ALIASES = {"cartpole": SHARED / "cartpole_0_rollouts.npz", "pendulum": SHARED / "pendulum_0_rollouts.npz"}
EMBEDDED = "embedded"  # --data name of every embedded file


@dataclass
class Episode:
    states: np.ndarray    # (L+1, D) float32: the probe target (true state)
    actions: np.ndarray   # (L, A) float32 (one-hot for discrete actions)
    rewards: np.ndarray   # (L,) float32
    terminal: bool
    frames: np.ndarray | None = None  # (L+1, C, H, W) uint8 when the file holds images


@dataclass
class Rollouts:
    name: str
    path: Path
    episodes: list[Episode]
    discrete: bool
    action_dim: int
    task: str | None      # "cartpole" / "pendulum" when the states can be rendered / rolled out

    @property
    def steps(self) -> int:
        return sum(len(e.actions) for e in self.episodes)


def task_of(name: str, state_dim: int) -> str | None:
    low = name.lower()
    if "cartpole" in low and state_dim == 4:
        return "cartpole"
    if "pendulum" in low and state_dim == 3:
        return "pendulum"
    return None


def resolve_data(data: str | None) -> list[Path]:
    """The .npz files named by ``data`` ('embedded' or empty = every embedded file, an alias, a file or a
    folder)."""
    if not data or data == EMBEDDED:
        paths = sorted(SHARED.glob("*.npz"))
        if not paths:
            raise InputError(f"no embedded rollouts found in {SHARED}")
        return paths
    if data in ALIASES:
        return [ALIASES[data]]
    p = Path(data)
    if not p.exists():
        raise InputError(f"data path {p} does not exist (embedded names: {', '.join([EMBEDDED, *ALIASES])})")
    if p.is_dir():
        paths = sorted(p.glob("*.npz"))
        if not paths:
            raise InputError(f"data folder {p} holds no .npz file")
        return paths
    if p.suffix != ".npz":
        raise InputError(f"{p}: expected an .npz file of trajectories, got '{p.suffix or 'no extension'}'")
    return [p]


def _finite(path: Path, name: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        row = int(np.argwhere(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))[0, 0]) if a.ndim else 0
        raise InputError(f"{path}: array '{name}' has a non-finite value at row {row}")


def _actions(path: Path, acts: np.ndarray) -> tuple[np.ndarray, bool, int]:
    if acts.dtype.kind in "iub":
        if acts.ndim != 1 and not (acts.ndim == 2 and acts.shape[1] == 1):
            raise InputError(f"{path}: integer actions must be (T,) class ids, got shape {acts.shape}")
        ids = acts.reshape(-1).astype(np.int64)
        if ids.min() < 0:
            raise InputError(f"{path}: negative discrete action at row {int(np.argmin(ids))}")
        n = int(ids.max()) + 1
        return np.eye(max(n, 2), dtype=np.float32)[ids], True, max(n, 2)
    acts = acts.reshape(len(acts), -1).astype(np.float32)
    return acts, False, acts.shape[1]


_USED = {"obs", "acts", "rews", "indices", "terminal", "observations", "actions", "rewards", "terminals", "timeouts",
         "states"}


def load_rollouts(path: Path, max_episodes: int | None = None) -> Rollouts:
    """Read one .npz of trajectories (see the module docstring); errors name the file and array / row."""
    path = Path(path)
    try:
        f = np.load(path, allow_pickle=False)
        arrays = {}
        for k in f.files:
            try:
                arrays[k] = f[k]
            except ValueError:  # an object array (the release's pickled `infos`): never unpickled, not needed
                if k in _USED:
                    raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a format error of this file
        raise InputError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e
    if not arrays:
        raise InputError(f"{path}: the archive is empty")
    frames_all = None
    if {"obs", "acts", "rews"} <= arrays.keys():
        obs, acts, rews = arrays["obs"], arrays["acts"], arrays["rews"]
        indices = arrays.get("indices", np.zeros(0, np.int64)).astype(np.int64)
        n = len(indices) + 1
        if len(obs) != len(acts) + n:
            raise InputError(f"{path}: 'obs' has {len(obs)} rows, expected len(acts) + trajectories = "
                            f"{len(acts)} + {n}")
        term = arrays.get("terminal", np.ones(n, bool))
        obs_split = np.split(obs, indices + np.arange(1, n))
        act_split, rew_split = np.split(np.arange(len(acts)), indices), np.split(rews, indices)
        raw = [(o, a_idx, r, bool(term[i]) if i < len(term) else True)
               for i, (o, a_idx, r) in enumerate(zip(obs_split, act_split, rew_split, strict=True))]
    elif {"observations", "actions", "rewards"} <= arrays.keys():
        obs, acts, rews = arrays["observations"], arrays["actions"], arrays["rewards"]
        T = len(obs)
        if len(acts) != T or len(rews) != T:
            raise InputError(f"{path}: observations, actions and rewards must have the same number of rows, got "
                            f"{T}, {len(acts)}, {len(rews)}")
        term = arrays.get("terminals", np.zeros(T, bool)).astype(bool)
        ends = term | arrays.get("timeouts", np.zeros(T, bool)).astype(bool)
        ends[-1] = True
        raw, start = [], 0
        for e in np.flatnonzero(ends):
            if e - start >= 1:  # L rows -> L-1 transitions
                raw.append((obs[start:e + 1], np.arange(start, e), rews[start:e], bool(term[e])))
            start = e + 1
        if obs.ndim >= 3:
            frames_all = obs
            states_arr = arrays.get("states")
    else:
        raise InputError(f"{path}: expected arrays obs/acts/rews[/indices/terminal] (imitation) or "
                        f"observations/actions/rewards/terminals (D4RL-style); found {sorted(arrays)}")
    for name in ("obs", "acts", "rews", "observations", "actions", "rewards", "states"):
        if name in arrays:
            _finite(path, name, arrays[name])
    if len(acts) == 0 or not raw:
        raise InputError(f"{path}: no transitions")
    act_all, discrete, action_dim = _actions(path, acts)
    episodes = []
    for o, a_idx, r, t in raw:
        if len(a_idx) < 1:
            continue
        if frames_all is not None:
            fr = np.asarray(o)
            fr = fr[:, None] if fr.ndim == 3 else fr.transpose(0, 3, 1, 2)
            st = (states_arr[a_idx[0]:a_idx[-1] + 2] if states_arr is not None
                  else np.zeros((len(fr), 1), np.float32))
            episodes.append(Episode(st.astype(np.float32), act_all[a_idx], np.asarray(r, np.float32), t,
                                    np.ascontiguousarray(fr.astype(np.uint8))))
        else:
            if o.ndim != 2:
                raise InputError(f"{path}: vector observations must be (T, D), got {o.shape}")
            episodes.append(Episode(o.astype(np.float32), act_all[a_idx], np.asarray(r, np.float32), t))
        if max_episodes is not None and len(episodes) >= max_episodes:
            break
    state_dim = episodes[0].states.shape[1]
    name = dataset_name(path)
    task = task_of(name, state_dim) if frames_all is None else None
    if frames_all is None and task is None:
        raise InputError(f"{path}: vector observations of dimension {state_dim} from an unknown task: only CartPole "
                        "(4-d) and Pendulum (3-d) states can be rendered to pixels (name the file *cartpole* or "
                        "*pendulum*), or store image observations (T, H, W[, C]) uint8 with a 'states' array")
    return Rollouts(name, path, episodes, discrete, action_dim, task)


def dataset_name(path: Path) -> str:
    """``cartpole_0_rollouts.npz`` -> ``cartpole_0``; the release's ``<name>/rollouts/final.npz`` -> ``<name>``."""
    path = Path(path)
    if path.stem == "final" and path.parent.name == "rollouts" and path.parent.parent.name:
        return path.parent.parent.name
    return path.stem.replace("_rollouts", "")


def render_states(states: np.ndarray, task: str, size: int) -> np.ndarray:
    """Rasterise classic-control states (N, D) to grayscale frames (N, 1, size, size) uint8.

    CartPole: a cart (box) at x in [-2.4, 2.4] and a pole of half-length 1 (in cart-widths) at angle theta from
    vertical. Pendulum: a rod from the centre at angle theta (0 = up), theta from (cos, sin).
    """
    states = np.asarray(states, np.float32)
    n = len(states)
    ys, xs = np.meshgrid(np.linspace(1, -1, size, dtype=np.float32), np.linspace(-1, 1, size, dtype=np.float32),
                         indexing="ij")
    out = np.zeros((n, 1, size, size), np.uint8)
    width = 2.5 / size
    for lo in range(0, n, 512):
        s = states[lo:lo + 512]
        if task == "cartpole":
            cx, theta = s[:, 0] / 2.4 * 0.8, s[:, 2]
            base = np.stack([cx, np.full_like(cx, -0.4)], 1)
            tip = base + 0.9 * np.stack([np.sin(theta), np.cos(theta)], 1)
            cart = (np.abs(xs[None] - cx[:, None, None]) < 0.15) & (np.abs(ys[None] + 0.4) < 0.08)
        elif task == "pendulum":
            theta = np.arctan2(s[:, 1], s[:, 0])
            base = np.zeros((len(s), 2), np.float32)
            tip = 0.8 * np.stack([np.sin(theta), np.cos(theta)], 1)
            cart = np.zeros((len(s), size, size), bool)
        else:
            raise InputError(f"no renderer for task {task!r}")
        d = tip - base
        px, py = xs[None] - base[:, 0, None, None], ys[None] - base[:, 1, None, None]
        t = np.clip((px * d[:, 0, None, None] + py * d[:, 1, None, None])
                    / (d ** 2).sum(1)[:, None, None], 0, 1)
        dist = np.hypot(px - t * d[:, 0, None, None], py - t * d[:, 1, None, None])
        img = np.where(dist < width, 255, 0).astype(np.uint8)
        img[cart] = 128
        out[lo:lo + 512, 0] = img
    return out
