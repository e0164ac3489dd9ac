"""Actor and evaluator process loops: thin shells around the pure rollout and evaluation.

Actor: follow the collector's versioned params -> roll out one window of T steps in its E env slots with the
stochastic policy -> write E windows (one replay item each) -> log and report its env steps. Evaluator: an actor that
never writes: it follows one learner's params and runs the deterministic policy on fresh eval envs whenever a new
version appears; it exits after evaluating the learner's final params.

Everything is handed in by the composition root (`experiments.compose`): an `ActorJob` / `EvaluatorJob` (env, policy,
params template, sizes, keys) and the transport as `replay.protocols` objects. This module imports neither Reverb nor
the learners nor the run's config.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from actors.envs.wrappers import TrainingEnv
from actors.rollout import unroll
from replay.protocols import Logger, ParamStore, ReplayTimeout, Stopped, Versioned, WindowWriter
from replay.schema import Window
from replay.status import RunStatus

COVERAGE_SAVE_EVERY_SECONDS = 10.0
"""How often an actor rewrites its coverage histogram (it is small: a few KB for the paper's mazes)."""

Policy = Callable[[Any, jax.Array, jax.Array], jax.Array]
"""``act(actor_params, obs [..., S+G], key) -> action [..., A]``."""


def _say(role: str, message: str) -> None:
    print(f"[{role}] {message}", file=sys.stderr, flush=True)


class ParamsFollower:
    """Follows one learner's newest params through a `ParamStore` (a variable client, in Acme's words).

    `poll()` costs one small version read unless the version changed; then it fetches the params. A *lower* version
    counts as new: the learner resumed from an older checkpoint, and its newest params are the ones to use. Waits are
    bounded by `timeout_s`; a store that does not answer is treated as "nothing new"."""

    def __init__(self, store: ParamStore, role: str, template: Any, fingerprint: str, timeout_s: float,
                 until_final: bool = False) -> None:
        """`until_final`: also return the unchanged version once its meta says final (evaluators: a learner that
        stops short of its target publishes its last params as final under the version it already had)."""
        self._store, self._role, self._template, self._fingerprint = store, role, template, fingerprint
        self._timeout_s, self._until_final = timeout_s, until_final
        self.version = -1

    def poll(self) -> Versioned | None:
        try:
            head = self._store.latest_version(self._role, timeout_s=min(self._timeout_s, 5.0))
            if head.version == self.version and not (self._until_final and head.meta.get("final")):
                return None
            fetched = self._store.latest(self._role, self._template, self._fingerprint, timeout_s=self._timeout_s)
        except ReplayTimeout:
            return None
        self.version = fetched.version
        return fetched


def write_confirmed(writer: WindowWriter, window: Window, stop: threading.Event, role: str,
                    timeout_s: float) -> float:
    """Write `window` and wait until the replay confirmed it. Returns the seconds spent beyond a normal write (a rate
    limiter holding inserts back, or a replay restart); raises `Stopped` when a stop came first (the windows are then
    not counted, and a resumed actor collects them again)."""
    start = time.time()
    try:
        writer.write(window)
        return 0.0
    except ReplayTimeout as e:
        _say(role, f"write not confirmed yet (a learner is behind its update-to-data ratio, or the replay server is "
                   f"down): {e}")
    waited = 0.0
    while not stop.is_set():
        try:
            writer.wait_confirmed(timeout_s=min(timeout_s, 1.0))  # short slices: a stop is not held up
            return time.time() - start
        except ReplayTimeout:
            waited += min(timeout_s, 1.0)
            if waited >= timeout_s:
                _say(role, f"still not confirmed after {time.time() - start:.0f} s; waiting")
                waited = 0.0
    raise Stopped()


@dataclasses.dataclass(frozen=True)
class ActorJob:
    """What one actor process collects, built by `experiments.compose`."""

    role: str
    """e.g. "actor_0": its metrics, status and coverage file names."""
    actor_id: int
    """Provenance written into every window."""
    env: TrainingEnv
    policy: Policy
    """The collector's stochastic policy."""
    params_role: str
    """Whose params the actors act with (the collector learner)."""
    params_template: Any
    fingerprint: str
    num_envs: int
    """E: env slots of this actor."""
    window_steps: int
    """T."""
    budget_env_steps: int
    """This actor's share of the run's env steps; it stops at the first write that reaches it."""
    key: jax.Array
    """This actor's root key."""
    rpc_timeout_seconds: float
    coverage_path: Path | None = None
    """Where the achieved-goal histogram goes (maze envs), None otherwise."""


def run_actor(job: ActorJob, writer: WindowWriter, store: ParamStore, log: Logger, status: RunStatus,
              stop: threading.Event) -> int:
    """Collect until this actor's share of the env-step budget (or `stop`). Returns the env steps collected.

    A resumed actor continues its env-step count from its status (the steps the replay confirmed) with fresh
    episodes."""
    previous = status.get(job.role)
    env_steps = previous.env_steps if previous is not None else 0
    key = jax.random.fold_in(job.key, env_steps)
    env_state = jax.jit(job.env.reset, static_argnums=1)(jax.random.fold_in(key, 0), job.num_envs)
    collect = jax.jit(lambda params, state, k: unroll(job.env, job.policy, params, state, k, job.window_steps))

    coverage = None
    layout = getattr(job.env.env, "layout", None)
    if job.coverage_path is not None and layout is not None:
        from actors.coverage import CoverageGrid, load

        coverage = load(job.coverage_path) if job.coverage_path.exists() and env_steps else CoverageGrid(layout)
        last_coverage_save = time.time()
    spec = job.env.env.spec

    follower = ParamsFollower(store, job.params_role, job.params_template, job.fingerprint, job.rpc_timeout_seconds)
    current = None
    while current is None and not stop.is_set():
        current = follower.poll()
    if current is None:
        return env_steps
    params, version = current.params, current.version
    status.set(job.role, "running", env_steps=env_steps)
    rate_start, rate_steps, blocked = time.time(), env_steps, 0.0
    versions_seen = {version}
    i = 0
    # One rollout ahead: the next rollout is dispatched (JAX runs it asynchronously) before this window is written,
    # so the write and the param poll overlap it instead of following it (bench/actor_overhead.py). It acts with the
    # params known at dispatch, one window batch older than without the overlap; each window records the version
    # it was collected with. JAX runs queued work in order on CPU, and a device->host copy waits for everything
    # queued before it, so every host copy of this window happens before the next rollout is queued.
    pending = (collect(params, env_state, jax.random.fold_in(key, i + 1)), version)
    try:
        while env_steps < job.budget_env_steps and not stop.is_set():
            (env_state, traj), rollout_version = pending
            i += 1
            written = env_steps + job.num_envs * job.window_steps
            window = Window(
                obs=np.asarray(jnp.swapaxes(traj.obs, 0, 1)),
                action=np.asarray(jnp.swapaxes(traj.action, 0, 1)),
                traj_id=np.asarray(jnp.swapaxes(traj.traj_id, 0, 1)),
                actor_id=np.full((job.num_envs,), job.actor_id, np.int32),
                param_version=np.full((job.num_envs,), rollout_version, np.int64),
                env_steps=np.full((job.num_envs,), written, np.int64),
            )
            success_rate = float(np.mean(np.asarray(traj.success)))
            if written < job.budget_env_steps:
                pending = (collect(params, env_state, jax.random.fold_in(key, i + 1)), version)
            blocked += write_confirmed(writer, window, stop, job.role, job.rpc_timeout_seconds)
            env_steps = written
            if coverage is not None:
                coverage.add(np.asarray(spec.achieved_goal(spec.state_of(window.obs)))[..., :2])
                if time.time() - last_coverage_save > COVERAGE_SAVE_EVERY_SECONDS:
                    coverage.save(job.coverage_path, env_steps)
                    last_coverage_save = time.time()
            newer = follower.poll()
            if newer is not None:
                params, version = newer.params, newer.version
                versions_seen.add(version)
            elapsed = max(time.time() - rate_start, 1e-9)
            # The row, then the status, back to back and after every wait: a role killed in between them (not during
            # a bounded wait) is the only way the two disagree, and then by this one window at most.
            log.log({"env_steps_per_second": (env_steps - rate_steps) / elapsed, "blocked_seconds": blocked,
                     "success_rate": success_rate, "distinct_param_versions": len(versions_seen)},
                    env_steps=env_steps, grad_steps=version, param_version=version)
            status.set(job.role, "finished" if env_steps >= job.budget_env_steps else "running",
                       env_steps=env_steps)
            rate_start, rate_steps, blocked = time.time(), env_steps, 0.0
    except Stopped:
        pass
    if env_steps < job.budget_env_steps:
        status.set(job.role, "stopped", env_steps=env_steps)
    if coverage is not None:
        coverage.save(job.coverage_path, env_steps)
    log.close()
    return env_steps


@dataclasses.dataclass(frozen=True)
class EvaluatorJob:
    """What one evaluator process evaluates, built by `experiments.compose`."""

    role: str
    """e.g. "eval_learner_d16"."""
    learner: str
    """The learner whose params it follows."""
    evaluate: Callable[[Any, jax.Array], dict[str, jax.Array]]
    """``(actor_params, key) -> metrics``: the deterministic policy on fresh eval envs (jitted by the root)."""
    params_template: Any
    fingerprint: str
    target_grad_steps: int
    """The learner's last version: params at it are evaluated last even without the final flag."""
    eval_every_env_steps: int
    key: jax.Array
    rpc_timeout_seconds: float


def run_evaluator(job: EvaluatorJob, store: ParamStore, log: Logger, stop: threading.Event,
                  poll_seconds: float = 0.5) -> int:
    """Evaluate each new params version of the learner until its final params have been evaluated (or `stop`).
    Returns the number of evaluations."""
    follower = ParamsFollower(store, job.learner, job.params_template, job.fingerprint, job.rpc_timeout_seconds,
                              until_final=True)
    last_eval_env_steps, evaluations, resets, version = -(10**12), 0, 0, -1
    while not stop.is_set():
        fetched = follower.poll()
        if fetched is None:
            time.sleep(poll_seconds)
            continue
        if fetched.version < version:
            resets += 1
            _say(job.role, f"params of {job.learner} went back from version {version} to {fetched.version}: the "
                           "learner resumed from its last checkpoint (or the replay server from an older copy)")
        version = fetched.version
        env_steps = int(fetched.meta.get("env_steps", 0))
        # The learner's last periodic publish may carry the same version as its final one, so the target grad step,
        # not only the `final` flag, marks the params to evaluate last.
        final = bool(fetched.meta.get("final", False)) or version >= job.target_grad_steps
        if not final and env_steps - last_eval_env_steps < job.eval_every_env_steps:
            continue
        metrics = {k: float(v) for k, v in job.evaluate(fetched.params, jax.random.fold_in(job.key, env_steps)).items()}
        log.log({**metrics, "param_version_resets": resets}, env_steps=env_steps, grad_steps=version,
                param_version=version)
        last_eval_env_steps, evaluations = env_steps, evaluations + 1
        _say(job.role, f"env_steps {env_steps:,} version {version} time_at_goal {metrics['time_at_goal']:.1f}")
        if final:
            break
    log.close()
    return evaluations
