"""Goal-conditioned Reacher: a two-link planar arm moves its fingertip onto a target (Brax, `generalized` backend).

The model is the ``reacher.xml`` that ships with brax (arm links of 0.1 m, fingertip 0.11 m along the second link,
a target body on two slide joints), stepped with ``n_frames=2`` of a 0.01 s timestep, i.e. 0.02 s per env step. The
setup follows the CRL/JaxGCRL reacher so results compare with published numbers, with one deliberate difference in
the fingertip velocity (see `_observe`).

Observation ``[13]`` (`GoalSpec`: state_dim 10, goal slice 4:7):

====  =========================================================  =====
dims  meaning                                                     units
====  =========================================================  =====
0:2   cos of joint0, joint1 angles                               --
2:4   sin of joint0, joint1 angles                               --
4:7   fingertip position, world frame (the achieved goal)        m
7:10  fingertip linear velocity, world frame                     m/s
10:13 target position, world frame (the commanded goal)          m
====  =========================================================  =====

Reset: arm angles ``init_q + U(-0.1, 0.1)``, arm velocities ``U(-0.005, 0.005)``; the target is placed at radius
``0.2 * U(0, 1)`` and angle ``U(0, 2 pi)`` (uniform in radius, so targets crowd the centre; this is what the reference
does, not uniform over the disc's area) and sits still. `success` is a 3-D tip-to-target distance below 0.05 m; both
points lie at z = 0.01 m so this is the planar distance. The reward is ``-dist`` and is only logged (CRL learns from
the goal, not the reward). The env never terminates: ``done`` is always 0.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from brax import base as brax_base
from brax import math as brax_math
from brax.envs.base import PipelineEnv
from brax.io import mjcf
from etils import epath

from actors.envs.base import GoalEnv, GoalSpec, State

__all__ = ["Reacher", "REACHER_SPEC"]

REACHER_SPEC = GoalSpec(state_dim=10, goal_start=4, goal_end=7, success_threshold=0.05, episode_length=1001)
"""The reacher layout; 1001 steps is the JaxGCRL episode length (1000 transitions per episode after the wrapper)."""

_N_FRAMES = 2
"""Physics steps per env step (0.01 s each), as in brax's and JaxGCRL's reacher."""
_ARM_LINK = 1
"""Index of the second arm link ('body1') in brax's link order [body0, body1, target]."""
_TARGET_LINK = 2
"""Index of the target body; its two slide joints are q[2:4] (x, y)."""
_TIP_OFFSET_M = (0.11, 0.0, 0.0)
"""Fingertip in the second link's frame: reacher.xml puts body 'fingertip' at pos="0.11 0 0" inside body1. brax
fuses that joint-less body into body1, so the tip must be recomputed from body1's transform."""
_ARM_Q_NOISE = 0.1
"""Half-width of the uniform noise on the two arm angles at reset (rad)."""
_ARM_QD_NOISE = 0.005
"""Half-width of the uniform noise on the two arm angular velocities at reset (rad/s)."""
_TARGET_MAX_RADIUS_M = 0.2
"""Targets are sampled at radius 0.2 * U(0, 1) around the arm's base."""


def _load_system() -> brax_base.System:
    path = epath.resource_path("brax") / "envs/assets/reacher.xml"
    with warnings.catch_warnings():
        # brax warns on every load that it is unmaintained in favour of MJX; we pin brax and mean to use it.
        warnings.filterwarnings("ignore", message="Brax System", category=UserWarning)
        return mjcf.load(path)


# GoalEnv first so that its `observation_size` (read from the spec) wins over PipelineEnv's, which runs a reset.
class Reacher(GoalEnv, PipelineEnv):
    """Two-link arm reaching a random target; see the module docstring for the observation and reset."""

    def __init__(self, episode_length: int = REACHER_SPEC.episode_length):
        super().__init__(sys=_load_system(), backend="generalized", n_frames=_N_FRAMES)
        self._spec = GoalSpec(
            state_dim=REACHER_SPEC.state_dim,
            goal_start=REACHER_SPEC.goal_start,
            goal_end=REACHER_SPEC.goal_end,
            success_threshold=REACHER_SPEC.success_threshold,
            episode_length=episode_length,
        )

    @property
    def spec(self) -> GoalSpec:
        return self._spec

    def reset(self, key: jax.Array) -> State:
        """Sample arm angles, arm velocities and a target from PRNG ``key``."""
        key_q, key_qd, key_radius, key_angle = jax.random.split(key, 4)
        arm_q = self.sys.init_q[:2] + jax.random.uniform(key_q, (2,), minval=-_ARM_Q_NOISE, maxval=_ARM_Q_NOISE)
        arm_qd = jax.random.uniform(key_qd, (2,), minval=-_ARM_QD_NOISE, maxval=_ARM_QD_NOISE)
        radius = _TARGET_MAX_RADIUS_M * jax.random.uniform(key_radius)
        angle = 2.0 * jnp.pi * jax.random.uniform(key_angle)
        target_xy = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)])
        q = jnp.concatenate([arm_q, target_xy])
        qd = jnp.concatenate([arm_qd, jnp.zeros(2)])
        return self.init_state(q, qd)

    def init_state(self, q: jax.Array, qd: jax.Array) -> State:
        """The `State` at joint positions ``q [4]`` and velocities ``qd [4]``.

        Layout of both: ``[joint0, joint1, target_x, target_y]`` (rad, rad, m, m and their rates). `reset` samples
        them and calls this; tests and evaluators use it to start from a chosen configuration.
        """
        pipeline_state = self.pipeline_init(q, qd)
        obs, dist = self._observe(pipeline_state)
        return State(
            pipeline_state=pipeline_state,
            obs=obs,
            reward=-dist,
            done=jnp.zeros(()),
            metrics=self._metrics(dist),
            info={},
        )

    def step(self, state: State, action: jax.Array) -> State:
        """Apply ``action [2]`` in [-1, 1] (joint torques, scaled by the XML's gear of 200) for 0.02 s."""
        pipeline_state = self.pipeline_step(state.pipeline_state, action)
        obs, dist = self._observe(pipeline_state)
        return state.replace(
            pipeline_state=pipeline_state,
            obs=obs,
            reward=-dist,
            done=jnp.zeros(()),
            metrics=self._metrics(dist),
        )

    def _metrics(self, dist: jax.Array) -> dict[str, jax.Array]:
        return {"dist": dist, "success": (dist < self._spec.success_threshold).astype(jnp.float32)}

    def _observe(self, pipeline_state: brax_base.State) -> tuple[jax.Array, jax.Array]:
        """``-> (obs [13], tip-to-target distance [])``.

        Fingertip velocity: the rigid-body velocity of the tip point, ``v_link + omega x r`` with
        ``r = R_link @ (0.11, 0, 0)`` the link-origin-to-tip vector in the world frame; brax's ``xd.vel`` is the
        world-frame velocity of the link's origin (``x.pos``). This is exact at the current state, whereas a finite
        difference of tip positions would lag by half a step and need the previous state in the carry.
        brax's own reacher (and JaxGCRL, which copies it) applies the tip offset *unrotated* (``omega x (0.11, 0,
        0)``), which is right only when the second link points along +x; we rotate it, so dims 7:10 differ from the
        reference whenever the arm is bent or turned.
        """
        q = pipeline_state.q
        arm_angles = q[:2]
        link = pipeline_state.x.take(_ARM_LINK)
        link_to_tip = brax_math.rotate(jnp.array(_TIP_OFFSET_M), link.rot)
        tip_pos = link.pos + link_to_tip
        link_motion = pipeline_state.xd.take(_ARM_LINK)
        tip_vel = link_motion.vel + jnp.cross(link_motion.ang, link_to_tip)
        target_pos = pipeline_state.x.pos[_TARGET_LINK]
        obs = jnp.concatenate([jnp.cos(arm_angles), jnp.sin(arm_angles), tip_pos, tip_vel, target_pos])
        dist = jnp.linalg.norm(tip_pos - target_pos)
        return obs, dist
