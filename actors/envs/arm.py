"""Goal-conditioned Franka Panda tasks (paper §4.5): push or bin-pick a cube to a goal, or reach a point; MJX only.

The model of each task is its ``panda_*.xml`` from the asset cache (`actors.envs.arm_assets`: the JaxGCRL task files,
adapted there from MuJoCo Menagerie's Panda), edited with `MjSpec` (`arm_spec`):
- every mesh geom and mesh asset is deleted. Meshes are visual only in these files: every collision is an explicit
  ``<pair>`` of primitive shapes and every moving link has an explicit ``<inertial>``;
- the paper's values replace the shipped (later) file's: finger joint range 0-0.08 m (shipped 0-0.05) and finger
  actuator gain 0.15686 (shipped 0.09804), so that control 255 holds a finger at 255 * 0.15686 / 500 = 0.08 m;
- physics as in the paper: timestep 0.002 s x 25 substeps = 0.05 s per env step, 6 solver and 12 line-search
  iterations, implicitfast; impratio 10 in the binpick files (as shipped).
The joint actuators stay as shipped: gains 4500/4500/2000/2000/1000/1000/1000 and damping 450/450/350/350/200/200/200,
but bias stiffness 4500/4500/3500/3500/2000/2000/2000, so joints 3-7 settle at gain / stiffness of their target (joint
4 at 0.57 of it, joints 6 and 7 at half), as in the paper's model.
brax's loader then fuses the joint-less bodies (link0 into the world, the hand into link 7), which puts the free bodies
first: q = [cube (7), goal marker (7), joints 1-7, fingers (2)]; reach has no cube and no fingers. The end effector is
link 7's origin, as in the paper's code. Body and joint indices are looked up by name, not assumed.

Observation, push and binpick (17 + 3; `GoalSpec` goal slice 0:3):

=====  ==============================================================  ====
dims   meaning                                                          unit
=====  ==============================================================  ====
0:3    cube position (the achieved goal)                                m
3:10   joint angles 1-7                                                 rad
10:13  end-effector position                                            m
13:16  end-effector linear velocity                                     m/s
16     finger distance (between the two finger bodies' origins)         m
17:20  commanded goal: target cube position                             m
=====  ==============================================================  ====

Reach (13 + 3; goal slice 7:10): joint angles 0:7, end-effector position 7:10 (the achieved goal), its velocity 10:13,
goal 13:16.

Actions in [-1, 1]: ``a[0:4]`` are absolute target angles of joints 1, 2, 4 and 6, mapped linearly onto
`JOINT_TARGET_LOW_RAD`..`JOINT_TARGET_HIGH_RAD`; joints 3, 5 and 7 are held at 0, 0 and 1.4487 rad. ``a[4]`` (not in
reach) closes the gripper when > 0 (both finger controls 0) and opens it otherwise (255).

Reset: arm at `ARM_Q0_RAD`, fingers at 0.04 m, every velocity 0; cube at its task's start centre + U(-n, n) in x and
y (z 0.07 m: it drops onto the table); goal at the task's goal centre + U(-n, n) per axis (z 0.03 m, the cube's
centre when it rests on the table, except in reach). The goal marker (a visual box, no contacts, gravity compensated)
is put on the goal. The env never terminates. `dist` is the cube-to-goal (reach: end-effector-to-goal) distance;
``success`` < 0.1 m, ``success_easy`` < 0.3 m, ``success_hard`` < 0.03 m. Reward = success (logged only).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import mujoco
from brax.base import System
from brax.envs.base import PipelineEnv

from actors.envs import mjcf_build
from actors.envs.arm_assets import asset_path
from actors.envs.base import GoalEnv, GoalSpec, State

__all__ = ["ARM_TASKS", "ArmEnv", "ArmTask", "arm_spec", "arm_system", "make_arm"]


@dataclasses.dataclass(frozen=True)
class ArmTask:
    """The numbers of one arm task."""

    name: str
    asset: str
    """Task file in the asset cache."""
    goal_centre_m: tuple[float, float, float]
    """Centre of the commanded goal's box."""
    goal_half_range_m: tuple[float, float, float]
    """Half-widths of the goal's box per axis (uniform)."""
    cube_centre_xy_m: tuple[float, float] | None = None
    """Centre of the cube's start square; None: no cube (reach)."""
    cube_half_range_m: float = 0.0
    """Half-width of the cube's start square (uniform in x and in y)."""
    impratio: float = 1.0
    """MuJoCo's friction-to-normal impedance ratio (10 in binpick, as the task files ship)."""

    @property
    def has_cube(self) -> bool:
        return self.cube_centre_xy_m is not None


ARM_TASKS = {task.name: task for task in (
    ArmTask("arm_push_easy", "panda_push_easy.xml", (0.1, 0.6, 0.03), (0.1, 0.1, 0.0), (-0.1, 0.6), 0.1),
    ArmTask("arm_push_hard", "panda_push_hard.xml", (0.25, 0.65, 0.03), (0.25, 0.25, 0.0), (-0.25, 0.65), 0.25),
    ArmTask("arm_binpick_easy", "panda_binpick_easy.xml", (0.17, 0.6, 0.03), (0.09, 0.09, 0.0), (-0.15, 0.6), 0.09,
            impratio=10.0),
    ArmTask("arm_binpick_hard", "panda_binpick_hard.xml", (0.3, 0.6, 0.03), (0.15, 0.15, 0.0), (-0.3, 0.6), 0.15,
            impratio=10.0),
    ArmTask("arm_reach", "panda_reach.xml", (0.0, 0.5, 0.3), (0.2, 0.2, 0.2)),
)}

TIMESTEP_S = 0.002
N_FRAMES = 25
SOLVER_ITERATIONS = 6
LINE_SEARCH_ITERATIONS = 12
FINGER_RANGE_M = (0.0, 0.08)
FINGER_GAIN = 0.15686
"""Force per unit of finger control; 255 * 0.15686 / 500 (the bias stiffness) = 0.08 m."""
FINGER_OPEN_CTRL = 255.0
FINGER_CLOSED_CTRL = 0.0
ARM_Q0_RAD = (1.571, 0.742, 0.0, -1.571, 0.0, 3.054, 1.449)
FINGER_Q0_M = 0.04
CUBE_START_Z_M = 0.07
JOINT_TARGET_LOW_RAD = (0.3491, 0.0, 0.0, -3.0718, 0.0, 2.3562, 1.4487)
JOINT_TARGET_HIGH_RAD = (2.7925, 1.48353, 0.0, -0.0698, 0.0, 3.7525, 1.4487)
"""Targets of joints 1-7 at action -1 and +1; joints 3, 5, 7 are not actuated by the policy (low = high)."""
ACTION_JOINTS = (0, 1, 3, 5)
"""Joints (0-based) that ``a[0:4]`` command: joints 1, 2, 4, 6."""
SUCCESS_M, SUCCESS_EASY_M, SUCCESS_HARD_M = 0.1, 0.3, 0.03
BONE_RADIUS_M = 0.04
"""Radius of the capsules `arm_system(..., bones=True)` draws along the links (rendering only)."""


def arm_spec(task: ArmTask, bones: bool = False) -> mujoco.MjSpec:
    """The task's model as an editable spec, meshes deleted and the paper's values set (module docstring).
    `bones`: also draw each link as a capsule from its origin to the next link's, or a ball where the two coincide
    (visual only: no contacts, and the
    links' explicit inertials ignore geoms), so that a render shows the arm the meshes would have drawn."""
    spec = mujoco.MjSpec.from_file(str(asset_path(task.asset)))
    for geom in [g for g in spec.geoms if g.type == mujoco.mjtGeom.mjGEOM_MESH]:
        spec.delete(geom)
    for mesh in list(spec.meshes):
        spec.delete(mesh)
    spec.option.timestep = TIMESTEP_S
    spec.option.iterations = SOLVER_ITERATIONS
    spec.option.ls_iterations = LINE_SEARCH_ITERATIONS
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.impratio = task.impratio
    for joint in spec.joints:
        if joint.name.startswith("finger_joint"):
            joint.range = list(FINGER_RANGE_M)
    for actuator in spec.actuators:
        if actuator.target.startswith("finger_joint"):
            gain = list(actuator.gainprm)
            gain[0] = FINGER_GAIN
            actuator.gainprm = gain
    if bones:
        for i in range(1, 8):
            child = spec.body(f"link{i + 1}") if i < 7 else spec.body("hand")
            look = dict(size=[BONE_RADIUS_M, 0, 0], contype=0, conaffinity=0, mass=0, rgba=[0.9, 0.9, 0.92, 1])
            if sum(x * x for x in child.pos) < 1e-12:  # the next joint sits at this link's origin: a ball there
                child.parent.add_geom(type=mujoco.mjtGeom.mjGEOM_SPHERE, **look)
            else:
                child.parent.add_geom(type=mujoco.mjtGeom.mjGEOM_CAPSULE, fromto=[0, 0, 0, *child.pos], **look)
    return spec


@functools.lru_cache(maxsize=None)
def arm_system(name: str, bones: bool = False) -> System:
    """The brax `System` of arm task `name`; built once per process per arguments."""
    return mjcf_build.to_brax_system(arm_spec(ARM_TASKS[name], bones))


# GoalEnv first so that its `observation_size` (read from the spec) wins over PipelineEnv's, which runs a reset.
class ArmEnv(GoalEnv, PipelineEnv):
    """One arm task; see the module docstring for every convention."""

    def __init__(self, task: str, *, episode_length: int = 1000, backend: str = "mjx") -> None:
        if backend != "mjx":
            raise ValueError(f"the arm envs run on brax's 'mjx' pipeline only (as in the paper), got {backend!r}")
        self.task = ARM_TASKS[task]
        super().__init__(sys=arm_system(task), backend=backend, n_frames=N_FRAMES)
        model = self.sys.mj_model
        body_id = lambda name: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)  # noqa: E731
        body = lambda name: body_id(name) - 1  # noqa: E731 (index into brax's x, which excludes the world)
        qpos = lambda name: int(model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)])  # noqa: E731
        free_qpos = lambda name: int(model.jnt_qposadr[model.body_jntadr[body_id(name)]])  # noqa: E731 (its free joint)
        self._ee_body = body("link7")
        self._arm_q = qpos("joint1")
        self._marker_q = free_qpos("goal_marker")
        if self.task.has_cube:
            self._cube_q = free_qpos("cube")
            self._finger_bodies = (body("left_finger"), body("right_finger"))
            self._finger_q = qpos("finger_joint1")
            state_dim, goal_start = 17, 0
        else:
            state_dim, goal_start = 13, 7
        self._spec = GoalSpec(state_dim=state_dim, goal_start=goal_start, goal_end=goal_start + 3,
                              success_threshold=SUCCESS_M, episode_length=episode_length)
        low, high = jnp.array(JOINT_TARGET_LOW_RAD), jnp.array(JOINT_TARGET_HIGH_RAD)
        self._target_mid, self._target_half = (low + high) / 2, (high - low) / 2

    @property
    def spec(self) -> GoalSpec:
        return self._spec

    @property
    def action_size(self) -> int:
        return 5 if self.task.has_cube else 4

    @property
    def render_sys(self) -> System:
        """The same model with the links drawn as capsules (`depthrl render`'s viewer; same q layout)."""
        return arm_system(self.task.name, bones=True)

    def reset(self, rng: jax.Array) -> State:
        return self.reset_to(*self.sample_start(rng))

    def sample_start(self, rng: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """``key -> (goal [3], cube_xy [2] or None)``: the draws of `reset` (module docstring), without physics."""
        key_cube, key_goal = jax.random.split(rng)
        task = self.task
        goal = jnp.array(task.goal_centre_m) + jnp.array(task.goal_half_range_m) * jax.random.uniform(
            key_goal, (3,), minval=-1.0, maxval=1.0)
        if not task.has_cube:
            return goal, None
        cube_xy = jnp.array(task.cube_centre_xy_m) + task.cube_half_range_m * jax.random.uniform(
            key_cube, (2,), minval=-1.0, maxval=1.0)
        return goal, cube_xy

    def reset_to(self, goal: jax.Array, cube_xy: jax.Array | None = None) -> State:
        """The start state with commanded ``goal [3]`` and (tasks with a cube) the cube at ``cube_xy [2]``; the arm
        at its fixed start pose. `reset` draws these; tests and evaluators use it to place them exactly."""
        q = self.sys.init_q
        q = q.at[self._arm_q:self._arm_q + 7].set(jnp.array(ARM_Q0_RAD))
        q = q.at[self._marker_q:self._marker_q + 3].set(goal)
        if self.task.has_cube:
            q = q.at[self._finger_q:self._finger_q + 2].set(FINGER_Q0_M)
            q = q.at[self._cube_q:self._cube_q + 3].set(jnp.array([cube_xy[0], cube_xy[1], CUBE_START_Z_M]))
        pipeline_state = self.pipeline_init(q, jnp.zeros(self.sys.qd_size()))
        obs, dist = self._observe(pipeline_state, goal)
        return State(pipeline_state, obs, jnp.zeros(()), jnp.zeros(()), self._metrics(dist), {"goal": goal})

    def step(self, state: State, action: jax.Array) -> State:
        pipeline_state = self.pipeline_step(state.pipeline_state, self.ctrl(action))
        obs, dist = self._observe(pipeline_state, state.info["goal"])
        metrics = self._metrics(dist)
        return state.replace(pipeline_state=pipeline_state, obs=obs, reward=metrics["success"], done=jnp.zeros(()),
                             metrics=metrics)

    def ctrl(self, action: jax.Array) -> jax.Array:
        """``action [A]`` in [-1, 1] -> actuator controls [7 joints (+ 2 fingers)] (module docstring)."""
        scaled = jnp.zeros(7).at[jnp.array(ACTION_JOINTS)].set(action[:4])
        joints = self._target_mid + scaled * self._target_half
        if not self.task.has_cube:
            return joints
        finger = jnp.where(action[4] > 0, FINGER_CLOSED_CTRL, FINGER_OPEN_CTRL)
        return jnp.concatenate([joints, jnp.stack([finger, finger])])

    def _observe(self, pipeline_state, goal: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``-> (obs [S+G] float32, achieved-to-commanded goal distance [])``."""
        q = pipeline_state.q
        joints = q[self._arm_q:self._arm_q + 7]
        ee_pos = pipeline_state.x.pos[self._ee_body]
        ee_vel = pipeline_state.xd.vel[self._ee_body]
        if self.task.has_cube:
            cube = q[self._cube_q:self._cube_q + 3]
            left, right = (pipeline_state.x.pos[b] for b in self._finger_bodies)
            state = jnp.concatenate([cube, joints, ee_pos, ee_vel, jnp.linalg.norm(left - right)[None]])
            achieved = cube
        else:
            state = jnp.concatenate([joints, ee_pos, ee_vel])
            achieved = ee_pos
        return jnp.concatenate([state, goal]).astype(jnp.float32), jnp.linalg.norm(achieved - goal)

    @staticmethod
    def _metrics(dist: jax.Array) -> dict[str, jax.Array]:
        return {"dist": dist.astype(jnp.float32), "success": (dist < SUCCESS_M).astype(jnp.float32),
                "success_easy": (dist < SUCCESS_EASY_M).astype(jnp.float32),
                "success_hard": (dist < SUCCESS_HARD_M).astype(jnp.float32)}


def make_arm(task: str, episode_length: int = 1000) -> ArmEnv:
    """Registry factory."""
    return ArmEnv(task, episode_length=episode_length)
