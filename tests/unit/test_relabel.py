"""Goal relabelling invariants over a parametrized grid, plus exact distributional checks."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actors.envs.base import GoalSpec
from learners.relabel import flatten, future_steps_available, relabel, sample_goal_steps


def make_traj_ids(pattern: str, t_len: int, n_envs: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if pattern == "none":
        ids = np.zeros((t_len, n_envs), np.int32)
    elif pattern == "every_step":
        ids = np.tile(np.arange(t_len, dtype=np.int32)[:, None], (1, n_envs))
    else:  # random episode boundaries, different per env, counter starting anywhere
        starts = rng.random((t_len, n_envs)) < 0.1
        starts[0] = False
        ids = np.cumsum(starts, axis=0).astype(np.int32) + rng.integers(0, 50, n_envs).astype(np.int32)
    return ids


GRID = list(itertools.product([1, 7, 64], [1, 5], ["none", "random", "every_step"], [0.5, 0.99], [False, True]))


@pytest.mark.parametrize("t_len,n_envs,pattern,discount,use_jit", GRID)
def test_goal_step_invariants(t_len, n_envs, pattern, discount, use_jit):
    traj_id = make_traj_ids(pattern, t_len, n_envs, seed=t_len * 10 + n_envs)
    fn = jax.jit(sample_goal_steps, static_argnums=2) if use_jit else sample_goal_steps
    for seed in range(3):
        goal = np.asarray(fn(jax.random.PRNGKey(seed), jnp.asarray(traj_id), discount))
        steps = np.arange(t_len)[:, None]
        cols = np.arange(n_envs)[None, :]
        # never in the past
        assert np.all(goal >= steps)
        assert np.all(goal < t_len)
        # never crosses a traj_id boundary
        assert np.all(traj_id[goal, cols] == traj_id)
        # strictly in the future whenever a future step of the same episode exists; itself otherwise
        has_future = np.zeros_like(traj_id, bool)
        has_future[:-1] = traj_id[1:] == traj_id[:-1]
        assert np.all(goal[has_future] > steps.repeat(n_envs, 1)[has_future])
        assert np.all(goal[~has_future] == steps.repeat(n_envs, 1)[~has_future])


def test_future_steps_available_by_hand():
    traj_id = jnp.array([[3], [3], [3], [4], [4], [7]])
    np.testing.assert_array_equal(np.asarray(future_steps_available(traj_id))[:, 0], [2, 1, 0, 1, 0, 0])


def test_mean_offset_without_boundaries_is_one_over_one_minus_gamma():
    discount, t_len, n_envs = 0.99, 4000, 64
    goal = sample_goal_steps(jax.random.PRNGKey(0), jnp.zeros((t_len, n_envs), jnp.int32), discount)
    # Steps with >= 2000 future steps: truncation mass 0.99^2000 ~ 2e-9, so the offset is geometric with mean 100.
    offsets = np.asarray(goal)[:2000] - np.arange(2000)[:, None]
    assert abs(offsets.mean() - 1 / (1 - discount)) < 1.5  # standard error ~0.28
    assert offsets.min() >= 1


def test_truncated_geometric_frequencies():
    # Step 0 of a 4-step episode has n = 3 future steps: P(k) = 0.5^k / (0.5 + 0.25 + 0.125).
    traj_id = jnp.zeros((4, 20000), jnp.int32)
    goal = np.asarray(sample_goal_steps(jax.random.PRNGKey(1), traj_id, 0.5))[0]
    freq = np.bincount(goal, minlength=4)[1:] / goal.size
    np.testing.assert_allclose(freq, np.array([0.5, 0.25, 0.125]) / 0.875, atol=0.015)


def test_relabel_takes_achieved_goal_of_the_goal_step():
    # state = (t, e, 100 t + e); goal slice = dims [1:3]; obs appends a commanded goal that must be ignored.
    t_len, n_envs = 30, 4
    t = np.arange(t_len)[:, None].repeat(n_envs, 1).astype(np.float32)
    e = np.arange(n_envs)[None, :].repeat(t_len, 0).astype(np.float32)
    obs = np.stack([t, e, 100 * t + e, -np.ones_like(t), -np.ones_like(t)], axis=-1)
    spec = GoalSpec(state_dim=3, goal_start=1, goal_end=3, success_threshold=1.0, episode_length=10)
    traj_id = make_traj_ids("random", t_len, n_envs, seed=0)
    action = np.zeros((t_len, n_envs, 2), np.float32)
    batch = relabel(jax.random.PRNGKey(4), jnp.asarray(obs), jnp.asarray(action), jnp.asarray(traj_id), spec)
    goal_step = np.asarray(sample_goal_steps(jax.random.PRNGKey(4), jnp.asarray(traj_id), 0.99))
    np.testing.assert_array_equal(np.asarray(batch.state), obs[..., :3])
    np.testing.assert_array_equal(np.asarray(batch.goal)[..., 0], e)
    np.testing.assert_array_equal(np.asarray(batch.goal)[..., 1], 100 * goal_step + e)
    flat = flatten(batch)
    assert flat.state.shape == (t_len * n_envs, 3) and flat.goal.shape == (t_len * n_envs, 2)
