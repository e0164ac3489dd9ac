"""The single-process CRL trainer (`depthrl train`), the reference the decoupled runtime must match.

Pure part (`InlineTrainer`): one jitted training iteration = collect ``num_envs x unroll_length`` env steps with the
stochastic policy -> append to the in-process replay -> sample one window per env slot (as many times as needed) ->
relabel -> shuffle -> K SGD steps in one `lax.scan`. Evaluation is a separate jitted function.

Shell (`run_training`): validation, run directory, JSONL metrics, progress lines, orbax checkpoints (timer, end,
Ctrl-C) and resume.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from actors.coverage import bin_index
from actors.envs.wrappers import TrainingEnv, TrainingEnvState
from actors.rollout import evaluate, unroll
from experiments.compose import RunParts
from experiments.config import TrainConfig
from experiments.metrics import JsonlLogger, make_logger
from experiments.probes import TopologyProbe, qmap_path
from experiments.tracking import WandbRun, WandbSink, finish_wandb
from learners.checkpoint import Checkpointer
from learners.crl import CRLAgent, CRLState, LearnerSpec
from learners.step import LearnerPlan, learner_row, prepare
from replay.memory import MemoryBuffer, MemoryState


@flax.struct.dataclass
class TrainerState:
    agent: CRLState
    buffer: MemoryState
    env: TrainingEnvState
    key: jax.Array
    passive: tuple[CRLState, ...]
    """States of the passive learners (inline `depthrl run`): they train on the same minibatches, never act."""
    env_steps: jax.Array
    """int32 []: env steps collected so far, all slots together (int32 holds 2.1e9, above the paper's 400M)."""
    coverage: jax.Array
    """int32 [n_rows k, n_cols k]: achieved-goal visits per maze bin (`actors.coverage` binning); [1, 1] zeros for
    envs without a maze. Part of the checkpoint, so a resumed run's coverage is exact."""
    heldout: MemoryState | None = None
    """The held-out slots' ring (`EvalConfig.heldout_env_slots`), never sampled for training; None without them."""


@dataclasses.dataclass(frozen=True)
class InlineTrainer:
    """Pure functions of the single-process trainer, built from a validated `TrainConfig`."""

    config: TrainConfig
    agent: CRLAgent
    env: TrainingEnv
    eval_env: Any
    buffer: MemoryBuffer
    plan: LearnerPlan
    passive_agents: tuple[CRLAgent, ...] = ()
    """Learners that train on the collector's minibatches and never act (inline mode of `depthrl run`)."""
    heldout_buffer: MemoryBuffer | None = None
    """Ring of the held-out env slots (the last `EvalConfig.heldout_env_slots` of the collector's); `buffer` holds
    the others. None: every slot trains."""
    layout: Any = None
    """The env's `MazeLayout` (coverage histogram bins), or None for envs without a maze."""
    coverage_bins_per_cell: int = 4
    """Histogram bins per maze cell along each axis (k), as `actors.coverage.CoverageGrid`."""

    @property
    def agents(self) -> tuple[CRLAgent, ...]:
        """Every agent, by index: 0 the collector, i the passive learner i - 1."""
        return (self.agent, *self.passive_agents)

    def coverage_shape(self) -> tuple[int, int]:
        if self.layout is None:
            return 1, 1
        n_rows, n_cols = self.layout.shape
        return n_rows * self.coverage_bins_per_cell, n_cols * self.coverage_bins_per_cell

    def add_coverage(self, counts: jax.Array, achieved_xy: jax.Array) -> jax.Array:
        """Add positions ``achieved_xy [..., 2]`` to ``counts``, binned exactly as `CoverageGrid.add` bins them
        (clipped into the edge bins; non-finite positions are skipped)."""
        if self.layout is None:
            return counts
        xy = achieved_xy.reshape(-1, 2)
        finite = jnp.all(jnp.isfinite(xy), axis=-1)
        ix, iy = bin_index(jnp.where(finite[:, None], xy, 0.0), self.layout.scaling, self.coverage_bins_per_cell,
                           counts.shape, xp=jnp)
        return counts.at[ix, iy].add(finite.astype(counts.dtype))

    def init(self, key: jax.Array) -> TrainerState:
        agent_key, env_key, key = jax.random.split(key, 3)
        return TrainerState(
            agent=self.agent.init(agent_key),
            passive=tuple(a.init(jax.random.fold_in(agent_key, i + 1)) for i, a in enumerate(self.passive_agents)),
            buffer=self.buffer.init(),
            heldout=self.heldout_buffer.init() if self.heldout_buffer is not None else None,
            env=self.env.reset(env_key, self.config.schedule.num_envs),
            key=key,
            env_steps=jnp.zeros((), jnp.int32),
            coverage=jnp.zeros(self.coverage_shape(), jnp.int32),
        )

    def _collect(self, state: TrainerState) -> TrainerState:
        key, rollout_key = jax.random.split(state.key)
        env_state, traj = unroll(
            self.env, self.agent.act, state.agent.actor_params, state.env, rollout_key,
            self.config.schedule.unroll_length,
        )
        trains = self.buffer.num_envs  # the first slots train; the rest (if any) are held out
        buffer = self.buffer.insert(state.buffer, traj.obs[:, :trains], traj.action[:, :trains],
                                    traj.traj_id[:, :trains])
        heldout = state.heldout
        if self.heldout_buffer is not None:
            heldout = self.heldout_buffer.insert(heldout, traj.obs[:, trains:], traj.action[:, trains:],
                                                 traj.traj_id[:, trains:])
        steps = self.config.schedule.env_steps_per_iteration
        spec = self.env.env.spec
        coverage = self.add_coverage(state.coverage, spec.achieved_goal(spec.state_of(traj.obs))[..., :2])
        return state.replace(buffer=buffer, heldout=heldout, env=env_state, key=key,
                             env_steps=state.env_steps + steps, coverage=coverage)

    def collect(self, state: TrainerState) -> TrainerState:
        """Collect one iteration of data without learning (prefill)."""
        return self._collect(state)

    def iteration(self, state: TrainerState) -> tuple[TrainerState, tuple[dict[str, jax.Array], ...]]:
        """Collect, then K SGD steps on relabelled windows from the buffer, for the collector and every passive
        learner on identical minibatches. Returns metrics per agent, collector first."""
        return self.learn(self._collect(state))

    def learn(self, state: TrainerState) -> tuple[TrainerState, tuple[dict[str, jax.Array], ...]]:
        """K SGD steps on relabelled windows from the buffer for every agent, on identical minibatches, without
        collecting (an iteration's second half; `depthrl offline` runs only this, on a frozen buffer)."""
        key, sample_key, relabel_key, perm_key, update_key = jax.random.split(state.key, 5)
        spec = self.env.env.spec
        schedule = self.config.schedule

        draws = self.plan.window_sets_per_update(self.buffer.num_envs)
        obs, action, traj_id = jax.vmap(
            lambda k: self.buffer.sample_windows(state.buffer, k, self.plan.window_steps)
        )(jax.random.split(sample_key, draws))  # [D, W, E, ...]
        batches = prepare(jax.random.split(relabel_key, draws), perm_key, obs, action, traj_id, spec,
                          schedule.goal_discount, self.plan)
        agent_state, metrics = self.agent.update_many(state.agent, batches, update_key)
        passive, passive_metrics = [], []
        for agent, agent_state_p in zip(self.passive_agents, state.passive):
            new_state, m = agent.update_many(agent_state_p, batches, update_key)
            passive.append(new_state)
            passive_metrics.append(m)
        return state.replace(agent=agent_state, passive=tuple(passive), key=key), (metrics, *passive_metrics)

    def heldout_metrics(self, heldout: MemoryState, critic_params: Any, key: jax.Array,
                        index: int = 0) -> dict[str, jax.Array]:
        """Critic loss and top-1 contrastive accuracy of agent `index` on `EvalConfig.heldout_batches` minibatches
        relabelled from the held-out slots (``heldout_critic_*``); the same `key` draws the same minibatches."""
        return heldout_critic_metrics(self.agents[index], self.heldout_buffer, heldout, critic_params, key,
                                      self.plan, self.env.env.spec, self.config)

    def evaluate(self, agent_state: CRLState, key: jax.Array, index: int = 0) -> dict[str, jax.Array]:
        """Deterministic-policy evaluation of agent `index` (0 = collector, i = passive learner i - 1)."""
        agent = self.agents[index]
        policy = lambda params, obs, k: agent.act(params, obs, k, deterministic=True)
        return evaluate(
            self.eval_env, policy, agent_state.actor_params, key, self.config.eval.num_eval_envs,
            self.config.episode_length(),
        )


def make_trainer(config: TrainConfig, learners: tuple[LearnerSpec, ...] | None = None) -> InlineTrainer:
    """Build the trainer for `learners` (the collector first; default: the config's one learner)."""
    config.validate()
    parts = RunParts.for_train(config, learners)
    names = list(parts.learners)
    env, s = parts.env, config.schedule
    held = config.eval.heldout_env_slots
    return InlineTrainer(
        config=config,
        agent=parts.agent(names[0]),
        env=parts.training_env,
        eval_env=parts.eval_env,
        buffer=MemoryBuffer(s.buffer_capacity_steps, s.num_envs - held, env.spec.obs_dim, env.action_size),
        heldout_buffer=(MemoryBuffer(s.buffer_capacity_steps, held, env.spec.obs_dim, env.action_size)
                        if held else None),
        plan=parts.plan,
        passive_agents=tuple(parts.agent(n) for n in names[1:]),
        layout=getattr(env, "layout", None),
    )


# --- the process shell ---------------------------------------------------------------------------------------------


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between iterations, checkpoints, and exits."""

    def __init__(self) -> None:
        self.stop = False
        self.signum = 0

    def __call__(self, signum, frame) -> None:
        if self.stop:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop, self.signum = True, signum


def run_training(config: TrainConfig, run_dir: Path, learners: tuple[LearnerSpec, ...] | None = None,
                 resume_command: str | None = None) -> dict[str, float]:
    """Train until `total_env_steps`; the run dir must already hold config.json. `learners` (the collector first,
    then passive learners on the same minibatches; default: the config's one learner) name the metrics files
    ``{name}.jsonl`` and ``eval_{name}.jsonl``. Returns the collector's last eval."""
    trainer = make_trainer(config, learners)
    names = tuple(agent.learner.name for agent in trainer.agents)
    s, run = config.schedule, config.run
    root_key = jax.random.PRNGKey(run.seed)

    init = jax.jit(trainer.init)
    collect = jax.jit(trainer.collect, donate_argnums=0)
    iteration = jax.jit(trainer.iteration, donate_argnums=0)
    evaluate_fn = jax.jit(trainer.evaluate, static_argnums=2)
    instruments = Instruments.build(trainer, run_dir, root_key)

    checkpointer = Checkpointer(run_dir / "checkpoints", item="state")
    state = init(jax.random.fold_in(root_key, 0))
    wall_offset = 0.0
    restored = checkpointer.restore(state)
    if restored is not None:
        state, wall_offset = restored[0], float(restored[1]["wall_time"])
        _progress(run, f"resumed from checkpoint at {int(state.env_steps)} env steps")

    def save() -> None:
        step = int(state.env_steps)
        checkpointer.save(step, state, {"wall_time": time.time() - start, "env_steps": step})

    start = time.time() - wall_offset
    wandb_run = WandbRun(run_dir, run.wandb_group) if "wandb" in run.sinks else None

    def logger(role: str) -> JsonlLogger:
        extra = [WandbSink(wandb_run, role)] if wandb_run is not None else []
        return make_logger(run_dir, role, run.sinks, start_time=start, extra=extra)

    learner_logs = [logger(n) for n in names]
    eval_logs = [logger(f"eval_{n}") for n in names]
    stop = _StopFlag()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    plan = trainer.plan
    last_eval: dict[str, float] = {}
    try:
        while int(state.buffer.inserted_steps) * s.num_envs < plan.prefill_env_steps and not stop.stop:
            state = collect(state)
        last_checkpoint = time.time()
        next_eval = _next_multiple(int(state.env_steps), config.eval.eval_every_env_steps)
        iter_start, iter_env_steps, iter_grad_steps = time.time(), int(state.env_steps), int(state.agent.grad_steps)
        while int(state.env_steps) < s.total_env_steps and not stop.stop:
            state, all_metrics = iteration(state)
            env_steps, grad_steps = int(state.env_steps), int(state.agent.grad_steps)
            elapsed = max(time.time() - iter_start, 1e-9)
            rows = [learner_row(metrics, grad_steps=grad_steps, env_steps=env_steps, plan=plan,
                                grad_steps_per_second=(grad_steps - iter_grad_steps) / elapsed,
                                policy_lag=0.0,  # inline: every iteration acts with the newest params
                                env_steps_per_second=(env_steps - iter_env_steps) / elapsed)
                    for metrics in all_metrics]
            iter_start, iter_env_steps, iter_grad_steps = time.time(), env_steps, grad_steps
            for log, row in zip(learner_logs, rows):
                log.log(row, env_steps=env_steps, grad_steps=grad_steps, param_version=grad_steps)
            if env_steps >= next_eval or env_steps >= s.total_env_steps:
                collector_metrics = rows[0]
                agent_states = (state.agent, *state.passive)
                for index, (log, agent_state) in enumerate(zip(eval_logs, agent_states)):
                    result = _evaluate_and_log(evaluate_fn, agent_state, index, env_steps, root_key, log, run,
                                               collector_metrics, instruments.measure(state, agent_state, index,
                                                                                      env_steps))
                    if index == 0:
                        last_eval = result
                next_eval = _next_multiple(env_steps, config.eval.eval_every_env_steps)
                _save_coverage(trainer, state, run_dir, names[0])
            if time.time() - last_checkpoint > run.checkpoint_every_seconds:
                save()
                last_checkpoint = time.time()
        save()
        _save_coverage(trainer, state, run_dir, names[0])
        if stop.stop:
            again = resume_command or f"depthrl train --run-dir {run_dir} --resume"
            _progress(run, f"stopped by signal {stop.signum} at {int(state.env_steps)} env steps; continue with: {again}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for log in learner_logs + eval_logs:
            log.close()
        checkpointer.close()
        if wandb_run is not None:
            finish_wandb(wandb_run, run_dir, report=not stop.stop)
    if stop.stop:
        raise KeyboardInterrupt
    return last_eval


def heldout_critic_metrics(agent: CRLAgent, buffer: MemoryBuffer, state: MemoryState, critic_params: Any,
                           key: jax.Array, plan: LearnerPlan, spec: Any, config: TrainConfig) -> dict[str, jax.Array]:
    """``heldout_critic_loss`` / ``heldout_critic_accuracy``: `agent`'s critic on `EvalConfig.heldout_batches`
    minibatches of `plan.batch_size`, relabelled (as for training) from windows of the held-out ring `state`."""
    n_batches, batch_size = config.eval.heldout_batches, plan.batch_size
    draws = -(-n_batches * batch_size // (plan.window_steps * buffer.num_envs))  # ceil: sets of one window per slot
    sample_key, relabel_key, shuffle_key = jax.random.split(key, 3)
    obs, action, traj_id = jax.vmap(lambda k: buffer.sample_windows(state, k, plan.window_steps))(
        jax.random.split(sample_key, draws))
    sizes = dataclasses.replace(plan, sgd_steps_per_update=n_batches)
    batches = prepare(jax.random.split(relabel_key, draws), shuffle_key, obs, action, traj_id, spec,
                      config.schedule.goal_discount, sizes)
    metrics = jax.vmap(lambda batch: agent.critic_metrics(critic_params, batch))(batches)
    return {"heldout_critic_loss": jnp.mean(metrics["critic_loss"]),
            "heldout_critic_accuracy": jnp.mean(metrics["critic_accuracy"])}


def _save_coverage(trainer: InlineTrainer, state: TrainerState, run_dir: Path, role: str) -> None:
    """Write the collector's coverage histogram (maze envs) as `actors.coverage` files, like an actor does."""
    if trainer.layout is None:
        return
    import numpy as np

    from actors.coverage import CoverageGrid, coverage_path

    grid = CoverageGrid(trainer.layout, trainer.coverage_bins_per_cell, counts=np.asarray(state.coverage))
    grid.save(coverage_path(run_dir, role), int(state.env_steps))


def _next_multiple(value: int, every: int) -> int:
    return (value // every + 1) * every


@dataclasses.dataclass(frozen=True)
class Instruments:
    """What an evaluation measures besides the policy's return: the held-out critic metrics (with held-out slots)
    and the maze-topology probe with its Q-map file (point mazes). Built once per run; `measure` at each
    evaluation."""

    trainer: InlineTrainer
    run_dir: Path
    heldout_key: jax.Array
    heldout_fn: Any
    probe: TopologyProbe | None
    energy_fns: tuple[Any, ...]

    @classmethod
    def build(cls, trainer: InlineTrainer, run_dir: Path, root_key: jax.Array) -> Instruments:
        e = trainer.config.eval
        probe = TopologyProbe.for_env(trainer.env.env, e.probe_starts, e.probe_goals, trainer.config.run.seed)
        return cls(trainer=trainer, run_dir=run_dir, heldout_key=jax.random.fold_in(root_key, 2),
                   heldout_fn=jax.jit(trainer.heldout_metrics, static_argnums=3),
                   probe=probe, energy_fns=tuple(probe.energies(a) for a in trainer.agents) if probe else ())

    def measure(self, state: TrainerState, agent_state: CRLState, index: int, env_steps: int) -> dict[str, float]:
        """Metrics of agent `index` (0 = collector) at this evaluation; the Q-map file is rewritten."""
        out: dict[str, float] = {}
        if state.heldout is not None:
            key = jax.random.fold_in(self.heldout_key, env_steps)  # the same minibatches for every learner
            out.update({k: float(v) for k, v in
                        self.heldout_fn(state.heldout, agent_state.critic_params, key, index).items()})
        if self.probe is not None:
            agent = self.trainer.agents[index]
            fn = self.energy_fns[index]
            out.update(self.probe.score(fn, agent_state.actor_params, agent_state.critic_params))
            self.probe.save_qmap(qmap_path(self.run_dir, agent.learner.name), fn, agent_state.actor_params,
                                 agent_state.critic_params, learner=agent.learner.name,
                                 critic_depth=agent.learner.critic_depth, env_steps=env_steps,
                                 grad_steps=int(agent_state.grad_steps))
        return out


def _evaluate_and_log(evaluate_fn, agent_state, index, env_steps, root_key, log: JsonlLogger, run, train_metrics,
                      instrument_metrics: dict[str, float] | None = None):
    grad_steps = int(agent_state.grad_steps)
    key = jax.random.fold_in(jax.random.fold_in(root_key, 1), env_steps)
    metrics = {k: float(v) for k, v in evaluate_fn(agent_state, key, index).items()}
    metrics.update(instrument_metrics or {})
    log.log(metrics, env_steps=env_steps, grad_steps=grad_steps, param_version=grad_steps)
    _progress(
        run,
        f"[{time.time() - log.start_time:7.1f}s] {log.role:<16} env_steps {env_steps:>9,} grad_steps {grad_steps:>7,} | "
        f"time_at_goal {metrics['time_at_goal']:6.1f} success_any {metrics['success_any']:.2f} "
        f"final_dist {metrics['final_dist']:.2f} | {train_metrics['env_steps_per_second']:,.0f} env-steps/s "
        f"{train_metrics['grad_steps_per_second']:.1f} sgd/s | critic_acc {train_metrics['critic_accuracy']:.2f} "
        f"alpha {train_metrics['alpha']:.3f}",
    )
    return metrics


def _progress(run, message: str) -> None:
    if not run.quiet:
        print(message, file=sys.stderr, flush=True)
