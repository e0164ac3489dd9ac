"""Ant and Humanoid goal envs (actors/envs/ant.py, humanoid.py, locomotion.py): compiles, obs layout, walls, success,
termination, layouts, contact culling.

brax `spring` compiles take tens of seconds on this machine, so each family is compiled once per module (fixtures
below) with a fixed batch of B envs, and every test reuses those jitted functions. Python counters incremented while
tracing count compilations: a retrace anywhere (a dtype or pytree mismatch between reset and step states, a new
batch shape) shows up as a count above 1.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actors.envs import mazes, mjcf_build
from actors.envs.ant import AntGoalEnv
from actors.envs.humanoid import HumanoidGoalEnv
from actors.envs.locomotion import DEFAULT_MAZE_MAX_GEOM_PAIRS
from actors.envs.registry import env_names, get_entry, make_env

B = 4
"""Batch size of every call to the compiled functions (a different size would retrace)."""

ANT_NAMES = ["ant", "ant_u_maze", "ant_u_maze_eval", "ant_u4_maze", "ant_u4_maze_eval", "ant_u5_maze",
             "ant_u5_maze_eval", "ant_big_maze", "ant_big_maze_eval", "ant_hardest_maze"]
HUMANOID_NAMES = ["humanoid", "humanoid_u_maze", "humanoid_u_maze_eval", "humanoid_big_maze",
                  "humanoid_big_maze_eval"]


@dataclasses.dataclass
class Compiled:
    """One env with jitted, vmapped reset / reset_to / step and a trace counter per function."""

    env: Any
    reset: Callable
    reset_to: Callable
    step: Callable
    traces: collections.Counter


def _compile(env) -> Compiled:
    traces: collections.Counter = collections.Counter()

    def reset(keys):
        traces["reset"] += 1
        return jax.vmap(env.reset)(keys)

    def reset_to(q, qd, goal_xy):
        traces["reset_to"] += 1
        return jax.vmap(env.reset_to)(q, qd, goal_xy)

    def step(states, actions):
        traces["step"] += 1
        return jax.vmap(env.step)(states, actions)

    return Compiled(env, jax.jit(reset), jax.jit(reset_to), jax.jit(step), traces)


@pytest.fixture(scope="module")
def ant() -> Compiled:
    """`ant_u_maze`: the smallest ant maze, so walls are exercised too (with the default contact culling)."""
    return _compile(make_env("ant_u_maze"))


@pytest.fixture(scope="module")
def humanoid() -> Compiled:
    return _compile(make_env("humanoid"))


def _placed(c: Compiled, torso_xyz: np.ndarray, goal_xy: np.ndarray, torso_vel: np.ndarray | None = None):
    """Rows of states with the robot in its init pose at ``torso_xyz [B, 3]``, at rest unless ``torso_vel [B, 3]``."""
    q = np.tile(np.asarray(c.env.sys.init_q), (B, 1))
    q[:, :3] = torso_xyz
    qd = np.zeros((B, c.env.sys.qd_size()))
    if torso_vel is not None:
        qd[:, :3] = torso_vel
    return c.reset_to(jnp.asarray(q, jnp.float32), jnp.asarray(qd, jnp.float32), jnp.asarray(goal_xy, jnp.float32))


def _zero_actions(c: Compiled) -> jax.Array:
    return jnp.zeros((B, c.env.action_size))


# --- compile counts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ant", "humanoid"])
def test_reset_and_step_compile_once_under_jit_and_vmap(family, request):
    c: Compiled = request.getfixturevalue(family)
    s1 = c.reset(jax.random.split(jax.random.key(1), B))
    s2 = c.reset(jax.random.split(jax.random.key(2), B))
    for _ in range(3):
        s1 = c.step(s1, jnp.full((B, c.env.action_size), 0.3, dtype=jnp.float32))
    s2 = c.step(s2, _zero_actions(c))
    jax.block_until_ready((s1.obs, s2.obs))
    assert c.traces["reset"] == 1
    assert c.traces["step"] == 1
    assert not np.allclose(s1.obs, s2.obs), "different keys must give different episodes"
    assert s1.obs.dtype == jnp.float32 and s1.reward.shape == (B,) and s1.done.shape == (B,)
    for key in ("dist", "success", "success_easy"):
        assert s1.metrics[key].shape == (B,) and s1.metrics[key].dtype == jnp.float32


def test_placed_states_share_the_step_compilation(ant):
    # `reset_to` states (used by every test below) must not make `step` retrace.
    s = ant.step(_placed(ant, np.tile([[4.0, 4.0, 0.55]], (B, 1)), np.zeros((B, 2))), _zero_actions(ant))
    s = ant.step(ant.reset(jax.random.split(jax.random.key(5), B)), _zero_actions(ant))
    jax.block_until_ready(s.obs)
    assert ant.traces["step"] == 1 and ant.traces["reset_to"] == 1


# --- observation layout and reset distributions ---------------------------------------------------------------


def test_ant_obs_layout_and_goal_slice(ant):
    env: AntGoalEnv = ant.env
    assert (env.spec.state_dim, env.spec.goal_start, env.spec.goal_end, env.spec.obs_dim) == (29, 0, 2, 31)
    assert env.observation_size == 31 and env.action_size == 8
    torso = np.array([[4.0, 4.0, 0.6], [4.3, 3.8, 0.5], [5.0, 4.5, 0.55], [3.2, 4.1, 0.7]])
    goal = np.array([[12.0, 4.0], [4.0, 12.0], [8.0, 12.0], [12.0, 12.0]])
    s = _placed(ant, torso, goal)
    obs = np.asarray(s.obs)
    assert obs.shape == (B, 31)
    np.testing.assert_allclose(obs[:, 0:3], torso, atol=1e-6)  # state[0:3] = torso xyz
    np.testing.assert_allclose(obs[:, 29:31], goal, atol=1e-6)  # commanded goal
    np.testing.assert_allclose(env.spec.achieved_goal(obs[:, :29]), np.asarray(s.pipeline_state.x.pos[:, 0, :2]),
                               atol=1e-6)
    # The next state's achieved goal is still the torso (not some other link).
    s = ant.step(s, _zero_actions(ant))
    np.testing.assert_allclose(np.asarray(s.obs[:, 0:2]), np.asarray(s.pipeline_state.x.pos[:, 0, :2]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.obs[:, 29:31]), goal, atol=1e-5)  # the goal marker never moves


def test_ant_maze_reset_starts_on_r_and_goals_on_g_cells(ant):
    s = ant.reset(jax.random.split(jax.random.key(3), B))
    layout = mazes.get_layout("u_maze", 4.0)
    np.testing.assert_allclose(np.asarray(s.obs[:, 0:2]), np.tile([[4.0, 4.0]], (B, 1)), atol=1e-6)  # 'R' = (1, 1)
    goal_set = {tuple(g) for g in layout.cell_to_xy(layout.goal_cells).tolist()}
    assert goal_set == {(4.0, 8.0), (4.0, 12.0), (8.0, 12.0), (12.0, 4.0), (12.0, 8.0), (12.0, 12.0)}
    for goal in np.asarray(s.obs[:, 29:31]).tolist():
        assert tuple(goal) in goal_set
    # Reset noise: z near brax's 0.55 standing height, q noise U(-0.1, 0.1).
    assert np.all(np.abs(np.asarray(s.obs[:, 2]) - 0.55) <= 0.1 + 1e-6)


def test_humanoid_obs_layout_goal_slice_and_reset_distribution(humanoid):
    # Reset-only (no `reset_to`, whose humanoid compile is slow): the start pose is known exactly.
    env: HumanoidGoalEnv = humanoid.env
    assert (env.spec.state_dim, env.spec.goal_start, env.spec.goal_end, env.spec.obs_dim) == (268, 0, 3, 271)
    assert env.observation_size == 271 and env.action_size == 17
    s = humanoid.reset(jax.random.split(jax.random.key(4), B))
    obs = np.asarray(s.obs)
    assert obs.shape == (B, 271)
    np.testing.assert_allclose(obs[:, 0:3], np.tile([[0.0, 0.0, 1.4]], (B, 1)), atol=1e-6)  # no reset noise
    np.testing.assert_allclose(obs[:, 0:3], np.asarray(s.pipeline_state.x.pos[:, 0]), atol=1e-6)  # torso xyz
    radius = np.linalg.norm(obs[:, 268:270], axis=1)
    assert np.all((radius >= 1.0) & (radius <= 5.0))
    np.testing.assert_allclose(obs[:, 270], 1.25)
    # The paper's quirk: the target's slide q (= goal xy) sits inside the state at q[24:26].
    np.testing.assert_allclose(obs[:, 24:26], obs[:, 268:270], atol=1e-6)
    s = humanoid.step(s, _zero_actions(humanoid))
    np.testing.assert_allclose(np.asarray(s.obs[:, 0:3]), np.asarray(s.pipeline_state.x.pos[:, 0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.obs[:, 268:270]), obs[:, 268:270], atol=1e-5)  # the goal stays put


# --- walls ----------------------------------------------------------------------------------------------------


def test_ant_cannot_pass_through_maze_walls(ant):
    # u_maze, cell size 4: the start cell (1, 1) spans x, y in [2, 6]; walls at cells (0, 1) (x < 2), (1, 0) (y < 2)
    # and (2, 1) (x > 6). Rows 0-2 throw the ant at 10 m/s into each of them; row 3 stays put. Without walls the
    # same throw slides the torso about 4.5 m (to x = -0.58 in the open ant), so passing through would be obvious.
    torso = np.array([[4.5, 4.0, 0.55], [4.0, 4.5, 0.55], [3.5, 4.0, 0.55], [4.0, 4.0, 0.55]])
    vel = np.array([[-10.0, 0.0, 0.0], [0.0, -10.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    s = _placed(ant, torso, np.tile([[12.0, 12.0]], (B, 1)), vel)
    xy = []
    for _ in range(40):  # 2 s
        s = ant.step(s, _zero_actions(ant))
        xy.append(np.asarray(s.obs[:, 0:2]))
    xy = np.stack(xy)  # [T, B, 2]
    torso_radius = 0.25
    tolerance = 0.05  # spring contacts are soft: allow a few cm of penetration, not a pass-through
    assert xy[:, 0, 0].min() >= 2.0 + torso_radius - tolerance
    assert xy[:, 1, 1].min() >= 2.0 + torso_radius - tolerance
    assert xy[:, 2, 0].max() <= 6.0 - torso_radius + tolerance
    # ... and each thrown ant really reached its wall (the throw is not simply too weak).
    assert xy[:, 0, 0].min() < 2.5 and xy[:, 1, 1].min() < 2.5 and xy[:, 2, 0].max() > 5.5
    np.testing.assert_allclose(xy[-1, 3], [4.0, 4.0], atol=0.1)


# --- success and termination ----------------------------------------------------------------------------------


def test_ant_success_fires_at_the_goal(ant):
    # Goal = centre of cell (1, 2); the torso is moved along +y, which stays inside the free cells (1, 2)-(1, 3).
    goal = np.tile([[4.0, 8.0]], (B, 1))
    # y offsets from the goal: 0, 0.3 (inside 0.5), 0.8 (outside 0.5, inside 2.0), 2.5 (outside both).
    offsets = np.array([0.0, 0.3, 0.8, 2.5])
    torso = np.stack([np.full(B, 4.0), 8.0 + offsets, np.full(B, 0.55)], axis=1)
    s = ant.step(_placed(ant, torso, goal), _zero_actions(ant))
    dist = np.asarray(s.metrics["dist"])
    np.testing.assert_allclose(dist, offsets, atol=0.05)  # one 0.05 s step from rest moves the torso only a little
    np.testing.assert_array_equal(np.asarray(s.metrics["success"]), [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(s.metrics["success_easy"]), [1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(s.done), np.zeros(B))


@pytest.mark.slow  # compiles the humanoid's `reset_to` (~20 s)
def test_humanoid_success_is_a_3d_distance_to_goal_at_z_1_25(humanoid):
    goal = np.tile([[2.0, -1.0]], (B, 1))
    # Rows: torso on the goal xy at z 1.4 (3-D dist 0.15); 0.3 m off in x (dist sqrt(0.09 + 0.0225) = 0.335);
    # on the goal xy but at z 1.85 (dist 0.6: xy alone would count as success); 3 m away (dist ~3.0).
    torso = np.array([[2.0, -1.0, 1.4], [2.3, -1.0, 1.4], [2.0, -1.0, 1.85], [5.0, -1.0, 1.4]])
    s = humanoid.step(_placed(humanoid, torso, goal), _zero_actions(humanoid))
    expected = np.array([0.15, math.sqrt(0.09 + 0.0225), 0.6, math.sqrt(9.0 + 0.0225)])
    np.testing.assert_allclose(np.asarray(s.metrics["dist"]), expected, atol=0.01)
    np.testing.assert_array_equal(np.asarray(s.metrics["success"]), [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(s.metrics["success_easy"]), [1.0, 1.0, 1.0, 0.0])


def test_ant_done_on_unhealthy_torso_height(ant):
    # Healthy range z in [0.2, 1.0]; one step from rest falls ~1 cm. Rows: too high, healthy, healthy, too low.
    # (The lowest row is flipped upside down so that its legs point up and no foot contact lifts the torso.)
    torso = np.array([[4.0, 4.0, 1.3], [4.0, 4.0, 0.55], [4.0, 4.0, 0.9], [4.0, 4.0, 0.1]])
    q = np.tile(np.asarray(ant.env.sys.init_q), (B, 1))
    q[:, :3] = torso
    q[3, 3:7] = [0.0, 1.0, 0.0, 0.0]  # 180 degrees about x
    s = ant.reset_to(jnp.asarray(q, jnp.float32), jnp.zeros((B, ant.env.sys.qd_size())),
                     jnp.tile(jnp.array([[12.0, 12.0]]), (B, 1)))
    s = ant.step(s, _zero_actions(ant))
    np.testing.assert_array_equal(np.asarray(s.done), [1.0, 0.0, 0.0, 1.0])


@pytest.mark.slow  # compiles the humanoid's `reset_to` (~20 s)
def test_humanoid_done_on_unhealthy_torso_height(humanoid):
    # Healthy range z in [1.0, 2.0]. Rows: too high (2.3), healthy (1.4), healthy (1.9), too low (0.4, lying on its
    # back: rotated 90 degrees about y, so no foot touches the floor).
    torso = np.array([[0.0, 0.0, 2.3], [0.0, 0.0, 1.4], [0.0, 0.0, 1.9], [0.0, 0.0, 0.4]])
    q = np.tile(np.asarray(humanoid.env.sys.init_q), (B, 1))
    q[:, :3] = torso
    q[3, 3:7] = [math.cos(math.pi / 4), 0.0, math.sin(math.pi / 4), 0.0]
    s = humanoid.reset_to(jnp.asarray(q, jnp.float32), jnp.zeros((B, humanoid.env.sys.qd_size())),
                          jnp.tile(jnp.array([[3.0, 0.0]]), (B, 1)))
    s = humanoid.step(s, _zero_actions(humanoid))
    np.testing.assert_array_equal(np.asarray(s.done), [1.0, 0.0, 0.0, 1.0])


# --- model building (no jit) ----------------------------------------------------------------------------------


def test_models_are_built_once_per_layout():
    assert make_env("ant_u_maze").sys is make_env("ant_u_maze").sys
    assert make_env("ant_u_maze").sys is not make_env("ant_u_maze_eval").sys


def test_maze_walls_match_the_layout_and_collide_with_the_robot():
    env = make_env("ant_u_maze")
    mj = env.sys.mj_model
    layout = mazes.get_layout("u_maze", 4.0)
    walls = [g for g in range(mj.ngeom) if mj.geom(g).name.startswith("wall_")]
    assert len(walls) == int(layout.wall_mask.sum()) == 18  # 5 + 2 + 4 + 2 + 5 '#' per row
    wall = mj.geom("wall_0_1")
    np.testing.assert_allclose(wall.pos, [0.0, 4.0, 1.0])  # cell (0, 1) -> (0 * 4, 1 * 4), centre at half of 2 m
    np.testing.assert_allclose(wall.size, [2.0, 2.0, 1.0])
    torso = mj.geom("torso_geom")
    assert (int(wall.contype[0]) & int(torso.conaffinity[0])) != 0
    target = mj.geom(mjcf_build.TARGET_BODY)
    assert int(target.contype[0]) == 0 and int(target.conaffinity[0]) == 0
    assert env.sys.link_names[-1] == mjcf_build.TARGET_BODY

    humanoid_maze = make_env("humanoid_u_maze").sys.mj_model
    np.testing.assert_allclose(humanoid_maze.geom("wall_0_1").pos, [0.0, 2.0, 0.5])  # 2 m cells, 1 m walls
    np.testing.assert_allclose(humanoid_maze.geom("wall_0_1").size, [1.0, 1.0, 0.5])
    assert int(humanoid_maze.geom("head").contype[0]) == 1  # every humanoid part touches maze walls


def test_unedited_asset_round_trips_to_brax_own_system():
    """The spec -> XML -> brax path alone changes nothing: brax's ant from our builder equals `mjcf.load`."""
    from brax.io import mjcf

    ours = mjcf_build.to_brax_system(mjcf_build.load_brax_asset("ant"))
    theirs = mjcf.load(mjcf_build.brax_asset_path("ant"))
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        # float32 rounding of XML-printed numbers: ~4e-7 relative.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-6)


def test_maze_envs_expose_their_layout_and_open_envs_none():
    env = make_env("ant_u_maze")
    assert env.layout == mazes.get_layout("u_maze", 4.0)
    assert make_env("humanoid_big_maze").layout == mazes.get_layout("big_maze", 2.0)
    assert make_env("ant").layout is None and make_env("humanoid").layout is None
    # The start cells the env resets to are the layout's 'R' cells in metres.
    np.testing.assert_allclose(np.asarray(env._start_xy), env.layout.cell_to_xy(env.layout.start_cells))


def test_unknown_maze_or_backend_is_refused():
    with pytest.raises(ValueError, match="no ant env for maze 'arena'"):
        AntGoalEnv("arena")  # a registered layout, but not one of the ant's
    with pytest.raises(ValueError, match="no humanoid env for maze 'u4_maze'"):
        make_env("humanoid_u_maze", maze="u4_maze")
    with pytest.raises(ValueError, match="'spring' pipeline only"):
        HumanoidGoalEnv(backend="generalized")


def test_max_geom_pairs_culls_wall_contacts_by_the_expected_count():
    # ant_u_maze contact slots (18 walls; MJX capsule-box emits 2 contacts per pair, the others 1):
    #   sphere-box   5 (torso + 4 feet) x 18 = 90 pairs      -> culled to 16
    #   capsule-box  4 hip capsules x 18 = 72 pairs x 2       -> culled to 16 x 2 = 32
    #   plane-sphere 4 feet on the floor                      -> 4 (planes are never culled)
    #   sphere-sphere 4 feet-torso + 6 foot-foot              -> 10 (fewer than 16: untouched)
    #   sphere-capsule 4 feet x 4 hip capsules                -> 16 (equal to 16: untouched)
    # exact: 90 + 144 + 4 + 10 + 16 = 264; culled: 16 + 32 + 4 + 10 + 16 = 78.
    # Mazes cull to DEFAULT_MAZE_MAX_GEOM_PAIRS = 16 unless told otherwise; open envs never cull.
    from mujoco import mjx

    assert mjx.make_data(make_env("ant_u_maze", max_geom_pairs=None).sys).ncon == 264
    assert mjx.make_data(make_env("ant_u_maze", max_geom_pairs=16).sys).ncon == 78
    default = make_env("ant_u_maze")
    assert default.max_geom_pairs == DEFAULT_MAZE_MAX_GEOM_PAIRS == 16
    assert mjx.make_data(default.sys).ncon == 78
    assert make_env("ant").max_geom_pairs is None and make_env("humanoid").max_geom_pairs is None
    with pytest.raises(ValueError):
        make_env("ant_u_maze", max_geom_pairs=0)


@pytest.mark.slow  # compiles the exact ant maze (~1-2 min)
def test_culled_contacts_give_the_same_wall_collisions(ant):
    culled = ant  # the default: 16 pairs per collision group
    assert culled.env.max_geom_pairs == 16
    exact = _compile(make_env("ant_u_maze", max_geom_pairs=None))
    torso = np.array([[4.5, 4.0, 0.55], [4.0, 4.5, 0.55], [2.6, 2.6, 0.55], [5.4, 4.0, 0.55]])
    vel = np.array([[-10.0, 0.0, 0.0], [0.0, -10.0, 0.0], [-4.0, -4.0, 0.0], [8.0, 3.0, 0.0]])
    goal = np.tile([[12.0, 12.0]], (B, 1))
    s_exact, s_culled = _placed(exact, torso, goal, vel), _placed(culled, torso, goal, vel)
    actions = jax.random.uniform(jax.random.key(7), (30, B, 8), minval=-1.0, maxval=1.0)
    for a in actions:
        s_exact, s_culled = exact.step(s_exact, a), culled.step(s_culled, a)
    # Same contacts -> same trajectory up to float32 reassociation (measured: < 1e-3 m after 60 random steps).
    np.testing.assert_allclose(np.asarray(s_culled.obs[:, :3]), np.asarray(s_exact.obs[:, :3]), atol=5e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ANT_NAMES + HUMANOID_NAMES)
def test_every_registered_env_builds_and_traces(name):
    assert name in env_names()
    env = make_env(name)
    family = get_entry(name).family
    assert family in ("ant", "humanoid")
    obs_dim = 31 if family == "ant" else 271
    assert env.observation_size == obs_dim
    # Trace (no compile) reset and step: shapes and dtypes of everything the wrappers rely on.
    state = jax.eval_shape(env.reset, jax.random.key(0))
    assert state.obs.shape == (obs_dim,)
    state = jax.eval_shape(env.step, state, jax.ShapeDtypeStruct((env.action_size,), jnp.float32))
    assert state.obs.shape == (obs_dim,) and state.obs.dtype == jnp.float32
    assert set(state.metrics) >= {"dist", "success", "success_easy"}


@pytest.mark.slow
def test_open_ant_reset_goal_on_the_10m_circle():
    env = make_env("ant")
    s = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(6), B))
    obs = np.asarray(s.obs)
    np.testing.assert_allclose(np.linalg.norm(obs[:, 29:31], axis=1), 10.0, rtol=1e-5)
    assert np.all(np.abs(obs[:, 0:2]) <= 0.1 + 1e-6)  # start at the origin with U(-0.1, 0.1) noise
    assert len({round(float(a), 3) for a in np.arctan2(obs[:, 30], obs[:, 29])}) == B  # angles differ per key
