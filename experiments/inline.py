"""The single-process CRL trainer (`depthrl train`), the reference the decoupled runtime must match.

Pure part (`InlineTrainer`): one jitted training iteration = collect ``num_envs x unroll_length`` env steps with the
stochastic policy -> append to the in-process replay -> sample one window per env slot (as many times as needed) ->
relabel -> shuffle -> K SGD steps in one `lax.scan`. Evaluation is a separate jitted function.

Shell (`run_training`): validation, run directory, JSONL metrics, progress lines, orbax checkpoints (timer, end,
Ctrl-C) and resume.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from actors.envs.registry import make_env
from actors.envs.wrappers import TrainingEnv, TrainingEnvState
from actors.rollout import evaluate, unroll
from experiments.config import TrainConfig
from experiments.metrics import JsonlLogger
from learners.crl import CRLAgent, CRLState, Dims, make_agent
from learners.relabel import flatten, minibatches, relabel
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


@dataclasses.dataclass(frozen=True)
class InlineTrainer:
    """Pure functions of the single-process trainer, built from a validated `TrainConfig`."""

    config: TrainConfig
    agent: CRLAgent
    env: TrainingEnv
    eval_env: Any
    buffer: MemoryBuffer
    window_steps: int
    sgd_steps_per_iteration: int
    window_draws: int
    """Window sets sampled per iteration so that K x B transitions are drawn without replacement."""
    passive_agents: tuple[CRLAgent, ...] = ()
    """Learners that train on the collector's minibatches and never act (inline mode of `depthrl run`)."""
    layout: Any = None
    """The env's `MazeLayout` (coverage histogram bins), or None for envs without a maze."""
    coverage_bins_per_cell: int = 4
    """Histogram bins per maze cell along each axis (k), as `actors.coverage.CoverageGrid`."""

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
        scaling = self.layout.scaling
        xy = achieved_xy.reshape(-1, 2)
        finite = jnp.all(jnp.isfinite(xy), axis=-1)
        index = jnp.floor((jnp.where(finite[:, None], xy, 0.0) + scaling / 2) / (scaling / self.coverage_bins_per_cell))
        n_x, n_y = counts.shape
        ix = jnp.clip(index[:, 0].astype(jnp.int32), 0, n_x - 1)
        iy = jnp.clip(index[:, 1].astype(jnp.int32), 0, n_y - 1)
        return counts.at[ix, iy].add(finite.astype(counts.dtype))

    def init(self, key: jax.Array) -> TrainerState:
        agent_key, env_key, key = jax.random.split(key, 3)
        return TrainerState(
            agent=self.agent.init(agent_key),
            passive=tuple(a.init(jax.random.fold_in(agent_key, i + 1)) for i, a in enumerate(self.passive_agents)),
            buffer=self.buffer.init(),
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
        buffer = self.buffer.insert(state.buffer, traj.obs, traj.action, traj.traj_id)
        steps = self.config.schedule.env_steps_per_iteration
        spec = self.env.env.spec
        coverage = self.add_coverage(state.coverage, spec.achieved_goal(spec.state_of(traj.obs))[..., :2])
        return state.replace(buffer=buffer, env=env_state, key=key, env_steps=state.env_steps + steps,
                             coverage=coverage)

    def collect(self, state: TrainerState) -> TrainerState:
        """Collect one iteration of data without learning (prefill)."""
        return self._collect(state)

    def iteration(self, state: TrainerState) -> tuple[TrainerState, tuple[dict[str, jax.Array], ...]]:
        """Collect, then K SGD steps on relabelled windows from the buffer, for the collector and every passive
        learner on identical minibatches. Returns metrics per agent, collector first."""
        state = self._collect(state)
        key, sample_key, relabel_key, perm_key, update_key = jax.random.split(state.key, 5)
        spec = self.env.env.spec
        schedule = self.config.schedule

        def draw(keys):
            obs, action, traj_id = self.buffer.sample_windows(state.buffer, keys[0], self.window_steps)
            return flatten(relabel(keys[1], obs, action, traj_id, spec, schedule.goal_discount))

        draw_keys = jnp.stack(
            [jax.random.split(sample_key, self.window_draws), jax.random.split(relabel_key, self.window_draws)], axis=1
        )
        pool = jax.vmap(draw)(draw_keys)  # [D, W*E, ...]
        pool = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), pool)
        batches = minibatches(perm_key, pool, self.sgd_steps_per_iteration, schedule.batch_size)
        agent_state, metrics = self.agent.update_many(state.agent, batches, update_key)
        passive, passive_metrics = [], []
        for agent, agent_state_p in zip(self.passive_agents, state.passive):
            new_state, m = agent.update_many(agent_state_p, batches, update_key)
            passive.append(new_state)
            passive_metrics.append(m)
        return state.replace(agent=agent_state, passive=tuple(passive), key=key), (metrics, *passive_metrics)

    def evaluate(self, agent_state: CRLState, key: jax.Array, index: int = 0) -> dict[str, jax.Array]:
        """Deterministic-policy evaluation of agent `index` (0 = collector, i = passive learner i - 1)."""
        agent = self.agent if index == 0 else self.passive_agents[index - 1]
        policy = lambda params, obs, k: agent.act(params, obs, k, deterministic=True)
        return evaluate(
            self.eval_env, policy, agent_state.actor_params, key, self.config.eval.num_eval_envs,
            self.config.episode_length(),
        )


def make_trainer(config: TrainConfig, passive: tuple = ()) -> InlineTrainer:
    """Build the trainer; `passive` holds CRLConfigs of passive learners (inline `depthrl run`)."""
    config.validate()
    episode_length = config.episode_length()
    env = make_env(config.env.env, episode_length=episode_length)
    eval_env = make_env(config.env.eval_env or config.env.env, episode_length=episode_length)
    spec = env.spec
    dims = Dims(state_dim=spec.state_dim, goal_dim=spec.goal_dim, action_dim=env.action_size)
    agent = make_agent(config.agent, dims)
    s = config.schedule
    window = config.window_steps()
    k = s.sgd_steps_per_iteration()
    draws = max(1, math.ceil(k * s.batch_size / (window * s.num_envs)))
    return InlineTrainer(
        config=config,
        agent=agent,
        env=TrainingEnv(env, episode_length, config.env.reset_mode),
        eval_env=eval_env,
        buffer=MemoryBuffer(s.buffer_capacity_steps, s.num_envs, spec.obs_dim, env.action_size),
        window_steps=window,
        sgd_steps_per_iteration=k,
        window_draws=draws,
        passive_agents=tuple(make_agent(c, dims) for c in passive),
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


def _checkpointer(run_dir: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager((run_dir / "checkpoints").resolve(), options=options)


def _save(manager, state: TrainerState, wall_time: float) -> None:
    import orbax.checkpoint as ocp

    step = int(state.env_steps)
    if manager.latest_step() == step:
        return
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"wall_time": wall_time, "env_steps": step})
        ),
    )
    manager.wait_until_finished()


def _restore(manager, abstract_state: TrainerState) -> tuple[TrainerState, float]:
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
    )
    return restored["state"], float(restored["meta"]["wall_time"])


def run_training(
    config: TrainConfig,
    run_dir: Path,
    roles: tuple[str, ...] = ("learner",),
    eval_roles: tuple[str, ...] = ("evaluator",),
    passive: tuple = (),
) -> dict[str, float]:
    """Train until `total_env_steps`; the run dir must already hold config.json. `roles`/`eval_roles` name the
    collector and each passive learner (configs in `passive`) in the metrics. Returns the collector's last eval."""
    trainer = make_trainer(config, passive)
    s, run = config.schedule, config.run
    root_key = jax.random.PRNGKey(run.seed)

    init = jax.jit(trainer.init)
    collect = jax.jit(trainer.collect, donate_argnums=0)
    iteration = jax.jit(trainer.iteration, donate_argnums=0)
    evaluate_fn = jax.jit(trainer.evaluate, static_argnums=2)

    manager = _checkpointer(run_dir)
    state = init(jax.random.fold_in(root_key, 0))
    wall_offset = 0.0
    if manager.latest_step() is not None:
        state, wall_offset = _restore(manager, jax.eval_shape(lambda: state))
        _progress(run, f"resumed from checkpoint at {int(state.env_steps)} env steps")

    start = time.time() - wall_offset
    learner_logs = [JsonlLogger(run_dir / "metrics" / f"{r}.jsonl", r, start_time=start) for r in roles]
    eval_logs = [JsonlLogger(run_dir / "metrics" / f"{r}.jsonl", r, start_time=start) for r in eval_roles]
    stop = _StopFlag()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    prefill_iterations = math.ceil(s.prefill_steps_per_env / s.unroll_length)
    last_eval: dict[str, float] = {}
    try:
        while int(state.buffer.inserted_steps) < prefill_iterations * s.unroll_length and not stop.stop:
            state = collect(state)
        last_checkpoint = time.time()
        next_eval = _next_multiple(int(state.env_steps), config.eval.eval_every_env_steps)
        iter_start, iter_env_steps, iter_grad_steps = time.time(), int(state.env_steps), int(state.agent.grad_steps)
        while int(state.env_steps) < s.total_env_steps and not stop.stop:
            state, all_metrics = iteration(state)
            env_steps, grad_steps = int(state.env_steps), int(state.agent.grad_steps)
            elapsed = max(time.time() - iter_start, 1e-9)
            rates = {
                "env_steps_per_second": (env_steps - iter_env_steps) / elapsed,
                "grad_steps_per_second": (grad_steps - iter_grad_steps) / elapsed,
                "update_to_data": grad_steps / max(env_steps - prefill_iterations * s.env_steps_per_iteration, 1),
                "policy_lag": 0.0,  # inline: every iteration acts with the newest params
            }
            iter_start, iter_env_steps, iter_grad_steps = time.time(), env_steps, grad_steps
            for log, metrics in zip(learner_logs, all_metrics):
                metrics = {**{k: float(v) for k, v in metrics.items()}, **rates}
                log.log(metrics, env_steps=env_steps, grad_steps=grad_steps, param_version=grad_steps)
            if env_steps >= next_eval or env_steps >= s.total_env_steps:
                collector_metrics = {**{k: float(v) for k, v in all_metrics[0].items()}, **rates}
                agent_states = (state.agent, *state.passive)
                for index, (log, agent_state) in enumerate(zip(eval_logs, agent_states)):
                    result = _evaluate_and_log(evaluate_fn, agent_state, index, env_steps, root_key, log, run,
                                               collector_metrics)
                    if index == 0:
                        last_eval = result
                next_eval = _next_multiple(env_steps, config.eval.eval_every_env_steps)
                _save_coverage(trainer, state, run_dir, roles[0])
            if time.time() - last_checkpoint > run.checkpoint_every_seconds:
                _save(manager, state, time.time() - start)
                last_checkpoint = time.time()
        _save(manager, state, time.time() - start)
        _save_coverage(trainer, state, run_dir, roles[0])
        if stop.stop:
            again = (f"depthrl train --run-dir {run_dir} --resume" if roles == ("learner",)
                     else f"depthrl resume {run_dir}")
            _progress(run, f"stopped by signal {stop.signum} at {int(state.env_steps)} env steps; continue with: {again}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for log in learner_logs + eval_logs:
            log.close()
        manager.close()
    if stop.stop:
        raise KeyboardInterrupt
    return last_eval


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


def _evaluate_and_log(evaluate_fn, agent_state, index, env_steps, root_key, log: JsonlLogger, run, train_metrics):
    grad_steps = int(agent_state.grad_steps)
    key = jax.random.fold_in(jax.random.fold_in(root_key, 1), env_steps)
    metrics = {k: float(v) for k, v in evaluate_fn(agent_state, key, index).items()}
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
