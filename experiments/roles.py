"""Role entry points of a decoupled run: the glue between the process loops and the Reverb transport.

Each role reads the run's `config.json`, connects to a replay address, and runs its loop until done or SIGTERM:

    depthrl replay    --run-dir D --port P
    depthrl learner   --run-dir D --replay HOST:PORT --learners collector[,learner_d4,...]
    depthrl actor     --run-dir D --replay HOST:PORT --actor-id I
    depthrl evaluator --run-dir D --replay HOST:PORT --learner NAME

This is the only module outside `replay/` that touches the Reverb backend; it imports it lazily, inside the role.

Faults (see experiments/launcher.py for restarts): every role survives a replay-server restart. Reverb's clients
reconnect on their own and resend unconfirmed items; every wait here is bounded (`rpc_timeout_seconds`) and reported,
never silent. A learner whose table can never give it another sample (every actor finished, rate limiter at its
bound: samples counted before a restart are not given back) stops short of its target and says so instead of
waiting forever.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from experiments.config import COLLECTOR, DecoupledConfig
from experiments.runs import RunDirError, read_config
from replay.schema import REPLAY_LAYOUT, checkpoint_layout, complete_checkpoints

RUN_KIND = "run"
STARVATION_POLL_SECONDS = 5.0
"""How often a learner waiting for a sample checks whether any more data can come at all."""


def load_run_config(run_dir: Path) -> DecoupledConfig:
    return read_config(run_dir, RUN_KIND, DecoupledConfig)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM/SIGINT, and, for a role started by the launcher, when the launcher is gone (so that a
    `kill -9` of the launcher leaves no orphans: the role checkpoints and exits as on SIGTERM)."""
    from experiments.launcher import LAUNCHER_PID_ENV

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


def actor_budgets(config: DecoupledConfig) -> dict[int, int]:
    """Env steps each actor collects (it stops at the first write that reaches its share)."""
    return {i: config.schedule.total_env_steps // config.runtime.actors for i in range(config.runtime.actors)}


def last_logged_env_steps(path: Path) -> int:
    """env_steps of the last complete row of a metrics file (read from its tail only), 0 when there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 8192, 0))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["env_steps"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def actors_finished(run_dir: Path, config: DecoupledConfig) -> bool:
    """True when every actor has logged its whole share. An actor logs a write only after the replay confirmed it, so
    then all the data the actors will ever send is in replay (less what a replay restart lost)."""
    return all(last_logged_env_steps(run_dir / "metrics" / f"actor_{i}.jsonl") >= budget
               for i, budget in actor_budgets(config).items())


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
    """Serve the run's tables; checkpoint every `replay_checkpoint_every_seconds` and at shutdown.

    A restarted server loads the newest checkpoint in ``replay_checkpoint/``: items *and* rate-limiter counters as of
    that checkpoint. What was inserted (and sampled) after it is lost; see replay/README.md, "Reliability"."""
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
    every = config.runtime.replay_checkpoint_every_seconds
    restored = rb.table_metrics(rb.server_info(client, 10.0), role="replay")
    tables = tables_for(config).table_names
    if any(restored[f"replay/{t}/inserts"] for t in tables):
        _say("replay", "restored from checkpoint: " + ", ".join(
            f"{t}: {restored[f'replay/{t}/size']:.0f} windows (limiter counters: {restored[f'replay/{t}/inserts']:.0f} "
            f"inserts, {restored[f'replay/{t}/samples']:.0f} samples)" for t in tables)
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


def _sampling_blocked(client, table: str, min_size_windows: int) -> bool:
    """True when the server answers and its limiter lets `table` give no further sample (or the table is below its
    minimum size); False when it does not answer (restarting: wait for it)."""
    from replay import reverb_backend as rb

    try:
        m = rb.table_metrics(rb.server_info(client, STARVATION_POLL_SECONDS), role="replay")
    except rb.ReplayTimeout:
        return False
    p = f"replay/{table}/"
    return m[p + "limiter_error"] - 1 < m[p + "limiter_min_diff"] or m[p + "size"] < min_size_windows


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
    table = names[0]
    client = rb.wait_for_server(address, config.runtime.replay_connect_timeout_seconds)
    # Sampling waits in short slices so that the learner can notice, between them, that no data can come any more.
    poll = min(timeout, STARVATION_POLL_SECONDS)
    sampler = rb.WindowSampler(address, table, plan.windows_per_sample, poll, window_spec_for(config))
    store = rb.ParamStore(address, connect_timeout_s=timeout)

    def sample():
        waited = 0.0
        while True:
            try:
                return sampler.sample()
            except rb.ReplayTimeout as e:
                if stop.is_set():
                    return None
                waited += poll
                if actors_finished(run_dir, config) and _sampling_blocked(client, table, plan.prefill_windows):
                    return None
                if waited >= timeout:
                    _say(label, f"waiting for replay for {waited:.0f} s: {e}")
                    waited = 0.0

    def publish(name: str, params: Any, version: int, fingerprint: str, meta: dict) -> None:
        """Periodic publishes are skipped while the replay server is away (the next one carries newer params); the
        final one, which evaluators wait for, is retried until the server takes it or the role is stopped."""
        deadline = time.monotonic() + 4 * timeout
        while True:
            try:
                store.publish(name, params, version, fingerprint, timeout_s=timeout, meta=meta)
                return
            except rb.ReplayTimeout as e:
                if not meta.get("final") or time.monotonic() > deadline:
                    _say(label, f"publishing params version {version} of {name} skipped: {e}")
                    return
                _say(label, f"final params of {name} not published yet, retrying: {e}")

    def replay_stats() -> dict[str, float]:
        try:
            m = rb.table_metrics(rb.server_info(client, 5.0), role="replay")
        except rb.ReplayTimeout:
            return {}
        p = f"replay/{table}/"
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

    reached = run_learners(config, run_dir, names, sample, publish, stop, replay_stats,
                           actors_finished=lambda: actors_finished(run_dir, config))
    _say(label, f"done: grad steps {reached}")
    return 0


# --- actor / evaluator ------------------------------------------------------------------------------------------


def _latest_fn(store, fingerprints: dict[str, str], timeout: float, unchanged_if_final: bool = False):
    """`latest(role, template, known_version)` for the process loops: None when the published version is still
    `known_version`. A *lower* version counts as new: the learner resumed from an older checkpoint, and its newest
    params are the ones to use.

    `unchanged_if_final`: also return the unchanged version once its meta says final (evaluators). A learner that
    stops short of its target publishes its last params as final under the version it already had."""
    from replay import reverb_backend as rb

    def latest(role: str, template: Any, known_version: int):
        try:
            version, _, meta = store.latest_version_meta(role, timeout_s=min(timeout, 5.0))
            if version == known_version and not (unchanged_if_final and meta.get("final")):
                return None
            return store.latest_with_meta(role, fingerprints[role], template, timeout_s=timeout)
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
    writer = rb.WindowWriter(address, tables, window_spec_for(config), flush_timeout_ms=int(timeout * 1000),
                             connect_timeout_s=config.runtime.replay_connect_timeout_seconds)
    store = rb.ParamStore(address, connect_timeout_s=timeout)
    role = f"actor_{actor_id}"

    def write(window) -> float | None:
        """Write and wait for confirmation; returns seconds spent beyond a normal write (rate limiter or replay
        restart), or None when stopped before the replay confirmed the windows (run_actor does not count them)."""
        start = time.time()
        try:
            writer.write(window)
            return 0.0
        except rb.ReplayTimeout as e:
            _say(role, f"write not confirmed yet (a learner is behind its update-to-data ratio, or the replay server "
                       f"is down): {e}")
            waited = 0.0
            while not stop.is_set():
                try:
                    # Short slices, so that a stop is not held up by a whole rpc timeout.
                    writer.wait_confirmed(timeout_s=min(timeout, 1.0))
                    return time.time() - start
                except rb.ReplayTimeout:
                    waited += min(timeout, 1.0)
                    if waited >= timeout:
                        _say(role, f"still not confirmed after {time.time() - start:.0f} s; waiting")
                        waited = 0.0
            return None

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
    store = rb.ParamStore(address, connect_timeout_s=config.runtime.replay_connect_timeout_seconds)
    latest = _latest_fn(store, {learner: _fingerprint(config, learner)}, timeout, unchanged_if_final=True)
    count = run_evaluator(config, run_dir, learner, latest, stop)
    _say(f"eval_{learner}", f"done: {count} evaluations")
    return 0


# --- resume checks ----------------------------------------------------------------------------------------------


def learner_processes(config: DecoupledConfig) -> list[tuple[str, ...]]:
    """The learner names hosted by each learner process (one each, or all together in shared-batch mode)."""
    names = config.runtime.learner_names()
    return [names] if config.runtime.sampling_mode == "shared-batch" else [(n,) for n in names]


def check_resume_state(run_dir: Path, config: DecoupledConfig) -> None:
    """Refuse (RunDirError naming the file) a run directory whose newest checkpoints cannot be resumed, before any
    process starts: a learner checkpoint whose counters or metadata cannot be read, params whose fingerprint does not
    match the network config.json describes, a replay checkpoint file that is cut short or damaged."""
    from learners.process import checkpoint_counters

    for group in learner_processes(config):
        directory = run_dir / "checkpoints" / "+".join(group)
        try:
            latest = checkpoint_counters(directory)
        except ValueError as e:
            raise RunDirError(f"{e}; delete that step directory to resume from the checkpoint before it") from None
        if latest is None:
            continue
        step_dir = directory / str(latest[0])
        for name in ("_CHECKPOINT_METADATA", "states/_METADATA"):
            try:
                json.loads((step_dir / name).read_text())
            except (OSError, ValueError) as e:
                raise RunDirError(f"checkpoint {step_dir} is damaged: cannot read {name} ({e}); delete that step "
                                  "directory to resume from the checkpoint before it") from None
        stored = latest[1].get("fingerprints")
        if stored is None:
            continue  # written before fingerprints were recorded; the learner's restore checks the shapes
        for name in group:
            expected = _fingerprint(config, name)
            if stored.get(name) != expected:
                raise RunDirError(
                    f"checkpoint {step_dir}: the params of {name} have fingerprint {stored.get(name)!r}, but "
                    f"config.json describes a network with fingerprint {expected!r} (width, depth, activation, ... "
                    "or the env changed since the run started); resume with the config the run was started with")
    _check_replay_checkpoint(run_dir / "replay_checkpoint")


def _check_replay_checkpoint(root: Path) -> None:
    """The newest complete Reverb checkpoint must hold this depthrl's replay layout and consist of whole TFRecords."""
    try:
        layout = checkpoint_layout(root)
    except (OSError, ValueError) as e:
        raise RunDirError(f"replay checkpoint layout unknown: {e}") from None
    if layout is None:
        return
    done = complete_checkpoints(root)
    if layout != REPLAY_LAYOUT:
        raise RunDirError(
            f"replay checkpoint {done[-1]} holds windows in replay layout {layout}, this depthrl reads layout "
            f"{REPLAY_LAYOUT} only. Move {root} aside to resume with an empty buffer: the learner checkpoints stay "
            "valid and actors prefill again")
    for path in sorted(done[-1].glob("*.tfrecord")):
        problem = tfrecord_problem(path)
        if problem:
            raise RunDirError(f"replay checkpoint {done[-1]} is damaged: {path.name} {problem}. Delete that directory "
                              "to resume with the previous replay checkpoint (or an empty buffer: actors prefill "
                              "again)")


def tfrecord_problem(path: Path) -> str:
    """'' when the Reverb checkpoint file `path` is whole, else what is wrong with it.

    Reverb 0.14 writes ZLIB-compressed TFRecord files; the zlib stream ends with an Adler-32 checksum of the data, so
    decompressing it (output discarded, 1 MiB at a time) detects a file cut short or damaged anywhere."""
    import zlib

    decompressor = zlib.decompressobj()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                decompressor.decompress(chunk, 1 << 16)
                while decompressor.unconsumed_tail:
                    decompressor.decompress(decompressor.unconsumed_tail, 1 << 16)
    except zlib.error as e:
        return f"is damaged ({e})"
    except OSError as e:
        return f"cannot be read ({e})"
    if not decompressor.eof:
        return "is cut short (its compressed stream does not end)"
    return ""


def expected_grad_steps(config: DecoupledConfig) -> int:
    from learners.process import plan_for

    return plan_for(config).target_grad_steps


