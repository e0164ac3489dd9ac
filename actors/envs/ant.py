"""Goal-conditioned Ant: the open `ant` task and the ant mazes (paper §4.1-§4.2), on brax's `spring` pipeline.

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
Every wall multiplies the contact candidates (264 contact slots in u_maze, 524 in big_maze vs 4 in the open ant),
which makes maze steps 10-25x slower on CPU; ``max_geom_pairs`` (opt-in) culls them, see
`mjcf_build.set_max_geom_pairs`.

Reward is for logging only (CRL never reads it): open ant = forward x velocity + 1 (healthy) - 0.5 |a|^2;
mazes = -dist + 1 - 0.5 |a|^2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from brax.base import System
from brax.envs.base import PipelineEnv, State

from actors.envs import mjcf_build
from actors.envs.base import GoalEnv, GoalSpec
from actors.envs.mazes import get_layout

__all__ = ["ANT_MAZE_LAYOUTS", "AntGoalEnv", "ant_system", "make_ant"]

STATE_DIM = 29
"""15 q dims (torso xyz, quat, 8 joints) + 14 qd dims; the target's q/qd are not part of the state."""
SUCCESS_THRESHOLD_M = 0.5
SUCCESS_EASY_THRESHOLD_M = 2.0
HEALTHY_Z_RANGE_M = (0.2, 1.0)
TIMESTEP_S = 0.005
N_FRAMES = 10
MAZE_CELL_SIZE_M = 4.0
"""`maze_size_scaling` of the paper's ant mazes."""
MAZE_WALL_HEIGHT_M = 2.0
"""MAZE_HEIGHT 0.5 x scaling 4.0: far above the torso's healthy range, so walls cannot be climbed."""
OPEN_GOAL_RADIUS_M = 10.0
RESET_NOISE = 0.1
CTRL_COST_WEIGHT = 0.5
HEALTHY_REWARD = 1.0

ANT_MAZE_LAYOUTS = ("u_maze", "u_maze_eval", "u4_maze", "u4_maze_eval", "u5_maze", "u5_maze_eval", "big_maze",
                    "big_maze_eval", "hardest_maze")
"""Layouts (`actors.envs.mazes.LAYOUTS` keys) that have an `ant_<layout>` env."""

# Geoms that touch maze walls: the torso sphere, the hip capsules fused into the torso, and the feet.
_WALL_CONTACT_GEOMS = ("torso_geom", "aux_1_geom", "aux_2_geom", "aux_3_geom", "aux_4_geom", "left_foot_geom",
                       "right_foot_geom", "third_foot_geom", "fourth_foot_geom")


@functools.lru_cache(maxsize=None)
def ant_system(maze: str | None, max_geom_pairs: int | None = None) -> System:
    """The brax `System` for the open ant (``maze=None``) or an ant maze; built once per process per arguments.
    `max_geom_pairs`: opt-in contact broad phase, see `mjcf_build.set_max_geom_pairs` (None = exact)."""
    spec = mjcf_build.load_brax_asset("ant")
    if maze is None:
        # Open ant: brax's 40 x 40 floor; goals are 10 m away, the slide range only bounds the marker.
        mjcf_build.add_target(spec, height_m=0.01, radius_m=0.9, slide_range_m=20.0)
    else:
        layout = get_layout(maze, MAZE_CELL_SIZE_M)
        mjcf_build.set_floor_half_size(spec, 100.0)
        mjcf_build.add_target(spec, height_m=0.01, radius_m=0.9, slide_range_m=100.0)
        mjcf_build.set_collision(spec, _WALL_CONTACT_GEOMS, conaffinity=1)
        mjcf_build.add_maze_walls(spec, layout, height_m=MAZE_WALL_HEIGHT_M)
    mjcf_build.set_max_geom_pairs(spec, max_geom_pairs)
    sys = mjcf_build.to_brax_system(spec)
    return sys.tree_replace({"opt.timestep": TIMESTEP_S})


class AntGoalEnv(GoalEnv, PipelineEnv):
    """Goal-conditioned brax Ant, open or in a maze; see the module docstring for every convention."""

    def __init__(self, maze: str | None = None, *, episode_length: int = 1000, max_geom_pairs: int | None = None,
                 backend: str = "spring") -> None:
        """`maze`: a layout in `ANT_MAZE_LAYOUTS` or None (open ant). `episode_length`: the truncation length the
        wrapper should use, env steps. `max_geom_pairs`: opt-in contact culling for mazes (None = every pair, as in
        the paper; a small budget such as 16 is ~10x faster on CPU), see `mjcf_build.set_max_geom_pairs`."""
        if backend != "spring":
            # The paper's dt / gear / contact settings are spring's; other pipelines would be a different task.
            raise ValueError(f"the ant envs run on brax's 'spring' pipeline only, got backend={backend!r}")
        super().__init__(sys=ant_system(maze, max_geom_pairs), backend=backend, n_frames=N_FRAMES)
        self._maze = maze
        self._spec = GoalSpec(state_dim=STATE_DIM, goal_start=0, goal_end=2, success_threshold=SUCCESS_THRESHOLD_M,
                              episode_length=episode_length)
        self._target_link = self.sys.link_names.index(mjcf_build.TARGET_BODY)
        if maze is not None:
            layout = get_layout(maze, MAZE_CELL_SIZE_M)
            self._start_xy = jnp.asarray(layout.cell_to_xy(layout.start_cells))  # [n_R, 2]
            self._goal_xy = jnp.asarray(layout.cell_to_xy(layout.goal_cells))  # [n_G, 2]

    @property
    def spec(self) -> GoalSpec:
        return self._spec

    @property
    def maze(self) -> str | None:
        """Maze layout name, or None for the open ant."""
        return self._maze

    def reset(self, rng: jax.Array) -> State:
        key_q, key_qd, key_start, key_goal = jax.random.split(rng, 4)
        q = self.sys.init_q + jax.random.uniform(key_q, (self.sys.q_size(),), minval=-RESET_NOISE,
                                                 maxval=RESET_NOISE)
        qd = RESET_NOISE * jax.random.normal(key_qd, (self.sys.qd_size(),))
        if self._maze is None:
            angle = 2.0 * jnp.pi * jax.random.uniform(key_goal)
            goal_xy = OPEN_GOAL_RADIUS_M * jnp.stack([jnp.cos(angle), jnp.sin(angle)])
        else:
            start_xy = self._start_xy[jax.random.randint(key_start, (), 0, self._start_xy.shape[0])]
            q = q.at[:2].set(start_xy)
            goal_xy = self._goal_xy[jax.random.randint(key_goal, (), 0, self._goal_xy.shape[0])]
        return self.reset_to(q, qd, goal_xy)

    def reset_to(self, q: jax.Array, qd: jax.Array, goal_xy: jax.Array) -> State:
        """A state with robot ``q [17]`` / ``qd [16]`` (the last 2 dims, the target's, are overwritten) and commanded
        ``goal_xy [2]``. `reset` draws these; tests and evaluators use it to place the ant exactly."""
        q = q.at[-2:].set(goal_xy)
        qd = qd.at[-2:].set(0.0)
        pipeline_state = self.pipeline_init(q, qd)
        zero = jnp.zeros((), jnp.float32)
        metrics = {"dist": zero, "success": zero, "success_easy": zero}
        return State(pipeline_state, self._obs(pipeline_state), zero, zero, metrics)

    def step(self, state: State, action: jax.Array) -> State:
        pipeline_state0 = state.pipeline_state
        pipeline_state = self.pipeline_step(pipeline_state0, action)
        obs = self._obs(pipeline_state)

        torso_z = pipeline_state.x.pos[0, 2]
        low, high = HEALTHY_Z_RANGE_M
        healthy = (torso_z >= low) & (torso_z <= high)
        dist = jnp.linalg.norm(self._spec.achieved_goal(obs) - self._spec.goal_of(obs))
        ctrl_cost = CTRL_COST_WEIGHT * jnp.sum(jnp.square(action))
        if self._maze is None:
            forward_velocity = (pipeline_state.x.pos[0, 0] - pipeline_state0.x.pos[0, 0]) / self.dt
            reward = forward_velocity + HEALTHY_REWARD - ctrl_cost
        else:
            reward = -dist + HEALTHY_REWARD - ctrl_cost
        metrics = {
            "dist": dist,
            "success": (dist < SUCCESS_THRESHOLD_M).astype(jnp.float32),
            "success_easy": (dist < SUCCESS_EASY_THRESHOLD_M).astype(jnp.float32),
        }
        return state.replace(pipeline_state=pipeline_state, obs=obs, reward=reward.astype(jnp.float32),
                             done=1.0 - healthy.astype(jnp.float32), metrics=metrics)

    def _obs(self, pipeline_state) -> jax.Array:
        goal_xy = pipeline_state.x.pos[self._target_link, :2]
        return jnp.concatenate([pipeline_state.q[:-2], pipeline_state.qd[:-2], goal_xy]).astype(jnp.float32)


def make_ant(maze: str | None = None, episode_length: int = 1000, max_geom_pairs: int | None = None) -> AntGoalEnv:
    """Registry factory: the open ant (``maze=None``) or ``ant_<maze>``; arguments as in `AntGoalEnv`."""
    if maze is not None and maze not in ANT_MAZE_LAYOUTS:
        raise ValueError(f"no ant env for maze {maze!r}; known: {', '.join(ANT_MAZE_LAYOUTS)}")
    return AntGoalEnv(maze, episode_length=episode_length, max_geom_pairs=max_geom_pairs)

