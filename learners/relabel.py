"""Hindsight goal relabelling over windows of consecutive steps (paper §1.4). Pure JAX.

For each step i of a ``[T, E]`` window (T time steps of E env slots) a goal step j > i is drawn with
P(j) ∝ γ^(j - i), restricted to the steps of the same episode (same ``traj_id``) inside the window. When step i has
no future step of its episode in the window, the goal is step i itself.

Sampling is exact and O(T·E): the number of usable future steps n_i is found with a reverse cumulative minimum over
episode boundaries, and the offset k ∈ {1..n_i} is drawn from the truncated geometric distribution by inverting its
CDF F(k) = (1 - γ^k) / (1 - γ^n_i). No [T, T] weight matrix is built.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from replay.schema import GoalSpec


class Batch(NamedTuple):
    """Relabelled transitions, leading axes arbitrary (``[T, E]`` from relabelling, ``[B]`` for an update)."""

    state: jax.Array
    """float32 [..., S]: the agent state (observation without its commanded goal)."""
    action: jax.Array
    """float32 [..., A]: the action taken in that state."""
    goal: jax.Array
    """float32 [..., G]: the hindsight goal, the achieved goal of a future state of the same episode."""


def future_steps_available(traj_id: jax.Array) -> jax.Array:
    """``traj_id [T, E] -> n [T, E]``: steps after t that belong to the same contiguous episode, within the window."""
    t_len = traj_id.shape[0]
    steps = jnp.arange(t_len, dtype=jnp.int32)[:, None]
    episode_ends_here = jnp.concatenate([traj_id[1:] != traj_id[:-1], jnp.ones_like(traj_id[:1], bool)], axis=0)
    candidate = jnp.where(episode_ends_here, steps, t_len)  # index of an episode's last step, or "none yet"
    last_step = jax.lax.cummin(candidate, axis=0, reverse=True)
    return last_step - steps


def sample_goal_steps(key: jax.Array, traj_id: jax.Array, discount: float) -> jax.Array:
    """``traj_id [T, E] -> goal step index j [T, E]`` with j > t in the same episode, P ∝ discount^(j - t); j = t when
    no such step exists."""
    n = future_steps_available(traj_id).astype(jnp.float32)
    u = jax.random.uniform(key, traj_id.shape)
    log_discount = jnp.log(discount)
    tail_mass = -jnp.expm1(n * log_discount)  # 1 - γ^n
    offset = jnp.ceil(jnp.log1p(-u * tail_mass) / log_discount)
    offset = jnp.clip(offset, 1.0, jnp.maximum(n, 1.0))
    offset = jnp.where(n > 0, offset, 0.0).astype(jnp.int32)
    return jnp.arange(traj_id.shape[0], dtype=jnp.int32)[:, None] + offset


def relabel(
    key: jax.Array, obs: jax.Array, action: jax.Array, traj_id: jax.Array, spec: GoalSpec, discount: float = 0.99
) -> Batch:
    """Relabel a window: ``obs [T, E, S+G], action [T, E, A], traj_id [T, E] -> Batch with leading [T, E]``."""
    state = spec.state_of(obs)
    goal_step = sample_goal_steps(key, traj_id, discount)
    future_state = jnp.take_along_axis(state, goal_step[:, :, None], axis=0)
    return Batch(state=state, action=action, goal=spec.achieved_goal(future_state))


def flatten(batch: Batch) -> Batch:
    """``[T, E, ...] -> [T*E, ...]``."""
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)


def minibatches(key: jax.Array, pool: Batch, num_batches: int, batch_size: int) -> Batch:
    """Shuffle a flat pool ``[M, ...]`` and cut ``num_batches x batch_size`` transitions without replacement
    into ``[K, B, ...]``. Requires M >= K·B (callers size their pools for it)."""
    order = jax.random.permutation(key, pool.state.shape[0])[: num_batches * batch_size]
    return jax.tree_util.tree_map(lambda x: x[order].reshape((num_batches, batch_size) + x.shape[1:]), pool)
