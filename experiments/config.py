"""Run configuration: frozen dataclasses nested by concern, one `validate()` run before anything starts.

Every field is documented here, and the docstrings are the `--help` text of `depthrl train` (tyro reads them).
Field names are unique across the groups so that the command line stays flat: ``--env``, ``--critic-depth``,
``--num-envs``...
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal, Optional

from actors.envs.registry import UnknownEnvError, env_names, get_entry
from learners.crl import CRLConfig
from learners.networks import ConfigError

PAPER_SGD_STEPS_PER_ENV_STEP = 800 / (512 * 62)
"""The paper's update-to-data ratio: 800 SGD steps per training step of 512 envs x 62 env steps (1:39.7)."""


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Which task, and how training episodes restart."""

    env: str = "point_u_maze"
    """Registered env name (see `depthrl envs`)."""
    episode_length: Optional[int] = None
    """Env steps per episode before truncation; None uses the env's default."""
    reset_mode: Literal["fixed_per_slot", "resample"] = "resample"
    """'fixed_per_slot': a finished training slot restores its first start and goal (what the paper's brax runs did);
    'resample': it draws a new start and goal. Resample is the default because the cheap point mazes have few slots
    and would otherwise train on only num_envs goals."""
    eval_env: Optional[str] = None
    """Env used for evaluation (e.g. a '_eval' layout); None evaluates on the training env."""


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The data/update schedule (paper §1.5), in env steps and SGD steps."""

    num_envs: int = 64
    """Parallel training env slots (paper: 512)."""
    unroll_length: int = 50
    """Env steps per slot collected per training iteration (paper: 62)."""
    batch_size: int = 256
    """Transitions per SGD minibatch (paper: 512, its code default 256)."""
    sgd_steps_per_env_step: float = PAPER_SGD_STEPS_PER_ENV_STEP
    """Update-to-data ratio: SGD steps per collected env step (paper 800/31744 = 0.0252)."""
    buffer_capacity_steps: int = 10_000
    """Replay steps kept per env slot, FIFO (paper: 10,000)."""
    prefill_steps_per_env: int = 200
    """Steps per slot collected with the untrained policy before learning starts (paper: 1,000)."""
    window_steps: Optional[int] = None
    """Length of the windows sampled per slot for relabelling; None uses the episode length (paper: 1000)."""
    total_env_steps: int = 600_000
    """Stop after this many env steps (all slots together)."""
    goal_discount: float = 0.99
    """γ of the geometric future-goal sampling in relabelling."""

    def sgd_steps_per_iteration(self) -> int:
        """K: SGD steps after each collection of num_envs x unroll_length env steps (at least 1)."""
        return max(1, round(self.sgd_steps_per_env_step * self.num_envs * self.unroll_length))

    @property
    def env_steps_per_iteration(self) -> int:
        return self.num_envs * self.unroll_length


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation with the deterministic policy on fresh envs (paper §5)."""

    num_eval_envs: int = 64
    """Fresh eval envs, one episode each (paper: 128)."""
    eval_every_env_steps: int = 50_000
    """Evaluate whenever this many env steps have passed since the last evaluation (and at the end)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where outputs go, seeding, checkpointing."""

    run_dir: Optional[Path] = None
    """Output directory; None creates runs/<env>-a<actor>-c<critic>-s<seed>-<time>. An existing dir is refused unless
    --resume or --overwrite is given."""
    seed: int = 0
    """Root seed; every key is derived from it."""
    resume: bool = False
    """Continue the run in run_dir from its latest checkpoint, with the config recorded there."""
    overwrite: bool = False
    """Delete an existing run_dir and start afresh."""
    checkpoint_every_seconds: float = 300.0
    """Save a resumable checkpoint this often (and at the end and on Ctrl-C)."""
    quiet: bool = False
    """Do not print progress lines."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`depthrl train`: the single-process (inline) CRL trainer."""

    env: EnvConfig = EnvConfig()
    agent: CRLConfig = CRLConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    def episode_length(self) -> int:
        if self.env.episode_length is not None:
            return self.env.episode_length
        return self.default_episode_length()

    def default_episode_length(self) -> int:
        from actors.envs.registry import make_env

        return make_env(self.env.env).spec.episode_length

    def window_steps(self) -> int:
        return self.schedule.window_steps if self.schedule.window_steps is not None else self.episode_length()

    def validate(self) -> None:
        """Raise ConfigError naming the field and the allowed values; nothing has been started or written yet."""
        for name in (self.env.env, self.env.eval_env):
            if name is None:
                continue
            try:
                get_entry(name)
            except UnknownEnvError as e:
                raise ConfigError(f"env: {e}") from None
        if self.env.episode_length is not None and self.env.episode_length <= 0:
            raise ConfigError(f"episode_length must be positive, got {self.env.episode_length}")
        if self.env.reset_mode not in ("fixed_per_slot", "resample"):
            raise ConfigError(f"reset_mode must be 'fixed_per_slot' or 'resample', got {self.env.reset_mode!r}")
        self.agent.validate("agent")
        s = self.schedule
        for name in (
            "num_envs",
            "unroll_length",
            "batch_size",
            "buffer_capacity_steps",
            "prefill_steps_per_env",
            "total_env_steps",
        ):
            value = getattr(s, name)
            if value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value}")
        if s.window_steps is not None and s.window_steps <= 0:
            raise ConfigError(f"window_steps must be positive, got {s.window_steps}")
        if not s.sgd_steps_per_env_step > 0 or not math.isfinite(s.sgd_steps_per_env_step):
            raise ConfigError(f"sgd_steps_per_env_step must be a positive number, got {s.sgd_steps_per_env_step}")
        if not 0.0 < s.goal_discount < 1.0:
            raise ConfigError(f"goal_discount must be in (0, 1), got {s.goal_discount}")
        if s.unroll_length > s.buffer_capacity_steps:
            raise ConfigError(
                f"unroll_length ({s.unroll_length}) must be <= buffer_capacity_steps ({s.buffer_capacity_steps})"
            )
        window = self.window_steps()
        if s.prefill_steps_per_env > s.buffer_capacity_steps:
            raise ConfigError(
                f"prefill_steps_per_env ({s.prefill_steps_per_env}) must be <= buffer_capacity_steps "
                f"({s.buffer_capacity_steps})"
            )
        if window > s.prefill_steps_per_env:
            raise ConfigError(
                f"window_steps ({window}) must be <= prefill_steps_per_env ({s.prefill_steps_per_env}) so that the "
                "first sample finds a full window; raise --prefill-steps-per-env or lower --window-steps"
            )
        available = window * s.num_envs
        if s.batch_size > available:
            raise ConfigError(
                f"batch_size ({s.batch_size}) is larger than the data available per sample "
                f"(window_steps x num_envs = {window} x {s.num_envs} = {available} transitions)"
            )
        e = self.eval
        if e.num_eval_envs <= 0 or e.eval_every_env_steps <= 0:
            raise ConfigError("num_eval_envs and eval_every_env_steps must be positive")
        if self.run.checkpoint_every_seconds <= 0:
            raise ConfigError(f"checkpoint_every_seconds must be positive, got {self.run.checkpoint_every_seconds}")
        if self.run.resume and self.run.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")


def known_envs_message() -> str:
    return ", ".join(env_names())
