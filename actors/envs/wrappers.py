"""Batched training envs: truncation at the episode length, auto-reset, and the `traj_id` episode counter.

Works for every `GoalEnv`. The wrapper operates on E env slots at once (it vmaps the env), so that auto-reset can
decide once per step whether any slot needs a fresh reset.

Reset modes (an explicit choice, recorded in each run's config):
- ``"fixed_per_slot"`` (default, as the paper ran): a finished slot restores the start state and goal it got at its
  first reset. Brax's own AutoResetWrapper does this, so in the paper every training slot kept one start and one goal
  for the whole run; diversity comes from the number of slots and from relabelling.
- ``"resample"``: a finished slot is reset with a fresh key: new start noise and a new commanded goal.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from actors.envs.base import GoalEnv, State

RESET_MODES = ("fixed_per_slot", "resample")


@flax.struct.dataclass
class TrainingEnvState:
    env_state: State
    """The wrapped env's state, batched over [E]."""
    first_env_state: State
    """[E] states right after each slot's first reset (restored in fixed_per_slot mode)."""
    traj_id: jax.Array
    """int32 [E]: episode counter per slot; +1 after every auto-reset."""
    episode_steps: jax.Array
    """int32 [E]: steps taken in the current episode."""
    key: jax.Array
    """[E] PRNG keys for resample-mode resets."""

    @property
    def obs(self) -> jax.Array:
        """float32 [E, S+G]."""
        return self.env_state.obs


@dataclasses.dataclass(frozen=True)
class TrainingEnv:
    """E slots of `env` with truncation after `episode_length` steps and auto-reset."""

    env: GoalEnv
    episode_length: int
    """Steps per episode before truncation (env steps)."""
    reset_mode: Literal["fixed_per_slot", "resample"] = "fixed_per_slot"
    """See the module docstring."""

    def __post_init__(self) -> None:
        if self.reset_mode not in RESET_MODES:
            raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {self.reset_mode!r}")
        if self.episode_length <= 0:
            raise ValueError(f"episode_length must be positive, got {self.episode_length}")

    def reset(self, key: jax.Array, num_envs: int) -> TrainingEnvState:
        reset_key, slot_key = jax.random.split(key)
        env_state = jax.vmap(self.env.reset)(jax.random.split(reset_key, num_envs))
        return TrainingEnvState(
            env_state=env_state,
            first_env_state=env_state,
            traj_id=jnp.zeros((num_envs,), jnp.int32),
            episode_steps=jnp.zeros((num_envs,), jnp.int32),
            key=jax.random.split(slot_key, num_envs),
        )

    def step(self, state: TrainingEnvState, action: jax.Array) -> TrainingEnvState:
        """``action [E, A]``. The returned obs is the next episode's first obs for slots that just finished."""
        env_state = jax.vmap(self.env.step)(state.env_state, action)
        episode_steps = state.episode_steps + 1
        finished = (env_state.done > 0) | (episode_steps >= self.episode_length)
        key = state.key
        if self.reset_mode == "fixed_per_slot":
            fresh = state.first_env_state
        else:
            split = jax.vmap(jax.random.split)(key)
            key, reset_keys = split[:, 0], split[:, 1]
            # Only pay for a reset when some slot finished (a brax reset costs about a physics step).
            fresh = jax.lax.cond(
                jnp.any(finished), lambda: jax.vmap(self.env.reset)(reset_keys), lambda: env_state
            )

        def select(new, old):
            mask = finished.reshape(finished.shape + (1,) * (new.ndim - 1))
            return jnp.where(mask, new, old)

        return TrainingEnvState(
            env_state=jax.tree_util.tree_map(select, fresh, env_state),
            first_env_state=state.first_env_state,
            traj_id=state.traj_id + finished.astype(jnp.int32),
            episode_steps=jnp.where(finished, 0, episode_steps),
            key=key,
        )
