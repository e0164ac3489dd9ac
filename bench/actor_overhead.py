"""Actor overhead: env steps/s of an actor that writes to Reverb / env steps/s of the same rollout without writing.

    python bench/actor_overhead.py                  # point_u_maze and ant, 2 tables; 3-4 min (Ant compiles 1-2 min)
    python bench/actor_overhead.py --envs point_u_maze --pairs 16 --tables 1
    python bench/actor_overhead.py --quick          # smoke run: point maze only, 64 slots, 2 pairs

What runs: the real actor loop, `actors.process.run_actor` (jitted `unroll` of T steps in E env slots with the
collector's stochastic policy -> device-to-host copy into a `Window` batch -> next rollout dispatched ->
`WindowWriter.write(window)` -> `ParamsFollower.poll()` param poll -> metrics row), with its `ActorJob` built from
`experiments.compose.RunParts` as the ``depthrl actor`` role (`experiments.compose.run_actor_role`) builds it. Its
transport is one object implementing the `replay.protocols` `WindowWriter` and `ParamStore` (`AlternatingTransport`)
that switches by phase:

- ``reverb``: `write` is what `depthrl actor` uses (`replay.reverb_backend.WindowWriter.write` into ``--tables``
  learner tables of a server in its own process, waiting for the server's confirmation; 2 tables = the collector
  and one passive learner, the default `depthrl run`), and `latest_version` polls the params version over Reverb
  (`replay.reverb_backend.ParamStore.latest_version`, as a real actor's `ParamsFollower` does after every window);
- ``local``: `write` does nothing and `latest_version` returns the version the actor already has (no new params):
  the same rollout and host copy, no transport.

Every iteration is timed from the actor's own ``env_steps_per_second`` metric, and the CPU seconds of this process and
of the server process are marked at each param poll (once per iteration). `run_actor` dispatches the next rollout
before it writes the current window, so an iteration's write overlaps the *next* iteration's rollout: the first
iteration of each phase (``--phase`` iterations) still carries the previous feed's write and is not timed. Phases are
ordered ABBA (reverb, local, local, reverb, ...) after a warm-up. Reported: wall ratio = median iteration time local /
median iteration time reverb (= env steps/s reverb / env steps/s local), its spread over neighbouring phase pairs, and
the same ratio of CPU seconds (this process + the server), which load from other jobs on a shared machine barely
moves. The policy is the collector's freshly initialised actor (depth 4 by default), so the rollout cost includes the
policy network as in a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.replay_overhead import ReplayServerProcess, abba_order, log, finish, machine_line

DEFAULT_NUM_ENVS = {"point": 256, "ant": 8, "humanoid": 8, "reacher": 64}
"""Env slots per actor by env family: enough that one window batch takes a fraction of a second to seconds."""


def actor_config(env_name: str, num_envs: int, window_steps: int | None, depth: int, seed: int):
    """A one-actor `DecoupledConfig`; the budget is unreachable, the bench stops the actor itself."""
    from experiments.config import DecoupledConfig, EnvConfig, RunConfig, RuntimeConfig, ScheduleConfig

    probe = DecoupledConfig(env=EnvConfig(env=env_name))
    t = window_steps or probe.as_train_config().episode_length()
    schedule = ScheduleConfig(num_envs=num_envs, unroll_length=t, batch_size=min(256, t * num_envs),
                              buffer_capacity_steps=max(t, 10_000), prefill_steps_per_env=t, window_steps=t,
                              total_env_steps=10**12)
    config = DecoupledConfig(env=EnvConfig(env=env_name), schedule=schedule,
                             run=RunConfig(seed=seed, quiet=True),
                             runtime=RuntimeConfig(collector_depth=depth, learner_depths=(depth,), actors=1))
    config.validate()
    return config


@dataclasses.dataclass
class AlternatingTransport:
    """The `replay.protocols.WindowWriter` and `ParamStore` that `run_actor` is given, switching per iteration between
    the Reverb transport (`writer`, `store`) and none.

    An iteration ends at the actor's param poll (`latest_version`, once per window batch), where the CPU clocks are
    marked. The poll before the loop (the first `latest_version` and `latest`) always goes over Reverb and is not an
    iteration."""

    writer: Any
    """The Reverb `WindowWriter`."""
    store: Any
    """The Reverb `ParamStore`."""
    order: tuple[str, ...]
    """Feed of each phase after the warm-up, e.g. ('reverb', 'local', 'local', 'reverb', ...)."""
    warmup: int
    server_pid: int
    stop_event: threading.Event
    marks: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)
    """(wall, own CPU, server CPU) before the first iteration and after each one."""
    iteration: int = 0
    head: Any = None
    """The newest `Versioned` head read over Reverb: what a ``local`` poll answers (no new params)."""
    started: bool = False
    """True once the actor's first params fetch (before its loop) is done."""

    def __post_init__(self) -> None:
        import psutil

        self._own = psutil.Process()
        self._server = psutil.Process(self.server_pid)

    phase_iterations: int = 1
    """Consecutive iterations per entry of `order`."""

    def feed_of(self, iteration: int) -> str:
        if iteration < self.warmup:
            return "reverb"
        return self.order[(iteration - self.warmup) // self.phase_iterations]

    def timed(self, iteration: int) -> bool:
        """Iterations after the warm-up, except the first of each phase: the actor may overlap an iteration's
        write with the next rollout, so the first iteration of a phase can still carry the previous feed's write."""
        return iteration >= self.warmup and (iteration - self.warmup) % self.phase_iterations != 0

    def _mark(self) -> None:
        own, server = self._own.cpu_times(), self._server.cpu_times()
        self.marks.append((time.perf_counter(), own.user + own.system, server.user + server.system))

    # --- WindowWriter
    def write(self, window) -> None:
        if self.feed_of(self.iteration) == "reverb":
            self.writer.write(window)

    def wait_confirmed(self, timeout_s: float) -> None:
        self.writer.wait_confirmed(timeout_s)  # only after a Reverb write timed out: a local write never does

    def close(self) -> None:
        pass  # the caller closes the Reverb writer

    # --- ParamStore
    def publish(self, role: str, params: Any, version: int, fingerprint: str, meta, timeout_s: float) -> None:
        self.store.publish(role, params, version, fingerprint, meta, timeout_s)

    def latest(self, role: str, template: Any, expected_fingerprint: str, timeout_s: float):
        fetched = self.store.latest(role, template, expected_fingerprint, timeout_s)
        if not self.started:  # the initial fetch before the loop: always over Reverb, not timed
            self.started = True
            self._mark()
        return fetched

    def latest_version(self, role: str, timeout_s: float):
        if not self.started:
            self.head = self.store.latest_version(role, timeout_s)
            return self.head
        if self.feed_of(self.iteration) == "reverb":
            self.head = self.store.latest_version(role, timeout_s)
        self._mark()
        self.iteration += 1
        if self.iteration >= self.warmup + len(self.order) * self.phase_iterations:
            self.stop_event.set()
        return self.head


def actor_job(config, run_dir: Path, actor_id: int = 0):
    """Actor `actor_id`'s `ActorJob` of `config`, as the ``depthrl actor`` role builds it; and the `RunParts`."""
    from experiments.compose import RunParts
    from experiments.compose import actor_job as build

    parts = RunParts.for_run(config)
    return build(parts, config, run_dir, actor_id), parts


def measure_env(args: argparse.Namespace, env_name: str, work_dir: Path) -> dict:
    import jax

    from actors.envs.registry import get_entry
    from actors.process import run_actor
    from experiments.config import COLLECTOR
    from experiments.metrics import JsonlLogger, read_jsonl
    from replay import reverb_backend as rb
    from replay.status import RunStatus

    family = get_entry(env_name).family
    num_envs = args.num_envs or DEFAULT_NUM_ENVS.get(family, 64)
    config = actor_config(env_name, num_envs, args.window_steps or None, args.depth, args.seed)
    run_dir = work_dir / env_name
    job, parts = actor_job(config, run_dir)
    spec = parts.window_spec
    # One table per learner, as `experiments.compose.tables_for` lays out a run in 'independent' sampling mode (the
    # default run has the collector and one passive learner: 2 tables). No rate limiter: nothing samples here.
    names = (COLLECTOR,) + tuple(f"learner_{i}" for i in range(1, args.tables))
    tables = rb.ReplayTablesConfig(
        learners=tuple(rb.LearnerTableConfig(name, samples_per_insert=None, min_size_to_sample_windows=1)
                       for name in names),
        # Big enough that nothing is evicted during the bench (eviction is a cost of steady state that the
        # bench/replay_memory.py server pays, not measured here).
        max_size_windows=num_envs * (args.warmup + 2 * args.pairs * args.phase + 2),
        param_roles=(COLLECTOR,))
    log(f"{env_name}: E={num_envs} slots x T={spec.window_length} steps per iteration, "
        f"{spec.bytes_per_item() / 1e3:.1f} KB per window, {args.tables} table(s); {args.warmup} warm-up + "
        f"{2 * args.pairs} phases x {args.phase} iterations")
    with ReplayServerProcess(tables, spec, work_dir) as server:
        server.wait_ready()
        timeout = config.runtime.rpc_timeout_seconds
        writer = rb.WindowWriter(server.address, names, spec, flush_timeout_ms=int(timeout * 1000))
        store = rb.ParamStore(server.address, connect_timeout_s=timeout)
        # The collector learner's version 0, as its learner process publishes it at start.
        collector = parts.agent(COLLECTOR)
        params = collector.init(jax.random.fold_in(parts.learners_key((COLLECTOR,)), 0)).actor_params
        store.publish(COLLECTOR, params, 0, collector.fingerprint(), {"env_steps": 0}, timeout_s=timeout)

        stop = threading.Event()
        transport = AlternatingTransport(
            writer, store, abba_order("reverb", "local", args.pairs), args.warmup, server.pid, stop,
            phase_iterations=args.phase)
        logger = JsonlLogger(run_dir / "metrics" / f"{job.role}.jsonl", job.role)
        start = time.perf_counter()
        run_actor(job, transport, transport, logger, RunStatus(run_dir), stop)
        wall = time.perf_counter() - start
        writer.close()
        written = writer.windows_written

    rows, _ = read_jsonl(run_dir / "metrics" / "actor_0.jsonl")
    steps_per_iteration = num_envs * spec.window_length
    by_feed: dict[str, dict[str, list[float]]] = {"reverb": {"wall": [], "cpu": [], "server": []},
                                                   "local": {"wall": [], "cpu": [], "server": []}}
    for i, row in enumerate(rows):
        if not transport.timed(i):
            continue
        feed = transport.feed_of(i)
        (_, own0, server0), (_, own1, server1) = transport.marks[i], transport.marks[i + 1]
        by_feed[feed]["wall"].append(steps_per_iteration / row["actor_0/env_steps_per_second"])
        by_feed[feed]["cpu"].append((own1 - own0) + (server1 - server0))
        by_feed[feed]["server"].append(server1 - server0)
    reverb, local = by_feed["reverb"], by_feed["local"]
    # ABBA: the i-th reverb iteration and the i-th local iteration are neighbours in time.
    pairs = [lw / rw for rw, lw in zip(reverb["wall"], local["wall"])]
    median = statistics.median
    return {
        "env": env_name,
        "num_envs": num_envs,
        "window_steps": spec.window_length,
        "window_kb": spec.bytes_per_item() / 1e3,
        "tables": args.tables,
        "ratio": median(local["wall"]) / median(reverb["wall"]),
        "pair_ratios": pairs,
        "cpu_ratio": median(local["cpu"]) / median(reverb["cpu"]),
        "reverb_env_steps_per_s": steps_per_iteration / median(reverb["wall"]),
        "local_env_steps_per_s": steps_per_iteration / median(local["wall"]),
        "reverb_cpu_us_per_env_step": 1e6 * median(reverb["cpu"]) / steps_per_iteration,
        "local_cpu_us_per_env_step": 1e6 * median(local["cpu"]) / steps_per_iteration,
        "server_cpu_us_per_env_step": 1e6 * statistics.mean(reverb["server"]) / steps_per_iteration,
        "windows_written": written,
        "timed_iterations_per_feed": len(reverb["wall"]),
        "wall_seconds": wall,
    }


def format_rows(rows: list[dict]) -> str:
    header = (f"{'env':<14} {'E':>4} {'T':>5} {'KB/win':>7} {'tab':>3} {'wall_ratio':>10} {'cpu_ratio':>9} "
              f"{'reverb_steps/s':>14} "
              f"{'local_steps/s':>13} {'cpu_us/step r/l':>16} {'server':>6}  wall pair ratios")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['env']:<14} {r['num_envs']:4d} {r['window_steps']:5d} {r['window_kb']:7.1f} {r['tables']:3d} "
            f"{r['ratio']:10.3f} "
            f"{r['cpu_ratio']:9.3f} {r['reverb_env_steps_per_s']:14,.0f} {r['local_env_steps_per_s']:13,.0f} "
            f"{r['reverb_cpu_us_per_env_step']:7.2f}/{r['local_cpu_us_per_env_step']:<8.2f} "
            f"{r['server_cpu_us_per_env_step']:6.2f}  " + " ".join(f"{x:.2f}" for x in r["pair_ratios"]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="point_u_maze,ant", help="comma-separated registered env names")
    parser.add_argument("--num-envs", type=int, default=0,
                        help=f"env slots per actor; 0 picks by family {DEFAULT_NUM_ENVS}")
    parser.add_argument("--window-steps", type=int, default=0, help="T; 0 uses the env's episode length")
    parser.add_argument("--depth", type=int, default=4, help="collector depth (the policy network in the rollout)")
    parser.add_argument("--tables", type=int, default=2,
                        help="learner tables every window goes into (2 = collector + one passive learner, the "
                             "default `depthrl run`)")
    parser.add_argument("--pairs", type=int, default=0,
                        help="(reverb, local) phase pairs, ordered ABBA; 0: 8 for point, 2 for other families")
    parser.add_argument("--phase", type=int, default=3,
                        help="iterations per phase; the first of each phase is not timed")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (compilation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke mode: point_u_maze, 64 slots, 3 pairs")
    parser.add_argument("--json-out", default="", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    if args.quick:
        args.envs, args.num_envs, args.pairs, args.warmup = "point_u_maze", 64, 2, 1
    args.envs = [e for e in args.envs.split(",") if e]
    if min(args.warmup, args.tables) <= 0 or args.phase < 2:
        parser.error("--warmup and --tables must be positive, --phase at least 2")
    if min(args.pairs, args.num_envs, args.window_steps) < 0:
        parser.error("--pairs, --num-envs and --window-steps must be >= 0")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    from actors.envs.registry import get_entry

    wall_start = time.perf_counter()
    print(machine_line())
    print(format_rows([]), flush=True)
    rows = []
    pairs_arg = args.pairs
    with tempfile.TemporaryDirectory(prefix="actor_overhead_") as tmp:
        for env_name in args.envs:
            args.pairs = pairs_arg or (8 if get_entry(env_name).family == "point" else 2)
            row = measure_env(args, env_name, Path(tmp))
            rows.append(row)
            print(format_rows([row]).split("\n", 2)[-1], flush=True)
    args.pairs = pairs_arg
    finish(args, wall_start, rows=rows)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
