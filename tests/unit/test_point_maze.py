"""PointMaze: obs layout, wall collisions (no tunnelling), metrics, reset distribution, jit/vmap behaviour."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from actors.envs import registry
from actors.envs.base import State
from actors.envs.point_maze import PointMaze

RADIUS = 0.1  # PointMaze's default footprint half-size


def state_at(env: PointMaze, pos, goal) -> State:
    """A state with the point at `pos` and the commanded goal `goal` (the env keeps its state in the obs)."""
    zero = jnp.zeros((), jnp.float32)
    return State(
        pipeline_state=None,
        obs=jnp.asarray([*pos, *goal], jnp.float32),
        reward=zero,
        done=zero,
        metrics={"dist": zero, "success": zero},
    )


def rollout(step_fn, state: State, actions) -> np.ndarray:
    """Positions ``[T, ..., 2]`` after each of ``actions [T, ..., 2]``: `step_fn` scanned under jit."""

    @jax.jit
    def run(state, actions):
        def body(s, a):
            s = step_fn(s, a)
            return s, s.obs[..., :2]

        return jax.lax.scan(body, state, actions)[1]

    return np.asarray(run(state, jnp.asarray(actions, jnp.float32)))


def distance_to_nearest_wall(env: PointMaze, positions: np.ndarray) -> np.ndarray:
    """Euclidean distance from each position ``[..., 2]`` to the nearest wall-cell square (numpy, brute force)."""
    s = env.layout.scaling
    walls = np.argwhere(env.layout.wall_mask) * s  # wall centres [W, 2]
    offset = np.abs(positions[..., None, :] - walls) - 0.5 * s  # [..., W, 2], <= 0 inside the square's slab
    return np.linalg.norm(np.maximum(offset, 0.0), axis=-1).min(axis=-1)


# --- spec and observation layout ------------------------------------------------------------------------------


def test_spec_and_sizes():
    env = PointMaze("u_maze", success_threshold=0.25, episode_length=77)
    spec = env.spec
    assert (spec.state_dim, spec.goal_start, spec.goal_end, spec.obs_dim) == (2, 0, 2, 4)
    assert (spec.success_threshold, spec.episode_length) == (0.25, 77)
    assert (env.observation_size, env.action_size, env.backend) == (4, 2, "jax")


def test_obs_layout_and_goal_slice():
    env = PointMaze("arena")
    state = env.step(state_at(env, (3.0, 3.0), (1.0, 5.0)), jnp.array([0.5, -1.0]))
    # Free space: the move is exactly action * max_step = (0.1, -0.2).
    np.testing.assert_allclose(state.obs, [3.1, 2.8, 1.0, 5.0], atol=1e-6)
    np.testing.assert_allclose(env.spec.achieved_goal(env.spec.state_of(state.obs)), [3.1, 2.8], atol=1e-6)
    np.testing.assert_allclose(env.spec.goal_of(state.obs), [1.0, 5.0])
    assert state.obs.dtype == jnp.float32 and state.done == 0.0


def test_actions_are_clipped():
    env = PointMaze("arena", max_step=0.3)
    state = env.step(state_at(env, (3.0, 3.0), (1.0, 1.0)), jnp.array([5.0, -0.5]))
    np.testing.assert_allclose(state.obs[:2], [3.3, 2.85], atol=1e-6)


# --- walls --------------------------------------------------------------------------------------------------

GAP = 1e-3  # contact gap at scaling 1: a blocked point stops 0.001 short of touching the wall

# (layout, start, action, where it must end after many steps), u_maze = #####/#RGG#/###G#/#GGG#/#####.
# Contact coordinates are hand-computed: a wall face at c +- 0.5, minus the radius and the gap.
WALL_PUSHES = [
    pytest.param("u_maze", (1.0, 1.0), (1.0, 0.0), (1.5 - RADIUS - GAP, 1.0), id="down-into-wall-2-1"),
    pytest.param("u_maze", (3.0, 1.0), (-1.0, 0.0), (2.5 + RADIUS + GAP, 1.0), id="up-into-wall-2-1"),
    pytest.param("u_maze", (1.0, 2.0), (1.0, 0.0), (1.5 - RADIUS - GAP, 2.0), id="down-into-wall-2-2"),
    pytest.param("u_maze", (1.0, 1.0), (0.0, -1.0), (1.0, 0.5 + RADIUS + GAP), id="left-into-border"),
    pytest.param("u_maze", (1.0, 2.9), (0.0, 1.0), (1.0, 3.5 - RADIUS - GAP), id="right-into-border"),
    pytest.param("big_maze", (1.0, 2.0), (0.0, 1.0), (1.0, 2.5 - RADIUS - GAP), id="right-into-wall-1-3"),
    pytest.param(
        "u_maze", (1.0, 1.0), (-1.0, -1.0), (0.5 + RADIUS + GAP, 0.5 + RADIUS + GAP), id="diagonal-top-left-corner"
    ),
    pytest.param(
        "u_maze", (3.0, 2.0), (1.0, 1.0), (3.5 - RADIUS - GAP, 3.5 - RADIUS - GAP), id="diagonal-bottom-right-corner"
    ),
    # Moves diagonally until wall (2, 2) stops y, slides down the corridor (2, 3) along that wall, then left along
    # the bottom row into the bottom-left corner.
    pytest.param(
        "u_maze", (1.0, 3.0), (1.0, -1.0), (3.5 - RADIUS - GAP, 0.5 + RADIUS + GAP), id="diagonal-round-the-u"
    ),
    # From the start: slides right along walls (2, 1), (2, 2), drops down the corridor once clear of the convex
    # corner of (2, 2), and ends in the bottom-right corner.
    pytest.param(
        "u_maze", (1.0, 1.0), (1.0, 1.0), (3.5 - RADIUS - GAP, 3.5 - RADIUS - GAP), id="diagonal-along-wall-and-down"
    ),
]


@pytest.mark.parametrize("max_step", [0.2, 0.95])
@pytest.mark.parametrize("layout,start,action,end", WALL_PUSHES)
def test_push_into_walls_never_enters_them(layout, start, action, end, max_step):
    env = PointMaze(layout, max_step=max_step)
    positions = rollout(env.step, state_at(env, start, (0.0, 0.0)), np.tile(action, (60, 1)))
    # The footprint (a disk of the radius, let alone its centre) never touches a wall square ...
    assert distance_to_nearest_wall(env, positions).min() > RADIUS
    # ... and the point ends where the walls stop it, on its own side.
    np.testing.assert_allclose(positions[-1], end, atol=1e-5)


def test_no_tunnelling_at_max_step_just_below_a_cell():
    # Max step 0.99 of a cell, pushing straight at the one-cell-thick wall between the U's arms for a long time.
    env = PointMaze("u_maze", max_step=0.99)
    positions = rollout(env.step, state_at(env, (1.3, 1.0), (0.0, 0.0)), np.tile([1.0, 0.0], (30, 1)))
    assert (positions[:, 0] < 1.5).all()
    np.testing.assert_allclose(positions[-1], [1.5 - RADIUS - GAP, 1.0], atol=1e-5)


def test_larger_scaling_scales_the_contact_point():
    env = PointMaze("u_maze", scaling=2.0)  # cell (1, 1) centred at (2, 2), wall (2, 1) face at x = 3
    positions = rollout(env.step, state_at(env, (2.0, 2.0), (0.0, 0.0)), np.tile([1.0, 0.0], (30, 1)))
    np.testing.assert_allclose(positions[-1], [3.0 - RADIUS - 2e-3, 2.0], atol=1e-5)


@pytest.mark.parametrize("layout,max_step", [("hardest_maze", 0.3), ("big_maze", 0.95)])
def test_random_walks_stay_out_of_walls(layout, max_step):
    env = PointMaze(layout, max_step=max_step)
    num_envs, num_steps = 128, 150
    key_reset, key_actions = jax.random.split(jax.random.key(3))
    states = jax.vmap(env.reset)(jax.random.split(key_reset, num_envs))
    # About 60% of action components saturated, so walkers spend much of their time pressed into walls and corners,
    # the rest spread over all contact angles.
    actions = jnp.clip(2.0 * jax.random.normal(key_actions, (num_steps, num_envs, 2)), -1.0, 1.0)
    positions = rollout(jax.vmap(env.step), states, actions)
    assert distance_to_nearest_wall(env, positions.reshape(-1, 2)).min() > RADIUS
    # The walkers did move around and did meet walls (the check above is not vacuous).
    assert np.ptp(positions[..., 0]) > 2.0 and np.ptp(positions[..., 1]) > 2.0
    assert distance_to_nearest_wall(env, positions.reshape(-1, 2)).min() < RADIUS + 0.01


# --- metrics ------------------------------------------------------------------------------------------------


def test_success_at_the_goal_and_not_far_away():
    env = PointMaze("u_maze")  # success_threshold 0.3
    at_goal = env.step(state_at(env, (3.0, 2.0), (3.0, 2.0)), jnp.zeros(2))
    assert float(at_goal.metrics["success"]) == 1.0 and float(at_goal.metrics["dist"]) == 0.0
    far = env.step(state_at(env, (1.0, 1.0), (3.0, 3.0)), jnp.zeros(2))
    assert float(far.metrics["success"]) == 0.0
    np.testing.assert_allclose(far.metrics["dist"], np.sqrt(8.0), rtol=1e-6)
    np.testing.assert_allclose(far.reward, -np.sqrt(8.0), rtol=1e-6)


@pytest.mark.parametrize(
    "offset,success", [((0.0, 0.25), 1.0), ((0.18, 0.18), 1.0), ((0.0, 0.35), 0.0), ((0.25, 0.25), 0.0)]
)
def test_success_threshold_boundary(offset, success):
    env = PointMaze("arena")  # success_threshold 0.3; dists 0.25, 0.2546, 0.35, 0.3536
    state = env.step(state_at(env, (3.0 + offset[0], 3.0 + offset[1]), (3.0, 3.0)), jnp.zeros(2))
    np.testing.assert_allclose(state.metrics["dist"], np.hypot(*offset), rtol=1e-5)
    assert float(state.metrics["success"]) == success


def test_dist_after_a_move_matches_hand_computation():
    env = PointMaze("arena")
    state = env.step(state_at(env, (2.0, 2.0), (4.0, 5.0)), jnp.array([1.0, 0.5]))  # moves to (2.2, 2.1)
    np.testing.assert_allclose(state.metrics["dist"], np.hypot(4.0 - 2.2, 5.0 - 2.1), rtol=1e-6)
    for value in (*state.metrics.values(), state.reward, state.done):
        assert value.shape == () and value.dtype == jnp.float32


# --- reset --------------------------------------------------------------------------------------------------


def vmapped_resets(env: PointMaze, num: int, seeds=(0,)) -> list[np.ndarray]:
    """obs ``[num, 4]`` of `num` resets for each seed; one compilation for all seeds."""
    reset = jax.jit(jax.vmap(env.reset))
    return [np.asarray(reset(jax.random.split(jax.random.key(seed), num)).obs) for seed in seeds]


def test_reset_starts_near_r_and_goals_at_g_centres():
    env = PointMaze("big_maze", scaling=2.0, start_noise=0.1)
    (obs,) = vmapped_resets(env, 2000)
    starts, goals = obs[:, :2], obs[:, 2:]
    # big_maze has one R cell, (1, 1) -> world (2, 2); noise is uniform +-0.1 per axis.
    assert np.abs(starts - 2.0).max() <= 0.1 + 1e-6
    assert starts.std(axis=0).min() > 0.03  # the noise is there (U(+-0.1) has std 0.058)
    goal_cells = env.layout.goal_cells
    np.testing.assert_allclose(goals / 2.0, np.round(goals / 2.0), atol=1e-6)  # exactly at cell centres
    hit = {tuple(c) for c in np.round(goals / 2.0).astype(int)}
    # 2000 uniform draws over 25 cells miss one with probability ~25 * (24/25)^2000, i.e. never.
    assert hit == {tuple(c) for c in goal_cells}
    # Uniform over G cells: each of the 25 gets 80 +- 9 draws; 40..120 is > 4 sigma either side.
    counts = np.unique(np.round(goals / 2.0).astype(int), axis=0, return_counts=True)[1]
    assert counts.min() > 40 and counts.max() < 120


def test_reset_goal_noise_and_seed_sensitivity():
    env = PointMaze("u4_maze", goal_noise=0.2)
    obs, obs_again, obs_other_seed = vmapped_resets(env, 500, seeds=(0, 0, 1))
    goals = obs[:, 2:]
    nearest_centre = np.round(goals)  # scaling 1
    assert np.abs(goals - nearest_centre).max() <= 0.2 + 1e-6
    assert np.abs(goals - nearest_centre).max() > 0.1
    assert not env.layout.wall_mask[tuple(nearest_centre.astype(int).T)].any()
    # Different keys -> different episodes; the same key -> the same episode.
    np.testing.assert_array_equal(obs, obs_again)
    assert (obs[:, 2:] != obs_other_seed[:, 2:]).any(axis=1).mean() > 0.5  # 4 G cells + noise: most goals differ


def test_reset_metrics_match_obs():
    env = PointMaze("u_maze")
    state = env.reset(jax.random.key(5))
    np.testing.assert_allclose(state.metrics["dist"], np.linalg.norm(state.obs[:2] - state.obs[2:]), rtol=1e-6)
    assert set(state.metrics) == {"dist", "success"} and state.pipeline_state is None


# --- jit / vmap ---------------------------------------------------------------------------------------------


def test_reset_and_step_compile_once_under_jit_vmap():
    env = PointMaze("big_maze")
    traces = {"reset": 0, "step": 0}

    def counted_reset(key):
        traces["reset"] += 1
        return env.reset(key)

    def counted_step(state, action):
        traces["step"] += 1
        return env.step(state, action)

    reset = jax.jit(jax.vmap(counted_reset))
    step = jax.jit(jax.vmap(counted_step))
    obs_seen = []
    for seed in range(4):
        key_reset, key_action = jax.random.split(jax.random.key(seed))
        state = reset(jax.random.split(key_reset, 16))
        for _ in range(3):
            key_action, key = jax.random.split(key_action)
            state = step(state, jax.random.uniform(key, (16, 2), minval=-1.0, maxval=1.0))
        obs_seen.append(np.asarray(state.obs))
    assert traces == {"reset": 1, "step": 1}
    assert not np.allclose(obs_seen[0], obs_seen[1])  # the inputs really differed


def test_jit_matches_eager():
    env = PointMaze("u_maze", max_step=0.45)
    actions = jax.random.uniform(jax.random.key(1), (15, 2), minval=-1.5, maxval=1.5)
    eager = env.reset(jax.random.key(2))
    jitted = jax.jit(env.reset)(jax.random.key(2))
    np.testing.assert_array_equal(eager.obs, jitted.obs)
    step = jax.jit(env.step)
    for action in actions:
        eager, jitted = env.step(eager, action), step(jitted, action)
        np.testing.assert_allclose(eager.obs, jitted.obs, atol=1e-6)
        np.testing.assert_allclose(eager.metrics["dist"], jitted.metrics["dist"], atol=1e-6)


# --- construction and registry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"layout": "nope"}, "known layouts"),
        ({"max_step": 1.0}, "max_step"),
        ({"max_step": 0.0}, "max_step"),
        ({"scaling": 2.0, "max_step": 2.5}, "max_step"),
        ({"scaling": 0.0}, "scaling"),
        ({"success_threshold": 0.0}, "success_threshold"),
        ({"episode_length": 0}, "episode_length"),
        ({"start_noise": -0.1}, "start_noise"),
        ({"start_noise": 0.45}, "start_noise"),
        ({"goal_noise": 0.45}, "goal_noise"),
        ({"radius": 0.3}, "radius"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PointMaze(**kwargs)


POINT_ENVS = {
    "point_arena": "arena",
    "point_u_maze": "u_maze",
    "point_u_maze_eval": "u_maze_eval",
    "point_u4_maze": "u4_maze",
    "point_u4_maze_eval": "u4_maze_eval",
    "point_big_maze": "big_maze",
    "point_big_maze_eval": "big_maze_eval",
    "point_hardest_maze": "hardest_maze",
}


def test_registry_rows():
    point_names = {n for n in registry.env_names() if registry.get_entry(n).family == "point"}
    assert point_names == set(POINT_ENVS)
    for name, layout in POINT_ENVS.items():
        entry = registry.get_entry(name)
        assert entry.description
        env = registry.make_env(name, episode_length=50)
        assert isinstance(env, PointMaze)
        assert env.layout.name == layout and env.spec.episode_length == 50


def test_importing_the_env_loads_no_tensorflow_or_reverb():
    code = (
        "import sys, actors.envs.point_maze, actors.envs.mazes; "
        "bad = [m for m in ('tensorflow', 'reverb') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
