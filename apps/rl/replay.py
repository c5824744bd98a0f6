"""Episode replay buffer that stores every frame once, as uint8.

An episode of L agent steps keeps ``frames`` (L+1, C, H, W) uint8 -- frame i is the newest frame of the
observation after i steps -- plus ``actions`` (L, A), ``rewards`` (L,) and ``discounts`` (L,) (1.0, or 0.0
after a true terminal). A stacked observation is rebuilt at sampling time from the last S frames (the first
frame repeated at the episode start, as a frame-stack wrapper does at reset), so no stack is ever stored
twice. A sample at step t returns

    obs        = stack(t)                                 action     = a_t
    reward     = sum_{i<n} gamma^i (prod_{j<i} d_{t+j}) r_{t+i}   (the n-step return)
    discount   = gamma^n prod_{i<n} d_{t+i}               next_obs   = stack(t+n)
    action_seq = a_t .. a_{t+K-1}   (TACO)                obs_k      = stack(t+K)  (TACO's key)
    obs_seq    = stack(t) .. stack(t+T-1)                 (CPC, when seq_len T > 0)

Memory: C*H*W bytes per stored frame (+ 4(A+2) bytes for action, reward, discount). For 84x84 RGB that is
21,168 B, i.e. 21.2 GB per million stored frames (10.6 GB per million environment frames at action repeat 2);
storing stacks of 3 for obs and next_obs would take 6x that.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

__all__ = ["ReplayBuffer", "bytes_per_million_frames"]


def bytes_per_million_frames(frame_shape: tuple[int, ...], action_dim: int) -> int:
    """Bytes used by one million stored frames (frame + action + reward + discount)."""
    return int((np.prod(frame_shape) + 4 * (action_dim + 2)) * 1_000_000)


class ReplayBuffer:
    """Holds up to ``capacity`` frames (oldest episodes evicted first); samples uniformly over valid steps."""

    def __init__(self, capacity: int, frame_stack: int, nstep: int, gamma: float, multistep: int = 1,
                 seq_len: int = 0, seed: int = 0) -> None:
        if capacity < 1 or frame_stack < 1 or nstep < 1 or multistep < 1 or seq_len < 0:
            raise ValueError("capacity, frame_stack, nstep, multistep must be >= 1 and seq_len >= 0")
        self.capacity, self.frame_stack, self.nstep, self.gamma = capacity, frame_stack, nstep, gamma
        self.multistep, self.seq_len = multistep, seq_len
        self.horizon = max(nstep, multistep, seq_len - 1)  # steps after t that a sample needs
        self.episodes: deque[dict[str, np.ndarray]] = deque()
        self.episode_ids: deque[int] = deque()  # a running number per stored episode (checkpoint file names)
        self.next_id = 0
        self.num_frames = 0
        self.rng = np.random.default_rng(seed)
        self._frames: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._discounts: list[float] = []

    # -- writing ---------------------------------------------------------------------------------------
    def start_episode(self, frame: np.ndarray) -> None:
        """Begin an episode with its first frame (C, H, W) uint8 (or a (D,) vector for state tasks)."""
        if self._actions:
            self.end_episode()
        self._frames = [np.asarray(frame)]
        self._actions, self._rewards, self._discounts = [], [], []

    def add(self, action: np.ndarray, reward: float, discount: float, frame: np.ndarray) -> None:
        """Record a_t, r_t, d_t and the newest frame of o_{t+1}."""
        self._actions.append(np.asarray(action, dtype=np.float32))
        self._rewards.append(float(reward))
        self._discounts.append(float(discount))
        self._frames.append(np.asarray(frame))

    def end_episode(self) -> int | None:
        """Store the current episode (if it has at least one step) and evict the oldest beyond capacity; returns
        the stored episode's id (``None`` when there was nothing to store)."""
        if not self._actions:
            return None
        ep = {"frames": np.stack(self._frames), "actions": np.stack(self._actions),
              "rewards": np.asarray(self._rewards, np.float32), "discounts": np.asarray(self._discounts, np.float32)}
        self._frames, self._actions, self._rewards, self._discounts = [], [], [], []
        ep_id = self.next_id
        self.store(ep_id, ep)
        return ep_id

    def store(self, ep_id: int, ep: dict[str, np.ndarray]) -> None:
        """Append a complete episode under ``ep_id`` (ids increase), evicting the oldest beyond capacity."""
        self.episodes.append(ep)
        self.episode_ids.append(ep_id)
        self.next_id = max(self.next_id, ep_id + 1)
        self.num_frames += len(ep["frames"])
        while self.num_frames > self.capacity and len(self.episodes) > 1:
            self.num_frames -= len(self.episodes.popleft()["frames"])
            self.episode_ids.popleft()

    def add_episode(self, frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                    discounts: np.ndarray | None = None) -> None:
        """Add a whole episode: frames (L+1, ...), actions (L, A), rewards (L,), discounts (L,)."""
        self.start_episode(frames[0])
        d = np.ones(len(actions), np.float32) if discounts is None else discounts
        for i in range(len(actions)):
            self.add(actions[i], rewards[i], d[i], frames[i + 1])
        self.end_episode()

    # -- checkpoints: tensors and plain values only ---------------------------------------------------
    def pending(self) -> dict[str, torch.Tensor]:
        """The episode being recorded (frames so far, actions, rewards, discounts) as tensors."""
        a = np.stack(self._actions) if self._actions else np.zeros((0, 0), np.float32)
        f = np.stack(self._frames) if self._frames else np.zeros((0,), np.uint8)
        return {"frames": torch.from_numpy(f), "actions": torch.from_numpy(a),
                "rewards": torch.tensor(self._rewards, dtype=torch.float64),
                "discounts": torch.tensor(self._discounts, dtype=torch.float64)}

    def set_pending(self, p: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`pending`."""
        self._frames = list(p["frames"].numpy())
        self._actions = list(p["actions"].numpy())
        self._rewards = [float(r) for r in p["rewards"].tolist()]
        self._discounts = [float(d) for d in p["discounts"].tolist()]

    def rng_state(self) -> dict:
        """The sampling generator's state (plain values)."""
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    @staticmethod
    def episode_tensors(ep: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ep.items()}

    @staticmethod
    def episode_arrays(ep: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in ep.items()}

    # -- reading ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of samplable steps."""
        return int(sum(max(len(ep["actions"]) - self.horizon + 1, 0) for ep in self.episodes))

    def nbytes(self) -> int:
        return int(sum(sum(a.nbytes for a in ep.values()) for ep in self.episodes))

    def stack(self, frames: np.ndarray, t: int) -> np.ndarray:
        """The observation at step t: frames t-S+1..t (clamped at 0) concatenated on the channel axis."""
        idx = [max(t - s, 0) for s in range(self.frame_stack - 1, -1, -1)]
        return np.concatenate([frames[i] for i in idx], axis=0)

    def _index(self, batch_size: int) -> list[tuple[int, int]]:
        counts = np.array([max(len(ep["actions"]) - self.horizon + 1, 0) for ep in self.episodes])
        total = counts.sum()
        if total == 0:
            raise ValueError("the replay buffer has no complete sample yet (episodes shorter than the horizon)")
        flat = self.rng.integers(0, total, size=batch_size)
        ep_idx = np.searchsorted(np.cumsum(counts), flat, side="right")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return [(int(e), int(f - starts[e])) for e, f in zip(ep_idx, flat, strict=True)]

    def sample_at(self, picks: list[tuple[int, int]], seq: bool = True) -> dict[str, torch.Tensor]:
        """The batch of the given (episode, step) pairs (see the module docstring for the fields; ``seq=False``
        leaves out ``obs_seq``)."""
        n, K = self.nstep, self.multistep
        out: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "discount", "next_obs",
                                                "action_seq", "obs_k", "obs_seq")}
        for e, t in picks:
            ep = self.episodes[e]
            f, a, r, d = ep["frames"], ep["actions"], ep["rewards"], ep["discounts"]
            ret, disc = 0.0, 1.0
            for i in range(n):
                ret += disc * r[t + i]
                disc *= self.gamma * d[t + i]
            out["obs"].append(self.stack(f, t))
            out["action"].append(a[t])
            out["reward"].append(ret)
            out["discount"].append(disc)
            out["next_obs"].append(self.stack(f, t + n))
            out["action_seq"].append(a[t:t + K])
            out["obs_k"].append(self.stack(f, t + K))
            if self.seq_len and seq:
                out["obs_seq"].append(np.stack([self.stack(f, t + i) for i in range(self.seq_len)]))
        batch = {k: torch.from_numpy(np.stack(v)) for k, v in out.items() if v}
        batch["reward"] = batch["reward"].float()
        batch["discount"] = batch["discount"].float()
        return batch

    def sample(self, batch_size: int, seq: bool = True) -> dict[str, torch.Tensor]:
        return self.sample_at(self._index(batch_size), seq=seq)
