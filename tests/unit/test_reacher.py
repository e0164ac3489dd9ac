"""Reacher: observation layout, hand-computed fingertip kinematics, the success threshold, the target distribution,
and one compilation under jit + vmap.

Compiling brax's `generalized` pipeline takes seconds on CPU, so one module-scoped env and its jitted functions are
shared; every `init_state` call uses the same batch size (8) so that it compiles once for the whole module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actors.envs.reacher import Reacher
from actors.envs.registry import get_entry, make_env

LINK0_M, TIP_ALONG_LINK1_M, ARM_Z_M = 0.1, 0.11, 0.01
"""From reacher.xml: body1 sits 0.1 m along link 0, the fingertip 0.11 m along link 1, the arm and target at z=0.01."""
BATCH = 8


def hand_tip(q):
    """Fingertip ``[N, 3]`` of ``q [N, 4]`` by planar forward kinematics."""
    a0, a01 = q[:, 0], q[:, 0] + q[:, 1]
    x = LINK0_M * np.cos(a0) + TIP_ALONG_LINK1_M * np.cos(a01)
    y = LINK0_M * np.sin(a0) + TIP_ALONG_LINK1_M * np.sin(a01)
    return np.stack([x, y, np.full_like(x, ARM_Z_M)], axis=-1)


def hand_tip_velocity(q, qd):
    """Time derivative of `hand_tip` ``[N, 3]`` at ``q, qd [N, 4]``."""
    a0, a01 = q[:, 0], q[:, 0] + q[:, 1]
    w0, w01 = qd[:, 0], qd[:, 0] + qd[:, 1]
    vx = -LINK0_M * np.sin(a0) * w0 - TIP_ALONG_LINK1_M * np.sin(a01) * w01
    vy = LINK0_M * np.cos(a0) * w0 + TIP_ALONG_LINK1_M * np.cos(a01) * w01
    return np.stack([vx, vy, np.zeros_like(vx)], axis=-1)


@pytest.fixture(scope="module")
def env() -> Reacher:
    return make_env("reacher")


@pytest.fixture(scope="module")
def batched_init_state(env):
    return jax.jit(jax.vmap(env.init_state))


@pytest.fixture(scope="module")
def batched_reset(env):
    return jax.jit(jax.vmap(env.reset))


def test_registry_entry_and_spec(env):
    entry = get_entry("reacher")
    assert (entry.family, entry.target) == ("reacher", "actors.envs.reacher:Reacher")
    assert isinstance(env, Reacher)
    spec = env.spec
    assert (spec.state_dim, spec.goal_start, spec.goal_end, spec.goal_dim) == (10, 4, 7, 3)
    assert spec.obs_dim == env.observation_size == 13
    assert spec.success_threshold == 0.05 and spec.episode_length == 1001
    assert env.action_size == 2
    assert env.backend == "generalized"
    assert env.dt == pytest.approx(0.02)  # n_frames 2 x timestep 0.01
    assert make_env("reacher", episode_length=50).spec.episode_length == 50


def test_observation_matches_hand_kinematics(batched_init_state):
    rng = np.random.default_rng(0)
    q = np.concatenate([rng.uniform(-3, 3, (BATCH, 2)), rng.uniform(-0.2, 0.2, (BATCH, 2))], axis=-1)
    # Large, mixed-sign velocities with the arm bent: the unrotated-offset tip velocity would fail here.
    qd = np.concatenate([rng.uniform(-3, 3, (BATCH, 2)), np.zeros((BATCH, 2))], axis=-1)
    q, qd = q.astype(np.float32), qd.astype(np.float32)
    state = batched_init_state(jnp.asarray(q), jnp.asarray(qd))
    obs = np.asarray(state.obs)
    assert obs.shape == (BATCH, 13)
    np.testing.assert_allclose(obs[:, 0:2], np.cos(q[:, :2]), atol=1e-6)
    np.testing.assert_allclose(obs[:, 2:4], np.sin(q[:, :2]), atol=1e-6)
    np.testing.assert_allclose(obs[:, 4:7], hand_tip(q), atol=1e-5)
    np.testing.assert_allclose(obs[:, 7:10], hand_tip_velocity(q, qd), atol=1e-5)
    np.testing.assert_allclose(obs[:, 10:12], q[:, 2:4], atol=1e-6)  # the target sits at its slide joints' q
    np.testing.assert_allclose(obs[:, 12], ARM_Z_M, atol=1e-6)


def test_success_fires_only_within_threshold(batched_init_state):
    q_arm = np.array([0.3, -1.2], np.float32)
    tip = hand_tip(np.concatenate([q_arm, [0.0, 0.0]])[None])[0]
    # Target offsets from the tip (m), along a fixed diagonal; success iff offset < 0.05.
    offsets_m = np.array([0.0, 0.01, 0.03, 0.0495, 0.0505, 0.07, 0.15, 0.3], np.float32)
    direction = np.array([0.6, -0.8], np.float32)
    target_xy = tip[:2] + offsets_m[:, None] * direction
    q = np.concatenate([np.tile(q_arm, (BATCH, 1)), target_xy], axis=-1).astype(np.float32)
    state = batched_init_state(jnp.asarray(q), jnp.zeros((BATCH, 4)))
    np.testing.assert_allclose(state.metrics["dist"], offsets_m, atol=2e-5)
    np.testing.assert_array_equal(state.metrics["success"], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(state.reward, -offsets_m, atol=2e-5)
    np.testing.assert_array_equal(state.done, np.zeros(BATCH))
    assert state.metrics["success"].dtype == jnp.float32 and state.metrics["dist"].dtype == jnp.float32


def test_reset_distribution(batched_reset):
    n = 4096
    state = batched_reset(jax.random.split(jax.random.key(1), n))
    obs, q, qd = np.asarray(state.obs), np.asarray(state.pipeline_state.q), np.asarray(state.pipeline_state.qd)
    # Arm: init_q (0, 0) plus U(+-0.1); velocities U(+-0.005); the target starts still.
    assert np.abs(q[:, :2]).max() <= 0.1 and np.abs(q[:, :2]).max() > 0.09
    assert np.abs(qd[:, :2]).max() <= 0.005 and np.abs(qd[:, :2]).max() > 0.0045
    np.testing.assert_array_equal(qd[:, 2:], 0.0)
    np.testing.assert_allclose(obs[:, 10:12], q[:, 2:4], atol=1e-6)

    target_xy = obs[:, 10:12]
    radius = np.linalg.norm(target_xy, axis=-1)
    assert radius.max() <= 0.2 + 1e-6
    # Uniform in radius: mean 0.1 and half the targets inside 0.1. Uniform over the disc's area would give a mean
    # of 2/3 * 0.2 = 0.133 and a quarter inside 0.1. Standard errors at n=4096: 0.0009 and 0.008.
    assert radius.mean() == pytest.approx(0.1, abs=0.005)
    assert (radius < 0.1).mean() == pytest.approx(0.5, abs=0.04)
    angle = np.mod(np.arctan2(target_xy[:, 1], target_xy[:, 0]), 2 * np.pi)
    counts, _ = np.histogram(angle, bins=8, range=(0, 2 * np.pi))
    assert counts.min() > n / 8 * 0.8 and counts.max() < n / 8 * 1.2  # expected 512 each, s.d. about 21

    other = batched_reset(jax.random.split(jax.random.key(2), n))
    assert not np.allclose(other.obs[:, 10:12], target_xy)  # the key matters


def test_rollout_compiles_once_and_keeps_target_still(env):
    n_envs, n_steps = 4, 20
    traces = 0

    def rollout(key):
        nonlocal traces
        traces += 1  # runs only while tracing
        key_reset, key_actions = jax.random.split(key)
        first = env.reset(key_reset)
        actions = jax.random.uniform(key_actions, (n_steps, env.action_size), minval=-1.0, maxval=1.0)

        def body(state, action):
            state = env.step(state, action)
            return state, state.obs

        last, obs = jax.lax.scan(body, first, actions)
        return first.obs, obs, last.metrics["dist"]

    batched_rollout = jax.jit(jax.vmap(rollout))
    for seed in range(3):
        first_obs, obs, dist = batched_rollout(jax.random.split(jax.random.key(seed), n_envs))
    assert traces == 1
    obs = np.asarray(obs)
    assert obs.shape == (n_envs, n_steps, 13) and np.isfinite(obs).all()
    # The target has no actuator and no contacts: it stays where reset put it.
    start_target = np.asarray(first_obs)[:, None, 10:13]
    np.testing.assert_allclose(obs[:, :, 10:13], np.broadcast_to(start_target, obs[:, :, 10:13].shape), atol=1e-6)
    # Torques of up to 200 N m move the tip well beyond reset's speeds (<= 0.005 rad/s).
    assert np.abs(obs[:, -1, 4:6] - np.asarray(first_obs)[:, 4:6]).max() > 0.01
    np.testing.assert_allclose(dist, np.linalg.norm(obs[:, -1, 4:7] - obs[:, -1, 10:13], axis=-1), atol=1e-6)
