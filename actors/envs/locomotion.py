"""What the ant and humanoid goal envs share: a brax body on `spring`, a target body carrying the commanded goal, and
(optionally) a maze of wall boxes. Family modules (`actors.envs.ant`, `actors.envs.humanoid`) hold only what differs.

Shared conventions (paper §4.1-§4.4):
- the model is a brax asset edited by `build_system`: a target body appended last (its two slide q dims, the last
  two of q, hold the commanded goal xy) and, for a maze, one box per wall cell;
- ``reset`` draws the robot's pose (family hook), then either an open-task goal (family hook) or, in a maze, puts the
  torso xy exactly on a uniformly drawn 'R' cell centre and the goal on a uniformly drawn 'G' cell centre;
- ``step`` maps the action to motor controls (family hook), steps the pipeline ``n_frames`` times, and reports
  ``dist`` (achieved to commanded goal), ``success`` (dist < `BodyTask.success_threshold_m`), ``success_easy``
  (dist < `BodyTask.success_easy_threshold_m`) and ``done`` = torso z outside `BodyTask.healthy_z_range_m`;
- the reward (family hook) is for logging only: CRL never reads it.

Maze contacts. Every wall multiplies MJX's contact candidates, so maze models cull them by default to the
`DEFAULT_MAZE_MAX_GEOM_PAIRS` nearest pairs per collision-function group (`mjcf_build.set_max_geom_pairs`); open
models are never culled. Why 16 (measured 2026-11-24, docs/benchmarks.md "Environment throughput"):
- speed, 256 envs on the 2-core CPU, paired with the exact model: 16 pairs run 4.8x (ant_u_maze), 6.4x
  (ant_big_maze) and 7.5x (humanoid_u_maze) faster than every pair; 8 pairs another ~1.5x faster, 32 ~1.6x slower;
- fidelity, 4 throws into walls and corners + 60 (ant) / 100 (humanoid) random-action steps: with 16 the torso
  trajectories match the exact model's within 3 mm (humanoid) and 0.04 mm (ant; one ant throw differs by 7 mm,
  identically for 8, 16 and 32 pairs, so float reassociation amplified by a contact, not a lost contact). At most
  5 (ant) and 7 (humanoid) wall contacts touched at once. With 8 the humanoid loses real contacts: two of its throws
  end 0.24 m and 0.12 m away from the exact model's.
So 16 is the smallest budget that stayed exact for both families. Pass ``max_geom_pairs=None`` for the exact model
(what the paper's models do); it stops being exact only when more pairs of one group touch at once than the budget.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import mujoco
from brax.base import System
from brax.envs.base import PipelineEnv, State

from actors.envs import mjcf_build
from actors.envs.base import GoalEnv, GoalSpec
from actors.envs.mazes import MazeLayout, get_layout

__all__ = ["DEFAULT_MAZE_MAX_GEOM_PAIRS", "BodyTask", "MazeBodyEnv", "build_system"]

DEFAULT_MAZE_MAX_GEOM_PAIRS = 16
"""Contact pairs kept per collision-function group in maze models (see the module docstring for why 16)."""

FLOOR_HALF_SIZE_MAZE_M = 100.0
"""Rendered floor extent in mazes (the largest maze, hardest_maze with 4 m cells, spans 44 m)."""
TARGET_SLIDE_RANGE_OPEN_M = 20.0
"""Slide range of the goal marker in open tasks (goals lie at most 10 m away); it only bounds the marker."""
TARGET_SLIDE_RANGE_MAZE_M = 100.0
"""Slide range of the goal marker in mazes: covers every maze's extent."""


@dataclasses.dataclass(frozen=True)
class BodyTask:
    """The static numbers of one family of goal-conditioned brax bodies."""

    family: str
    """Family name, used in messages ('ant', 'humanoid')."""
    asset: str
    """brax env asset the model starts from (``<asset>.xml`` inside the brax package)."""
    state_dim: int
    """S: leading observation dims that are the state."""
    goal_dim: int
    """G: 2 (goal xy) or 3 (goal xy + a fixed height); the achieved goal is state[0:G] (torso xy or xyz)."""
    success_threshold_m: float
    """`success` fires when the achieved-to-commanded goal distance is below this."""
    success_easy_threshold_m: float
    """`success_easy` fires below this (a looser threshold, logged only)."""
    healthy_z_range_m: tuple[float, float]
    """Torso heights (inclusive) outside which the episode terminates (``done`` = 1)."""
    timestep_s: float
    """Physics timestep of the spring pipeline."""
    n_frames: int
    """Physics steps per env step."""
    target_height_m: float
    """Height of the goal marker's body."""
    target_radius_m: float
    """Radius of the goal marker's (visual only) sphere."""
    maze_cell_size_m: float
    """World size of one maze cell (`actors.envs.mazes.MazeLayout.scaling`)."""
    maze_wall_height_m: float
    """Height of each wall box."""
    maze_layouts: tuple[str, ...]
    """Layouts (`actors.envs.mazes.LAYOUTS` keys) this family has a maze env for."""


def build_system(
    task: BodyTask,
    maze: str | None,
    max_geom_pairs: int | None,
    maze_contacts: Callable[[mujoco.MjSpec], None],
) -> System:
    """The brax `System` of `task`'s body, open (``maze=None``) or in maze `maze`.

    `maze_contacts(spec)` sets the robot's collision flags for a maze (which body parts touch the walls); it runs on
    the asset before the target and the walls are added, so it only sees the robot's own geoms. `max_geom_pairs`:
    see `mjcf_build.set_max_geom_pairs` (None = every pair). Runs once per model on the host, never under jit.
    """
    spec = mjcf_build.load_brax_asset(task.asset)
    if maze is None:
        mjcf_build.add_target(spec, height_m=task.target_height_m, radius_m=task.target_radius_m,
                              slide_range_m=TARGET_SLIDE_RANGE_OPEN_M)
    else:
        layout = get_layout(maze, task.maze_cell_size_m)
        maze_contacts(spec)
        mjcf_build.set_floor_half_size(spec, FLOOR_HALF_SIZE_MAZE_M)
        mjcf_build.add_target(spec, height_m=task.target_height_m, radius_m=task.target_radius_m,
                              slide_range_m=TARGET_SLIDE_RANGE_MAZE_M)
        mjcf_build.add_maze_walls(spec, layout, height_m=task.maze_wall_height_m)
    mjcf_build.set_max_geom_pairs(spec, max_geom_pairs)
    sys = mjcf_build.to_brax_system(spec)
    return sys.tree_replace({"opt.timestep": task.timestep_s})


class MazeBodyEnv(GoalEnv, PipelineEnv, abc.ABC):
    """A goal-conditioned brax body, open or in a maze; see the module docstring for the shared contract.

    Subclasses set `TASK` and implement `system` (the cached model), `_initial_pose`, `_open_goal`, `_obs` and
    `_reward`, and `_ctrl` when actions are not the motor controls themselves.
    """

    TASK: BodyTask

    def __init__(self, maze: str | None = None, *, episode_length: int = 1000,
                 max_geom_pairs: int | None | Literal["default"] = "default", backend: str = "spring") -> None:
        """`maze`: a layout in ``TASK.maze_layouts`` or None (the open task). `episode_length`: the truncation length
        the wrapper should use, env steps. `max_geom_pairs`: contact culling, see `mjcf_build.set_max_geom_pairs`;
        ``"default"`` = `DEFAULT_MAZE_MAX_GEOM_PAIRS` in mazes and None (exact) in the open task; None = exact."""
        task = self.TASK
        if backend != "spring":
            # The paper's dt / gear / contact settings are spring's; other pipelines would be a different task.
            raise ValueError(f"the {task.family} envs run on brax's 'spring' pipeline only, got backend={backend!r}")
        if maze is not None and maze not in task.maze_layouts:
            raise ValueError(f"no {task.family} env for maze {maze!r}; known: {', '.join(task.maze_layouts)}")
        if max_geom_pairs == "default":
            max_geom_pairs = DEFAULT_MAZE_MAX_GEOM_PAIRS if maze is not None else None
        super().__init__(sys=self.system(maze, max_geom_pairs), backend=backend, n_frames=task.n_frames)
        self._maze = maze
        self._max_geom_pairs = max_geom_pairs
        self._spec = GoalSpec(state_dim=task.state_dim, goal_start=0, goal_end=task.goal_dim,
                              success_threshold=task.success_threshold_m, episode_length=episode_length)
        self._target_link = self.sys.link_names.index(mjcf_build.TARGET_BODY)
        self._layout = None if maze is None else get_layout(maze, task.maze_cell_size_m)
        if self._layout is not None:
            self._start_xy = jnp.asarray(self._layout.cell_to_xy(self._layout.start_cells))  # [n_R, 2]
            self._goal_xy = jnp.asarray(self._layout.cell_to_xy(self._layout.goal_cells))  # [n_G, 2]

    # --- family hooks ------------------------------------------------------------------------------------------

    @staticmethod
    @abc.abstractmethod
    def system(maze: str | None, max_geom_pairs: int | None) -> System:
        """The (cached) brax `System` for `maze` (None = open) with contact culling `max_geom_pairs`."""

    @abc.abstractmethod
    def _initial_pose(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``key -> (q [q_size], qd [qd_size])`` of a fresh episode; the torso xy and the target dims are
        overwritten afterwards in mazes (start cell) and always (goal)."""

    @abc.abstractmethod
    def _open_goal(self, key: jax.Array) -> jax.Array:
        """``key -> goal_xy [2]`` of the open task."""

    @abc.abstractmethod
    def _obs(self, pipeline_state, ctrl: jax.Array) -> jax.Array:
        """``-> obs [S+G]`` float32 after a step that applied motor controls ``ctrl [act_size]``."""

    @abc.abstractmethod
    def _reward(self, previous, pipeline_state, ctrl: jax.Array, dist: jax.Array) -> jax.Array:
        """Logged reward of the step ``previous -> pipeline_state``."""

    def _ctrl(self, action: jax.Array) -> jax.Array:
        """``action [A]`` in [-1, 1] -> the pipeline's motor controls; identity unless a family maps them."""
        return action

    # --- shared interface --------------------------------------------------------------------------------------

    @property
    def spec(self) -> GoalSpec:
        return self._spec

    @property
    def maze(self) -> str | None:
        """Maze layout name, or None for the open task."""
        return self._maze

    @property
    def layout(self) -> MazeLayout | None:
        """The `actors.envs.mazes.MazeLayout` this env runs in (cells scaled to metres), or None for the open task."""
        return self._layout

    @property
    def max_geom_pairs(self) -> int | None:
        """Contact pairs kept per collision group (None = exact); see `mjcf_build.set_max_geom_pairs`."""
        return self._max_geom_pairs

    def reset(self, rng: jax.Array) -> State:
        key_pose, key_start, key_goal = jax.random.split(rng, 3)
        q, qd = self._initial_pose(key_pose)
        if self._layout is None:
            goal_xy = self._open_goal(key_goal)
        else:
            start_xy = self._start_xy[jax.random.randint(key_start, (), 0, self._start_xy.shape[0])]
            q = q.at[:2].set(start_xy)
            goal_xy = self._goal_xy[jax.random.randint(key_goal, (), 0, self._goal_xy.shape[0])]
        return self.reset_to(q, qd, goal_xy)

    def reset_to(self, q: jax.Array, qd: jax.Array, goal_xy: jax.Array) -> State:
        """A state with robot ``q [q_size]`` / ``qd [qd_size]`` (their last 2 dims, the target's, are overwritten)
        and commanded ``goal_xy [2]``. `reset` draws these; tests and evaluators use it to place the body exactly."""
        q = q.at[-2:].set(goal_xy)
        qd = qd.at[-2:].set(0.0)
        pipeline_state = self.pipeline_init(q, qd)
        zero = jnp.zeros((), jnp.float32)
        metrics = {"dist": zero, "success": zero, "success_easy": zero}
        obs = self._obs(pipeline_state, jnp.zeros((self.sys.act_size(),)))
        return State(pipeline_state, obs, zero, zero, metrics)

    def step(self, state: State, action: jax.Array) -> State:
        ctrl = self._ctrl(action)
        pipeline_state = self.pipeline_step(state.pipeline_state, ctrl)
        obs = self._obs(pipeline_state, ctrl)

        torso_z = pipeline_state.x.pos[0, 2]
        low, high = self.TASK.healthy_z_range_m
        healthy = (torso_z >= low) & (torso_z <= high)
        dist = jnp.linalg.norm(self._spec.achieved_goal(obs) - self._spec.goal_of(obs))
        reward = self._reward(state.pipeline_state, pipeline_state, ctrl, dist)
        metrics = {
            "dist": dist,
            "success": (dist < self.TASK.success_threshold_m).astype(jnp.float32),
            "success_easy": (dist < self.TASK.success_easy_threshold_m).astype(jnp.float32),
        }
        return state.replace(pipeline_state=pipeline_state, obs=obs, reward=reward.astype(jnp.float32),
                             done=1.0 - healthy.astype(jnp.float32), metrics=metrics)

    def _target_xy(self, pipeline_state) -> jax.Array:
        """Commanded goal xy [2]: the target body's position (its slide joints never move)."""
        return pipeline_state.x.pos[self._target_link, :2]
