"""Replay overhead of a learner: grad steps/s fed by the Reverb sampler / grad steps/s fed from an in-process buffer.

    python bench/replay_overhead.py                  # depths 4,16, batch 512, Ant windows (T=1000); ~3 min on 2 cores
    python bench/replay_overhead.py --depths 16 --pairs 6
    python bench/replay_overhead.py --quick          # smoke run: depth 4, point-maze windows, ~30 s

What runs: the real learner loop, `learners.process.run_learners` (prefetch thread -> relabel + shuffle into
``[K, B]`` minibatches -> `update_many` of K SGD steps -> metrics row), for the collector learner of the given depth,
with its `LearnerJob` built from `experiments.compose.RunParts` as the ``depthrl learner`` role builds it. Its
`WindowSampler` (`PhasedFeed`) alternates between two feeds in *phases* of ``--phase-updates`` updates:

- ``reverb``: `replay.reverb_backend.WindowSampler` on a table of a replay server running in its own process
  (`replay.reverb_backend.start_server`, as the ``depthrl replay`` role runs it), i.e. gRPC, Reverb's chunk
  decompression, stacking;
- ``memory``: the same windows held in this process as ``[T, W, ...]`` numpy arrays, N drawn uniformly with
  replacement (what Reverb's Uniform sampler does) and gathered into ``[T, N, ...]``.

Both feeds hold the same ``--stored-windows`` windows (synthetic random-walk observations: float noise compresses
about as badly as real trajectories, and generating them costs no env compilation). Everything after `sample()`
(relabelling, host->device transfer, the SGD steps, logging) is the same code.

Measurement: the learner publishes its params (`ParamStore.publish`) after every update
(``publish_every_grad_steps = K``); the bench's stand-in store (`UpdateClock`) marks there the wall time and the CPU
seconds of this process (all threads) and of the replay server process, so every update gets a wall time (wait for
the next batch + K SGD steps + metrics row + status file) and a CPU cost. The prefetch thread works up to three
batches ahead of the running update (queue of 2 + one in hand), so the last ``PREFETCH_LOOKAHEAD`` updates of a
phase run while the *next* feed is sampled: they are not timed, nor is the first update of a phase. Phases are
ordered ABBA (reverb, memory, memory, reverb, ...) so that a drift in machine load does not favour one feed.

Reported: wall ratio = median update time fed from memory / median update time fed by Reverb over all timed updates
(= grad steps/s reverb / grad steps/s memory; medians because other jobs on a shared machine stretch single updates by
up to 2x), the same ratio per neighbouring ABBA pair (spread), and the CPU ratio (CPU seconds per update, learner +
server, memory / reverb), which load from other jobs barely moves. K is kept small so that phases are short;
N = ceil(K * B / T) windows per sample as `learners.step.make_plan` sizes it (``windows_per_update``), so the bytes
sampled per SGD step are those of a real run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFETCH_LOOKAHEAD = 3
"""Batches the learner's prefetch thread can be ahead of the running update: queue maxsize 2 + one in hand."""
NOMINAL_NUM_ENVS = 16
"""Env slots of the bench config (only sizes the schedule arithmetic; no env runs here)."""
NOMINAL_UNROLL_LENGTH = 50
"""Unroll length of the bench config; K = round(u * NOMINAL_NUM_ENVS * NOMINAL_UNROLL_LENGTH)."""


# --------------------------------------------------------------------------------------- helpers shared by benches


def machine_line() -> str:
    """CPU model, usable cores, load, JAX backend: printed at the top of every bench."""
    import platform

    import jax

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"machine: cpu={model!r} usable_cores={cores} loadavg={load} | jax {jax.__version__} "
            f"backend={jax.default_backend()}")


def finish(args, wall_start: float, **results) -> None:
    """Print the bench's total wall time with the machine line, and write `results` (with the machine line and the
    arguments) to ``args.json_out`` when it is set."""
    print(f"total bench wall time {time.perf_counter() - wall_start:.0f} s; {machine_line()}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"machine": machine_line(), "args": vars(args), **results}, f, indent=1)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SERVER_SCRIPT = """
import json, signal, sys, threading
from replay import reverb_backend as rb
from replay.schema import WindowSpec

args = json.loads(sys.argv[1])
tables = args["tables"]
config = rb.ReplayTablesConfig(learners=tuple(rb.LearnerTableConfig(**learner) for learner in tables["learners"]),
                               max_size_windows=tables["max_size_windows"], param_roles=tuple(tables["param_roles"]))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
checkpoint_dir = args.get("checkpoint_dir")
server = rb.start_server(config, WindowSpec(**args["window_spec"]), args["port"], checkpoint_dir)
print("serving on port", server.port, flush=True)
while not stop.wait(1.0):  # signal handlers run in this thread between waits
    pass
if checkpoint_dir is not None:
    print("final checkpoint written to", rb.wait_for_server(f"127.0.0.1:{server.port}", 30.0).checkpoint(), flush=True)
server.stop()
"""
"""A replay server process (benches and tests): `replay.reverb_backend.start_server` with the given tables, and with
``checkpoint_dir`` a checkpoint restored at start and written once at SIGTERM (the benches give none), until
SIGTERM/SIGINT. The ``depthrl replay`` role serves the same way, but builds its tables from a run's config (the
benches lay out their own) and adds a checkpoint timer and a metrics row every 5 s (not wanted in a measurement)."""


class ReplayServerProcess:
    """A replay server in a child process, started with exec (``python -c SERVER_SCRIPT``) like a run's replay role:
    gRPC and JAX are not fork-safe, and the server's CPU must be its own process's to be measured."""

    def __init__(self, tables_config, window_spec, log_dir: Path) -> None:
        import portpicker

        self.port = portpicker.pick_unused_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"replay_{self.port}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        config = {"tables": dataclasses.asdict(tables_config), "window_spec": dataclasses.asdict(window_spec),
                  "port": self.port}
        command = [sys.executable, "-c", SERVER_SCRIPT, json.dumps(config)]
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        from replay import reverb_backend

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"replay server exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                reverb_backend.wait_for_server(self.address, timeout_s=1.0)
                return
            except reverb_backend.ReplayTimeout:
                if time.monotonic() > deadline:
                    raise

    def stop(self) -> None:
        """SIGTERM (the server stops cleanly), SIGKILL if it does not exit within 30 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> ReplayServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def synthetic_windows(window_length: int, obs_dim: int, action_dim: int, num_windows: int, episode_steps: int,
                      seed: int, goal_dim: int = 0):
    """``num_windows`` windows as one `Window` with fields ``[W, T, ...]`` and provenance ``[W]``.

    Each window starts at a random step of an episode of `episode_steps` steps, so `traj_id` changes inside some
    windows as in real replay. States are random walks (steps of 0.05), the last `goal_dim` observation dims (the
    commanded goal) are constant within an episode, actions uniform in [-1, 1]: float noise in the low mantissa
    bits compresses about as badly as real trajectories do, the constant goal about as well.
    """
    from replay.schema import Window

    rng = np.random.default_rng(seed)
    w, t = num_windows, window_length
    obs = np.cumsum(rng.normal(0.0, 0.05, (w, t, obs_dim)), axis=1, dtype=np.float64).astype(np.float32)
    action = rng.uniform(-1.0, 1.0, (w, t, action_dim)).astype(np.float32)
    start = rng.integers(0, episode_steps, w)
    traj_id = ((start[:, None] + np.arange(t)[None, :]) // episode_steps).astype(np.int32)
    if goal_dim:
        goals = rng.uniform(-5.0, 5.0, (w, 2, goal_dim)).astype(np.float32)  # at most 2 episodes per window
        episode_in_window = (traj_id - traj_id[:, :1]).clip(0, 1)  # [W, T]: 0 or 1
        obs[..., obs_dim - goal_dim:] = np.take_along_axis(goals, episode_in_window[..., None], axis=1)
    return Window(obs=obs, action=action, traj_id=traj_id, actor_id=np.zeros((w,), np.int32),
                  param_version=np.zeros((w,), np.int64), env_steps=(np.arange(w, dtype=np.int64) + 1) * t)


def write_windows(writer, windows, per_write: int = 16) -> None:
    """Write a ``[W, T, ...]`` `Window` batch through `WindowWriter.write` in slices of `per_write` windows."""
    from replay.schema import Window

    total = windows.obs.shape[0]
    for start in range(0, total, per_write):
        writer.write(Window(*(np.ascontiguousarray(field[start:start + per_write]) for field in windows)))


def paired_median(numerators: list[float], denominators: list[float]) -> float:
    """Median of a_i / b_i over pairs measured side by side (nan without pairs)."""
    ratios = [a / b for a, b in zip(numerators, denominators) if b > 0]
    return statistics.median(ratios) if ratios else float("nan")


# ---------------------------------------------------------------------------------------------------------- feeds


class MemoryWindows:
    """The in-process feed: stored windows as ``[T, W, ...]`` arrays, N sampled uniformly with replacement."""

    def __init__(self, windows, windows_per_sample: int, seed: int) -> None:
        from replay.schema import Window

        self._window_cls = Window
        # Time-major once, so that a sample is one gather per field, like the stacked output of the Reverb sampler.
        self._time_major = Window(
            obs=np.ascontiguousarray(np.swapaxes(windows.obs, 0, 1)),
            action=np.ascontiguousarray(np.swapaxes(windows.action, 0, 1)),
            traj_id=np.ascontiguousarray(np.swapaxes(windows.traj_id, 0, 1)),
            actor_id=windows.actor_id, param_version=windows.param_version, env_steps=windows.env_steps)
        self._num_stored = windows.obs.shape[0]
        self._num = windows_per_sample
        self._rng = np.random.default_rng(seed)

    def sample(self):
        index = self._rng.integers(0, self._num_stored, self._num)
        w = self._time_major
        return self._window_cls(obs=w.obs[:, index], action=w.action[:, index], traj_id=w.traj_id[:, index],
                                actor_id=w.actor_id[index], param_version=w.param_version[index],
                                env_steps=w.env_steps[index])


@dataclasses.dataclass
class PhasedFeed:
    """The learner's `replay.protocols.WindowSampler`: `warmup` batches from `feeds[order[0]]`, then phases of
    `phase_updates` batches from the feeds in `order` (repeated). Records which feed served each batch and how long
    each call took. Closing it closes nothing: the caller owns the feeds."""

    feeds: dict[str, Callable[[], Any]]
    order: tuple[str, ...]
    phase_updates: int
    warmup: int
    served: list[str] = dataclasses.field(default_factory=list)
    call_seconds: list[float] = dataclasses.field(default_factory=list)

    def source_of(self, index: int) -> tuple[str, int]:
        """(feed name, phase index) of the `index`-th batch; phase -1 is the warm-up."""
        if index < self.warmup:
            return self.order[0], -1
        phase = (index - self.warmup) // self.phase_updates
        return self.order[phase % len(self.order)], phase

    def sample(self):
        name, _ = self.source_of(len(self.served))
        start = time.perf_counter()
        window = self.feeds[name]()
        self.call_seconds.append(time.perf_counter() - start)
        self.served.append(name)
        return window

    def close(self) -> None:
        pass


def abba_order(first: str, second: str, pairs: int) -> tuple[str, ...]:
    """first, second, second, first, first, second, ... (2 * pairs phases)."""
    out: list[str] = []
    for p in range(pairs):
        out += [first, second] if p % 2 == 0 else [second, first]
    return tuple(out)


# ------------------------------------------------------------------------------------------------------ the bench


def bench_config(env_name: str, depth: int, batch_size: int, window_steps: int, sgd_steps_per_update: int,
                 num_updates: int, seed: int):
    """A `DecoupledConfig` whose collector learner runs `num_updates` updates of K SGD steps at batch B."""
    from experiments.compose import RunParts
    from experiments.config import DecoupledConfig, EnvConfig, RunConfig, RuntimeConfig, ScheduleConfig

    env_steps_per_iteration = NOMINAL_NUM_ENVS * NOMINAL_UNROLL_LENGTH
    schedule = ScheduleConfig(
        num_envs=NOMINAL_NUM_ENVS, unroll_length=NOMINAL_UNROLL_LENGTH, batch_size=batch_size,
        sgd_steps_per_env_step=sgd_steps_per_update / env_steps_per_iteration,
        buffer_capacity_steps=max(window_steps, 10_000), prefill_steps_per_env=window_steps,
        window_steps=window_steps, total_env_steps=1)
    config = DecoupledConfig(
        env=EnvConfig(env=env_name), schedule=schedule,
        run=RunConfig(seed=seed, checkpoint_every_seconds=1e9, quiet=True),
        runtime=RuntimeConfig(collector_depth=depth, learner_depths=(depth,),
                              param_publish_every_grad_steps=10**9))
    # Env steps such that the plan's stop rule (`learners.step.make_plan`) lands exactly on num_updates * K SGD steps.
    prefill = RunParts.for_run(config).plan.prefill_env_steps
    # u * learn = num_updates * K - u: just below the target, so that rounding cannot add an update.
    learn = num_updates * env_steps_per_iteration - 1
    config = dataclasses.replace(config, schedule=dataclasses.replace(schedule, total_env_steps=prefill + learn))
    config.validate()
    plan = RunParts.for_run(config).plan
    target = num_updates * sgd_steps_per_update
    if plan.sgd_steps_per_update != sgd_steps_per_update or plan.target_grad_steps != target:
        raise RuntimeError(f"bench config gives K={plan.sgd_steps_per_update}, target {plan.target_grad_steps}; "
                           f"wanted K={sgd_steps_per_update}, target {target}")
    return config


def learner_job(config, run_dir: Path):
    """The collector's `LearnerJob` of `config`, as the ``depthrl learner`` role builds it."""
    from experiments.compose import RunParts
    from experiments.compose import learner_job as build
    from experiments.config import COLLECTOR

    return build(RunParts.for_run(config), config, run_dir, (COLLECTOR,))


class UpdateClock:
    """Stand-in for the learner's `replay.protocols.ParamStore`: with ``publish_every_grad_steps = K`` the learner
    loop publishes once after every update, so `publish` marks, per grad-step count, the wall time and the CPU seconds
    used so far by this process (all threads: update, prefetch, sampling client) and by the replay server process.
    It keeps no params: nothing reads them in this bench."""

    def __init__(self, server_pid: int) -> None:
        import psutil

        self._own = psutil.Process()
        self._server = psutil.Process(server_pid)
        self.marks: dict[int, tuple[float, float, float]] = {}

    @staticmethod
    def _cpu(process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def publish(self, role: str, params: Any, version: int, fingerprint: str, meta: Mapping[str, Any],
                timeout_s: float) -> None:
        if not meta.get("final"):
            self.marks[version] = (time.perf_counter(), self._cpu(self._own), self._cpu(self._server))

    def latest(self, role: str, template: Any, expected_fingerprint: str, timeout_s: float):
        from replay.protocols import ReplayTimeout

        raise ReplayTimeout("the bench's UpdateClock keeps no params")

    def latest_version(self, role: str, timeout_s: float):
        return self.latest(role, None, "", timeout_s)


def measure_depth(args: argparse.Namespace, depth: int, spec, windows, server: ReplayServerProcess,
                  work_dir: Path) -> dict:
    """One learner run at `depth` with phased feeds; per-phase rates and the paired ratios."""
    import jax

    from experiments.config import COLLECTOR
    from experiments.metrics import JsonlLogger, read_jsonl
    from learners.process import run_learners
    from replay import reverb_backend as rb
    from replay.status import RunStatus

    k = args.sgd_steps_per_update
    phases = 2 * args.pairs
    num_updates = args.warmup_updates + phases * args.phase_updates
    config = bench_config(args.env, depth, args.batch_size, spec.window_length, k, num_updates, args.seed)
    config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, param_publish_every_grad_steps=k))
    run_dir = work_dir / f"learner_d{depth}"
    job = learner_job(config, run_dir)
    n = job.plan.windows_per_update
    sampler = rb.WindowSampler(server.address, COLLECTOR, n, timeout_s=120.0, window_spec=spec)
    memory = MemoryWindows(windows, n, args.seed)
    feed = PhasedFeed({"reverb": sampler.sample, "memory": memory.sample}, abba_order("reverb", "memory", args.pairs),
                      args.phase_updates, args.warmup_updates)
    clock = UpdateClock(server.pid)
    logger = JsonlLogger(run_dir / "metrics" / f"{COLLECTOR}.jsonl", COLLECTOR)
    log(f"depth {depth}: K={k} SGD steps x B={args.batch_size} per update, N={n} windows of T={spec.window_length} "
        f"per sample; {args.warmup_updates} warm-up + {phases} phases x {args.phase_updates} updates")
    start = time.perf_counter()
    run_learners(job, feed, clock, {COLLECTOR: logger}, RunStatus(run_dir), threading.Event())
    wall = time.perf_counter() - start
    sampler.close()
    jax.clear_caches()  # the next depth compiles its own functions; keep memory flat

    rows, _ = read_jsonl(run_dir / "metrics" / f"{COLLECTOR}.jsonl")
    rows = [r for r in rows if f"{COLLECTOR}/sample_wait_seconds" in r]
    if len(rows) != num_updates or len(clock.marks) != num_updates + 1:
        raise RuntimeError(f"expected {num_updates} updates, got {len(rows)} rows and {len(clock.marks) - 1} marks")
    per_phase: dict[int, dict[str, Any]] = {}
    updates = []  # (feed, phase, wall seconds, cpu seconds, timed) of every update, for the JSON output
    for index, row in enumerate(rows):
        name, phase = feed.source_of(index)
        position = index - args.warmup_updates - phase * args.phase_updates
        (t0, own0, server0), (t1, own1, server1) = clock.marks[index * k], clock.marks[(index + 1) * k]
        seconds, cpu = t1 - t0, (own1 - own0) + (server1 - server0)
        timed = phase >= 0 and 1 <= position < args.phase_updates - PREFETCH_LOOKAHEAD
        updates.append((name, phase, round(seconds, 4), round(cpu, 4), timed))
        if not timed:
            continue
        slot = per_phase.setdefault(phase, {"feed": name, "seconds": [], "cpu": [], "server_cpu": [], "wait": []})
        slot["seconds"].append(seconds)
        slot["cpu"].append(cpu)
        slot["server_cpu"].append(server1 - server0)
        slot["wait"].append(row[f"{COLLECTOR}/sample_wait_seconds"])
    # Ratio of medians over all timed updates of each feed: other jobs on the machine stretch single updates by up
    # to 2x; a median ignores those bursts where a mean would hand them to whichever feed was running. Per-pair
    # ratios (phase medians of neighbouring ABBA phases) are kept to show the spread.
    pooled: dict[str, dict[str, list[float]]] = {"reverb": {}, "memory": {}}
    phase_medians: dict[str, dict[str, list[float]]] = {"reverb": {}, "memory": {}}
    for phase in sorted(per_phase):
        slot = per_phase[phase]
        for key in ("seconds", "cpu", "server_cpu", "wait"):
            pooled[slot["feed"]].setdefault(key, []).extend(slot[key])
            phase_medians[slot["feed"]].setdefault(key, []).append(statistics.median(slot[key]))
    reverb, memory_ = pooled["reverb"], pooled["memory"]
    wall_pairs = [m / r for r, m in zip(phase_medians["reverb"]["seconds"], phase_medians["memory"]["seconds"])]
    cpu_pairs = [m / r for r, m in zip(phase_medians["reverb"]["cpu"], phase_medians["memory"]["cpu"])]
    median = statistics.median

    def mean_call_ms(name: str) -> float:
        times = [t for t, s in zip(feed.call_seconds, feed.served) if s == name]
        return 1e3 * statistics.mean(times[1:] or times)  # the first call of each feed pays one-off set-up

    return {
        "depth": depth,
        "batch_size": args.batch_size,
        "sgd_steps_per_update": k,
        "windows_per_sample": n,
        "ratio": median(memory_["seconds"]) / median(reverb["seconds"]),  # (K / t_reverb) / (K / t_memory)
        "pair_ratios": wall_pairs,
        "cpu_ratio": median(memory_["cpu"]) / median(reverb["cpu"]),
        "cpu_pair_ratios": cpu_pairs,
        "timed_updates_per_feed": len(reverb["seconds"]),
        "reverb_grad_steps_per_s": k / median(reverb["seconds"]),
        "memory_grad_steps_per_s": k / median(memory_["seconds"]),
        "reverb_cpu_ms_per_grad_step": 1e3 * median(reverb["cpu"]) / k,
        "memory_cpu_ms_per_grad_step": 1e3 * median(memory_["cpu"]) / k,
        # A mean: the server's CPU clock ticks in 10 ms steps, most updates see 0 or 1 tick.
        "server_cpu_ms_per_grad_step": 1e3 * statistics.mean(reverb["server_cpu"]) / k,
        "reverb_sample_ms": mean_call_ms("reverb"),
        "memory_sample_ms": mean_call_ms("memory"),
        "reverb_wait_ms_per_update": 1e3 * median(reverb["wait"]),
        "memory_wait_ms_per_update": 1e3 * median(memory_["wait"]),
        "wall_seconds": wall,
        "updates": updates,
    }


def format_rows(rows: list[dict]) -> str:
    header = (f"{'depth':>5} {'B':>4} {'K':>3} {'N':>3} {'wall_ratio':>10} {'cpu_ratio':>9} {'reverb_sgd/s':>12} "
              f"{'memory_sgd/s':>12} {'cpu_ms/sgd r/m':>15} {'server':>6} {'sample_ms r/m':>14}  wall pair ratios")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['depth']:5d} {r['batch_size']:4d} {r['sgd_steps_per_update']:3d} {r['windows_per_sample']:3d} "
            f"{r['ratio']:10.3f} {r['cpu_ratio']:9.3f} {r['reverb_grad_steps_per_s']:12.2f} "
            f"{r['memory_grad_steps_per_s']:12.2f} "
            f"{r['reverb_cpu_ms_per_grad_step']:7.1f}/{r['memory_cpu_ms_per_grad_step']:<7.1f} "
            f"{r['server_cpu_ms_per_grad_step']:6.1f} {r['reverb_sample_ms']:6.1f}/{r['memory_sample_ms']:<7.1f}  "
            + " ".join(f"{x:.2f}" for x in r["pair_ratios"]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="4,16", help="comma-separated learner depths (actor and critic)")
    parser.add_argument("--batch-size", type=int, default=512, help="transitions per SGD step (paper: 512)")
    parser.add_argument("--env", default="ant", help="env whose dims (obs, action, episode length) size the windows")
    parser.add_argument("--window-steps", type=int, default=0, help="T; 0 uses the env's episode length")
    parser.add_argument("--stored-windows", type=int, default=256, help="windows held by both feeds")
    parser.add_argument("--sgd-steps-per-update", type=int, default=4, help="K SGD steps per sampled batch")
    parser.add_argument("--phase-updates", type=int, default=7,
                        help=f"updates per phase (the first and the last {PREFETCH_LOOKAHEAD} are not timed)")
    parser.add_argument("--pairs", type=int, default=4, help="(reverb, memory) phase pairs, ordered ABBA")
    parser.add_argument("--warmup-updates", type=int, default=3, help="untimed updates first (compilation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: depth 4, batch 256, point-maze windows, 1 pair (< 30 s on an idle machine)")
    parser.add_argument("--json-out", default="", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    if args.quick:
        args.depths, args.batch_size, args.env, args.pairs = "4", 256, "point_u_maze", 1
        args.stored_windows, args.warmup_updates = 64, 1
        args.phase_updates = PREFETCH_LOOKAHEAD + 2
    args.depths = [int(d) for d in args.depths.split(",") if d]
    if args.phase_updates <= PREFETCH_LOOKAHEAD + 1:
        parser.error(f"--phase-updates must exceed {PREFETCH_LOOKAHEAD + 1} (boundary updates are dropped)")
    if min(args.pairs, args.stored_windows, args.sgd_steps_per_update, args.warmup_updates) <= 0:
        parser.error("--pairs, --stored-windows, --sgd-steps-per-update and --warmup-updates must be positive")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    from actors.envs.registry import make_env
    from experiments.config import COLLECTOR
    from replay import reverb_backend as rb
    from replay.schema import WindowSpec

    wall_start = time.perf_counter()
    env = make_env(args.env)
    t = args.window_steps or env.spec.episode_length
    spec = WindowSpec(t, env.spec.obs_dim, env.action_size)
    tables = rb.ReplayTablesConfig(
        learners=(rb.LearnerTableConfig(COLLECTOR, samples_per_insert=None, min_size_to_sample_windows=1),),
        max_size_windows=args.stored_windows)
    print(machine_line())
    print(f"env {args.env}: windows T={t}, obs {spec.obs_dim}, action {spec.action_dim} "
          f"({spec.bytes_per_item() / 1e3:.0f} KB each), {args.stored_windows} stored; batch {args.batch_size}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="replay_overhead_") as tmp, \
            ReplayServerProcess(tables, spec, Path(tmp)) as server:
        windows = synthetic_windows(t, spec.obs_dim, spec.action_dim, args.stored_windows,
                                    env.spec.episode_length, args.seed, env.spec.goal_dim)
        server.wait_ready()
        writer = rb.WindowWriter(server.address, (COLLECTOR,), spec, flush_timeout_ms=60_000)
        write_windows(writer, windows)
        writer.close()
        print(format_rows([]), flush=True)
        for depth in args.depths:
            row = measure_depth(args, depth, spec, windows, server, Path(tmp))
            rows.append(row)
            print(format_rows([row]).split("\n", 2)[-1], flush=True)
    finish(args, wall_start, rows=rows)
    return rows


if __name__ == "__main__":
    main()
