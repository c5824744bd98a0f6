"""Trajectory loading (both .npz layouts), rendering, probes, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from apps.rl.data import ALIASES, load_rollouts, render_states, resolve_data
from apps.rl.probe import split_by_group, state_probe_r2
from core.app import InputError


def test_embedded_imitation_rollouts_split_like_the_source_note():
    ro = load_rollouts(ALIASES["pendulum"])
    assert len(ro.episodes) == 56 and ro.steps == 11_200 and not ro.discrete and ro.task == "pendulum"
    assert all(len(e.states) == len(e.actions) + 1 == 201 for e in ro.episodes)
    raw = np.load(ALIASES["pendulum"])
    np.testing.assert_array_equal(ro.episodes[1].states[0], raw["obs"][201])  # one extra obs per trajectory
    cp = load_rollouts(ALIASES["cartpole"], max_episodes=5)
    assert cp.discrete and cp.action_dim == 2 and len(cp.episodes) == 5
    np.testing.assert_array_equal(cp.episodes[0].actions.argmax(1), raw_c := np.load(ALIASES["cartpole"])["acts"][
        :len(cp.episodes[0].actions)])
    assert raw_c.shape[0] == len(cp.episodes[0].actions)


def test_d4rl_layout_splits_at_terminals_and_timeouts(tmp_path):
    T = 12
    obs = np.arange(T * 3, dtype=np.float32).reshape(T, 3)
    term, tout = np.zeros(T, bool), np.zeros(T, bool)
    term[4], tout[8] = True, True
    p = tmp_path / "my_pendulum.npz"
    np.savez(p, observations=obs, actions=np.ones((T, 1), np.float32), rewards=np.arange(T, dtype=np.float32),
             terminals=term, timeouts=tout)
    ro = load_rollouts(p)
    # episodes rows [0..4], [5..8], [9..11] -> 4, 3, 2 transitions
    assert [len(e.actions) for e in ro.episodes] == [4, 3, 2]
    assert [e.terminal for e in ro.episodes] == [True, False, False]
    np.testing.assert_array_equal(ro.episodes[1].states, obs[5:9])
    np.testing.assert_array_equal(ro.episodes[1].rewards, [5, 6, 7])


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_data(str(tmp_path / "nope.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .npz"):
        resolve_data(str(tmp_path / "empty"))
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n")
    with pytest.raises(InputError, match="expected an .npz"):
        resolve_data(str(bad))
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(InputError, match="junk.npz: not a readable"):
        load_rollouts(junk)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, X=np.zeros(3))
    with pytest.raises(InputError, match="expected arrays"):
        load_rollouts(wrong)
    nan = tmp_path / "nan_pendulum.npz"
    obs = np.zeros((10, 3), np.float32)
    obs[6, 1] = np.nan
    np.savez(nan, observations=obs, actions=np.zeros((10, 1)), rewards=np.zeros(10))
    with pytest.raises(InputError, match="nan_pendulum.npz: array 'observations' has a non-finite value at row 6"):
        load_rollouts(nan)
    unknown = tmp_path / "hopper.npz"
    np.savez(unknown, observations=np.zeros((10, 11)), actions=np.zeros((10, 3)), rewards=np.zeros(10))
    with pytest.raises(InputError, match="unknown task"):
        load_rollouts(unknown)


def test_render_states_draws_the_pole_where_the_state_says():
    size = 32
    up = render_states(np.array([[1.0, 0.0, 0.0]]), "pendulum", size)[0, 0]
    right = render_states(np.array([[0.0, 1.0, 0.0]]), "pendulum", size)[0, 0]
    ys, xs = np.nonzero(up)
    assert ys.mean() < size / 2 and abs(xs.mean() - size / 2) < 2  # pendulum up: pixels above the centre
    ys, xs = np.nonzero(right)
    assert xs.mean() > size / 2 and abs(ys.mean() - size / 2) < 2  # theta = +90 deg: to the right
    left_cart = render_states(np.array([[-2.0, 0, 0, 0]]), "cartpole", size)[0, 0]
    right_cart = render_states(np.array([[2.0, 0, 0, 0]]), "cartpole", size)[0, 0]
    assert np.nonzero(left_cart == 128)[1].mean() < np.nonzero(right_cart == 128)[1].mean()
    # velocity is invisible in one frame: same positions, different velocities -> the same image
    np.testing.assert_array_equal(render_states(np.array([[0.5, 3.0, 0.1, -2.0]]), "cartpole", size),
                                  render_states(np.array([[0.5, 0.0, 0.1, 0.0]]), "cartpole", size))


def test_state_probe_against_least_squares_and_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = x @ rng.normal(size=(5, 2)) + 0.01 * rng.normal(size=(400, 2))
    groups = np.repeat(np.arange(8), 50)
    res = state_probe_r2(x, y, groups)
    train, test = split_by_group(groups)
    assert test.sum() == 100 and not (train & test).any()
    # naive reference: ordinary least squares with intercept, R^2 = 1 - MSE_test / Var(all)
    A = np.c_[x, np.ones(400)]
    w, *_ = np.linalg.lstsq(A[train], y[train], rcond=None)
    ref = 1 - ((A[test] @ w - y[test]) ** 2).mean(0) / y.var(0)
    np.testing.assert_allclose(res["per_dim"], ref, atol=1e-3)
    assert state_probe_r2(rng.normal(size=(400, 5)), y, groups)["r2"] < 0.1
    with pytest.raises(ValueError, match="non-finite"):
        state_probe_r2(np.full((400, 5), np.nan), y, groups)


def test_probe_refuses_too_few_episodes_or_samples():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    y = x @ rng.normal(size=(5, 2))
    two = state_probe_r2(x, y, np.repeat([0, 1], 200))  # fit on one episode, test on the other
    assert two["r2"] is None and "2 episode(s)" in two["refused"]
    few = state_probe_r2(x[:40], y[:40], np.repeat(np.arange(8), 5), test_mask=np.arange(40) >= 36)
    assert few["r2"] is not None  # 36 training samples >= 2 x 5 features
    wide = state_probe_r2(rng.normal(size=(40, 30)), y[:40], np.repeat(np.arange(8), 5))
    assert wide["r2"] is None and "training samples for 30 features" in wide["refused"]


def test_release_file_with_a_pickled_infos_array_is_read_without_unpickling(tmp_path):
    """imitation's release keeps a pickled `infos` object array beside the arrays; it is skipped, never loaded."""
    raw = dict(np.load(ALIASES["cartpole"]))
    folder = tmp_path / "cartpole_0" / "rollouts"
    folder.mkdir(parents=True)
    infos = np.empty(len(raw["acts"]), dtype=object)
    infos[:] = [{}] * len(infos)
    np.savez(folder / "final.npz", infos=infos, **raw)
    ro = load_rollouts(folder / "final.npz", max_episodes=3)
    assert ro.name == "cartpole_0" and ro.task == "cartpole" and len(ro.episodes) == 3
