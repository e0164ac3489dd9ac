"""In-process replay ring and the training env wrapper (truncation, auto-reset modes, traj_id)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actors.envs.base import GoalEnv, GoalSpec, State
from actors.envs.wrappers import TrainingEnv
from replay.memory import MemoryBuffer


def chunk(start, t_len, n_envs):
    """obs[t, e] = (step index, env index): lets a test read where every sampled row came from."""
    t = np.arange(start, start + t_len, dtype=np.float32)[:, None].repeat(n_envs, 1)
    e = np.arange(n_envs, dtype=np.float32)[None, :].repeat(t_len, 0)
    obs = np.stack([t, e], -1)
    return jnp.asarray(obs), jnp.asarray(obs[..., :1]), jnp.asarray(t.astype(np.int32) // 7)


def test_ring_keeps_newest_steps_in_order():
    buf = MemoryBuffer(capacity_steps=10, num_envs=3, obs_dim=2, action_dim=1)
    state = buf.init()
    for start in range(0, 24, 4):
        state = buf.insert(state, *chunk(start, 4, 3))
    assert int(buf.size_steps(state)) == 10
    assert int(state.inserted_steps) == 24
    held = sorted(np.asarray(state.obs[:, 0, 0]).tolist())
    assert held == list(range(14, 24))


@pytest.mark.parametrize("inserted", [12, 24, 37])
def test_windows_are_consecutive_and_never_cross_the_write_head(inserted):
    buf = MemoryBuffer(capacity_steps=10, num_envs=4, obs_dim=2, action_dim=1)
    state = buf.init()
    state = buf.insert(state, *chunk(0, 1, 4))
    for start in range(1, inserted):
        state = buf.insert(state, *chunk(start, 1, 4))
    sample = jax.jit(buf.sample_windows, static_argnums=2)
    starts = set()
    for seed in range(40):
        obs, action, traj_id = sample(state, jax.random.PRNGKey(seed), 6)
        t = np.asarray(obs[..., 0])
        assert obs.shape == (6, 4, 2)
        np.testing.assert_array_equal(np.diff(t, axis=0), 1.0)  # consecutive, chronological
        assert t.min() >= inserted - 10 and t.max() <= inserted - 1  # only stored steps
        np.testing.assert_array_equal(np.asarray(obs[..., 1]), np.arange(4)[None].repeat(6, 0))
        np.testing.assert_array_equal(np.asarray(traj_id), t.astype(np.int32) // 7)
        np.testing.assert_array_equal(np.asarray(action[..., 0]), t)
        starts.update(t[0].tolist())
    assert starts == set(range(inserted - 10, inserted - 6 + 1))  # every valid start is drawn


class CountdownEnv(GoalEnv):
    """Tiny env for wrapper tests: state (x, fuel); the goal is drawn at reset; terminates when fuel runs out."""

    def __init__(self, fuel: int = 1000):
        self.fuel = fuel

    @property
    def spec(self):
        return GoalSpec(state_dim=2, goal_start=0, goal_end=1, success_threshold=0.1, episode_length=5)

    @property
    def action_size(self):
        return 1

    @property
    def backend(self):
        return "jax"

    def reset(self, rng):
        goal = jax.random.uniform(rng, (1,))
        obs = jnp.concatenate([jnp.zeros(1), jnp.full((1,), float(self.fuel)), goal])
        zero = jnp.zeros(())
        return State(None, obs, zero, zero, {"dist": zero, "success": zero})

    def step(self, state, action):
        fuel = state.obs[1] - 1
        obs = state.obs.at[0].add(action[0]).at[1].set(fuel)
        done = (fuel <= 0).astype(jnp.float32)
        return state.replace(obs=obs, done=done)


def run_steps(env, n_envs, n_steps):
    state = env.reset(jax.random.PRNGKey(0), n_envs)
    step = jax.jit(env.step)
    history = []
    for _ in range(n_steps):
        history.append((np.asarray(state.obs), np.asarray(state.traj_id)))
        state = step(state, jnp.ones((n_envs, 1)))
    return history


def test_truncation_increments_traj_id_and_fixed_mode_restores_first_goal():
    history = run_steps(TrainingEnv(CountdownEnv(), episode_length=4, reset_mode="fixed_per_slot"), 3, 13)
    traj = np.array([h[1] for h in history])
    x = np.array([h[0][:, 0] for h in history])
    goals = np.array([h[0][:, 2] for h in history])
    np.testing.assert_array_equal(traj[:, 0], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3])
    np.testing.assert_array_equal(x[:, 0], [0, 1, 2, 3] * 3 + [0])
    assert np.all(goals == goals[0])  # every slot keeps its first goal
    assert len(set(goals[0].tolist())) == 3  # slots differ


def test_resample_mode_draws_new_goals_on_reset():
    history = run_steps(TrainingEnv(CountdownEnv(), episode_length=4, reset_mode="resample"), 3, 9)
    goals = np.array([h[0][:, 2] for h in history])
    np.testing.assert_array_equal(goals[:4], np.repeat(goals[:1], 4, 0))  # fixed within an episode
    assert not np.allclose(goals[4], goals[0])  # new episode, new goal


def test_termination_resets_before_truncation():
    history = run_steps(TrainingEnv(CountdownEnv(fuel=2), episode_length=100, reset_mode="fixed_per_slot"), 2, 6)
    traj = np.array([h[1] for h in history])
    np.testing.assert_array_equal(traj[:, 1], [0, 0, 1, 1, 2, 2])


def test_bad_reset_mode():
    with pytest.raises(ValueError, match="reset_mode"):
        TrainingEnv(CountdownEnv(), 4, "sometimes")  # type: ignore[arg-type]
