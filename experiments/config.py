"""Run configuration: frozen dataclasses nested by concern, one `validate()` run before anything starts.

Every field is documented here, and the docstrings are the `--help` text of `depthrl train` (tyro reads them).
Field names are unique across the groups so that the command line stays flat: ``--env``, ``--critic-depth``,
``--num-envs``...
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from actors.envs.registry import UnknownEnvError, compatibility_problems, get_entry
from learners.crl import CRLConfig, LearnerSpec
from learners.networks import ConfigError, check_depth

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
    total_env_steps: Annotated[int, tyro.conf.arg(aliases=("--env-steps",))] = 600_000
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
    heldout_env_slots: int = 0
    """Collector env slots whose episodes never train any learner (the last ones): their data is the held-out slice
    on which every learner's critic loss and top-1 contrastive accuracy are logged at each evaluation
    (``heldout_critic_*``). Single-process runs (`depthrl train`, `--inline`); 0 = none."""
    heldout_batches: int = 4
    """Minibatches of `batch_size` relabelled transitions drawn from the held-out slice per evaluation (the same
    draw for every learner of the run)."""
    probe_starts: int = 16
    """Maze-topology probe (point mazes): start positions drawn over the free space; 0 = no probe. Each evaluation
    logs the rank correlation of the critic's energy with -geodesic and -Euclidean distance and the fraction of
    through-wall comparisons ranked the maze's way (``topo_*``), and writes the Q-map file ``probes/<learner>.npz``."""
    probe_goals: int = 256
    """Goal positions of the probe, paired with every start."""


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
    log: str = "jsonl"
    """Where metric rows go, comma-separated: jsonl (always on; what `depthrl report` reads), tensorboard
    (RUN_DIR/tb/<role>/), wandb (optional package; one W&B run per depthrl run; WANDB_MODE=offline works offline)."""
    wandb_group: Optional[str] = None
    """W&B group of this run (`depthrl ablate` sets it to the grid's name)."""

    @property
    def sinks(self) -> tuple[str, ...]:
        from experiments.tracking import parse_sinks

        return parse_sinks(self.log)


COLLECTOR = "collector"
"""The name of the learner whose policy collects the data, in every mode (its role, metrics file and replay table)."""


@dataclasses.dataclass(frozen=True)
class DepthConfig:
    """Depths of the one learner of `depthrl train` (it is the collector)."""

    actor_depth: int = 4
    """Dense layers in the actor's residual blocks (multiple of 4)."""
    critic_depth: int = 4
    """Dense layers in each critic encoder's residual blocks (multiple of 4); φ and ψ share it."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`depthrl train`: the single-process (inline) CRL trainer."""

    env: EnvConfig = EnvConfig()
    agent: CRLConfig = CRLConfig()
    """Hyperparameters shared by every learner; depths are per learner."""
    depth: DepthConfig = DepthConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    @property
    def learners(self) -> tuple[LearnerSpec, ...]:
        """The collector, the only learner of a train run."""
        return (LearnerSpec(COLLECTOR, self.depth.actor_depth, self.depth.critic_depth, collects=True),)

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
        for field, name in (("env", self.env.env), ("eval_env", self.env.eval_env)):
            if name is None:
                continue
            try:
                get_entry(name)
            except UnknownEnvError as e:
                raise ConfigError(f"{field}: {e}") from None
        if self.env.eval_env is not None:
            problems = compatibility_problems(self.env.env, self.env.eval_env)
            if problems:
                raise ConfigError(f"eval_env {self.env.eval_env!r} cannot evaluate a policy trained on env "
                                  f"{self.env.env!r}: {'; '.join(problems)}. Pick an eval env of the same family and "
                                  "observation layout (e.g. the '_eval' variant of the training env)")
        if self.env.episode_length is not None and self.env.episode_length <= 0:
            raise ConfigError(f"episode_length must be positive, got {self.env.episode_length}")
        if self.env.reset_mode not in ("fixed_per_slot", "resample"):
            raise ConfigError(f"reset_mode must be 'fixed_per_slot' or 'resample', got {self.env.reset_mode!r}")
        self.agent.validate("agent")
        for learner in self.learners:
            learner.validate()
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
        for name in ("num_eval_envs", "eval_every_env_steps", "heldout_batches", "probe_goals"):
            if getattr(e, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(e, name)}")
        if e.probe_starts < 0:
            raise ConfigError(f"probe_starts must be >= 0, got {e.probe_starts}")
        if not 0 <= e.heldout_env_slots < s.num_envs:
            raise ConfigError(f"heldout_env_slots must be in [0, num_envs = {s.num_envs}), got {e.heldout_env_slots}")
        if e.heldout_env_slots and s.batch_size > window * (s.num_envs - e.heldout_env_slots):
            raise ConfigError(
                f"batch_size ({s.batch_size}) is larger than the training data available per sample once "
                f"{e.heldout_env_slots} env slots are held out (window_steps x (num_envs - heldout_env_slots) = "
                f"{window} x {s.num_envs - e.heldout_env_slots})")
        if self.run.checkpoint_every_seconds <= 0:
            raise ConfigError(f"checkpoint_every_seconds must be positive, got {self.run.checkpoint_every_seconds}")
        if self.run.resume and self.run.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        from experiments.tracking import check_sinks

        check_sinks(self.run.sinks)


# --- the decoupled runtime (`depthrl run`) ---------------------------------------------------------------------------

def learner_name(depth: int) -> str:
    """Role name of the passive learner of a given depth (actor and critic)."""
    return f"learner_d{depth}"


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Processes, transport and pacing of a decoupled run."""

    collector_depth: int = 4
    """Actor and critic depth of the collector learner, whose policy drives the actors."""
    learner_depths: tuple[int, ...] = (4,)
    """Depths of the passive learners (actor and critic), e.g. 16,4. They only train from replay, never act."""
    actors: int = 1
    """Actor processes; num_envs is split evenly between them."""
    sampling_mode: Literal["independent", "shared-batch"] = "independent"
    """'independent': one process and one Reverb table (own update-to-data limiter) per learner, each sampling at its
    own pace. 'shared-batch': every learner lives in one process and trains on identical minibatches (lower-variance
    comparison)."""
    slow_learner_policy: Literal["throttle_actors", "fall_behind"] = "throttle_actors"
    """What a learner that cannot keep up does. 'throttle_actors': every table bounds inserts, so the slowest learner
    sets the collection pace and every learner keeps its update-to-data ratio (what an ablation needs).
    'fall_behind': only the collector's table bounds inserts; a slow passive learner trains on fewer SGD steps per env
    step (its measured update_to_data shows it)."""
    inline: bool = False
    """Run the collector and all learners in one process on identical minibatches (debugging; no Reverb)."""
    replay_port: int = 0
    """Reverb port; 0 picks a free one."""
    replay_address: Optional[str] = None
    """Use an already running replay server (host:port) instead of starting one (multi-host)."""
    param_publish_every_grad_steps: int = 50
    """A learner publishes its params after at least this many SGD steps."""
    replay_checkpoint_every_seconds: float = 300.0
    """Reverb checkpoint period (also on shutdown)."""
    rpc_timeout_seconds: float = 60.0
    """Bound on every blocking replay call (sample, flush, param fetch); a role that waits longer reports the stall
    and retries instead of hanging silently."""
    replay_connect_timeout_seconds: float = 120.0
    """How long a role waits at start for the replay server to answer before it fails (and the launcher restarts
    it). Longer than rpc_timeout_seconds: the server process imports TensorFlow first, slow on a busy machine."""
    max_restarts: int = 3
    """Times the launcher restarts a crashed role (each role counted on its own, with a backoff of 1, 2, 4, ... up to
    10 s between attempts) before it stops the run and shows the role's last error."""
    progress_every_seconds: float = 10.0
    """Seconds between the launcher's progress tables on stderr (unless --quiet)."""
    devices: Optional[str] = None
    """Device placement per role, e.g. 'learner_d16=0,collector=1,*=cpu'; sets CUDA_VISIBLE_DEVICES per process.
    None leaves every role on the default device (CPU here)."""
    gpu_memory_fraction: Optional[float] = None
    """XLA_PYTHON_CLIENT_MEM_FRACTION for each role when several share a GPU."""
    backend: Literal["local", "ray"] = "local"
    """'local': every role is a subprocess of this launcher, on this machine. 'ray': every role runs as a process on
    the Ray node its --role-resources demand (GPU boxes, clusters; see README "Scale out")."""
    ray_address: str = "local"
    """With --backend ray: 'local' starts a Ray instance on this machine, 'auto' joins the cluster this machine is
    part of (`ray start`), HOST:PORT joins the cluster whose head listens there."""
    role_resources: Optional[str] = None
    """With --backend ray: what each role asks Ray for, e.g. 'learner=GPU:1,CPU:2;actor=CPU:4;replay=CPU:2,memory:8G;
    evaluator=GPU:0.25'. Keys: replay, learner, actor, evaluator, a role name (collector, eval_learner_d4, actor_0)
    or *; values: CPU, GPU (fractions share a GPU and set the XLA memory fraction), memory (K/M/G/T), any custom
    resource of the cluster, label.KEY=VALUE. Unset: CPU:1 per role."""

    def learner_names(self) -> tuple[str, ...]:
        return (COLLECTOR,) + tuple(learner_name(d) for d in self.learner_depths)


@dataclasses.dataclass(frozen=True)
class DecoupledConfig:
    """`depthrl run`: one collector (actors + collector learner) and any number of passive learners on one buffer."""

    env: EnvConfig = EnvConfig()
    agent: CRLConfig = CRLConfig()
    """Hyperparameters shared by every learner; the depths come from runtime.collector_depth / runtime.learner_depths."""
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @property
    def learners(self) -> tuple[LearnerSpec, ...]:
        """The collector, then every passive learner; actor and critic share each learner's depth."""
        r = self.runtime
        return (LearnerSpec(COLLECTOR, r.collector_depth, r.collector_depth, collects=True),
                *(LearnerSpec(learner_name(d), d, d) for d in r.learner_depths))

    def as_train_config(self) -> TrainConfig:
        """The single-process config with the collector's depth (the reference this run must match)."""
        depth = self.runtime.collector_depth
        return TrainConfig(env=self.env, agent=self.agent, depth=DepthConfig(depth, depth), schedule=self.schedule,
                           eval=self.eval, run=self.run)

    def envs_per_actor(self) -> int:
        return self.schedule.num_envs // self.runtime.actors

    def validate(self) -> None:
        r = self.runtime
        check_depth(r.collector_depth, "collector_depth")
        for depth in r.learner_depths:
            try:
                check_depth(depth, "learner_depths")
            except ConfigError:
                raise ConfigError(f"learner_depths must hold positive multiples of 4 (4, 8, ..., 1024), got {depth} "
                                  f"in {list(r.learner_depths)}") from None
        if not r.learner_depths:
            raise ConfigError("learner_depths must name at least one passive learner depth (positive multiples of 4), "
                              "e.g. --learner-depths 16,4")
        if len(set(r.learner_depths)) != len(r.learner_depths):
            raise ConfigError(f"learner_depths must not repeat a depth (each depth is one learner), got "
                              f"{list(r.learner_depths)}")
        if r.actors <= 0:
            raise ConfigError(f"actors must be a positive integer, got {r.actors}")
        if self.eval.heldout_env_slots and not r.inline:
            raise ConfigError("heldout_env_slots works in single-process runs only (`--inline`, `depthrl train`): "
                              "the decoupled runtime's actors have no held-out table yet")
        if self.schedule.num_envs % r.actors:
            raise ConfigError(f"num_envs ({self.schedule.num_envs}) must be divisible by actors ({r.actors})")
        if r.sampling_mode not in ("independent", "shared-batch"):
            raise ConfigError(f"sampling_mode must be 'independent' or 'shared-batch', got {r.sampling_mode!r}")
        if r.slow_learner_policy not in ("throttle_actors", "fall_behind"):
            raise ConfigError(
                f"slow_learner_policy must be 'throttle_actors' or 'fall_behind', got {r.slow_learner_policy!r}"
            )
        if not 0 <= r.replay_port <= 65535:
            raise ConfigError(f"replay_port must be in 0..65535 (0 picks a free port), got {r.replay_port}")
        if r.replay_address is not None:
            check_address(r.replay_address, "replay_address")
        for name in ("param_publish_every_grad_steps", "replay_checkpoint_every_seconds", "rpc_timeout_seconds",
                     "replay_connect_timeout_seconds", "progress_every_seconds"):
            value = getattr(r, name)
            if not value > 0 or not math.isfinite(value):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if r.max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, got {r.max_restarts}")
        if r.gpu_memory_fraction is not None and not 0 < r.gpu_memory_fraction <= 1:
            raise ConfigError(f"gpu_memory_fraction must be in (0, 1], got {r.gpu_memory_fraction}")
        if r.devices is not None:
            parse_devices(r.devices, r)
        if r.backend not in ("local", "ray"):
            raise ConfigError(f"backend must be 'local' or 'ray', got {r.backend!r}")
        if r.backend == "ray":
            from experiments.ray_backend import parse_role_resources

            for other, name in ((r.inline, "--inline"), (r.devices, "--devices"), (r.replay_address, "--replay-address"),
                                (r.replay_port, "--replay-port")):
                if other:
                    raise ConfigError(f"{name} does not go with --backend ray (Ray places every role, GPUs through "
                                      "--role-resources, and the replay server picks its port)")
            parse_role_resources(r.role_resources, ["replay", *(s.name for s in self.learners),
                                                    *(f"eval_{s.name}" for s in self.learners),
                                                    *(f"actor_{i}" for i in range(r.actors))])
        elif r.role_resources is not None:
            raise ConfigError("--role-resources needs --backend ray")
        self.as_train_config().validate()
        for learner in self.learners:
            learner.validate()


def check_address(address: str, field: str) -> tuple[str, int]:
    """`(host, port)` of a HOST:PORT string, or ConfigError naming `field`."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{field} must be HOST:PORT with a port in 1..65535, e.g. 10.0.0.5:8000; got {address!r}")
    return host.strip("[]"), int(port)


def parse_devices(devices: str, runtime: RuntimeConfig) -> dict[str, str]:
    """`--devices 'collector=0,learner_d16=1,actor=cpu,*=cpu'` as {role or family: device}, or ConfigError.

    Keys: a learner name, `eval_<learner>`, `actor_<i>`, the families `actor`/`replay`, or `*`; values: `cpu` or a GPU
    index (what CUDA_VISIBLE_DEVICES takes)."""
    learners = runtime.learner_names()
    keys = {"*", "actor", "replay", *learners, *(f"eval_{n}" for n in learners),
            *(f"actor_{i}" for i in range(runtime.actors))}
    mapping: dict[str, str] = {}
    for item in devices.split(","):
        key, sep, device = item.strip().partition("=")
        if not sep or key not in keys or not (device == "cpu" or device.isdigit()):
            raise ConfigError(
                f"devices entries must be ROLE=DEVICE with ROLE one of {sorted(keys)} and DEVICE 'cpu' or a GPU "
                f"index, e.g. 'collector=0,*=cpu'; got {item.strip()!r}"
            )
        mapping[key] = device
    return mapping
