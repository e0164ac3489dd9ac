"""Goal-conditioned Humanoid: the open `humanoid` task and the humanoid mazes (paper §4.3-§4.4), on brax `spring`.

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
(big_maze), about 60x slower per step on CPU; ``max_geom_pairs`` (opt-in) culls them, see
`mjcf_build.set_max_geom_pairs`.

Reward (logging only): -dist + 5 (healthy) - 0.1 |scaled action|^2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from brax import actuator
from brax import base as brax_base
from brax.base import System
from brax.envs.base import PipelineEnv, State

from actors.envs import mjcf_build
from actors.envs.base import GoalEnv, GoalSpec
from actors.envs.mazes import get_layout

__all__ = ["HUMANOID_MAZE_LAYOUTS", "HumanoidGoalEnv", "humanoid_system", "make_humanoid"]

STATE_DIM = 268
TARGET_Z_M = 1.25
SUCCESS_THRESHOLD_M = 0.5
SUCCESS_EASY_THRESHOLD_M = 2.0
HEALTHY_Z_RANGE_M = (1.0, 2.0)
TIMESTEP_S = 0.0015
N_FRAMES = 10
SPRING_GEARS = (350.0,) * 11 + (100.0,) * 6
"""Motor gears of brax's spring humanoid (the XML's own gears are for the other pipelines)."""
MAZE_CELL_SIZE_M = 2.0
MAZE_WALL_HEIGHT_M = 1.0
"""MAZE_HEIGHT 0.5 x scaling 2.0."""
OPEN_GOAL_RADIUS_RANGE_M = (1.0, 5.0)
CTRL_COST_WEIGHT = 0.1
HEALTHY_REWARD = 5.0

HUMANOID_MAZE_LAYOUTS = ("u_maze", "u_maze_eval", "big_maze", "humanoid_big_maze_eval")
"""Layouts with a humanoid env; `humanoid_big_maze_eval` is the humanoid's own (slightly different) big-maze eval."""


@functools.lru_cache(maxsize=None)
def humanoid_system(maze: str | None, max_geom_pairs: int | None = None) -> System:
    """The brax `System` for the open humanoid (``maze=None``) or a humanoid maze; built once per process per
    arguments. `max_geom_pairs`: opt-in contact broad phase, see `mjcf_build.set_max_geom_pairs` (None = exact)."""
    spec = mjcf_build.load_brax_asset("humanoid")
    if maze is None:
        mjcf_build.add_target(spec, height_m=TARGET_Z_M, radius_m=0.5, slide_range_m=20.0)
    else:
        layout = get_layout(maze, MAZE_CELL_SIZE_M)
        # Robot geom names are read before walls and target exist, so only the humanoid's own geoms change.
        mjcf_build.set_collision(spec, mjcf_build.robot_geom_names(spec), contype=1)
        mjcf_build.set_floor_half_size(spec, 100.0)
        mjcf_build.add_target(spec, height_m=TARGET_Z_M, radius_m=0.5, slide_range_m=100.0)
        mjcf_build.add_maze_walls(spec, layout, height_m=MAZE_WALL_HEIGHT_M)
    mjcf_build.set_max_geom_pairs(spec, max_geom_pairs)
    sys = mjcf_build.to_brax_system(spec)
    sys = sys.tree_replace({"opt.timestep": TIMESTEP_S})
    return sys.replace(actuator=sys.actuator.replace(gear=jnp.array(SPRING_GEARS, dtype=jnp.float32)))


class HumanoidGoalEnv(GoalEnv, PipelineEnv):
    """Goal-conditioned brax Humanoid, open or in a maze; see the module docstring for every convention."""

    def __init__(self, maze: str | None = None, *, episode_length: int = 1000, max_geom_pairs: int | None = None,
                 backend: str = "spring") -> None:
        """`maze`: a layout in `HUMANOID_MAZE_LAYOUTS` or None (open humanoid). `episode_length`: the truncation
        length the wrapper should use, env steps. `max_geom_pairs`: opt-in contact culling for mazes (None = every
        pair, as in the paper), see `mjcf_build.set_max_geom_pairs`."""
        if backend != "spring":
            raise ValueError(f"the humanoid envs run on brax's 'spring' pipeline only, got backend={backend!r}")
        super().__init__(sys=humanoid_system(maze, max_geom_pairs), backend=backend, n_frames=N_FRAMES)
        self._maze = maze
        self._spec = GoalSpec(state_dim=STATE_DIM, goal_start=0, goal_end=3, success_threshold=SUCCESS_THRESHOLD_M,
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
        """Maze layout name, or None for the open humanoid."""
        return self._maze

    def reset(self, rng: jax.Array) -> State:
        key_start, key_radius, key_goal = jax.random.split(rng, 3)
        q = self.sys.init_q
        qd = jnp.zeros((self.sys.qd_size(),))
        if self._maze is None:
            low, high = OPEN_GOAL_RADIUS_RANGE_M
            radius = jax.random.uniform(key_radius, minval=low, maxval=high)
            angle = 2.0 * jnp.pi * jax.random.uniform(key_goal)
            goal_xy = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)])
        else:
            start_xy = self._start_xy[jax.random.randint(key_start, (), 0, self._start_xy.shape[0])]
            q = q.at[:2].set(start_xy)
            goal_xy = self._goal_xy[jax.random.randint(key_goal, (), 0, self._goal_xy.shape[0])]
        return self.reset_to(q, qd, goal_xy)

    def reset_to(self, q: jax.Array, qd: jax.Array, goal_xy: jax.Array) -> State:
        """A state with robot ``q [26]`` / ``qd [25]`` (the last 2 dims, the target's, are overwritten) and commanded
        ``goal_xy [2]``. `reset` draws these; tests and evaluators use it to place the humanoid exactly."""
        q = q.at[-2:].set(goal_xy)
        qd = qd.at[-2:].set(0.0)
        pipeline_state = self.pipeline_init(q, qd)
        zero = jnp.zeros((), jnp.float32)
        metrics = {"dist": zero, "success": zero, "success_easy": zero}
        obs = self._obs(pipeline_state, jnp.zeros((self.sys.act_size(),)))
        return State(pipeline_state, obs, zero, zero, metrics)

    def step(self, state: State, action: jax.Array) -> State:
        ctrl_low = self.sys.actuator.ctrl_range[:, 0]
        ctrl_high = self.sys.actuator.ctrl_range[:, 1]
        ctrl = ctrl_low + (action + 1.0) * 0.5 * (ctrl_high - ctrl_low)
        pipeline_state = self.pipeline_step(state.pipeline_state, ctrl)
        obs = self._obs(pipeline_state, ctrl)

        torso_z = pipeline_state.x.pos[0, 2]
        low, high = HEALTHY_Z_RANGE_M
        healthy = (torso_z >= low) & (torso_z <= high)
        dist = jnp.linalg.norm(self._spec.achieved_goal(obs) - self._spec.goal_of(obs))
        reward = -dist + HEALTHY_REWARD - CTRL_COST_WEIGHT * jnp.sum(jnp.square(ctrl))
        metrics = {
            "dist": dist,
            "success": (dist < SUCCESS_THRESHOLD_M).astype(jnp.float32),
            "success_easy": (dist < SUCCESS_EASY_THRESHOLD_M).astype(jnp.float32),
        }
        return state.replace(pipeline_state=pipeline_state, obs=obs, reward=reward.astype(jnp.float32),
                             done=1.0 - healthy.astype(jnp.float32), metrics=metrics)

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
        goal = jnp.concatenate([pipeline_state.x.pos[self._target_link, :2], jnp.array([TARGET_Z_M])])
        return jnp.concatenate([
            pipeline_state.q, pipeline_state.qd, com_inertia.ravel(), com_velocity.ravel(), torques, goal,
        ]).astype(jnp.float32)


def make_humanoid(maze: str | None = None, episode_length: int = 1000,
                  max_geom_pairs: int | None = None) -> HumanoidGoalEnv:
    """Registry factory: the open humanoid (``maze=None``) or ``humanoid_<maze>``; arguments as in
    `HumanoidGoalEnv`."""
    if maze is not None and maze not in HUMANOID_MAZE_LAYOUTS:
        raise ValueError(f"no humanoid env for maze {maze!r}; known: {', '.join(HUMANOID_MAZE_LAYOUTS)}")
    return HumanoidGoalEnv(maze, episode_length=episode_length, max_geom_pairs=max_geom_pairs)
