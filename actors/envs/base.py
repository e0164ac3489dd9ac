"""The goal-conditioned environment contract that every depthrl env implements.

Pure JAX: envs follow brax's `Env` interface (`reset(key) -> State`, `step(state, action) -> State`) so they jit and
vmap, and add a `GoalSpec` that says where the state and the goal live inside an observation.

Observation layout (paper §4): ``obs = concat(state [state_dim], goal [goal_dim])``. The goal is compared with the
*achieved goal* ``state[goal_start:goal_end]`` (e.g. the torso x, y of an ant); relabelling replaces the goal part with
the achieved goal of a future state.

Per-step contract of a `GoalEnv` (single, unbatched env):
- ``reset(key)`` samples a start state and a commanded goal;
- ``step(state, action)`` takes ``action [action_size]`` in [-1, 1];
- ``State.metrics`` always holds ``dist`` (distance between achieved and commanded goal) and ``success``
  (1.0 when ``dist < spec.success_threshold``), both float32 scalars;
- ``State.done`` is 1.0 only on *termination* (e.g. an unhealthy torso height). Truncation at the episode length,
  auto-reset and the ``traj_id`` counter belong to `actors.envs.wrappers.TrainingEnv`, not to the env;
- ``State.info`` keys ``traj_id``, ``steps``, ``truncation`` and ``first_*`` are reserved for that wrapper.
"""

from __future__ import annotations

import abc
import dataclasses

import jax
from brax.envs.base import Env, State

__all__ = ["Env", "GoalEnv", "GoalSpec", "State"]


@dataclasses.dataclass(frozen=True)
class GoalSpec:
    """Static description of a goal-conditioned observation."""

    state_dim: int
    """S: number of leading observation dims that are the agent's state."""
    goal_start: int
    """First state dim of the achieved goal (inclusive)."""
    goal_end: int
    """Last state dim of the achieved goal (exclusive); goal_dim = goal_end - goal_start."""
    success_threshold: float
    """`success` fires when the achieved-to-commanded goal distance is below this (env units, e.g. metres)."""
    episode_length: int
    """Default episode length in env steps (truncation); the paper uses 1000 for every task."""

    def __post_init__(self) -> None:
        if not 0 <= self.goal_start < self.goal_end <= self.state_dim:
            raise ValueError(f"goal slice [{self.goal_start}:{self.goal_end}] must lie inside state_dim={self.state_dim}")
        if self.success_threshold <= 0 or self.episode_length <= 0:
            raise ValueError("success_threshold and episode_length must be positive")

    @property
    def goal_dim(self) -> int:
        """G: size of the goal space."""
        return self.goal_end - self.goal_start

    @property
    def obs_dim(self) -> int:
        """S + G: size of an observation."""
        return self.state_dim + self.goal_dim

    def state_of(self, obs: jax.Array) -> jax.Array:
        """``obs [..., S+G] -> state [..., S]``."""
        return obs[..., : self.state_dim]

    def goal_of(self, obs: jax.Array) -> jax.Array:
        """``obs [..., S+G] -> commanded goal [..., G]``."""
        return obs[..., self.state_dim :]

    def achieved_goal(self, state: jax.Array) -> jax.Array:
        """``state [..., S] -> achieved goal [..., G]``."""
        return state[..., self.goal_start : self.goal_end]


class GoalEnv(Env, abc.ABC):
    """A brax `Env` with a `GoalSpec`; see the module docstring for the contract."""

    @property
    @abc.abstractmethod
    def spec(self) -> GoalSpec:
        """Where state and goal live in the observation."""

    @property
    def observation_size(self) -> int:
        return self.spec.obs_dim
