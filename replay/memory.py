"""In-process replay: per-env FIFO streams held as JAX arrays, sampled as windows. Pure JAX (jit-able).

The single-process trainer's transport. It stores what the Reverb transport stores (observations, actions and
`traj_id` per step; see `replay.schema`) so both feed the same relabelling, but as one ``[C, E, ...]`` ring of C steps
per env slot instead of items. Like the paper's buffer, sampling draws one window of W consecutive steps per env slot.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class MemoryState:
    obs: jax.Array
    """float32 [C, E, S+G]."""
    action: jax.Array
    """float32 [C, E, A]."""
    traj_id: jax.Array
    """int32 [C, E]."""
    inserted_steps: jax.Array
    """int32 []: steps inserted per env slot since the start (the ring position is this modulo C)."""


@dataclasses.dataclass(frozen=True)
class MemoryBuffer:
    """A ring of `capacity_steps` steps for each of `num_envs` env slots."""

    capacity_steps: int
    """C: steps kept per env slot (oldest dropped first)."""
    num_envs: int
    """E."""
    obs_dim: int
    """S + G."""
    action_dim: int
    """A."""

    def init(self) -> MemoryState:
        c, e = self.capacity_steps, self.num_envs
        return MemoryState(
            obs=jnp.zeros((c, e, self.obs_dim), jnp.float32),
            action=jnp.zeros((c, e, self.action_dim), jnp.float32),
            traj_id=jnp.zeros((c, e), jnp.int32),
            inserted_steps=jnp.zeros((), jnp.int32),
        )

    def size_steps(self, state: MemoryState) -> jax.Array:
        """Steps held per env slot."""
        return jnp.minimum(state.inserted_steps, self.capacity_steps)

    def insert(self, state: MemoryState, obs: jax.Array, action: jax.Array, traj_id: jax.Array) -> MemoryState:
        """Append ``obs [T, E, S+G], action [T, E, A], traj_id [T, E]`` (T <= C) to every env slot's stream."""
        rows = (state.inserted_steps + jnp.arange(obs.shape[0])) % self.capacity_steps
        return MemoryState(
            obs=state.obs.at[rows].set(obs),
            action=state.action.at[rows].set(action),
            traj_id=state.traj_id.at[rows].set(traj_id),
            inserted_steps=state.inserted_steps + obs.shape[0],
        )

    def sample_windows(
        self, state: MemoryState, key: jax.Array, window_steps: int
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One window of `window_steps` consecutive steps per env slot, each at a uniform random start.

        Returns ``obs [W, E, S+G], action [W, E, A], traj_id [W, E]``. The caller guarantees that at least W steps
        are stored (the trainer validates prefill >= W before starting).
        """
        size = self.size_steps(state)
        oldest = (state.inserted_steps - size) % self.capacity_steps
        start = jax.random.randint(key, (self.num_envs,), 0, jnp.maximum(size - window_steps, 0) + 1)
        rows = (oldest + start[None, :] + jnp.arange(window_steps)[:, None]) % self.capacity_steps  # [W, E]
        take = lambda x: jnp.take_along_axis(x, rows.reshape(rows.shape + (1,) * (x.ndim - 2)), axis=0)
        return take(state.obs), take(state.action), take(state.traj_id)
