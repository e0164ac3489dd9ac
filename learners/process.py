"""The learner process: sample windows from replay, relabel, K SGD steps, publish versioned params, checkpoint.

A thin shell around the pure core. It hosts one learner (sampling mode 'independent') or several learners that train on
identical minibatches ('shared-batch'). The learner only sees a `sample()` callable returning ``Window [T, N]``
batches; it never imports Reverb itself (the transport is passed in by `main`).

Prefetch: a background thread samples the next windows and relabels them into ``[K, B]`` minibatches while the main
thread runs `update_many` on the current ones, so sampling, transfer and relabelling overlap the SGD steps.

Stopping: at the target number of SGD steps (the collector's update-to-data ratio times the env-step budget), when no
more data can come (every actor finished and the rate limiter allows no further sample: it stops short and says so),
or on SIGTERM/SIGINT. Either way the learner checkpoints and publishes its last params; they are marked final (so
evaluators take a last look and exit) unless a signal stopped it.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from actors.envs.registry import make_env
from experiments.config import COLLECTOR, DecoupledConfig
from experiments.metrics import JsonlLogger
from learners.crl import CRLAgent, CRLState, Dims, make_agent
from learners.relabel import flatten, minibatches, relabel
from replay.schema import Window


PREFETCH_BATCHES = 2
"""Batches the prefetch thread keeps ready. A stopped learner has drawn up to PREFETCH_BATCHES + 2 batches it never
trained on (the queue, the one being prepared, the request in flight). The rate limiter counted them, so a resumed
learner reaches its target only if its table's error buffer (N + samples_per_insert x E windows, see
experiments.roles.tables_for) covers them: (PREFETCH_BATCHES + 2) x N. With K = u x num_envs x unroll_length that
holds whenever window_steps / (unroll_length x actors) >= 3 (paper, one actor: 1000 / 62); otherwise it may stop short
at the very end, and says so."""


@dataclasses.dataclass(frozen=True)
class LearnerPlan:
    """Derived sizes shared by the launcher (table limiters) and the learner loop."""

    window_steps: int
    """T: steps per replay item."""
    sgd_steps_per_update: int
    """K: SGD steps per sampled batch of windows."""
    batch_size: int
    """B."""
    windows_per_sample: int
    """N = ceil(K·B / T): windows drawn per update so that K·B transitions are used without replacement."""
    samples_per_insert: float
    """Windows sampled per window inserted so that the learner does u·T SGD steps per inserted window of T env
    steps: (u·T) · (N / K)."""
    target_grad_steps: int
    """SGD steps at which the learner stops: u · (total env steps − prefill env steps), rounded up to a multiple of K."""
    prefill_windows: int
    """Windows in replay before sampling starts (the table's min_size_to_sample)."""


def plan_for(config: DecoupledConfig) -> LearnerPlan:
    s = config.schedule
    t = config.as_train_config().window_steps()
    k = s.sgd_steps_per_iteration()
    n = max(1, math.ceil(k * s.batch_size / t))
    prefill_windows = max(1, math.ceil(s.prefill_steps_per_env / t)) * s.num_envs
    learn_env_steps = max(s.total_env_steps - prefill_windows * t, 0)
    target = max(k, math.ceil(s.sgd_steps_per_env_step * learn_env_steps / k) * k)
    return LearnerPlan(
        window_steps=t,
        sgd_steps_per_update=k,
        batch_size=s.batch_size,
        windows_per_sample=n,
        samples_per_insert=s.sgd_steps_per_env_step * t * n / k,
        target_grad_steps=target,
        prefill_windows=prefill_windows,
    )


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, signum, frame) -> None:
        self.event.set()


def _checkpoint_manager(directory: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(directory.resolve(), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def _save(manager, states: dict[str, CRLState], counters: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    step = int(counters["updates"])
    if manager.latest_step() == step:
        return
    manager.save(step, args=ocp.args.Composite(
        states=ocp.args.StandardSave(states), meta=ocp.args.JsonSave(counters)))
    manager.wait_until_finished()


def checkpoint_counters(directory: Path) -> tuple[int, dict[str, Any]] | None:
    """``(step, counters)`` of the newest finished checkpoint under `directory`, read without JAX or a template;
    None when there is none. Orbax writes each step to a temporary name and renames it when complete, so only
    all-digit names are finished steps. Raises ValueError when the counters cannot be read (a damaged checkpoint)."""
    import json

    if not directory.is_dir():
        return None
    steps = sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    if not steps:
        return None
    path = directory / str(steps[-1]) / "meta" / "metadata"
    try:
        counters = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the counters of checkpoint {path.parent.parent}: {e}") from None
    if not isinstance(counters, dict) or not isinstance(counters.get("updates"), int):
        raise ValueError(f"checkpoint {path.parent.parent} has no update counter in {path.name}")
    return steps[-1], counters


def _restore(manager, template: dict[str, CRLState]):
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(step, args=ocp.args.Composite(
        states=ocp.args.StandardRestore(jax.eval_shape(lambda: template)), meta=ocp.args.JsonRestore()))
    return restored["states"], restored["meta"]


def run_learners(
    config: DecoupledConfig,
    run_dir: Path,
    names: tuple[str, ...],
    sample: Callable[[], Window],
    publish: Callable[[str, Any, int, str, dict], None],
    stop_event: threading.Event,
    replay_stats: Callable[[], dict[str, float]] | None = None,
    actors_finished: Callable[[], bool] | None = None,
) -> dict[str, int]:
    """Train learners `names` (one, or several on identical minibatches) until their SGD-step target or `stop_event`.

    `sample()` returns ``Window [T, N]``, or None when no more data will ever come (every actor has finished and the
    table's rate limiter allows no further sample, e.g. after a restart redid SGD steps whose samples were already
    counted): the learner then stops short of its target, says so, and logs `grad_steps_short_of_target`.
    `actors_finished()` (optional) ends the wait for the actors' last windows at the end.
    `publish(name, actor_params, version, fingerprint, meta)` makes params visible to actors and evaluators.
    `replay_stats()` (optional) returns the learner table's counters from the server: ``inserted_windows`` (the
    env-step axis and the measured update-to-data ratio use it: provenance in the sampled windows lags behind),
    ``table_size`` and the rate-limiter stall times. Returns the grad steps reached.
    """
    env = make_env(config.env.env)
    spec = env.spec
    dims = Dims(spec.state_dim, spec.goal_dim, env.action_size)
    agents: dict[str, CRLAgent] = {name: make_agent(config.agent_config(name), dims) for name in names}
    plan = plan_for(config)
    root = jax.random.fold_in(jax.random.PRNGKey(config.run.seed), 1000 + sum(map(ord, "|".join(names))))

    states = {name: agents[name].init(jax.random.fold_in(root, i)) for i, name in enumerate(names)}
    process_name = "+".join(names)
    manager = _checkpoint_manager(run_dir / "checkpoints" / process_name)
    fingerprints = {name: agents[name].fingerprint() for name in names}
    counters: dict[str, Any] = {"updates": 0, "env_steps_by_actor": {}, "fingerprints": fingerprints}
    latest = checkpoint_counters(run_dir / "checkpoints" / process_name)
    stored = latest[1].get("fingerprints") if latest is not None else None
    if stored is not None and stored != fingerprints:
        raise ValueError(f"checkpoints in {run_dir / 'checkpoints' / process_name} hold params with fingerprints "
                         f"{stored}, but this run's config builds {fingerprints}: the network config changed")
    restored = _restore(manager, states)
    if restored is not None:
        states, counters = restored
        counters["fingerprints"] = fingerprints
        print(f"[{process_name}] resumed at update {counters['updates']} (grad steps "
              f"{ {name: int(state.grad_steps) for name, state in states.items()} }) from its checkpoint",
              file=sys.stderr, flush=True)
    loggers = {name: JsonlLogger(run_dir / "metrics" / f"{name}.jsonl", name) for name in names}
    if counters.get("wall_time_offset"):
        for log in loggers.values():
            log.start_time -= counters["wall_time_offset"]

    discount = config.schedule.goal_discount
    k, b = plan.sgd_steps_per_update, plan.batch_size

    @jax.jit
    def prepare(obs, action, traj_id, key):
        relabel_key, shuffle_key = jax.random.split(key)
        pool = flatten(relabel(relabel_key, obs, action, traj_id, spec, discount))
        return minibatches(shuffle_key, pool, k, b)

    updates = {name: jax.jit(agents[name].update_many, donate_argnums=0) for name in names}

    # Prefetch thread: sample + relabel + transfer the next batch while the main thread trains on this one.
    batches: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    errors: list[BaseException] = []
    exhausted = threading.Event()

    def prefetch() -> None:
        i = int(counters["updates"])
        try:
            while not stop_event.is_set():
                window = sample()
                if window is None:
                    exhausted.set()
                    return
                key = jax.random.fold_in(jax.random.fold_in(root, 7), i)
                batch = prepare(window.obs, window.action, window.traj_id, key)
                item = (batch, np.asarray(window.actor_id), np.asarray(window.param_version),
                        np.asarray(window.env_steps), time.time())
                while not stop_event.is_set():
                    try:
                        batches.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                i += 1
        except BaseException as e:  # surfaced by the main thread
            errors.append(e)
            stop_event.set()

    thread = threading.Thread(target=prefetch, name="prefetch", daemon=True)
    thread.start()

    def grad_steps(name: str) -> int:
        return int(states[name].grad_steps)

    server: dict[str, float] = {}
    last_stats = 0.0

    def total_env_steps() -> int:
        if "inserted_windows" in server:
            return int(server["inserted_windows"]) * plan.window_steps
        return int(sum(counters["env_steps_by_actor"].values()))

    def publish_all(final: bool) -> None:
        for name in names:
            meta = {"env_steps": total_env_steps(), "final": final}
            publish(name, states[name].actor_params, grad_steps(name), agents[name].fingerprint(), meta)

    publish_all(final=False)  # version 0 (or the resumed version): actors can start before the first update
    last_publish = {name: grad_steps(name) for name in names}
    last_checkpoint = time.time()
    newest_collector_version = 0
    window_start, window_grad = time.time(), grad_steps(names[0])
    wait_seconds = 0.0
    # Params are published as final only when the learner finished: a resumed run restores the replay server's
    # checkpoint, and params marked final there would end its evaluators at once.
    finished = False
    try:
        while min(grad_steps(n) for n in names) < plan.target_grad_steps and not stop_event.is_set():
            wait_start = time.time()
            try:
                batch, actor_ids, versions, env_steps, _ = batches.get(timeout=0.5)
            except queue.Empty:
                wait_seconds += time.time() - wait_start
                if exhausted.is_set() and batches.empty():
                    print(f"[{process_name}] stopping at grad steps "
                          f"{ {n: grad_steps(n) for n in names} }, short of the target {plan.target_grad_steps}: every "
                          "actor has finished and the replay rate limiter allows no further sample",
                          file=sys.stderr, flush=True)
                    break
                continue
            wait_seconds += time.time() - wait_start
            for actor, steps in zip(actor_ids.tolist(), env_steps.tolist()):
                key = str(actor)
                counters["env_steps_by_actor"][key] = max(counters["env_steps_by_actor"].get(key, 0), int(steps))
            newest_collector_version = max(newest_collector_version, int(versions.max()))
            if replay_stats is not None and time.time() - last_stats > 1.0:
                server.update(replay_stats())
                last_stats = time.time()
            update_key = jax.random.fold_in(jax.random.fold_in(root, 11), int(counters["updates"]))
            metrics = {}
            for name in names:
                states[name], metrics[name] = updates[name](states[name], batch, update_key)
            counters["updates"] = int(counters["updates"]) + 1
            elapsed = max(time.time() - window_start, 1e-9)
            env_steps_now = total_env_steps()
            for name in names:
                g = grad_steps(name)
                own_version = g if name == COLLECTOR else newest_collector_version
                row = {key: float(v) for key, v in metrics[name].items()}
                row.update(
                    grad_steps_per_second=(g - window_grad) / elapsed if name == names[0] else float("nan"),
                    update_to_data=g / max(env_steps_now - plan.prefill_windows * plan.window_steps, 1),
                    policy_lag=own_version - float(np.mean(versions)),
                    sample_wait_seconds=wait_seconds,
                    **{key: float(v) for key, v in server.items()},
                )
                loggers[name].log(row, env_steps=env_steps_now, grad_steps=g, param_version=g)
                if g - last_publish[name] >= config.runtime.param_publish_every_grad_steps:
                    publish(name, states[name].actor_params, g, agents[name].fingerprint(),
                            {"env_steps": env_steps_now, "final": False})
                    last_publish[name] = g
            window_start, window_grad, wait_seconds = time.time(), grad_steps(names[0]), 0.0
            if time.time() - last_checkpoint > config.run.checkpoint_every_seconds:
                counters["wall_time_offset"] = time.time() - loggers[names[0]].start_time
                _save(manager, states, counters)
                last_checkpoint = time.time()
        if errors:
            raise errors[0]
        finished = not stop_event.is_set()  # target reached (or no data left), not stopped by a signal
        if replay_stats is not None and finished:
            _log_final_counts(config, plan, names, states, loggers, replay_stats, stop_event, server, actors_finished)
    finally:
        stop_event.set()
        counters["wall_time_offset"] = time.time() - loggers[names[0]].start_time
        _save(manager, states, counters)
        manager.close()
        try:
            publish_all(final=finished)
        except Exception as e:  # the replay server may already be gone at shutdown
            print(f"[{process_name}] final publish failed: {e}", file=sys.stderr, flush=True)
        for log in loggers.values():
            log.close()
        # Briefly: the prefetch thread may sit in a bounded sample wait; it is a daemon, and a stopped learner must
        # leave time for the replay server's final checkpoint within the launcher's shutdown grace period.
        thread.join(timeout=1)
    return {name: grad_steps(name) for name in names}


def _log_final_counts(config, plan, names, states, loggers, replay_stats, stop_event, server,
                      actors_finished=None) -> None:
    """A learner can finish up to one limiter error buffer ahead of the actors. Wait (bounded) until the collector's
    whole budget is in replay (or every actor has finished: a replay restart may have lost some of it), then log one
    last row per learner with the final update-to-data ratio."""
    deadline = time.time() + 2 * config.runtime.rpc_timeout_seconds
    total = config.schedule.total_env_steps
    while time.time() < deadline and not stop_event.is_set():
        server.update(replay_stats())
        if server.get("inserted_windows", 0) * plan.window_steps >= total:
            break
        if actors_finished is not None and actors_finished():
            server.update(replay_stats())  # the last windows are confirmed before an actor logs its last row
            break
        if server.get("limiter_blocks_inserts"):
            # This learner samples no more, so its table will never admit the actors' remaining windows (a replay
            # restore forgot samples drawn after its checkpoint): nothing more will arrive.
            break
        time.sleep(0.5)
    env_steps = int(server.get("inserted_windows", 0)) * plan.window_steps
    learned_env_steps = max(env_steps - plan.prefill_windows * plan.window_steps, 1)
    for name in names:
        g = int(states[name].grad_steps)
        short = {"grad_steps_short_of_target": plan.target_grad_steps - g} if g < plan.target_grad_steps else {}
        loggers[name].log({"update_to_data": g / learned_env_steps, **short, **server}, env_steps=env_steps,
                          grad_steps=g, param_version=g)
