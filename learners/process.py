"""The learner process loop: sample windows, prepare minibatches, K SGD steps, publish versioned params, checkpoint.

A thin shell around the pure core. It hosts one learner (sampling mode 'independent') or several learners that train
on identical minibatches ('shared-batch'). Everything it needs is handed in by the composition root
(`experiments.compose`): a `LearnerJob` (agents, plan, keys, periods) and the transport as `replay.protocols`
objects. It never imports Reverb or the run's config.

`run_learners` is a short loop over named parts:
- `Prefetcher`: a thread that samples the next windows and prepares ``[K, B]`` minibatches while the main thread
  trains on the current ones, so sampling, transfer and relabelling overlap the SGD steps;
- `Publisher`: periodic publishes, and the final one that evaluators wait for;
- a `Checkpointer` on a timer (`learners.checkpoint`);
- `learners.step.learner_row`, the metric row.

Stopping: at the SGD-step target (the update-to-data ratio times the env-step budget), when no more data can come
(`ReplayExhausted`: it stops short and says so), or on a stop request. Either way the learner checkpoints and
publishes its last params; they are marked final (evaluators take a last look and exit) unless a stop request ended
it.
"""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from learners.checkpoint import Checkpointer
from learners.crl import CRLAgent, CRLState
from learners.step import LearnerPlan, learner_row, prepare, update_to_data
from replay.protocols import Logger, ParamStore, ReplayExhausted, ReplayTimeout, Stopped, WindowSampler
from replay.schema import GoalSpec
from replay.status import RunStatus

PREFETCH_BATCHES = 2
"""Batches the prefetch thread keeps ready. A stopped learner has drawn up to PREFETCH_BATCHES + 2 batches it never
trained on (the queue, the one being prepared, the request in flight). The rate limiter counted them, so a resumed
learner reaches its target only if its table's error buffer (N + samples_per_insert x E windows, see
experiments.compose.tables_for) covers them: (PREFETCH_BATCHES + 2) x N. With K = u x num_envs x unroll_length that
holds whenever window_steps / (unroll_length x actors) >= 3 (paper, one actor: 1000 / 62); otherwise it may stop short
at the very end, and says so."""

SAMPLE_POLL_SECONDS = 5.0
"""Sampling waits in slices of at most this long, so that a learner notices between them that no data can come."""

STATUS_EVERY_SECONDS = 1.0
"""A running learner replaces its status file at most this often (it updates several times a second). Each write
builds paths and a JSON string that are garbage at once (pathlib interns each new file name): a 36-minute trace of a
learner's native allocations found the interpreter's interned-string table reallocated (7.3 MiB) from inside such a
write. Final states are always written."""


@dataclasses.dataclass(frozen=True)
class LearnerJob:
    """What one learner process trains, built by `experiments.compose`."""

    agents: tuple[CRLAgent, ...]
    """The learners of this process (one, or several on identical minibatches); `agent.learner.name` names each."""
    spec: GoalSpec
    """Where state and goal live in an observation (relabelling)."""
    plan: LearnerPlan
    goal_discount: float
    """γ of the future-goal sampling."""
    key: jax.Array
    """Root key of this process; every other key is folded in from it."""
    publish_every_grad_steps: int
    checkpoint_every_seconds: float
    checkpoint_dir: Path
    rpc_timeout_seconds: float
    """Bound of one transport wait; a longer wait is reported (and retried)."""
    total_env_steps: int
    """The run's env-step budget (the end of the data)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(agent.learner.name for agent in self.agents)

    @property
    def label(self) -> str:
        return "+".join(self.names)


def _say(label: str, message: str) -> None:
    print(f"[{label}] {message}", file=sys.stderr, flush=True)


class Prefetcher:
    """Samples and prepares the next minibatches on a daemon thread (see the module docstring).

    `no_more_data()` is asked whenever a sample times out; True ends the stream with `ReplayExhausted` (every actor
    finished and the limiter allows no further sample)."""

    def __init__(self, job: LearnerJob, sampler: WindowSampler, stop: threading.Event,
                 no_more_data: Callable[[], bool], first_update: int) -> None:
        self._job, self._sampler, self._stop, self._no_more_data = job, sampler, stop, no_more_data
        self._next_update = first_update
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        self.error: BaseException | None = None
        self.exhausted = threading.Event()
        plan, spec, discount = job.plan, job.spec, job.goal_discount

        @jax.jit
        def prepare_one(obs, action, traj_id, key):
            relabel_key, shuffle_key = jax.random.split(key)
            return prepare(relabel_key[None], shuffle_key, obs[None], action[None], traj_id[None], spec, discount,
                           plan)

        self._prepare = prepare_one
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _sample(self):
        """The next windows; waits in short slices and reports long waits."""
        waited = 0.0
        while True:
            try:
                return self._sampler.sample()
            except ReplayTimeout as e:
                if self._stop.is_set():
                    raise Stopped() from None
                waited += min(SAMPLE_POLL_SECONDS, self._job.rpc_timeout_seconds)
                if self._no_more_data():
                    raise ReplayExhausted() from None
                if waited >= self._job.rpc_timeout_seconds:
                    _say(self._job.label, f"waiting for replay for {waited:.0f} s: {e}")
                    waited = 0.0

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                window = self._sample()
                key = jax.random.fold_in(jax.random.fold_in(self._job.key, 7), self._next_update)
                batch = self._prepare(window.obs, window.action, window.traj_id, key)
                item = (batch, np.asarray(window.actor_id), np.asarray(window.param_version),
                        np.asarray(window.env_steps))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                self._next_update += 1
        except (Stopped, ReplayExhausted):
            self.exhausted.set()
        except BaseException as e:  # surfaced by the main thread
            self.error = e
            self._stop.set()

    def get(self, timeout_s: float):
        """``(batch, actor_ids [N], param_versions [N], env_steps [N])``, or None after `timeout_s`."""
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    @property
    def drained(self) -> bool:
        """No batch will come any more: the stream ended and the queue is empty."""
        return self.exhausted.is_set() and self._queue.empty()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout=timeout_s)


class Publisher:
    """Publishes each learner's actor params: at start, every `publish_every_grad_steps`, and a last time."""

    def __init__(self, job: LearnerJob, store: ParamStore) -> None:
        self._job, self._store = job, store
        self._last: dict[str, int] = {}

    def publish(self, agent: CRLAgent, state: CRLState, env_steps: int, final: bool = False) -> None:
        """Periodic publishes are skipped while the store is away (the next one carries newer params); a final one,
        which evaluators wait for, is retried for a few timeouts."""
        name, version = agent.learner.name, int(state.grad_steps)
        timeout = self._job.rpc_timeout_seconds
        deadline = time.monotonic() + 4 * timeout
        while True:
            try:
                self._store.publish(name, state.actor_params, version, agent.fingerprint(),
                                    {"env_steps": int(env_steps), "final": final}, timeout_s=timeout)
                self._last[name] = version
                return
            except ReplayTimeout as e:
                if not final or time.monotonic() > deadline:
                    _say(self._job.label, f"publishing params version {version} of {name} skipped: {e}")
                    return
                _say(self._job.label, f"final params of {name} not published yet, retrying: {e}")

    def due(self, agent: CRLAgent, state: CRLState) -> bool:
        return int(state.grad_steps) - self._last.get(agent.learner.name, -10**12) >= \
            self._job.publish_every_grad_steps


def run_learners(
    job: LearnerJob,
    sampler: WindowSampler,
    store: ParamStore,
    loggers: Mapping[str, Logger],
    status: RunStatus,
    stop: threading.Event,
    no_more_data: Callable[[], bool] = lambda: False,
    replay_stats: Callable[[], Mapping[str, float]] | None = None,
    actors_finished: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Train the job's learners until their SGD-step target, the end of the data, or `stop`. Returns grad steps.

    `replay_stats()` (optional) gives the learner table's counters from the server: ``inserted_windows`` (the env-step
    axis and the measured update-to-data ratio use it: provenance in sampled windows lags behind), ``table_size``,
    ``limiter_blocks_inserts`` and the limiter's stall times, logged with every row."""
    names, plan, label = job.names, job.plan, job.label
    states = {a.learner.name: a.init(jax.random.fold_in(job.key, i)) for i, a in enumerate(job.agents)}
    fingerprints = {a.learner.name: a.fingerprint() for a in job.agents}
    checkpointer = Checkpointer(job.checkpoint_dir, item="states")
    counters: dict[str, Any] = {"updates": 0, "env_steps_by_actor": {}, "fingerprints": fingerprints}
    restored = checkpointer.restore(states)
    if restored is not None:
        stored = restored[1].get("fingerprints")
        if stored is not None and stored != fingerprints:
            raise ValueError(f"checkpoints in {job.checkpoint_dir} hold params with fingerprints {stored}, but this "
                             f"run's config builds {fingerprints}: the network config changed")
        states, counters = restored
        counters["fingerprints"] = fingerprints
        _say(label, f"resumed at update {counters['updates']} (grad steps "
                    f"{ {n: int(s.grad_steps) for n, s in states.items()} }) from its checkpoint")
    for log in loggers.values():
        log.start_time -= counters.get("wall_time_offset", 0.0)

    updates = {a.learner.name: jax.jit(a.update_many, donate_argnums=0) for a in job.agents}
    prefetcher = Prefetcher(job, sampler, stop, no_more_data, int(counters["updates"]))
    publisher = Publisher(job, store)
    server: dict[str, float] = {}
    last_stats = last_status = 0.0

    def env_steps_now() -> int:
        if "inserted_windows" in server:
            return int(server["inserted_windows"]) * plan.window_steps
        return int(sum(counters["env_steps_by_actor"].values()))

    def grad_steps(name: str) -> int:
        return int(states[name].grad_steps)

    def save() -> None:
        counters["wall_time_offset"] = time.time() - loggers[names[0]].start_time
        checkpointer.save(int(counters["updates"]), states, counters)

    for agent in job.agents:  # version 0 (or the resumed version): actors can start before the first update
        publisher.publish(agent, states[agent.learner.name], env_steps_now())
    last_checkpoint = time.time()
    newest_collector_version = 0
    rate_start, rate_grad, wait_seconds = time.time(), grad_steps(names[0]), 0.0
    # Params are published as final only when the learner finished: a resumed run restores the replay server's
    # checkpoint, and params marked final there would end its evaluators at once.
    finished = False
    try:
        while min(grad_steps(n) for n in names) < plan.target_grad_steps and not stop.is_set():
            wait_start = time.time()
            item = prefetcher.get(timeout_s=0.5)
            wait_seconds += time.time() - wait_start
            if item is None:
                if prefetcher.drained:
                    _say(label, f"stopping at grad steps { {n: grad_steps(n) for n in names} }, short of the target "
                                f"{plan.target_grad_steps}: every actor has finished and the replay rate limiter "
                                "allows no further sample")
                    break
                continue
            batch, actor_ids, versions, window_env_steps = item
            for actor, steps in zip(actor_ids.tolist(), window_env_steps.tolist()):
                key = str(actor)
                counters["env_steps_by_actor"][key] = max(counters["env_steps_by_actor"].get(key, 0), int(steps))
            newest_collector_version = max(newest_collector_version, int(versions.max()))
            if replay_stats is not None and time.time() - last_stats > 1.0:
                server.update(replay_stats())
                last_stats = time.time()
            update_key = jax.random.fold_in(jax.random.fold_in(job.key, 11), int(counters["updates"]))
            metrics = {}
            for name in names:
                states[name], metrics[name] = updates[name](states[name], batch, update_key)
            counters["updates"] = int(counters["updates"]) + 1
            elapsed, env_steps = max(time.time() - rate_start, 1e-9), env_steps_now()
            for agent in job.agents:
                name = agent.learner.name
                g = grad_steps(name)
                own_version = g if agent.learner.collects else newest_collector_version
                row = learner_row(metrics[name], grad_steps=g, env_steps=env_steps, plan=plan,
                                  grad_steps_per_second=(g - rate_grad) / elapsed if name == names[0] else float("nan"),
                                  policy_lag=own_version - float(np.mean(versions)),
                                  sample_wait_seconds=wait_seconds, **server)
                loggers[name].log(row, env_steps=env_steps, grad_steps=g, param_version=g)
                if publisher.due(agent, states[name]):
                    publisher.publish(agent, states[name], env_steps)
            if time.time() - last_status >= STATUS_EVERY_SECONDS:
                status.set(label, "running", env_steps=env_steps, grad_steps=grad_steps(names[0]))
                last_status = time.time()
            rate_start, rate_grad, wait_seconds = time.time(), grad_steps(names[0]), 0.0
            if time.time() - last_checkpoint > job.checkpoint_every_seconds:
                save()
                last_checkpoint = time.time()
        if prefetcher.error is not None:
            raise prefetcher.error
        finished = not stop.is_set()  # target reached (or no data left), not stopped by a signal
        if replay_stats is not None and finished:
            _log_final_counts(job, states, loggers, replay_stats, stop, server, actors_finished)
    finally:
        stop.set()
        save()
        checkpointer.close()
        try:
            for agent in job.agents:
                publisher.publish(agent, states[agent.learner.name], env_steps_now(), final=finished)
        except Exception as e:  # the replay server may already be gone at shutdown
            _say(label, f"final publish failed: {e}")
        for log in loggers.values():
            log.close()
        short = {n: plan.target_grad_steps - grad_steps(n) for n in names if grad_steps(n) < plan.target_grad_steps}
        status.set(label, "finished" if finished else "stopped", env_steps=env_steps_now(),
                   grad_steps=grad_steps(names[0]), detail={"short_of_target": short} if short else None)
        # Briefly: the prefetch thread may sit in a bounded sample wait; it is a daemon, and a stopped learner must
        # leave time for the replay server's final checkpoint within the launcher's shutdown grace period.
        prefetcher.join(timeout_s=1)
    return {name: grad_steps(name) for name in names}


def _log_final_counts(job: LearnerJob, states, loggers, replay_stats, stop, server, actors_finished) -> None:
    """A learner can finish up to one limiter error buffer ahead of the actors. Wait (bounded) until the whole budget
    is in replay (or every actor has finished: a replay restart may have lost some of it), then log one last row per
    learner with the final update-to-data ratio."""
    plan = job.plan
    deadline = time.time() + 2 * job.rpc_timeout_seconds
    while time.time() < deadline and not stop.is_set():
        server.update(replay_stats())
        if server.get("inserted_windows", 0) * plan.window_steps >= job.total_env_steps:
            break
        if actors_finished():
            server.update(replay_stats())  # an actor reports finished only after the replay confirmed its windows
            break
        if server.get("limiter_blocks_inserts"):
            # This learner samples no more, so its table will never admit the actors' remaining windows (a replay
            # restore forgot samples drawn after its checkpoint): nothing more will arrive.
            break
        time.sleep(0.5)
    env_steps = int(server.get("inserted_windows", 0)) * plan.window_steps
    for name, state in states.items():
        g = int(state.grad_steps)
        short = {"grad_steps_short_of_target": plan.target_grad_steps - g} if g < plan.target_grad_steps else {}
        loggers[name].log({"update_to_data": update_to_data(g, env_steps, plan), **short, **server},
                          env_steps=env_steps, grad_steps=g, param_version=g)
