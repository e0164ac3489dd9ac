"""Actor and evaluator process loops: thin shells around the pure rollout and evaluation.

Actor: pull the collector's latest params (versioned, fingerprint-checked) -> roll out one window of T steps in its E
env slots with the stochastic policy -> write E windows (one replay item each) -> log. The transport is passed in as
callables, so this module never imports Reverb.

Evaluator: an actor that never writes: it polls one learner's params and runs the deterministic policy on fresh eval
envs whenever a new version appears; it exits after evaluating the learner's final params.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from actors.envs.registry import make_env
from actors.envs.wrappers import TrainingEnv
from actors.rollout import evaluate, unroll
from experiments.config import COLLECTOR, DecoupledConfig
from experiments.metrics import JsonlLogger
from learners.crl import Dims, make_agent
from replay.schema import Window

COVERAGE_SAVE_EVERY_SECONDS = 10.0
"""How often an actor rewrites its coverage histogram (it is small: a few KB for the paper's mazes)."""

# latest(role) -> (version, params, meta) or None when nothing newer than `known_version` is there yet.
LatestParams = Callable[[str, Any, int], "tuple[int, Any, dict] | None"]


def _agent_for(config: DecoupledConfig, name: str, env):
    spec = env.spec
    return make_agent(config.agent_config(name), Dims(spec.state_dim, spec.goal_dim, env.action_size))


def run_actor(
    config: DecoupledConfig,
    run_dir: Path,
    actor_id: int,
    write: Callable[[Window], "float | None"],
    latest: LatestParams,
    stop_event: threading.Event,
) -> int:
    """Collect until this actor's share of the env-step budget. `write(window [E, T])` returns seconds spent blocked
    by replay rate limiting, or None when a stop came before the replay confirmed the windows (they are not counted,
    so a resumed actor collects them again). Returns the env steps collected."""
    train_cfg = config.as_train_config()
    episode_length = train_cfg.episode_length()
    env = make_env(config.env.env, episode_length=episode_length)
    agent = _agent_for(config, COLLECTOR, env)
    training_env = TrainingEnv(env, episode_length, config.env.reset_mode)
    num_envs = config.envs_per_actor()
    window_steps = train_cfg.window_steps()
    budget = config.schedule.total_env_steps // config.runtime.actors
    role = f"actor_{actor_id}"
    log = JsonlLogger(run_dir / "metrics" / f"{role}.jsonl", role)

    root = jax.random.fold_in(jax.random.PRNGKey(config.run.seed), 2000 + actor_id)
    # Resuming actors start fresh episodes; their env-step counter continues from what they already wrote.
    env_steps = _previous_env_steps(run_dir / "metrics" / f"{role}.jsonl")
    key = jax.random.fold_in(root, env_steps)
    env_state = jax.jit(training_env.reset, static_argnums=1)(jax.random.fold_in(key, 0), num_envs)
    template = agent.init(jax.random.PRNGKey(0)).actor_params

    @jax.jit
    def collect(params, state, key):
        state, traj = unroll(training_env, agent.act, params, state, key, window_steps)
        return state, traj

    # Where the collector's data goes (maze envs): a histogram of achieved-goal positions, saved with the metrics.
    layout = getattr(env, "layout", None)
    coverage = None
    if layout is not None:
        from actors.coverage import CoverageGrid, coverage_path, load

        cov_path = coverage_path(run_dir, role)
        coverage = load(cov_path) if cov_path.exists() and env_steps else CoverageGrid(layout)
        last_coverage_save = time.time()

    fetched = None
    while fetched is None and not stop_event.is_set():
        fetched = latest(COLLECTOR, template, -1)
    if fetched is None:
        return env_steps
    version, params, _ = fetched
    rate_start, rate_steps, blocked = time.time(), env_steps, 0.0
    versions_seen = {version}
    i = 0
    # One rollout ahead: the next rollout is dispatched (JAX runs it asynchronously) before this window is written,
    # so the write and the param poll overlap it instead of following it (bench/actor_overhead.py). It acts with the
    # params known at dispatch, one window batch older than without the overlap; each window records the version
    # it was collected with. JAX runs queued work in order on CPU, and a device->host copy waits for everything
    # queued before it, so every host copy of this window happens before the next rollout is queued.
    pending = (collect(params, env_state, jax.random.fold_in(key, i + 1)), version)
    while env_steps < budget and not stop_event.is_set():
        (env_state, traj), rollout_version = pending
        i += 1
        env_steps += num_envs * window_steps
        window = Window(
            obs=np.asarray(jnp.swapaxes(traj.obs, 0, 1)),
            action=np.asarray(jnp.swapaxes(traj.action, 0, 1)),
            traj_id=np.asarray(jnp.swapaxes(traj.traj_id, 0, 1)),
            actor_id=np.full((num_envs,), actor_id, np.int32),
            param_version=np.full((num_envs,), rollout_version, np.int64),
            env_steps=np.full((num_envs,), env_steps, np.int64),
        )
        success_rate = float(np.mean(np.asarray(traj.success)))
        if env_steps < budget:
            pending = (collect(params, env_state, jax.random.fold_in(key, i + 1)), version)
        seconds = write(window)
        if seconds is None:
            env_steps -= num_envs * window_steps
            break
        blocked += seconds
        if coverage is not None:
            coverage.add(np.asarray(env.spec.achieved_goal(window.obs[..., : env.spec.state_dim]))[..., :2])
            if time.time() - last_coverage_save > COVERAGE_SAVE_EVERY_SECONDS:
                coverage.save(cov_path, env_steps)
                last_coverage_save = time.time()
        newer = latest(COLLECTOR, template, version)
        if newer is not None:
            version, params, _ = newer
            versions_seen.add(version)
        elapsed = max(time.time() - rate_start, 1e-9)
        log.log(
            {
                "env_steps_per_second": (env_steps - rate_steps) / elapsed,
                "blocked_seconds": blocked,
                "success_rate": success_rate,
                "distinct_param_versions": len(versions_seen),
            },
            env_steps=env_steps, grad_steps=version, param_version=version,
        )
        rate_start, rate_steps, blocked = time.time(), env_steps, 0.0
    if coverage is not None:
        coverage.save(cov_path, env_steps)
    log.close()
    return env_steps


def _previous_env_steps(path: Path) -> int:
    from experiments.metrics import read_jsonl

    if not path.exists():
        return 0
    rows, _ = read_jsonl(path)
    return max((int(r["env_steps"]) for r in rows), default=0)


def run_evaluator(
    config: DecoupledConfig,
    run_dir: Path,
    learner: str,
    latest: LatestParams,
    stop_event: threading.Event,
    poll_seconds: float = 0.5,
) -> int:
    """Evaluate each new params version of `learner` until its final params have been evaluated (or a stop).
    Returns the number of evaluations."""
    train_cfg = config.as_train_config()
    episode_length = train_cfg.episode_length()
    eval_env = make_env(config.env.eval_env or config.env.env, episode_length=episode_length)
    agent = _agent_for(config, learner, eval_env)
    template = agent.init(jax.random.PRNGKey(0)).actor_params
    role = f"eval_{learner}"
    log = JsonlLogger(run_dir / "metrics" / f"{role}.jsonl", role)
    policy = lambda params, obs, k: agent.act(params, obs, k, deterministic=True)
    run_eval = jax.jit(lambda params, key: evaluate(eval_env, policy, params, key, config.eval.num_eval_envs,
                                                    episode_length))
    root = jax.random.fold_in(jax.random.PRNGKey(config.run.seed), 3000)
    from learners.process import plan_for

    # The learner's last periodic publish may carry the same version as its final one, so the target grad step,
    # not only the `final` flag, marks the params to evaluate last.
    target_grad_steps = plan_for(config).target_grad_steps
    version, last_eval_env_steps, evaluations = -1, -(10**12), 0
    resets = 0  # times the learner's params went back to an older version (it restarted from a checkpoint)
    while not stop_event.is_set():
        fetched = latest(learner, template, version)
        if fetched is None:
            time.sleep(poll_seconds)
            continue
        previous = version
        version, params, meta = fetched
        if version < previous:
            resets += 1
            print(f"[{role}] params of {learner} went back from version {previous} to {version}: the learner resumed "
                  "from its last checkpoint (or the replay server from an older copy)", file=sys.stderr, flush=True)
        env_steps = int(meta.get("env_steps", 0))
        final = bool(meta.get("final", False)) or version >= target_grad_steps
        if not final and env_steps - last_eval_env_steps < config.eval.eval_every_env_steps:
            continue
        metrics = {k: float(v) for k, v in run_eval(params, jax.random.fold_in(root, env_steps)).items()}
        log.log({**metrics, "param_version_resets": resets}, env_steps=env_steps, grad_steps=version,
                param_version=version)
        last_eval_env_steps, evaluations = env_steps, evaluations + 1
        print(f"[{role}] env_steps {env_steps:,} version {version} time_at_goal {metrics['time_at_goal']:.1f}",
              file=sys.stderr, flush=True)
        if final:
            break
    log.close()
    return evaluations
