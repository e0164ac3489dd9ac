"""Goal-conditioned Ant: the open `ant` task and the ant mazes (paper §4.1-§4.2), on brax's `spring` pipeline.

Everything shared with the humanoid (target body, maze walls, reset to 'R'/'G' cells, metrics, termination, the
maze contact culling default) lives in `actors.envs.locomotion`; this module holds what is the ant's own.

The model is brax's own ``ant.xml`` edited with `MjSpec` (`actors.envs.mjcf_build`): a target body (two slide joints,
a visual sphere of radius 0.9 m) that carries the commanded goal, and for mazes one 4 x 4 x 2 m box per wall cell.

Observation (31) = [q without the 2 target dims (15: torso xyz, torso quat, 8 joint angles),
qd without the 2 target dims (14), commanded goal xy (2)]. State = obs[:29]; achieved goal = torso xy = state[0:2].
Physics: spring, dt 0.005 s x 10 frames = 0.05 s per env step, brax's gear 150.
Termination: torso z outside [0.2, 1.0]. Success: xy distance to the goal < 0.5 (``success_easy``: < 2.0).

Start / goal distributions:
- open `ant`: every q gets U(-0.1, 0.1) noise around brax's init pose, qd ~ 0.1 N(0, 1); goal on the circle of radius
  10 m around the origin at a uniform angle;
- mazes: as above, but the torso xy is put exactly on the centre of a uniformly drawn 'R' cell and the goal is the
  centre of a uniformly drawn 'G' cell (cell (i, j) -> (4 i, 4 j), `actors.envs.mazes`).

Collisions in mazes (as in the paper's maze model): the torso, the four hip capsules and the four feet have
conaffinity 1 and the walls contype 1, so those parts cannot pass through walls. The two outer capsules of each leg
keep contype = conaffinity = 0 and can clip a wall corner. A side effect the paper's model has too: the feet
(contype 1) now also touch the torso and hip capsules. The floor keeps brax's flags (only the feet touch it).
Every wall multiplies the contact candidates (264 contact slots in u_maze, 524 in big_maze vs 4 in the open ant);
maze models keep only the 16 nearest pairs per collision group by default (78 slots in u_maze), see
`actors.envs.locomotion` and `mjcf_build.set_max_geom_pairs`.

Reward is for logging only (CRL never reads it): open ant = forward x velocity + 1 (healthy) - 0.5 |a|^2;
mazes = -dist + 1 - 0.5 |a|^2.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from brax.base import System

from actors.envs import mjcf_build
from actors.envs.locomotion import BodyTask, MazeBodyEnv, build_system

__all__ = ["ANT_MAZE_LAYOUTS", "ANT_TASK", "AntGoalEnv", "ant_system", "make_ant"]

ANT_MAZE_LAYOUTS = ("u_maze", "u_maze_eval", "u4_maze", "u4_maze_eval", "u5_maze", "u5_maze_eval", "big_maze",
                    "big_maze_eval", "hardest_maze")
"""Layouts (`actors.envs.mazes.LAYOUTS` keys) that have an `ant_<layout>` env."""

ANT_TASK = BodyTask(
    family="ant",
    asset="ant",
    state_dim=29,  # 15 q dims (torso xyz, quat, 8 joints) + 14 qd dims; the target's q/qd are not in the state
    goal_dim=2,
    success_threshold_m=0.5,
    success_easy_threshold_m=2.0,
    healthy_z_range_m=(0.2, 1.0),
    timestep_s=0.005,
    n_frames=10,
    target_height_m=0.01,
    target_radius_m=0.9,
    maze_cell_size_m=4.0,  # `maze_size_scaling` of the paper's ant mazes
    maze_wall_height_m=2.0,  # MAZE_HEIGHT 0.5 x scaling 4.0: far above the healthy torso, walls cannot be climbed
    maze_layouts=ANT_MAZE_LAYOUTS,
)
OPEN_GOAL_RADIUS_M = 10.0
RESET_NOISE = 0.1
"""Half-width of the uniform q noise and std of the Gaussian qd noise at reset."""
CTRL_COST_WEIGHT = 0.5
HEALTHY_REWARD = 1.0

# Geoms that touch maze walls: the torso sphere, the hip capsules fused into the torso, and the feet.
_WALL_CONTACT_GEOMS = ("torso_geom", "aux_1_geom", "aux_2_geom", "aux_3_geom", "aux_4_geom", "left_foot_geom",
                       "right_foot_geom", "third_foot_geom", "fourth_foot_geom")


@functools.lru_cache(maxsize=None)
def ant_system(maze: str | None, max_geom_pairs: int | None = None) -> System:
    """The brax `System` for the open ant (``maze=None``) or an ant maze; built once per process per arguments.
    `max_geom_pairs`: contact broad phase, see `mjcf_build.set_max_geom_pairs` (None = exact)."""
    return build_system(ANT_TASK, maze, max_geom_pairs,
                        lambda spec: mjcf_build.set_collision(spec, _WALL_CONTACT_GEOMS, conaffinity=1))


class AntGoalEnv(MazeBodyEnv):
    """Goal-conditioned brax Ant, open or in a maze; see the module docstring for every convention."""

    TASK = ANT_TASK
    system = staticmethod(ant_system)

    def _initial_pose(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        key_q, key_qd = jax.random.split(key)
        q = self.sys.init_q + jax.random.uniform(key_q, (self.sys.q_size(),), minval=-RESET_NOISE,
                                                 maxval=RESET_NOISE)
        qd = RESET_NOISE * jax.random.normal(key_qd, (self.sys.qd_size(),))
        return q, qd

    def _open_goal(self, key: jax.Array) -> jax.Array:
        angle = 2.0 * jnp.pi * jax.random.uniform(key)
        return OPEN_GOAL_RADIUS_M * jnp.stack([jnp.cos(angle), jnp.sin(angle)])

    def _obs(self, pipeline_state, ctrl: jax.Array) -> jax.Array:
        del ctrl  # the ant's observation has no actuator features
        return jnp.concatenate(
            [pipeline_state.q[:-2], pipeline_state.qd[:-2], self._target_xy(pipeline_state)]
        ).astype(jnp.float32)

    def _reward(self, previous, pipeline_state, ctrl: jax.Array, dist: jax.Array) -> jax.Array:
        ctrl_cost = CTRL_COST_WEIGHT * jnp.sum(jnp.square(ctrl))
        if self.maze is None:
            forward_velocity = (pipeline_state.x.pos[0, 0] - previous.x.pos[0, 0]) / self.dt
            return forward_velocity + HEALTHY_REWARD - ctrl_cost
        return -dist + HEALTHY_REWARD - ctrl_cost


def make_ant(maze: str | None = None, episode_length: int = 1000,
             max_geom_pairs: int | None | Literal["default"] = "default") -> AntGoalEnv:
    """Registry factory: the open ant (``maze=None``) or ``ant_<maze>``; arguments as in `MazeBodyEnv`."""
    return AntGoalEnv(maze, episode_length=episode_length, max_geom_pairs=max_geom_pairs)
