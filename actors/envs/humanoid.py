"""Goal-conditioned Humanoid: the open `humanoid` task and the humanoid mazes (paper §4.3-§4.4), on brax `spring`.

Everything shared with the ant (target body, maze walls, reset to 'R'/'G' cells, metrics, termination, the maze
contact culling default) lives in `actors.envs.locomotion`; this module holds what is the humanoid's own.

The model is brax's own ``humanoid.xml`` edited with `MjSpec` (`actors.envs.mjcf_build`): a target body at height
1.25 m (two slide joints, a visual sphere of radius 0.5 m, 1 kg) that carries the commanded goal, and for mazes one
2 x 2 x 1 m box per wall cell.

Observation (271) = [q (26: 24 robot dims + the 2 target slide dims), qd (25), com-based inertia per link (12 x 10),
com-based velocity per link (12 x 6), actuator torques (25), goal x, goal y, 1.25]. The 12 links are brax's 11
humanoid links plus the target (the paper's model has the same 12, so its state is 268 = 26 + 25 + 120 + 72 + 25);
the goal xy therefore also appears inside the state at q[24:26], a quirk kept for fidelity.
Achieved goal = torso xyz = state[0:3]; commanded goal z is fixed at 1.25 m (about a standing torso's height).
Physics: spring, dt 0.0015 s x 10 frames = 0.015 s per env step, gears 350 (11 leg/abdomen motors) and 100 (6 arm
motors) as in brax's spring humanoid; actions in [-1, 1] are mapped affinely onto each motor's ctrlrange.
Termination: torso z outside [1.0, 2.0]. Success: 3-D distance to (goal x, goal y, 1.25) < 0.5 (easy: < 2.0).

Start / goal distributions (no reset noise at all, as in the paper):
- open `humanoid`: brax's standing pose at the origin; goal xy at a uniform angle and a radius ~ U(1, 5) m
  (uniform in radius, not in area);
- mazes: torso xy exactly on a uniformly drawn 'R' cell centre, goal on a uniformly drawn 'G' cell centre
  (cell (i, j) -> (2 i, 2 j), `actors.envs.mazes`).

Collisions in mazes (as in the paper's maze model): every humanoid geom gets contype 1, so every body part touches the
walls (conaffinity 1) and the floor (conaffinity 1), not only the feet as in the open task. Walls are 1 m tall,
low enough to climb or vault over. The walls raise the contact slots from 2 (open) to 551 (u_maze) and 1131
(big_maze); maze models keep only the 16 nearest pairs per collision group by default, see
`actors.envs.locomotion` and `mjcf_build.set_max_geom_pairs`.

Reward (logging only): -dist + 5 (healthy) - 0.1 |scaled action|^2.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from brax import actuator
from brax import base as brax_base
from brax.base import System

from actors.envs import mjcf_build
from actors.envs.locomotion import BodyTask, MazeBodyEnv, build_system

__all__ = ["HUMANOID_MAZE_LAYOUTS", "HUMANOID_TASK", "HumanoidGoalEnv", "humanoid_system", "make_humanoid"]

HUMANOID_MAZE_LAYOUTS = ("u_maze", "u_maze_eval", "big_maze", "humanoid_big_maze_eval")
"""Layouts with a humanoid env; `humanoid_big_maze_eval` is the humanoid's own (slightly different) big-maze eval."""

TARGET_Z_M = 1.25
"""Fixed height of the commanded goal (and of the marker), about a standing torso's height."""
HUMANOID_TASK = BodyTask(
    family="humanoid",
    asset="humanoid",
    state_dim=268,
    goal_dim=3,
    success_threshold_m=0.5,
    success_easy_threshold_m=2.0,
    healthy_z_range_m=(1.0, 2.0),
    timestep_s=0.0015,
    n_frames=10,
    target_height_m=TARGET_Z_M,
    target_radius_m=0.5,
    maze_cell_size_m=2.0,
    maze_wall_height_m=1.0,  # MAZE_HEIGHT 0.5 x scaling 2.0
    maze_layouts=HUMANOID_MAZE_LAYOUTS,
)
SPRING_GEARS = (350.0,) * 11 + (100.0,) * 6
"""Motor gears of brax's spring humanoid (the XML's own gears are for the other pipelines)."""
OPEN_GOAL_RADIUS_RANGE_M = (1.0, 5.0)
CTRL_COST_WEIGHT = 0.1
HEALTHY_REWARD = 5.0


def _every_part_touches_walls(spec) -> None:
    # Read before the walls and the target exist, so only the humanoid's own geoms change.
    mjcf_build.set_collision(spec, mjcf_build.robot_geom_names(spec), contype=1)


@functools.lru_cache(maxsize=None)
def humanoid_system(maze: str | None, max_geom_pairs: int | None = None) -> System:
    """The brax `System` for the open humanoid (``maze=None``) or a humanoid maze; built once per process per
    arguments. `max_geom_pairs`: contact broad phase, see `mjcf_build.set_max_geom_pairs` (None = exact)."""
    sys = build_system(HUMANOID_TASK, maze, max_geom_pairs, _every_part_touches_walls)
    return sys.replace(actuator=sys.actuator.replace(gear=jnp.array(SPRING_GEARS, dtype=jnp.float32)))


class HumanoidGoalEnv(MazeBodyEnv):
    """Goal-conditioned brax Humanoid, open or in a maze; see the module docstring for every convention."""

    TASK = HUMANOID_TASK
    system = staticmethod(humanoid_system)

    def _initial_pose(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        del key  # no reset noise, as in the paper
        return self.sys.init_q, jnp.zeros((self.sys.qd_size(),))

    def _open_goal(self, key: jax.Array) -> jax.Array:
        key_radius, key_angle = jax.random.split(key)
        low, high = OPEN_GOAL_RADIUS_RANGE_M
        radius = jax.random.uniform(key_radius, minval=low, maxval=high)
        angle = 2.0 * jnp.pi * jax.random.uniform(key_angle)
        return radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)])

    def _ctrl(self, action: jax.Array) -> jax.Array:
        ctrl_low = self.sys.actuator.ctrl_range[:, 0]
        ctrl_high = self.sys.actuator.ctrl_range[:, 1]
        return ctrl_low + (action + 1.0) * 0.5 * (ctrl_high - ctrl_low)

    def _reward(self, previous, pipeline_state, ctrl: jax.Array, dist: jax.Array) -> jax.Array:
        return -dist + HEALTHY_REWARD - CTRL_COST_WEIGHT * jnp.sum(jnp.square(ctrl))

    def _obs(self, pipeline_state, ctrl: jax.Array) -> jax.Array:
        # brax's humanoid features: link inertias and velocities about the whole-body centre of mass, with the
        # spring pipeline's mass / inertia scaling applied (as brax's Humanoid does for spring).
        inertia = self.sys.link.inertia
        inertia = inertia.replace(
            i=jax.vmap(jnp.diag)(jax.vmap(jnp.diagonal)(inertia.i) ** (1 - self.sys.spring_inertia_scale)),
            mass=inertia.mass ** (1 - self.sys.spring_mass_scale),
        )
        mass_sum = jnp.sum(inertia.mass)
        x_i = pipeline_state.x.vmap().do(inertia.transform)
        com = jnp.sum(jax.vmap(jnp.multiply)(inertia.mass, x_i.pos), axis=0) / mass_sum
        cinr = x_i.replace(pos=x_i.pos - com).vmap().do(inertia)
        com_inertia = jnp.hstack([cinr.i.reshape((cinr.i.shape[0], -1)), inertia.mass[:, None]])  # [12, 10]
        xd_i = brax_base.Transform.create(pos=x_i.pos - pipeline_state.x.pos).vmap().do(pipeline_state.xd)
        com_velocity = jnp.hstack([inertia.mass[:, None] * xd_i.vel / mass_sum, xd_i.ang])  # [12, 6]
        torques = actuator.to_tau(self.sys, ctrl, pipeline_state.q, pipeline_state.qd)  # [25]
        goal = jnp.concatenate([self._target_xy(pipeline_state), jnp.array([TARGET_Z_M])])
        return jnp.concatenate([
            pipeline_state.q, pipeline_state.qd, com_inertia.ravel(), com_velocity.ravel(), torques, goal,
        ]).astype(jnp.float32)


def make_humanoid(maze: str | None = None, episode_length: int = 1000,
                  max_geom_pairs: int | None | Literal["default"] = "default") -> HumanoidGoalEnv:
    """Registry factory: the open humanoid (``maze=None``) or ``humanoid_<maze>``; arguments as in `MazeBodyEnv`."""
    return HumanoidGoalEnv(maze, episode_length=episode_length, max_geom_pairs=max_geom_pairs)
