"""Ray backend overhead: a decoupled run on `--backend ray --ray-address local` / the same run on `--backend local`,
Ray's own memory, and how fast a killed collector learner comes back (process killed; node lost).

    python bench/ray_overhead.py                 # point_u_maze, collector d4 + passive d4: 2 pairs + 3 restart runs
    python bench/ray_overhead.py --repeats 3 --env-steps 60000
    python bench/ray_overhead.py --quick         # smoke run: tiny networks, one pair, runs cut short (~5 min)
    python bench/ray_overhead.py --quick --skip throughput,restart   # only the node loss

What runs: the real CLI as subprocesses, with the settings and flags of bench/end_to_end.py (`end_to_end.command`,
its ``decoupled`` mode: replay server, one learner process per learner, one evaluator per learner, ``--actors``
actor processes); evaluation only at the start and the end. Every run shares one persistent compilation cache, which
a warm-up run (``--backend local``, short budget) fills first, so that no measured run compiles (not in ``--quick``,
where the first local run compiles and its start-up time is not comparable).

1. Throughput, alternately local, ray, local, ray, ... (``--repeats`` of each): ``depthrl run`` with ``--backend
   local``, or ``--backend ray --ray-address local --role-resources '*=CPU:x'``: every role as a process hosted by a
   Ray actor on a Ray instance the driver starts on this machine. x shares the machine's cores among the roles:
   ``--ray-address local`` declares os.cpu_count() CPUs, and at the default CPU:1 per role a run with more roles than
   cores never has all of them placed (the rest wait for a free CPU). Ray does not confine a process to its share, so
   x changes nothing else (every Ray host, whatever x, hands its role OMP_NUM_THREADS=1, which XLA's CPU thread pool
   does not read). Reported per run, measured from outside every 0.5 s by `end_to_end.RunMonitor` (progress from the
   metrics files, on the bench's clock): collector grad steps/s and env steps/s between the polls at 30% and 90% of
   the collector's final grad steps, the time from the launch of ``depthrl run`` to the first collector row (a row
   follows every update, so: start-up, the replay server, prefill and the first update) and the run's wall time.
   Ratios ray / local are medians over the pairs. No CPU ratio: the Ray instance's daemons belong to the run, and
   what the monitor's process-tree sum would count differs between the backends.
   Memory (`TreeFootprint`, every 2 s): the unique (USS) and resident (RSS) memory of every process in the tree of
   the ``depthrl run`` driver, except the driver itself and the role processes (``python -m experiments.cli ROLE``)
   with their children; with ``--backend ray`` that is exactly the Ray instance the driver started: gcs_server,
   raylet, its agents and monitors, the workers that host the roles (``ray::RoleHost``) and idle workers, summed by
   kind; reported as the median of the samples between 30% and 90% of the final grad steps, and the peak. The
   driver's own USS is reported for both backends (with Ray, it also runs Ray's core worker), and so are the CPU
   seconds that Ray's processes used over the run.

2. Restart after SIGKILL, local and ray (one run each, ``--restart-env-steps``, ``--checkpoint-every-seconds 5``):
   once the collector learner has saved an orbax checkpoint after its first update and reached ``--kill-at`` of its
   target grad steps, its process gets SIGKILL (its pid: for ray, from the last ``=== start ... pid N on node ...``
   line of ``logs/learner_collector.log``; for local, the driver's descendant whose command line is the collector's
   ``learner`` role of this run dir). Measured from the kill, on the bench's clock (polls every 0.05 s): the process
   gone; the driver's log naming the exit (the supervisor noticed); a new start line in the role's log (the restart:
   local, just before the new process; ray, once the new host runs it); the first complete row appended to
   ``metrics/collector.jsonl`` afterwards (the restarted learner restored its checkpoint, rebuilt its jitted update
   from the compilation cache and finished one update). The supervisor's first backoff (1 s) is included in both.

3. Node loss (ray): a `ray.cluster_utils.Cluster` on 127.0.0.1 (head with CPUs for the roles other than learners,
   2 nodes with ``learner_slot: 2`` and CPUs for both learners), ``--role-resources
   'learner=CPU:1,learner_slot:1;*=CPU:0.5'``; at the same kill point, ``cluster.remove_node(the collector's node,
   allow_graceful=False)`` (node id from the same start line). Nodes of such a cluster are processes of this machine,
   and a role process runs in a session of its own, so it outlives the removal of its node (it would stop on its
   own within a second or two, after saving a checkpoint a real lost node could not write): every role process that
   ran on the removed node and is still alive then gets SIGKILL, as the loss of the node would have done. Measured
   from the remove_node call: as in 2 (the driver's log then says the role was lost with its node, once Ray has
   declared the node dead). The roles that ran on the removed node are named (the replay server there would move
   every client).

Full runs continue to the end after the kill (the exit code and the final grad steps are reported); ``--quick`` stops
each restart run once the restarted learner has written its first row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from bench.end_to_end import STEADY_FROM, STEADY_TO, RunMonitor, command, read_rows, role_of
from bench.replay_overhead import REPO_ROOT, finish, log, machine_line

MODES = ("local", "ray")
START_LINE = re.compile(r"^=== start \S+ \S+ pid (\d+) on node (\S+) \((\w+)\)", re.M)
"""The line a Ray role host writes into the role's log after starting its process (`experiments.ray_host`)."""
NODE_LOSS_RESOURCES = "learner=CPU:1,learner_slot:1;*=CPU:0.5"
MIB = 2**20
STARTUP_TIMEOUT_SECONDS = 180.0
"""A driver writes its run directory once it has joined Ray and checked the cluster; not by then, it is stuck."""


# ------------------------------------------------------------------------------------------------ reading a run


def ray_kind(cmdline: list[str]) -> str:
    """Which part of Ray a process is, from its command line (workers retitle themselves ``ray::<actor or IDLE>``)."""
    if not cmdline:
        return "other"
    first, text = cmdline[0], " ".join(cmdline)
    if first.startswith("ray::"):
        return "role host workers" if "RoleHost" in first else "idle workers"
    name = os.path.basename(first)
    if name in ("gcs_server", "raylet"):
        return name
    for marker, kind in (("dashboard/agent.py", "dashboard_agent"), ("runtime_env/agent/main.py", "runtime_env_agent"),
                         ("log_monitor.py", "log_monitor"), ("autoscaler/_private/monitor.py", "autoscaler_monitor"),
                         ("dashboard/dashboard.py", "dashboard"), ("default_worker.py", "idle workers")):
        if marker in text:
            return kind
    return f"other ({name})"


def is_role(cmdline: list[str]) -> bool:
    """A role process of a run (``python -m experiments.cli replay|learner|actor|evaluator ...``)."""
    return "experiments.cli" in cmdline


def ray_starts(log_path: Path) -> list[tuple[int, str, str]]:
    """(pid, node ip, node id) of every start of a Ray-hosted role, from its log's start lines."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    return [(int(pid), ip, node_id) for pid, ip, node_id in START_LINE.findall(text)]


def start_count(log_path: Path) -> int:
    """Starts of a role so far: both backends write a ``=== start`` line into the role's log at each start."""
    try:
        return sum(line.startswith("=== start ") for line in log_path.read_text(errors="replace").splitlines())
    except OSError:
        return 0


def role_share(cpus: int, roles: int) -> float:
    """The CPU each role asks Ray for so that all `roles` fit on `cpus` CPUs at once (two decimals, rounded down)."""
    return math.floor(100 * cpus / roles) / 100


def newest_checkpoint(directory: Path) -> int:
    """The newest update an orbax checkpoint in `directory` holds (0: none yet after the first update)."""
    try:
        return max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=0)
    except OSError:
        return 0


def target_grad_steps(run_dir: Path) -> int:
    """The collector's grad-step target, from the config the driver wrote into the run directory."""
    from experiments.compose import RunParts, load_run_config

    return RunParts.for_run(load_run_config(run_dir)).plan.target_grad_steps


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def local_collector_pid(driver_pid: int, run_dir: Path) -> int:
    """The pid of the collector's ``learner`` role among the descendants of a local launcher."""
    import psutil

    for process in psutil.Process(driver_pid).children(recursive=True):
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if role_of(cmdline) == "learner:collector" and str(run_dir) in " ".join(cmdline):
            return process.pid
    raise RuntimeError(f"no collector learner process of {run_dir} below the launcher {driver_pid}")


def runs_in(pid: int, run_dir: Path) -> bool:
    """True when process `pid` is a role of the run in `run_dir` (guards every kill against a reused pid)."""
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return is_role(cmdline) and str(run_dir) in " ".join(cmdline)


class TreeFootprint:
    """Samples, every `period_s`, the memory of the processes in the tree of `root_pid` that are neither the root nor
    a role process (nor below one), by `ray_kind`; the root's own memory; the CPU seconds of those processes (each
    one's last reading, as processes may exit); and every pid seen, so that none is left behind."""

    def __init__(self, root_pid: int, period_s: float = 2.0) -> None:
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(root_pid)
        self._period_s = period_s
        self._start = time.perf_counter()
        self.samples: list[dict] = []
        """{"t": seconds since start, "driver_uss", "roles": count, "kinds": {kind: {"uss", "rss", "count"}}}."""
        self.seen: dict[int, float] = {}
        """pid -> create time of every descendant seen."""
        self._cpu: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-footprint", daemon=True)
        self._thread.start()

    def _memory(self, process) -> tuple[float, float]:
        info = process.memory_full_info()
        return info.uss, info.rss

    def _poll(self) -> None:
        psutil = self._psutil
        try:
            driver_uss = self._memory(self._root)[0]
        except psutil.Error:
            return
        kinds: dict[str, dict[str, float]] = {}
        roles = 0
        stack = [self._root]
        while stack:
            try:
                children = stack.pop().children()
            except psutil.Error:
                continue
            for child in children:
                try:
                    self.seen.setdefault(child.pid, child.create_time())
                    cmdline = child.cmdline()
                    if is_role(cmdline):
                        roles += 1
                        for grandchild in child.children(recursive=True):
                            self.seen.setdefault(grandchild.pid, grandchild.create_time())
                        continue
                    kind = ray_kind(cmdline)
                    uss, rss = self._memory(child)
                    times = child.cpu_times()
                except psutil.Error:
                    continue
                self._cpu[child.pid] = (kind, times.user + times.system)
                entry = kinds.setdefault(kind, {"uss": 0.0, "rss": 0.0, "count": 0})
                entry["uss"] += uss
                entry["rss"] += rss
                entry["count"] += 1
                stack.append(child)
        self.samples.append({"t": time.perf_counter() - self._start, "driver_uss": driver_uss, "roles": roles,
                             "kinds": kinds})

    def _run(self) -> None:
        self._poll()
        while not self._stop.wait(self._period_s):
            self._poll()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def cpu_seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, seconds in self._cpu.values():
            out[kind] = out.get(kind, 0.0) + seconds
        return out

    def summary(self, t0: float, t1: float) -> dict:
        """Medians over the samples taken between `t0` and `t1` (all samples when none is), and the peak total."""
        inside = [s for s in self.samples if t0 <= s["t"] <= t1] or self.samples
        if not inside:
            return {}
        names = sorted({k for s in inside for k in s["kinds"]})
        by_kind = {k: {m: statistics.median(s["kinds"].get(k, {}).get(m, 0) for s in inside)
                       for m in ("uss", "rss", "count")} for k in names}
        # A kind seen in fewer than half of the samples (a child caught between fork and exec) has a median of 0.
        by_kind = {k: v for k, v in by_kind.items() if v["count"] > 0}
        totals = [sum(v["uss"] for v in s["kinds"].values()) for s in self.samples]
        return {"samples": len(inside), "by_kind": by_kind,
                "uss": statistics.median(sum(v["uss"] for v in s["kinds"].values()) for s in inside),
                "rss": statistics.median(sum(v["rss"] for v in s["kinds"].values()) for s in inside),
                "peak_uss": max(totals), "driver_uss": statistics.median(s["driver_uss"] for s in inside),
                "role_processes_in_tree": max(s["roles"] for s in inside)}

    def leftovers(self, grace_s: float = 15.0) -> list[int]:
        """Pids seen in the tree that still run (same process: same create time) `grace_s` after the driver ended
        (a Ray instance's daemons stop after the driver's own exit)."""
        deadline = time.monotonic() + grace_s
        while True:
            out = []
            for pid, created in self.seen.items():
                try:
                    process = self._psutil.Process(pid)
                    if process.create_time() == created and process.status() != self._psutil.STATUS_ZOMBIE:
                        out.append(pid)
                except self._psutil.Error:
                    continue
            if not out or time.monotonic() > deadline:
                return out
            time.sleep(0.5)


def steady_window(samples: list[tuple[float, float, int, int]], low: float, high: float) -> tuple[float, float]:
    """The bench-clock times of the first poll at >= `low` and the last poll at <= `high` of the final grad steps
    (`RunMonitor.samples`; the stretch `RunMonitor.steady_rates` measures)."""
    final = max((g for _, _, g, _ in samples), default=0)
    inside = [t for t, _, g, _ in samples if final and low * final <= g <= high * final]
    return (inside[0], inside[-1]) if inside else (0.0, math.inf)


# ------------------------------------------------------------------------------------------------ running runs


def run_command(mode: str, run_dir: Path, args: argparse.Namespace, env_steps: int, extra: list[str],
                ray_address: str = "local", role_resources: str = "") -> list[str]:
    """`end_to_end.command`'s decoupled run with another budget, `extra` flags and, for ray, the backend flags."""
    cmd = command("decoupled", run_dir, argparse.Namespace(**{**vars(args), "env_steps": env_steps})) + extra
    if mode == "ray":
        cmd += ["--backend", "ray", "--ray-address", ray_address, "--role-resources", role_resources]
    return cmd


def launch(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log_path, "wb") as out:
        # A session of its own, so that a Ctrl-C of the bench reaches the driver only through `stop_driver`.
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_driver(process: subprocess.Popen, grace_s: float = 60.0) -> int:
    """SIGTERM to the driver alone (it stops its roles; a Ray driver also kills its hosts and its Ray instance),
    SIGKILL after `grace_s`. Never the process group: a local Ray instance's daemons may share it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def kill_leftovers(pids: list[int], what: str) -> list[int]:
    """SIGKILL the given processes (started by this bench's runs, found by pid), saying so."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    if killed:
        log(f"    WARNING: {len(killed)} process(es) of {what} outlived it; killed: {killed}")
    return killed


def failure(process: subprocess.Popen, log_path: Path, what: str) -> str:
    tail = log_path.read_text(errors="replace")[-3000:]
    return f"{what} exited with code {process.poll()}:\n{tail}"


def throughput_run(mode: str, index: int, args: argparse.Namespace, work_dir: Path, env: dict[str, str]) -> dict:
    """One measured run (`mode` local or ray) to its end: rates over the steady stretch, start-up, wall, memory."""
    run_dir = work_dir / f"{mode}_{index}"
    log_path = work_dir / f"{mode}_{index}.log"
    cmd = run_command(mode, run_dir, args, args.env_steps, [], role_resources=args.ray_role_resources)
    start = time.perf_counter()
    process = launch(cmd, log_path, env)
    monitor = RunMonitor(process.pid, "decoupled", run_dir, args.actors)
    footprint = TreeFootprint(process.pid)
    try:
        code = process.wait(timeout=args.timeout_seconds)
    except subprocess.TimeoutExpired:
        stop_driver(process)
        raise RuntimeError(f"{mode} run exceeded {args.timeout_seconds} s; see {log_path}") from None
    finally:
        monitor.stop()
        footprint.stop()
        leftovers = kill_leftovers(footprint.leftovers(), f"the {mode} run #{index}")
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(failure(process, log_path, f"{mode} run"))
    first_row = next((t for t, _, g, _ in monitor.samples if g > 0), math.nan)
    t0, t1 = steady_window(monitor.samples, STEADY_FROM, STEADY_TO)
    result = {"mode": mode, "repeat": index, "wall_seconds": wall, "first_collector_row_seconds": first_row,
              **monitor.steady_rates(STEADY_FROM, STEADY_TO), "memory": footprint.summary(t0, t1),
              "cpu_seconds_by_kind": footprint.cpu_seconds(), "leftovers_killed": leftovers}
    log(f"  {mode:<5} #{index}: {result['grad_steps_per_s']:7.1f} grad steps/s {result['env_steps_per_s']:8,.0f} env "
        f"steps/s (over {result['measured_seconds']:.0f} s); first collector row after {first_row:.1f} s; wall "
        f"{wall:.0f} s")
    return result


# ------------------------------------------------------------------------------------------------ restarts


def wait_for_kill_point(process: subprocess.Popen, run_dir: Path, fraction: float, timeout_s: float,
                        log_path: Path) -> dict:
    """Block until the collector learner has saved a checkpoint after its first update and reached `fraction` of its
    target grad steps; returns where it stands."""
    started = time.monotonic()
    deadline = started + timeout_s
    metrics = run_dir / "metrics" / "collector.jsonl"
    target = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(failure(process, log_path, "the run (before the kill point)"))
        if not target and (run_dir / "config.json").exists():
            target = target_grad_steps(run_dir)
        if not target and time.monotonic() - started > STARTUP_TIMEOUT_SECONDS:
            stop_driver(process)
            raise RuntimeError(failure(process, log_path, f"the run, without a run directory after "
                                                          f"{STARTUP_TIMEOUT_SECONDS:.0f} s (stopped),"))
        grad = max((int(r["grad_steps"]) for r in read_rows(metrics)), default=0)
        checkpoint = newest_checkpoint(run_dir / "checkpoints" / "collector")
        if target and checkpoint > 0 and grad >= fraction * target:
            if grad >= target:
                raise RuntimeError(f"the collector reached its target ({target}) before the kill point: raise "
                                   "--restart-env-steps")
            return {"grad_steps_at_kill": grad, "target_grad_steps": target, "checkpoint_update": checkpoint}
        time.sleep(0.2)
    raise RuntimeError(f"no kill point within {timeout_s:.0f} s; see {log_path}")


def comeback(run_dir: Path, driver_log: Path, killed_pids: list[int], starts_before: int, t_kill: float,
             timeout_s: float) -> dict:
    """Times (seconds since `t_kill`) until the killed process is gone, the driver's log names the collector's exit,
    a new start line is in the role's log, and the first complete row is appended to ``metrics/collector.jsonl``."""
    metrics = run_dir / "metrics" / "collector.jsonl"
    role_log = run_dir / "logs" / "learner_collector.log"
    driver_offset = driver_log.stat().st_size if driver_log.exists() else 0
    deadline = t_kill + timeout_s
    # Rows count only once the old process is gone: a row it was writing when killed is not the restarted learner's.
    while any(alive(pid) for pid in killed_pids):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the collector's process {killed_pids} still runs {timeout_s:.0f} s after the kill")
        time.sleep(0.02)
    out: dict = {"gone_seconds": time.perf_counter() - t_kill, "detected_seconds": math.nan,
                 "new_start_seconds": math.nan, "first_row_seconds": math.nan}
    offset = metrics.stat().st_size
    while time.perf_counter() < deadline:
        now = time.perf_counter() - t_kill
        if math.isnan(out["detected_seconds"]):
            with open(driver_log, "rb") as f:
                f.seek(driver_offset)
                if b"role learner:collector " in f.read():
                    out["detected_seconds"] = now
        if math.isnan(out["new_start_seconds"]) and start_count(role_log) > starts_before:
            out["new_start_seconds"] = now
        with open(metrics, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        if b"\n" in chunk:
            out["first_row_seconds"] = now
            for line in chunk.splitlines():
                try:
                    out["first_row_grad_steps"] = int(json.loads(line)["grad_steps"])
                    break
                except (ValueError, KeyError):
                    continue  # the end of a line the killed process left half-written
            resumed = re.findall(r"resumed at update (\d+)", role_log.read_text(errors="replace"))
            out["resumed_from_update"] = int(resumed[-1]) if resumed else None
            return out
        time.sleep(0.05)
    raise RuntimeError(f"no new collector row within {timeout_s:.0f} s of the kill; see {role_log}")


def finish_restart_run(process: subprocess.Popen, run_dir: Path, args: argparse.Namespace, log_path: Path) -> dict:
    """Full mode: let the run end and report how; ``--quick``: stop it."""
    if args.quick:
        return {"exit_code": stop_driver(process), "stopped_after_measurement": True}
    try:
        code = process.wait(timeout=args.timeout_seconds)
    except subprocess.TimeoutExpired:
        code = stop_driver(process)
        log(f"    WARNING: the run did not end within {args.timeout_seconds} s after the kill; stopped")
    final = max((int(r["grad_steps"]) for r in read_rows(run_dir / "metrics" / "collector.jsonl")), default=0)
    restarts = re.findall(r"role (\S+) .*; restart \d+/\d+", log_path.read_text(errors="replace"))
    return {"exit_code": code, "final_grad_steps": final, "restarted_roles": restarts}


def restart_run(mode: str, args: argparse.Namespace, work_dir: Path, env: dict[str, str]) -> dict:
    """SIGKILL of the collector learner's process in the middle of a run; how fast it comes back."""
    run_dir = work_dir / f"restart_{mode}"
    log_path = work_dir / f"restart_{mode}.log"
    cmd = run_command(mode, run_dir, args, args.restart_env_steps, ["--checkpoint-every-seconds", "5"],
                      role_resources=args.ray_role_resources)
    process = launch(cmd, log_path, env)
    footprint = TreeFootprint(process.pid, period_s=5.0)  # only to find what is left behind
    try:
        point = wait_for_kill_point(process, run_dir, args.kill_at, args.timeout_seconds, log_path)
        role_log = run_dir / "logs" / "learner_collector.log"
        pid = ray_starts(role_log)[-1][0] if mode == "ray" else local_collector_pid(process.pid, run_dir)
        if not runs_in(pid, run_dir):
            raise RuntimeError(f"pid {pid} is not the collector learner of {run_dir}")
        starts_before = start_count(role_log)
        t_kill = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        result = {"mode": mode, **point, **comeback(run_dir, log_path, [pid], starts_before, t_kill, 300.0)}
        result.update(finish_restart_run(process, run_dir, args, log_path))
    finally:
        stop_driver(process)
        footprint.stop()
        result_leftovers = kill_leftovers(footprint.leftovers(), f"the {mode} restart run")
    result["leftovers_killed"] = result_leftovers
    log(f"  restart {mode:<5}: killed at grad {point['grad_steps_at_kill']}/{point['target_grad_steps']}; gone "
        f"+{result['gone_seconds']:.2f} s, noticed +{result['detected_seconds']:.1f} s, new process "
        f"+{result['new_start_seconds']:.1f} s, first row +{result['first_row_seconds']:.1f} s (grad "
        f"{result.get('first_row_grad_steps')}, resumed from update {result.get('resumed_from_update')})")
    return result


def node_loss_run(args: argparse.Namespace, work_dir: Path, env: dict[str, str]) -> dict:
    """The collector's node removed from a `ray.cluster_utils.Cluster` on 127.0.0.1 in the middle of a run."""
    from ray.cluster_utils import Cluster

    # The nodes are this process's children, the roles their workers' children: they inherit this environment.
    os.environ.update({k: env[k] for k in ("PYTHONPATH", "JAX_COMPILATION_CACHE_DIR",
                                           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "TF_CPP_MIN_LOG_LEVEL")})
    others = 3 + args.actors  # replay, an evaluator per learner, the actors
    # The driver's raylet is the head's, and Ray packs a new actor onto it while it is under half full: with a CPU
    # per other role (each asks for 0.5), every role but the learners stays on the head, and a learner node hosts
    # only learners. A learner node has CPUs for both learners (and one spare role): either can lose the other.
    head_cpus, learner_node_cpus = others, 3
    run_dir = work_dir / "node_loss"
    log_path = work_dir / "node_loss.log"
    cluster = None
    process = None
    result: dict = {"mode": "ray (node loss)"}
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "object_store_memory": 128 * MIB})
        nodes = {}
        for _ in range(2):
            node = cluster.add_node(num_cpus=learner_node_cpus, resources={"learner_slot": 2},
                                    node_ip_address="127.0.0.1", object_store_memory=128 * MIB)
            nodes[node.node_id] = node
        cluster.wait_for_nodes()
        cmd = run_command("ray", run_dir, args, args.restart_env_steps, ["--checkpoint-every-seconds", "5"],
                          ray_address=cluster.address, role_resources=NODE_LOSS_RESOURCES)
        # ray.init(address="127.0.0.1:PORT") replaces a loopback host with this machine's routable IP, where nothing
        # listens (every node is on 127.0.0.1), and would hang connecting. With this, Ray takes 127.0.0.1 for this
        # machine's IP in the driver (it is read nowhere else than in that lookup and in `ray start`).
        process = launch(cmd, log_path, {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        point = wait_for_kill_point(process, run_dir, args.kill_at, args.timeout_seconds, log_path)
        role_log = run_dir / "logs" / "learner_collector.log"
        _, _, lost = ray_starts(role_log)[-1]
        placed = {log.stem: ray_starts(log)[-1] for log in (run_dir / "logs").glob("*.log") if ray_starts(log)}
        on_lost = {role: pid for role, (pid, _, node_id) in placed.items() if node_id == lost}
        starts_before = start_count(role_log)
        t_kill = time.perf_counter()
        cluster.remove_node(nodes[lost], allow_graceful=False)
        removed = time.perf_counter() - t_kill
        # A lost node takes its processes with it; here they run on, in sessions of their own.
        survivors = [role for role, pid in on_lost.items() if alive(pid) and runs_in(pid, run_dir)]
        for role in survivors:
            os.kill(on_lost[role], signal.SIGKILL)
        result.update(point, roles_on_lost_node=sorted(on_lost), remove_node_seconds=removed,
                      role_processes_killed_after_removal=survivors, head_cpus=head_cpus,
                      learner_node_cpus=learner_node_cpus,
                      **comeback(run_dir, log_path, list(on_lost.values()), starts_before, t_kill, 300.0))
        new_node = ray_starts(role_log)[-1][2]
        result["moved_to_other_node"] = new_node != lost
        result.update(finish_restart_run(process, run_dir, args, log_path))
    finally:
        if process is not None:
            stop_driver(process)
        if cluster is not None:
            cluster.shutdown()
        # Role processes of the run still alive now (their hosts are gone with the cluster): by pid, from the logs.
        pids = [pid for log in (run_dir / "logs").glob("*.log") for pid, _, _ in ray_starts(log)] \
            if (run_dir / "logs").is_dir() else []
        result["leftovers_killed"] = kill_leftovers([p for p in pids if alive(p) and runs_in(p, run_dir)],
                                                    "the node-loss run")
    log(f"  node loss: removed the collector's node (roles there: {', '.join(result['roles_on_lost_node'])}; "
        f"remove_node {result['remove_node_seconds']:.1f} s); noticed +{result['detected_seconds']:.1f} s, new "
        f"process +{result['new_start_seconds']:.1f} s, first row +{result['first_row_seconds']:.1f} s")
    return result


# ------------------------------------------------------------------------------------------------ the bench


def summarize(results: list[dict]) -> dict:
    by_mode = {m: [r for r in results if r["mode"] == m] for m in MODES}
    pairs = list(zip(by_mode["local"], by_mode["ray"]))
    median = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    out = {f"{m}_{k}": median(by_mode[m], k) for m in MODES
           for k in ("grad_steps_per_s", "env_steps_per_s", "first_collector_row_seconds", "wall_seconds")}
    for key in ("grad_steps_per_s", "env_steps_per_s", "first_collector_row_seconds", "wall_seconds"):
        out[f"ratio_{key}"] = statistics.median(r[key] / l[key] for l, r in pairs)
    out["repeats"] = len(pairs)
    memory = [r["memory"] for r in by_mode["ray"] if r["memory"]]
    if memory:
        out["ray_processes_uss"] = statistics.median(m["uss"] for m in memory)
        out["ray_processes_rss"] = statistics.median(m["rss"] for m in memory)
        out["ray_processes_peak_uss"] = max(m["peak_uss"] for m in memory)
    for mode in MODES:
        drivers = [r["memory"]["driver_uss"] for r in by_mode[mode] if r["memory"]]
        out[f"{mode}_driver_uss"] = statistics.median(drivers) if drivers else math.nan
    return out


def print_throughput(results: list[dict], summary: dict, args: argparse.Namespace) -> None:
    print(f"{'backend':<8} {'grad_steps/s':>12} {'env_steps/s':>12} {'first_row_s':>11} {'wall_s':>7}  (medians)")
    for mode in MODES:
        print(f"{mode:<8} {summary[f'{mode}_grad_steps_per_s']:12.1f} {summary[f'{mode}_env_steps_per_s']:12,.0f} "
              f"{summary[f'{mode}_first_collector_row_seconds']:11.1f} {summary[f'{mode}_wall_seconds']:7.0f}")
    goal = "ok" if summary["ratio_grad_steps_per_s"] >= 0.95 else "BELOW the goal"
    print(f"ray / local: collector grad steps/s {summary['ratio_grad_steps_per_s']:.3f} (goal >= 0.95: {goal}), env "
          f"steps/s {summary['ratio_env_steps_per_s']:.3f}, time to the first collector row "
          f"{summary['ratio_first_collector_row_seconds']:.2f}, wall {summary['ratio_wall_seconds']:.2f} (median of "
          f"{summary['repeats']} pair(s); rates between {STEADY_FROM:.0%} and {STEADY_TO:.0%} of the final grad steps)"
          + ("; --quick: no warm-up, so the first local run compiled" if args.quick else ""))
    ray_runs = [r for r in results if r["mode"] == "ray" and r["memory"]]
    if ray_runs:
        m = ray_runs[-1]["memory"]
        print(f"Ray's own processes during the ray run(s): USS {summary['ray_processes_uss'] / MIB:,.0f} MiB, RSS "
              f"{summary['ray_processes_rss'] / MIB:,.0f} MiB (median of the samples in the steady stretch; peak USS "
              f"{summary['ray_processes_peak_uss'] / MIB:,.0f} MiB). Summed: every process in the tree of the "
              "`depthrl run --backend ray --ray-address local` driver except the driver and the role processes "
              "(`python -m experiments.cli ROLE`) with their children. By kind (last ray run; USS, RSS MiB; count):")
        for kind, v in sorted(m["by_kind"].items(), key=lambda kv: -kv[1]["uss"]):
            print(f"  {kind:<20} {v['uss'] / MIB:8,.0f} {v['rss'] / MIB:8,.0f}  x{v['count']:.0f}")
        print(f"  ({m['role_processes_in_tree']} role processes were in the driver's tree, below Ray's workers)")
        cpu = ray_runs[-1]["cpu_seconds_by_kind"]
        print(f"CPU seconds of Ray's processes over the last ray run ({ray_runs[-1]['wall_seconds']:.0f} s wall): "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])))
    print(f"driver (`depthrl run`) USS: local {summary['local_driver_uss'] / MIB:,.0f} MiB, ray "
          f"{summary['ray_driver_uss'] / MIB:,.0f} MiB (median)")


def print_restarts(restarts: list[dict], node_loss: dict | None) -> None:
    rows = [*restarts, *([node_loss] if node_loss else [])]
    print("collector learner back after (seconds from the SIGKILL / remove_node: process gone, supervisor noticed, new "
          "process, first new metrics row):")
    for r in rows:
        print(f"  {r['mode']:<16} gone {r['gone_seconds']:5.2f}  noticed {r['detected_seconds']:5.1f}  new process "
              f"{r['new_start_seconds']:5.1f}  first row {r['first_row_seconds']:5.1f}   killed at grad "
              f"{r['grad_steps_at_kill']}/{r['target_grad_steps']} (checkpoint at update {r['checkpoint_update']}, "
              f"resumed from update {r.get('resumed_from_update')}, first new row at grad "
              f"{r.get('first_row_grad_steps')})")
    if node_loss:
        print(f"  node loss: roles on the removed node: {', '.join(node_loss['roles_on_lost_node'])}; remove_node took "
              f"{node_loss['remove_node_seconds']:.1f} s; role processes still running after it (SIGKILLed then): "
              f"{', '.join(node_loss['role_processes_killed_after_removal']) or 'none'}; the collector came back on "
              f"{'another' if node_loss['moved_to_other_node'] else 'the SAME'} node")
    for r in rows:
        if "final_grad_steps" in r:
            print(f"  {r['mode']}: run exit code {r['exit_code']}, final collector grad steps {r['final_grad_steps']}/"
                  f"{r['target_grad_steps']}, restarted: {', '.join(r['restarted_roles'])}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="point_u_maze")
    parser.add_argument("--depth", type=int, default=4, help="collector depth (actor and critic)")
    parser.add_argument("--learner-depth", type=int, default=4, help="depth of the passive learner")
    parser.add_argument("--actors", type=int, default=1, help="actor processes of every run")
    parser.add_argument("--env-steps", type=int, default=32_000, help="budget of every throughput run")
    parser.add_argument("--restart-env-steps", type=int, default=0,
                        help="budget of the restart and node-loss runs (0: --env-steps)")
    parser.add_argument("--kill-at", type=float, default=0.4,
                        help="kill once the collector is this far to its target grad steps (and has a checkpoint)")
    parser.add_argument("--warmup-env-steps", type=int, default=0,
                        help="budget of the unmeasured warm-up run that fills the compilation cache (0: a quarter "
                             "of --env-steps, at least twice the prefill; skipped with --quick)")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--unroll-length", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--prefill-steps-per-env", type=int, default=100)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--num-eval-envs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs per backend: local, ray, local, ...")
    parser.add_argument("--ray-role-resources", default="",
                        help="--role-resources of the ray runs on `--ray-address local` (default: '*=CPU:x', x the "
                             "cores divided among the roles, so that all of them are placed at once)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: throughput,restart,node_loss")
    parser.add_argument("--timeout-seconds", type=float, default=900.0, help="per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: width 32, batch 64, 16 slots, one pair, restart runs cut short")
    parser.add_argument("--json-out", default="", help="also write the results as JSON to this path")
    parser.add_argument("--keep-dir", default="", help="write the runs here and keep them (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        # Tiny networks train ~600 grad steps/s here: a budget of 16000 env steps would be trained in under a
        # second, too short for a steady stretch or a checkpoint before the kill. This one trains for ~20 s.
        args.env_steps, args.num_envs, args.width, args.batch_size, args.num_eval_envs = 240_000, 16, 32, 64, 8
        args.unroll_length, args.repeats = 20, 1
    args.restart_env_steps = args.restart_env_steps or args.env_steps
    prefill = args.prefill_steps_per_env * args.num_envs
    args.warmup_env_steps = args.warmup_env_steps or max(args.env_steps // 4, 2 * prefill)
    if not args.ray_role_resources:
        roles = 1 + 2 * 2 + args.actors  # replay, a learner and an evaluator each for the collector and the passive one
        args.ray_role_resources = f"*=CPU:{role_share(os.cpu_count() or 1, roles):g}"
    unknown = set(filter(None, args.skip.split(","))) - {"throughput", "restart", "node_loss"}
    if unknown:
        parser.error(f"--skip: unknown part(s) {sorted(unknown)}")
    if args.repeats <= 0 or args.actors <= 0 or args.num_envs % args.actors:
        parser.error("--repeats and --actors must be positive and --num-envs divisible by --actors")
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    skip = set(args.skip.split(","))
    wall_start = time.perf_counter()
    print(machine_line())
    print(f"{args.env}: collector d{args.depth} + passive d{args.learner_depth}, {args.actors} actor(s), "
          f"{args.num_envs} env slots x {args.unroll_length} steps, batch {args.batch_size}, width {args.width}, "
          f"{args.env_steps:,} env steps (restart runs {args.restart_env_steps:,}); ray runs on --ray-address local "
          f"with --role-resources '{args.ray_role_resources}'", flush=True)
    results, restarts, node_loss = [], [], None
    with tempfile.TemporaryDirectory(prefix="ray_overhead_") as tmp:
        work_dir = Path(args.keep_dir or tmp).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # `--ray-address local` calls ray.init() without an address, which joins the cluster in RAY_ADDRESS or in
        # /tmp/ray/ray_current_cluster (every ray.cluster_utils.Cluster writes it: a test running now, or the node-loss
        # run below) instead of starting one. RAY_ADDRESS=local makes it start its own; an explicit address wins.
        env["RAY_ADDRESS"] = "local"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env["JAX_COMPILATION_CACHE_DIR"] = str(work_dir / "jax_cache")
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if not args.quick:
            log(f"  warm-up (local, {args.warmup_env_steps:,} env steps): fills the compilation cache")
            process = launch(run_command("local", work_dir / "warmup", args, args.warmup_env_steps, []),
                             work_dir / "warmup.log", env)
            try:
                if process.wait(timeout=args.timeout_seconds) != 0:
                    raise RuntimeError(failure(process, work_dir / "warmup.log", "the warm-up run"))
            finally:
                stop_driver(process)
        if "throughput" not in skip:
            for index in range(args.repeats):
                for mode in MODES:
                    results.append(throughput_run(mode, index, args, work_dir, env))
        if "restart" not in skip:
            for mode in MODES:
                restarts.append(restart_run(mode, args, work_dir, env))
        if "node_loss" not in skip:
            node_loss = node_loss_run(args, work_dir, env)
    summary = summarize(results) if results else {}
    if summary:
        print_throughput(results, summary, args)
    if restarts or node_loss:
        print_restarts(restarts, node_loss)
    finish(args, wall_start, results=results, summary=summary, restarts=restarts, node_loss=node_loss)
    return summary


if __name__ == "__main__":
    main()
