"""Replay buffer: samples equal a naive reference built from a plain list of transitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.rl.replay import ReplayBuffer, bytes_per_million_frames


def _episode(rng, length, shape=(3, 5, 5), adim=2):
    frames = rng.integers(0, 256, size=(length + 1, *shape), dtype=np.uint8)
    actions = rng.normal(size=(length, adim)).astype(np.float32)
    rewards = rng.normal(size=length).astype(np.float32)
    discounts = np.ones(length, np.float32)
    return frames, actions, rewards, discounts


def _naive(transitions, t, frame_stack, nstep, K, gamma, seq_len):
    """From a list of (obs_frame_t, a_t, r_t, d_t) + final frame: the sample at step t."""
    frames = [tr[0] for tr in transitions]

    def stack(i):
        parts = []
        for s in range(frame_stack):
            j = i - (frame_stack - 1) + s
            parts.append(frames[0] if j < 0 else frames[j])
        return np.concatenate(parts, axis=0)

    ret, disc = 0.0, 1.0
    for i in range(nstep):
        ret += disc * transitions[t + i][2]
        disc *= gamma * transitions[t + i][3]
    out = {"obs": stack(t), "action": transitions[t][1], "reward": ret, "discount": disc,
           "next_obs": stack(t + nstep), "action_seq": np.stack([transitions[t + i][1] for i in range(K)]),
           "obs_k": stack(t + K)}
    if seq_len:
        out["obs_seq"] = np.stack([stack(t + i) for i in range(seq_len)])
    return out


@pytest.mark.parametrize("frame_stack,nstep,K,seq_len", [(3, 3, 3, 0), (2, 1, 4, 6), (1, 5, 2, 0)])
def test_samples_match_naive_reference(frame_stack, nstep, K, seq_len):
    rng = np.random.default_rng(0)
    gamma = 0.9
    buf = ReplayBuffer(10_000, frame_stack, nstep, gamma, multistep=K, seq_len=seq_len, seed=1)
    episodes = []
    for length in (12, 9, 15):
        f, a, r, d = _episode(rng, length)
        d[-1] = 0.0 if length == 9 else 1.0  # one terminal episode
        buf.add_episode(f, a, r, d)
        transitions = [(f[i], a[i] if i < length else None, r[i] if i < length else None,
                        d[i] if i < length else None) for i in range(length + 1)]
        episodes.append(transitions)
    horizon = max(nstep, K, seq_len - 1)
    assert len(buf) == sum(len(e) - 1 - horizon + 1 for e in episodes)
    picks = [(e, t) for e in range(3) for t in range(len(episodes[e]) - 1 - horizon + 1)]
    batch = buf.sample_at(picks)
    for row, (e, t) in enumerate(picks):
        ref = _naive(episodes[e], t, frame_stack, nstep, K, gamma, seq_len)
        for key, val in ref.items():
            np.testing.assert_allclose(batch[key][row].numpy(), val, rtol=1e-6, atol=1e-6, err_msg=f"{key} {e} {t}")
    assert batch["obs"].dtype.is_floating_point is False  # uint8 frames travel as uint8


def test_random_sampling_is_uniform_over_valid_steps_and_shapes():
    rng = np.random.default_rng(1)
    buf = ReplayBuffer(10_000, 3, 3, 0.99, multistep=3, seed=0)
    for length in (5, 20):
        buf.add_episode(*_episode(rng, length))
    b = buf.sample(4000)
    assert b["obs"].shape == (4000, 9, 5, 5) and b["action_seq"].shape == (4000, 3, 2)
    # 3 valid steps in the first episode, 18 in the second: uniform over steps, not over episodes
    picks = buf._index(6000)
    share = np.mean([e == 0 for e, _ in picks])
    assert abs(share - 3 / 21) < 0.03
    assert {t for e, t in picks if e == 0} == {0, 1, 2} and {t for e, t in picks if e == 1} == set(range(18))


def test_frames_are_stored_once_and_memory_statement():
    rng = np.random.default_rng(2)
    buf = ReplayBuffer(10_000, 3, 3, 0.99)
    f, a, r, d = _episode(rng, 10, shape=(3, 84, 84), adim=1)
    buf.add_episode(f, a, r, d)
    frame_bytes = 11 * 3 * 84 * 84
    assert buf.nbytes() == frame_bytes + a.nbytes + r.nbytes + d.nbytes
    assert buf.episodes[0]["frames"].dtype == np.uint8
    assert bytes_per_million_frames((3, 84, 84), 1) == (3 * 84 * 84 + 12) * 1_000_000


def test_capacity_evicts_oldest_episode_and_incremental_add_equals_add_episode():
    rng = np.random.default_rng(3)
    buf = ReplayBuffer(25, 1, 1, 0.99)
    eps = [_episode(rng, 10) for _ in range(3)]
    for f, a, r, d in eps:
        buf.start_episode(f[0])
        for i in range(len(a)):
            buf.add(a[i], r[i], d[i], f[i + 1])
        buf.end_episode()
    assert len(buf.episodes) == 2 and buf.num_frames == 22
    np.testing.assert_array_equal(buf.episodes[0]["frames"], eps[1][0])


def test_bad_arguments():
    with pytest.raises(ValueError):
        ReplayBuffer(0, 3, 3, 0.99)
    with pytest.raises(ValueError, match="no complete sample"):
        ReplayBuffer(100, 3, 3, 0.99).sample(2)


def test_checkpoint_state_round_trips_ids_pending_episode_and_sampling():
    rng = np.random.default_rng(4)
    buf = ReplayBuffer(25, 1, 1, 0.99, seed=3)
    eps = [_episode(rng, 10) for _ in range(3)]
    ids = [buf.add_episode(*ep) or buf.episode_ids[-1] for ep in eps]
    assert ids == [0, 1, 2] and list(buf.episode_ids) == [1, 2] and buf.next_id == 3  # episode 0 evicted
    f, a, r, d = _episode(rng, 4)
    buf.start_episode(f[0])
    for i in range(2):
        buf.add(a[i], r[i], d[i], f[i + 1])
    buf.sample(5)
    # a copy built from the state: stored episodes (as tensors), ids, pending episode, sampling generator
    copy = ReplayBuffer(25, 1, 1, 0.99, seed=99)
    for i, ep in zip(buf.episode_ids, buf.episodes, strict=True):
        copy.store(i, ReplayBuffer.episode_arrays(ReplayBuffer.episode_tensors(ep)))
    copy.next_id = buf.next_id
    copy.set_pending(buf.pending())
    copy.set_rng_state(buf.rng_state())
    for b in (buf, copy):
        b.add(a[2], r[2], d[2], f[3])
    assert buf.end_episode() == copy.end_episode() == 3
    x, y = buf.sample(7), copy.sample(7)
    assert all(torch.equal(x[k], y[k]) for k in x)
    np.testing.assert_array_equal(buf.episodes[-1]["frames"], copy.episodes[-1]["frames"])
