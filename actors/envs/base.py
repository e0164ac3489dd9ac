"""The goal-conditioned environment contract that every depthrl env implements.

Pure JAX: envs follow brax's `Env` interface (`reset(key) -> State`, `step(state, action) -> State`) so they jit and
vmap, and add a `GoalSpec` (defined in `replay.schema`, part of the data contract; re-exported here) that says where
the state and the goal live inside an observation.

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

from actors.envs import quiet  # noqa: F401  (before brax and mujoco are first imported: silences their start-up)
from brax.envs.base import Env, State  # noqa: E402

from replay.schema import GoalSpec  # defined with the data contract; re-exported here for the envs

__all__ = ["Env", "GoalEnv", "GoalSpec", "State"]


class GoalEnv(Env, abc.ABC):
    """A brax `Env` with a `GoalSpec`; see the module docstring for the contract."""

    @property
    @abc.abstractmethod
    def spec(self) -> GoalSpec:
        """Where state and goal live in the observation."""

    @property
    def observation_size(self) -> int:
        return self.spec.obs_dim
