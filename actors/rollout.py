"""Pure acting: roll a policy through batched training envs, and evaluate a deterministic policy.

The policy is any function ``policy(params, obs [E, S+G], key) -> action [E, A]``; the CRL agent's `act` is one.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from actors.envs.base import GoalEnv
from actors.envs.wrappers import TrainingEnv, TrainingEnvState

PolicyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


class Trajectory(NamedTuple):
    """T steps of E env slots, time-major; what replay stores."""

    obs: jax.Array
    """float32 [T, E, S+G]: observation the action was taken at."""
    action: jax.Array
    """float32 [T, E, A]."""
    traj_id: jax.Array
    """int32 [T, E]: episode counter of the slot at that step."""
    success: jax.Array
    """float32 [T, E]: env `success` metric after the step (for logging only)."""


def unroll(
    env: TrainingEnv,
    policy: PolicyFn,
    params: Any,
    env_state: TrainingEnvState,
    key: jax.Array,
    unroll_length: int,
) -> tuple[TrainingEnvState, Trajectory]:
    """Take `unroll_length` steps in every slot with `policy`; returns the final state and the ``[T, E]`` trajectory."""

    def step(state: TrainingEnvState, step_key: jax.Array):
        action = policy(params, state.obs, step_key)
        next_state = env.step(state, action)
        record = Trajectory(
            obs=state.obs,
            action=action,
            traj_id=state.traj_id,
            success=next_state.env_state.metrics["success"],
        )
        return next_state, record

    return jax.lax.scan(step, env_state, jax.random.split(key, unroll_length))


def evaluate(
    env: GoalEnv, policy: PolicyFn, params: Any, key: jax.Array, num_envs: int, episode_length: int
) -> dict[str, jax.Array]:
    """Run one episode in each of `num_envs` fresh envs with a (deterministic) policy; paper §5 metrics.

    - ``time_at_goal``: steps with ``success`` while the episode is alive, out of `episode_length`, mean over envs;
    - ``success_any``: fraction of episodes with at least one success step;
    - ``final_dist``: distance to the goal at the last step, mean over envs;
    - ``episode_length``: alive steps (smaller than `episode_length` when an env terminates, e.g. a fall).
    """
    reset_key, policy_key = jax.random.split(key)
    state = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs))

    def step(carry, step_key):
        state, alive, at_goal, steps_alive = carry
        action = policy(params, state.obs, step_key)
        state = jax.vmap(env.step)(state, action)
        success = state.metrics["success"] * alive
        carry = (state, alive * (1.0 - state.done), at_goal + success, steps_alive + alive)
        return carry, None

    alive = jnp.ones((num_envs,), jnp.float32)
    zeros = jnp.zeros((num_envs,), jnp.float32)
    (state, alive, at_goal, steps_alive), _ = jax.lax.scan(
        step, (state, alive, zeros, zeros), jax.random.split(policy_key, episode_length)
    )
    return {
        "time_at_goal": jnp.mean(at_goal),
        "success_any": jnp.mean((at_goal > 0).astype(jnp.float32)),
        "final_dist": jnp.mean(state.metrics["dist"]),
        "episode_length": jnp.mean(steps_alive),
    }
