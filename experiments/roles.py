"""Role entry points of a decoupled run: the glue between the process loops and the Reverb transport.

Each role reads the run's `config.json`, connects to a replay address, and runs its loop until done or SIGTERM:

    depthrl replay    --run-dir D --port P
    depthrl learner   --run-dir D --replay HOST:PORT --learners collector[,learner_d4,...]
    depthrl actor     --run-dir D --replay HOST:PORT --actor-id I
    depthrl evaluator --run-dir D --replay HOST:PORT --learner NAME

This is the only module outside `replay/` that touches the Reverb backend; it imports it lazily, inside the role.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from experiments.config import COLLECTOR, DecoupledConfig
from experiments.runs import read_config

RUN_KIND = "run"


def load_run_config(run_dir: Path) -> DecoupledConfig:
    return read_config(run_dir, RUN_KIND, DecoupledConfig)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _say(role: str, message: str) -> None:
    print(f"[{role}] {message}", file=sys.stderr, flush=True)


def window_spec_for(config: DecoupledConfig):
    from actors.envs.registry import make_env
    from replay.schema import WindowSpec

    env = make_env(config.env.env)
    return WindowSpec(config.as_train_config().window_steps(), env.spec.obs_dim, env.action_size)


def tables_for(config: DecoupledConfig):
    """One window table per sampling learner with its update-to-data limiter (see learners.process.plan_for)."""
    from learners.process import plan_for
    from replay.reverb_backend import LearnerTableConfig, ReplayTablesConfig

    plan = plan_for(config)
    r = config.runtime
    names = r.learner_names()
    sampling = (COLLECTOR,) if r.sampling_mode == "shared-batch" else names
    # How far inserts and samples may drift from the ratio. Reverb admits items one at a time, so no burst has to fit
    # whole: one learner batch (N windows) plus one actor write (E_actor windows' worth of samples) is enough to keep
    # both sides moving. A larger buffer lets actors run ahead of the learners (more policy lag than the
    # single-process reference, which alternates collection and updates strictly).
    error_buffer = plan.windows_per_sample + plan.samples_per_insert * config.envs_per_actor()
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


# --- replay -----------------------------------------------------------------------------------------------------


def run_replay(run_dir: Path, port: int) -> int:
    from experiments.metrics import JsonlLogger
    from replay import reverb_backend as rb

    config = load_run_config(run_dir)
    stop = _stop_on_signals()
    checkpoint_dir = run_dir / "replay_checkpoint"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    server = rb.start_server(tables_for(config), window_spec_for(config), port, str(checkpoint_dir))
    client = rb.wait_for_server(f"127.0.0.1:{server.port}", 30.0)
    log = JsonlLogger(run_dir / "metrics" / "replay.jsonl", "replay")
    _say("replay", f"serving on port {server.port} (all interfaces, no authentication)")
    next_checkpoint = time.monotonic() + config.runtime.replay_checkpoint_every_seconds
    try:
        while not stop.wait(5.0):
            try:
                metrics = rb.table_metrics(rb.server_info(client, 10.0), role="replay")
            except rb.ReplayTimeout:
                continue
            log.log({k.removeprefix("replay/"): v for k, v in metrics.items()}, env_steps=0, grad_steps=0,
                    param_version=0)
            if time.monotonic() >= next_checkpoint:
                _say("replay", f"checkpoint {client.checkpoint()}")
                next_checkpoint = time.monotonic() + config.runtime.replay_checkpoint_every_seconds
        _say("replay", f"final checkpoint {client.checkpoint()}")
    finally:
        log.close()
        server.stop()
    return 0


# --- learner ----------------------------------------------------------------------------------------------------


def run_learner_role(run_dir: Path, address: str, names: tuple[str, ...]) -> int:
    from learners.process import plan_for, run_learners
    from replay import reverb_backend as rb

    config = load_run_config(run_dir)
    unknown = set(names) - set(config.runtime.learner_names())
    if unknown:
        _say("learner", f"unknown learner(s) {sorted(unknown)}; this run has {list(config.runtime.learner_names())}")
        return 2
    stop = _stop_on_signals()
    label = "+".join(names)
    plan = plan_for(config)
    timeout = config.runtime.rpc_timeout_seconds
    sampler = rb.WindowSampler(address, names[0], plan.windows_per_sample, timeout, window_spec_for(config))
    store = rb.ParamStore(address, connect_timeout_s=timeout)

    def sample():
        while True:
            try:
                return sampler.sample()
            except rb.ReplayTimeout as e:
                if stop.is_set():
                    raise
                _say(label, f"waiting for replay: {e}")

    def publish(name: str, params: Any, version: int, fingerprint: str, meta: dict) -> None:
        store.publish(name, params, version, fingerprint, timeout_s=timeout, meta=meta)

    client = rb.wait_for_server(address, timeout)
    table = names[0]

    def replay_stats() -> dict[str, float]:
        try:
            m = rb.table_metrics(rb.server_info(client, 5.0), role="replay")
        except rb.ReplayTimeout:
            return {}
        return {
            "inserted_windows": m[f"replay/{table}/inserts"],
            "table_size": m[f"replay/{table}/size"],
            # 0.14 semantics (see table_metrics): waiting_for_sampling = inserts blocked by this table's limiter
            "inserts_blocked_ms": m[f"replay/{table}/worker_waiting_for_sampling_ms"],
            "samples_blocked_ms": m[f"replay/{table}/worker_waiting_for_inserts_ms"],
        }

    reached = run_learners(config, run_dir, names, sample, publish, stop, replay_stats)
    _say(label, f"done: grad steps {reached}")
    return 0


# --- actor / evaluator ------------------------------------------------------------------------------------------


def _latest_fn(store, fingerprints: dict[str, str], timeout: float):
    """`latest(role, template, known_version)` for the process loops: None when nothing newer arrived."""
    from replay import reverb_backend as rb

    def latest(role: str, template: Any, known_version: int):
        try:
            version, _ = store.latest_version(role, timeout_s=min(timeout, 5.0))
            if version <= known_version:
                return None
            version, params, meta = store.latest_with_meta(role, fingerprints[role], template, timeout_s=timeout)
            return version, params, meta
        except rb.ReplayTimeout:
            return None

    return latest


def _fingerprint(config: DecoupledConfig, name: str) -> str:
    from actors.envs.registry import make_env
    from learners.crl import Dims, make_agent

    env = make_env(config.env.env)
    dims = Dims(env.spec.state_dim, env.spec.goal_dim, env.action_size)
    return make_agent(config.agent_config(name), dims).fingerprint()


def run_actor_role(run_dir: Path, address: str, actor_id: int) -> int:
    from actors.process import run_actor
    from replay import reverb_backend as rb

    config = load_run_config(run_dir)
    if not 0 <= actor_id < config.runtime.actors:
        _say("actor", f"--actor-id must be in 0..{config.runtime.actors - 1}, got {actor_id}")
        return 2
    stop = _stop_on_signals()
    timeout = config.runtime.rpc_timeout_seconds
    tables = tables_for(config).table_names
    writer = rb.WindowWriter(address, tables, window_spec_for(config), flush_timeout_ms=int(timeout * 1000))
    store = rb.ParamStore(address, connect_timeout_s=timeout)
    role = f"actor_{actor_id}"

    def write(window) -> float:
        """Write and wait for confirmation; returns seconds spent beyond a normal write (rate-limited)."""
        start = time.time()
        try:
            writer.write(window)
            return 0.0
        except rb.ReplayTimeout as e:
            _say(role, f"replay is throttling inserts: {e}")
            while not stop.is_set():
                try:
                    writer.wait_confirmed(timeout_s=timeout)
                    break
                except rb.ReplayTimeout:
                    _say(role, "still throttled (a learner is behind its update-to-data ratio)")
            return time.time() - start

    latest = _latest_fn(store, {COLLECTOR: _fingerprint(config, COLLECTOR)}, timeout)
    try:
        steps = run_actor(config, run_dir, actor_id, write, latest, stop)
    finally:
        writer.close()
    _say(role, f"done: {steps:,} env steps")
    return 0


def run_evaluator_role(run_dir: Path, address: str, learner: str) -> int:
    from actors.process import run_evaluator
    from replay import reverb_backend as rb

    config = load_run_config(run_dir)
    if learner not in config.runtime.learner_names():
        _say("evaluator", f"unknown learner {learner!r}; this run has {list(config.runtime.learner_names())}")
        return 2
    stop = _stop_on_signals()
    timeout = config.runtime.rpc_timeout_seconds
    store = rb.ParamStore(address, connect_timeout_s=timeout)
    latest = _latest_fn(store, {learner: _fingerprint(config, learner)}, timeout)
    count = run_evaluator(config, run_dir, learner, latest, stop)
    _say(f"eval_{learner}", f"done: {count} evaluations")
    return 0


def expected_grad_steps(config: DecoupledConfig) -> int:
    from learners.process import plan_for

    return plan_for(config).target_grad_steps


