"""The composition root: the one place that turns a run's config into envs, agents, the plan, the transport and the
loggers, and hands them to the loops in `actors/` and `learners/` (which import nothing from `experiments/`).

- `RunParts`: what every mode builds from a config (env, eval env, dims, one agent per `LearnerSpec`, the
  `LearnerPlan`, the replay window spec and tables, the keys). The single-process trainer (`experiments.inline`) and
  every role below use it.
- Role entry points of a decoupled run (`depthrl replay|learner|actor|evaluator`): each reads `config.json`, builds
  its job and its Reverb transport here, and runs its loop until done or SIGTERM. `replay.reverb_backend` is imported
  lazily, inside the roles, so the trainer never loads TensorFlow.

Faults (restarts are the launcher's): every role survives a replay-server restart. Reverb's clients reconnect on their
own and resend unconfirmed items; every wait is bounded (`rpc_timeout_seconds`) and reported. Whether data can still
come is read from the run's control plane (`replay.status`) and the table's limiter, never from metric files.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from actors.coverage import coverage_path
from actors.envs.registry import make_env
from actors.envs.wrappers import TrainingEnv
from experiments.config import COLLECTOR, DecoupledConfig, TrainConfig
from experiments.metrics import JsonlLogger, make_logger
from experiments.runs import read_config
from learners.crl import CRLAgent, Dims, LearnerSpec, make_agent
from learners.step import LearnerPlan, make_plan
from replay.status import RunStatus

RUN_KIND = "run"
LAUNCHER_PID_ENV = "DEPTHRL_LAUNCHER_PID"
"""Set in every child's environment by the launcher: the role stops when its parent is no longer this pid."""


class RunParts:
    """Everything a run builds from its config, each piece built once, on first use.

    `learners` are the run's learners (the collector first); `collection_steps` is the env steps per slot of one
    collection: the unroll length in the single-process trainer, the window length where actors write windows."""

    def __init__(self, config: TrainConfig, learners: tuple[LearnerSpec, ...], collection_steps: int | None = None):
        self.config = config
        self.learners = {spec.name: spec for spec in learners}
        self._collection_steps = collection_steps

    @classmethod
    def for_train(cls, config: TrainConfig, learners: tuple[LearnerSpec, ...] | None = None) -> RunParts:
        return cls(config, learners or config.learners, config.schedule.unroll_length)

    @classmethod
    def for_run(cls, config: DecoupledConfig) -> RunParts:
        return cls(config.as_train_config(), config.learners)

    @functools.cached_property
    def episode_length(self) -> int:
        return self.config.episode_length()

    @functools.cached_property
    def env(self):
        """The training env (a `GoalEnv`), truncated at the run's episode length."""
        return make_env(self.config.env.env, episode_length=self.episode_length)

    @functools.cached_property
    def eval_env(self):
        return make_env(self.config.env.eval_env or self.config.env.env, episode_length=self.episode_length)

    @functools.cached_property
    def training_env(self) -> TrainingEnv:
        return TrainingEnv(self.env, self.episode_length, self.config.env.reset_mode)

    @functools.cached_property
    def dims(self) -> Dims:
        return Dims(self.env.spec.state_dim, self.env.spec.goal_dim, self.env.action_size)

    @functools.cached_property
    def window_steps(self) -> int:
        return self.config.window_steps()

    @functools.cached_property
    def plan(self) -> LearnerPlan:
        s = self.config.schedule
        return make_plan(window_steps=self.window_steps, num_envs=s.num_envs, unroll_length=s.unroll_length,
                         batch_size=s.batch_size, sgd_steps_per_env_step=s.sgd_steps_per_env_step,
                         prefill_steps_per_env=s.prefill_steps_per_env, total_env_steps=s.total_env_steps,
                         collection_steps=self._collection_steps or self.window_steps)

    @functools.lru_cache(maxsize=None)
    def agent(self, name: str) -> CRLAgent:
        return make_agent(self.config.agent, self.learners[name], self.dims)

    def params_template(self, name: str) -> Any:
        """Shapes and dtypes of learner `name`'s actor params, to rebuild published params into (no init runs)."""
        shapes = jax.eval_shape(self.agent(name).init, self.root_key).actor_params
        return jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)

    @functools.cached_property
    def window_spec(self):
        from replay.schema import WindowSpec

        return WindowSpec(self.window_steps, self.env.spec.obs_dim, self.env.action_size)

    # Keys: every role folds its own constant into the run's root seed (never PRNGKey(0) in library code).
    @property
    def root_key(self) -> jax.Array:
        return jax.random.PRNGKey(self.config.run.seed)

    def learners_key(self, names: tuple[str, ...]) -> jax.Array:
        return jax.random.fold_in(self.root_key, 1000 + sum(map(ord, "|".join(names))))

    def actor_key(self, actor_id: int) -> jax.Array:
        return jax.random.fold_in(self.root_key, 2000 + actor_id)

    @property
    def evaluator_key(self) -> jax.Array:
        return jax.random.fold_in(self.root_key, 3000)


def load_run_config(run_dir: Path) -> DecoupledConfig:
    return read_config(run_dir, RUN_KIND, DecoupledConfig)


def learner_processes(config: DecoupledConfig) -> list[tuple[str, ...]]:
    """The learner names hosted by each learner process (one each, or all together in shared-batch mode)."""
    names = tuple(spec.name for spec in config.learners)
    return [names] if config.runtime.sampling_mode == "shared-batch" else [(n,) for n in names]


def actor_roles(config: DecoupledConfig) -> tuple[str, ...]:
    return tuple(f"actor_{i}" for i in range(config.runtime.actors))


def tables_for(config: DecoupledConfig, plan: LearnerPlan):
    """One window table per sampling learner with its update-to-data limiter (see `learners.step.make_plan`)."""
    from replay.reverb_backend import LearnerTableConfig, ReplayTablesConfig

    r = config.runtime
    names = tuple(spec.name for spec in config.learners)
    sampling = (COLLECTOR,) if r.sampling_mode == "shared-batch" else names
    # How far inserts and samples may drift from the ratio. Reverb admits items one at a time, so no burst has to fit
    # whole: one learner batch (N windows) plus one actor write (E_actor windows' worth of samples) is enough to keep
    # both sides moving. A larger buffer lets actors run ahead of the learners (more policy lag than the
    # single-process reference, which alternates collection and updates strictly).
    error_buffer = plan.windows_per_update + plan.samples_per_insert * config.envs_per_actor()
    error_buffer = max(error_buffer, 2 * plan.samples_per_insert + 1)
    learners = tuple(
        LearnerTableConfig(
            name=name,
            samples_per_insert=plan.samples_per_insert,
            min_size_to_sample_windows=plan.prefill_windows,
            error_buffer_samples=error_buffer,
            blocks_inserts=(name == COLLECTOR or r.slow_learner_policy == "throttle_actors"),
        )
        for name in sampling
    )
    capacity = max(plan.prefill_windows, config.schedule.buffer_capacity_steps * config.schedule.num_envs
                   // plan.window_steps)
    return ReplayTablesConfig(learners=learners, max_size_windows=capacity, param_roles=names)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM/SIGINT and, for a role started by the launcher, when the launcher is gone (so that a
    `kill -9` of the launcher leaves no orphans: the role checkpoints and exits as on SIGTERM)."""
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher is not None and launcher.isdigit():

        def watch_parent() -> None:
            while not stop.wait(1.0):
                if os.getppid() != int(launcher):
                    stop.set()

        threading.Thread(target=watch_parent, name="watch-launcher", daemon=True).start()
    return stop


def _say(role: str, message: str) -> None:
    print(f"[{role}] {message}", file=sys.stderr, flush=True)


def _logger(run_dir: Path, role: str, config: DecoupledConfig) -> JsonlLogger:
    """A role's logger: JSONL, and TensorBoard when asked (a decoupled run's W&B rows go through the launcher)."""
    return make_logger(run_dir, role, config.run.sinks)


# --- replay -----------------------------------------------------------------------------------------------------


def run_replay(run_dir: Path, port: int) -> int:
    """Serve the run's tables; checkpoint every `replay_checkpoint_every_seconds` and at shutdown.

    A restarted server loads the newest checkpoint in ``replay_checkpoint/``: items *and* rate-limiter counters as of
    that checkpoint. What was inserted (and sampled) after it is lost; see replay/README.md, "Reliability"."""
    from replay import reverb_backend as rb

    config = load_run_config(run_dir)
    parts = RunParts.for_run(config)
    stop = stop_on_signals()
    checkpoint_dir = run_dir / "replay_checkpoint"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tables = tables_for(config, parts.plan)
    server = rb.start_server(tables, parts.window_spec, port, str(checkpoint_dir))
    client = rb.wait_for_server(f"127.0.0.1:{server.port}", 30.0)
    log = _logger(run_dir, "replay", config)
    _say("replay", f"serving on port {server.port} (all interfaces, no authentication)")
    every = config.runtime.replay_checkpoint_every_seconds
    restored = rb.table_metrics(rb.server_info(client, 10.0), role="replay")
    if any(restored[f"replay/{t}/inserts"] for t in tables.table_names):
        _say("replay", "restored from checkpoint: " + ", ".join(
            f"{t}: {restored[f'replay/{t}/size']:.0f} windows (limiter counters: {restored[f'replay/{t}/inserts']:.0f} "
            f"inserts, {restored[f'replay/{t}/samples']:.0f} samples)" for t in tables.table_names)
            + "; data inserted after that checkpoint is lost")
        log.log({"restored_from_checkpoint": 1.0, **{k.removeprefix("replay/"): v for k, v in restored.items()}},
                env_steps=0, grad_steps=0, param_version=0)
    next_checkpoint = time.monotonic() + every
    try:
        while not stop.wait(min(5.0, every)):
            try:
                metrics = rb.table_metrics(rb.server_info(client, 10.0), role="replay")
            except rb.ReplayTimeout:
                continue
            log.log({k.removeprefix("replay/"): v for k, v in metrics.items()}, env_steps=0, grad_steps=0,
                    param_version=0)
            if time.monotonic() >= next_checkpoint:
                _say("replay", f"checkpoint {client.checkpoint()}")
                next_checkpoint = time.monotonic() + every
        _say("replay", f"final checkpoint {client.checkpoint()}")
    finally:
        log.close()
        server.stop()
    return 0


# --- learner ----------------------------------------------------------------------------------------------------


class TableWatch:
    """The learner's view of its own table's counters on the server (bounded reads; {} when it does not answer)."""

    def __init__(self, client, table: str, min_size_windows: int) -> None:
        self._client, self._table, self._min_size = client, table, min_size_windows

    def _metrics(self, timeout_s: float) -> dict[str, float] | None:
        from replay import reverb_backend as rb

        try:
            return rb.table_metrics(rb.server_info(self._client, timeout_s), role="replay")
        except rb.ReplayTimeout:
            return None

    def stats(self) -> dict[str, float]:
        m = self._metrics(5.0)
        if m is None:
            return {}
        p = f"replay/{self._table}/"
        error, spi = m[p + "limiter_error"], m[p + "samples_per_insert"]
        return {
            "inserted_windows": m[p + "inserts"],
            "table_size": m[p + "size"],
            # 0.14 semantics (see table_metrics): waiting_for_sampling = inserts blocked by this table's limiter
            "inserts_blocked_ms": m[p + "worker_waiting_for_sampling_ms"],
            "samples_blocked_ms": m[p + "worker_waiting_for_inserts_ms"],
            # Whether this table's limiter holds back the next insert (the actors) / the next sample (this learner).
            "limiter_blocks_inserts": float(error + spi > m[p + "limiter_max_diff"]),
            "limiter_blocks_samples": float(error - 1 < m[p + "limiter_min_diff"]),
        }

    def sampling_blocked(self) -> bool:
        """True when the server answers and its limiter lets the table give no further sample (or the table is below
        its minimum size); False when it does not answer (restarting: wait for it)."""
        from learners.process import SAMPLE_POLL_SECONDS

        m = self._metrics(SAMPLE_POLL_SECONDS)
        if m is None:
            return False
        p = f"replay/{self._table}/"
        return m[p + "limiter_error"] - 1 < m[p + "limiter_min_diff"] or m[p + "size"] < self._min_size


def learner_job(parts: RunParts, config: DecoupledConfig, run_dir: Path, names: tuple[str, ...]):
    """The `learners.process.LearnerJob` of the learner process hosting `names`."""
    from learners.process import LearnerJob

    r = config.runtime
    return LearnerJob(
        agents=tuple(parts.agent(n) for n in names), spec=parts.env.spec, plan=parts.plan,
        goal_discount=config.schedule.goal_discount, key=parts.learners_key(names),
        publish_every_grad_steps=r.param_publish_every_grad_steps,
        checkpoint_every_seconds=config.run.checkpoint_every_seconds,
        checkpoint_dir=run_dir / "checkpoints" / "+".join(names), rpc_timeout_seconds=r.rpc_timeout_seconds,
        total_env_steps=config.schedule.total_env_steps)


def run_learner_role(run_dir: Path, address: str, names: tuple[str, ...]) -> int:
    from learners.process import SAMPLE_POLL_SECONDS, run_learners
    from replay import reverb_backend as rb

    config = load_run_config(run_dir)
    parts = RunParts.for_run(config)
    stop = stop_on_signals()
    r, plan = config.runtime, parts.plan
    job = learner_job(parts, config, run_dir, names)
    client = rb.wait_for_server(address, r.replay_connect_timeout_seconds)
    # Sampling waits in short slices so that the learner can notice, between them, that no data can come any more.
    sampler = rb.WindowSampler(address, names[0], plan.windows_per_update,
                               min(r.rpc_timeout_seconds, SAMPLE_POLL_SECONDS), parts.window_spec)
    store = rb.ParamStore(address, connect_timeout_s=r.rpc_timeout_seconds)
    status = RunStatus(run_dir)
    watch = TableWatch(client, names[0], plan.prefill_windows)
    actors_finished = functools.partial(status.all_finished, actor_roles(config))
    reached = run_learners(job, sampler, store, {n: _logger(run_dir, n, config) for n in names}, status, stop,
                           no_more_data=lambda: actors_finished() and watch.sampling_blocked(),
                           replay_stats=watch.stats, actors_finished=actors_finished)
    _say(job.label, f"done: grad steps {reached}")
    return 0


# --- actor / evaluator ------------------------------------------------------------------------------------------


def actor_job(parts: RunParts, config: DecoupledConfig, run_dir: Path, actor_id: int):
    """The `actors.process.ActorJob` of actor `actor_id`."""
    from actors.process import ActorJob

    r, role = config.runtime, f"actor_{actor_id}"
    collector = parts.agent(COLLECTOR)
    return ActorJob(
        role=role, actor_id=actor_id, env=parts.training_env, policy=collector.act, params_role=COLLECTOR,
        params_template=parts.params_template(COLLECTOR), fingerprint=collector.fingerprint(),
        num_envs=config.envs_per_actor(), window_steps=parts.window_steps,
        budget_env_steps=config.schedule.total_env_steps // r.actors, key=parts.actor_key(actor_id),
        rpc_timeout_seconds=r.rpc_timeout_seconds,
        coverage_path=coverage_path(run_dir, role) if getattr(parts.env, "layout", None) is not None else None)


def run_actor_role(run_dir: Path, address: str, actor_id: int) -> int:
    from actors.process import run_actor
    from replay import reverb_backend as rb

    config = load_run_config(run_dir)
    parts = RunParts.for_run(config)
    stop = stop_on_signals()
    r = config.runtime
    job = actor_job(parts, config, run_dir, actor_id)
    tables = tables_for(config, parts.plan).table_names
    writer = rb.WindowWriter(address, tables, parts.window_spec, flush_timeout_ms=int(r.rpc_timeout_seconds * 1000),
                             connect_timeout_s=r.replay_connect_timeout_seconds)
    store = rb.ParamStore(address, connect_timeout_s=r.rpc_timeout_seconds)
    try:
        steps = run_actor(job, writer, store, _logger(run_dir, job.role, config), RunStatus(run_dir), stop)
    finally:
        writer.close()
    _say(job.role, f"done: {steps:,} env steps")
    return 0


def evaluate_fn(parts: RunParts, name: str):
    """``(actor_params, key) -> metrics`` of learner `name`'s deterministic policy on fresh eval envs, jitted."""
    from actors.rollout import evaluate

    agent = parts.agent(name)
    policy = lambda params, obs, k: agent.act(params, obs, k, deterministic=True)  # noqa: E731
    return jax.jit(lambda params, key: evaluate(parts.eval_env, policy, params, key, parts.config.eval.num_eval_envs,
                                                parts.episode_length))


def run_evaluator_role(run_dir: Path, address: str, learner: str) -> int:
    from actors.process import EvaluatorJob, run_evaluator
    from replay import reverb_backend as rb

    config = load_run_config(run_dir)
    parts = RunParts.for_run(config)
    stop = stop_on_signals()
    r = config.runtime
    role = f"eval_{learner}"
    job = EvaluatorJob(
        role=role, learner=learner, evaluate=evaluate_fn(parts, learner),
        params_template=parts.params_template(learner), fingerprint=parts.agent(learner).fingerprint(),
        target_grad_steps=parts.plan.target_grad_steps, eval_every_env_steps=config.eval.eval_every_env_steps,
        key=parts.evaluator_key, rpc_timeout_seconds=r.rpc_timeout_seconds)
    store = rb.ParamStore(address, connect_timeout_s=r.replay_connect_timeout_seconds)
    count = run_evaluator(job, store, _logger(run_dir, role, config), stop)
    _say(role, f"done: {count} evaluations")
    return 0
