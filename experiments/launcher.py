"""`depthrl run` / `depthrl resume`: start every role of a decoupled run as its own process and supervise them.

Roles (each is also a standalone subcommand that takes a replay address, so they can be started by hand elsewhere):
replay server, learner(s), one evaluator per learner, N actors. Processes are started with exec (subprocess), never
fork: JAX and gRPC deadlock after fork. Each role writes its own log file under ``logs/``.

Faults: a role that exits with an error (or is killed) is restarted after a backoff (1, 2, 4, ... up to 10 s), at most
`--max-restarts` times per role; learners resume from their orbax checkpoints, the replay server from its Reverb
checkpoint, actors from the env steps in their metrics. A role that keeps failing stops the whole run with its last
error. The launcher never sleeps through a backoff: it keeps watching the other roles and the signals.

Shutdown: Ctrl-C or SIGTERM to the launcher sends SIGTERM to every child; roles checkpoint and exit; stragglers get
SIGKILL after `SHUTDOWN_GRACE_SECONDS`. The run can then be continued with `depthrl resume RUN_DIR`. Children also
stop on their own when the launcher dies (they watch their parent), so a `kill -9` of the launcher leaves no orphans.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from experiments.compose import LAUNCHER_PID_ENV, learner_processes
from experiments.config import DecoupledConfig, parse_devices
from experiments.metrics import read_jsonl
from experiments.runs import EXIT_RUN_DIR_UNWRITABLE
from experiments.tracking import WandbFeed, WandbRun, finish_wandb
from replay.status import RunStatus

SHUTDOWN_GRACE_SECONDS = 9.0
"""SIGTERM to SIGKILL for the slowest child: with the launcher's own overhead every child is gone within 10 s."""
RESTART_BACKOFF_SECONDS = (1.0, 10.0)
"""First delay before restarting a crashed role and its cap; the delay doubles with each restart of that role."""


def port_is_free(port: int, host: str = "") -> bool:
    """True when nothing listens on `port` (Reverb binds all interfaces, so check those).

    SO_REUSEADDR, as gRPC itself sets it: connections of a server that just died linger in TIME_WAIT on its port for
    a minute; they must not make a restarted replay server refuse the port. A live listener still makes bind fail."""
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str:
    """The security note of multi-host mode (Reverb speaks gRPC without authentication or TLS)."""
    return (f"WARNING: multi-host mode: the replay server {host}:{port} accepts unauthenticated, unencrypted gRPC "
            f"from anyone who can reach port {port} (read and write replay data and params). Keep port {port} inside "
            "a private network or behind a firewall.")


def pick_free_port() -> int:
    import portpicker

    return portpicker.pick_unused_port()


@dataclasses.dataclass
class Role:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    done: bool = False
    last_error: str = ""
    last_exit: str = ""
    """How the last attempt ended, in words (e.g. 'was killed by SIGKILL')."""
    restart_at: float | None = None
    """time.monotonic() at which a crashed role is started again; None while it runs (or is done)."""
    relaunch_requested: bool = False
    """Set when the supervisor stopped the role on purpose: its exit is not a failure; it starts again at once."""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")
        log.write(f"\n=== start {time.strftime('%Y-%m-%d %H:%M:%S')} restarts={self.restarts}: {' '.join(self.argv)}\n")
        log.flush()
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        log.close()

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def wait(self, timeout_s: float) -> bool:
        """True once the process has ended (waiting at most `timeout_s`)."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def where(self) -> str:
        """Where the role runs (the Ray backend names the node; the local launcher runs everything here)."""
        return ""

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


ROLE_HOST_LOST = -1000
"""Exit code the Ray backend reports for a role whose host (its Ray actor, or the whole node) was lost."""


def describe_exit(code: int) -> str:
    if code == ROLE_HOST_LOST:
        return "was lost with its node (or its Ray actor died)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_RUN_DIR_UNWRITABLE:
        return f"could not write to the run directory (exit {code}: disk full or not writable)"
    return f"exited with code {code}"


def last_error_line(output: str) -> str:
    """The last line of a role's output that names an exception ("ValueError: ...") or a depthrl error."""
    import re

    pattern = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Timeout|Mismatch|Interrupt)\b.*|depthrl .*error.*)$")
    for line in reversed(output.splitlines()):
        if pattern.match(line.strip()):
            return line.strip()
    return ""


def _role_env(config: DecoupledConfig, role: str) -> dict[str, str]:
    from experiments.allocator import ALLOCATOR_ENV

    env = {**ALLOCATOR_ENV, **os.environ}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[LAUNCHER_PID_ENV] = str(os.getpid())
    r = config.runtime
    if r.devices:
        mapping = parse_devices(r.devices, r)
        family = "actor" if role.startswith("actor_") else role.removeprefix("eval_")
        device = mapping.get(role, mapping.get(family, mapping.get("*")))
        if device is not None:
            if device == "cpu":
                env["JAX_PLATFORMS"] = "cpu"
                env["CUDA_VISIBLE_DEVICES"] = ""
            else:
                env["CUDA_VISIBLE_DEVICES"] = device
    if r.gpu_memory_fraction is not None:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(r.gpu_memory_fraction)
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def build_roles(config: DecoupledConfig, run_dir: Path, replay_address: str, replay_port: int | None) -> list[Role]:
    base = [sys.executable, "-m", "experiments.cli"]
    common = ["--run-dir", str(run_dir)]
    logs = run_dir / "logs"
    roles: list[Role] = []
    if replay_port is not None:
        roles.append(Role("replay", base + ["replay", *common, "--port", str(replay_port)],
                          _role_env(config, "replay"), logs / "replay.log"))
    for group in learner_processes(config):
        label = "+".join(group)
        roles.append(Role(f"learner:{label}", base + ["learner", *common, "--replay", replay_address,
                                                      "--learners", ",".join(group)],
                          _role_env(config, group[0]), logs / f"learner_{label}.log"))
    for name in config.runtime.learner_names():
        roles.append(Role(f"eval_{name}", base + ["evaluator", *common, "--replay", replay_address,
                                                  "--learner", name],
                          _role_env(config, f"eval_{name}"), logs / f"eval_{name}.log"))
    for i in range(config.runtime.actors):
        roles.append(Role(f"actor_{i}", base + ["actor", *common, "--replay", replay_address, "--actor-id", str(i)],
                          _role_env(config, f"actor_{i}"), logs / f"actor_{i}.log"))
    return roles


WANDB_FEED_EVERY_SECONDS = 5.0
"""How often the launcher sends the roles' new metric rows to W&B."""
STALE_AFTER_SECONDS = 30.0
"""A role whose metrics file has not grown for this long is flagged in the progress table (a stall, not a crash)."""


def _launcher_role(roles: list[Role], metrics_role: str) -> Role | None:
    for role in roles:
        if role.name == metrics_role or (role.name.startswith("learner:")
                                         and metrics_role in role.name.removeprefix("learner:").split("+")):
            return role
    return None


RSS_GROWTH_FLAG_MIB_PER_MIN = 1.0
"""A role whose resident memory grew faster than this over the last `RSS_GROWTH_WINDOW_SECONDS` (least-squares
slope of its rows' ``rss_mib``, after `RSS_WARMUP_SECONDS`) is flagged in the progress table."""
RSS_GROWTH_WINDOW_SECONDS = 1800.0
RSS_WARMUP_SECONDS = 300.0


def rss_growth_mib_per_min(rows: list[dict], role: str) -> float | None:
    """Least-squares slope (MiB per minute) of `role`'s ``rss_mib`` over its rows of the last
    `RSS_GROWTH_WINDOW_SECONDS`, leaving out the first `RSS_WARMUP_SECONDS`; None with fewer than 10 such rows
    spanning at least 5 minutes."""
    points = [(r["wall_time"], r[f"{role}/rss_mib"]) for r in rows
              if isinstance(r.get("wall_time"), (int, float)) and isinstance(r.get(f"{role}/rss_mib"), (int, float))]
    if not points:
        return None
    end = points[-1][0]
    points = [(t, m) for t, m in points if t >= max(RSS_WARMUP_SECONDS, end - RSS_GROWTH_WINDOW_SECONDS)]
    if len(points) < 10 or points[-1][0] - points[0][0] < 300.0:
        return None
    t_mean = sum(t for t, _ in points) / len(points)
    m_mean = sum(m for _, m in points) / len(points)
    var = sum((t - t_mean) ** 2 for t, _ in points)
    return 60.0 * sum((t - t_mean) * (m - m_mean) for t, m in points) / var if var > 0 else None


def progress_table(run_dir: Path, config: DecoupledConfig, roles: list[Role] | None = None) -> str:
    """One line per role from the tails of the metrics files: env steps, grad steps, latest eval, lag, replay size,
    the time a learner waited for data and the rate-limiter stall counters, restarts, and a STALLED / DOWN flag."""
    metrics = run_dir / "metrics"
    lines = []
    now = time.time()
    for path in sorted(metrics.glob("*.jsonl")):
        rows, _ = read_jsonl(path)
        if not rows:
            continue
        last, role = rows[-1], rows[-1]["role"]
        parts = [f"{role:<16}"]
        if role != "replay":  # the server counts windows per table (below), not env or grad steps
            parts += [f"env {last['env_steps']:>10,}", f"grad {last['grad_steps']:>8,}"]
        for key, label, fmt in (
            ("time_at_goal", "time_at_goal", "{:.1f}"), ("success_any", "success_any", "{:.2f}"),
            ("critic_accuracy", "acc", "{:.2f}"), ("update_to_data", "utd", "{:.4f}"),
            ("policy_lag", "lag", "{:.0f}"), ("env_steps_per_second", "env/s", "{:,.0f}"),
            ("blocked_seconds", "blocked_s", "{:.1f}"), ("distinct_param_versions", "versions", "{:.0f}"),
            ("table_size", "replay_items", "{:.0f}"), ("sample_wait_seconds", "wait_data_s", "{:.1f}"),
            # Reverb's table-worker stall counters (cumulative): this learner waiting for inserts, and this learner's
            # limiter holding back the actors.
            ("samples_blocked_ms", "limiter_blocked_samples_s", "{:.0f}"),
            ("inserts_blocked_ms", "limiter_blocked_inserts_s", "{:.0f}"),
            ("grad_steps_short_of_target", "SHORT_OF_TARGET", "{:.0f}"),
            ("rss_mib", "rss_MiB", "{:,.0f}"),
        ):
            value = last.get(f"{role}/{key}")
            if value is not None:
                parts.append(f"{label} " + fmt.format(value / 1000 if key.endswith("_ms") else value))
        growth = rss_growth_mib_per_min(rows, role)
        if growth is not None and growth > RSS_GROWTH_FLAG_MIB_PER_MIN:
            parts.append(f"MEMORY GROWING +{growth:.1f} MiB/min")
        if last.get(f"{role}/limiter_blocks_inserts"):
            parts.append("BLOCKING ACTORS (this learner is behind its update-to-data ratio)")
        if role == "replay":
            for table in config.runtime.learner_names():
                size = last.get(f"replay/{table}/size")
                if size is not None:
                    samples_wait = last.get(f"replay/{table}/worker_waiting_for_inserts_ms", 0) / 1000
                    inserts_wait = last.get(f"replay/{table}/worker_waiting_for_sampling_ms", 0) / 1000
                    inserted = last.get(f"replay/{table}/inserts", 0)
                    parts.append(f"{table}: size {size:.0f} inserted {inserted:,.0f} samples_wait_s "
                                 f"{samples_wait:.0f} inserts_wait_s {inserts_wait:.0f}")
        launched = _launcher_role(roles or [], role)
        if launched is not None and launched.where:
            parts.append(f"on {launched.where}")
        if launched is not None and launched.restarts:
            parts.append(f"restarts {launched.restarts}")
        if launched is not None and launched.restart_at is not None:
            in_seconds = max(launched.restart_at - time.monotonic(), 0)
            parts.append(f"DOWN ({launched.last_exit}; restart in {in_seconds:.0f} s)")
        elif not (launched is not None and launched.done) and not role.startswith("eval_"):  # evaluators idle by design
            try:
                age = now - path.stat().st_mtime
            except OSError:
                age = 0.0
            if age > STALE_AFTER_SECONDS:
                parts.append(f"STALLED: no row for {age:.0f} s")
        lines.append("  ".join(parts))
    return "\n".join(lines)


def supervise(config: DecoupledConfig, run_dir: Path, roles: list[Role], quiet: bool = False,
              on_started: Callable[[Role, list[Role]], None] | None = None, started: bool = False) -> int:
    """Run until every learner and evaluator has finished; restart crashed roles (bounded, with backoff, without
    blocking the loop); stop on a signal. Exit code 0 done, 1 a role failed too often, 130 stopped by a signal.
    `on_started(role, roles)` is called after each restart (the Ray backend re-points clients at a moved server);
    `started`: the roles were started by the caller."""
    stopping = {"signal": 0}

    def on_signal(signum, frame):
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    failed = ""
    last_progress = time.monotonic()
    max_restarts = config.runtime.max_restarts
    # W&B: the roles log JSONL (and TensorBoard) in their own processes; the launcher alone feeds the run's one W&B run.
    feed = WandbFeed(WandbRun(run_dir, config.run.wandb_group), run_dir / "metrics") \
        if "wandb" in config.run.sinks else None
    last_feed = time.monotonic()
    try:
        if not started:
            for role in roles:
                role.start()
        replay = [r for r in roles if r.name == "replay" and "--port" in r.argv]
        if replay:
            port = replay[0].argv[replay[0].argv.index("--port") + 1]
            print(f"depthrl run: replay server on port {port}, listening on all interfaces without authentication "
                  "(single host: other machines that can reach this port can read and write replay data)",
                  file=sys.stderr, flush=True)
        while not stopping["signal"]:
            time.sleep(0.2)
            now = time.monotonic()
            for role in roles:
                if role.done:
                    continue
                if role.restart_at is not None:
                    if now >= role.restart_at:
                        role.restart_at = None
                        role.start()
                        if on_started is not None:
                            on_started(role, roles)
                    continue
                code = role.poll()
                if code is None:
                    continue
                if role.relaunch_requested:  # stopped on purpose (its replay server moved): start it again now
                    role.relaunch_requested = False
                    role.restart_at = now
                    continue
                if code == 0:
                    role.done = True
                    continue
                role.last_error = role.tail()
                role.last_exit = describe_exit(code)
                if role.restarts >= max_restarts:
                    error = last_error_line(role.last_error)
                    failed = (f"role {role.name} failed {role.restarts + 1} times, the last time it {role.last_exit}; "
                              f"giving up (--max-restarts {max_restarts})."
                              + (f"\nlast error: {error}" if error else "")
                              + f"\nlast output ({role.log_path}):\n{role.last_error}")
                    break
                role.restarts += 1
                delay = min(RESTART_BACKOFF_SECONDS[0] * 2 ** (role.restarts - 1), RESTART_BACKOFF_SECONDS[1])
                print(f"depthrl run: role {role.name} {role.last_exit}; restart {role.restarts}/{max_restarts} "
                      f"in {delay:.0f} s", file=sys.stderr, flush=True)
                role.restart_at = now + delay
                last_progress = -math.inf  # show the DOWN role in a progress table now, not at the next period
            if failed:
                break
            learners_and_evals = [r for r in roles if r.name.startswith(("learner:", "eval_"))]
            if all(r.done for r in learners_and_evals):
                break
            if feed is not None and now - last_feed > WANDB_FEED_EVERY_SECONDS:
                feed.poll()
                last_feed = now
            if not quiet and now - last_progress > config.runtime.progress_every_seconds:
                table = progress_table(run_dir, config, roles)
                if table:
                    print(f"--- {time.strftime('%H:%M:%S')}\n{table}", file=sys.stderr, flush=True)
                last_progress = now
    except OSError as e:  # e.g. the run directory became unwritable: a role's log file cannot be opened
        failed = f"cannot start a role: {e}"
    finally:
        shutdown(roles)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    RunStatus(run_dir).set("run", "stopped" if failed or stopping["signal"] else "finished")
    if feed is not None:
        feed.poll()
        finish_wandb(feed.run, run_dir, report=not (failed or stopping["signal"]))
    if failed:
        print(f"depthrl run: {failed}", file=sys.stderr)
        print(f"depthrl run: fix the cause, then continue with: depthrl resume {run_dir}", file=sys.stderr)
        return 1
    if stopping["signal"]:
        print(f"depthrl run: stopped by signal {stopping['signal']}; continue with: depthrl resume {run_dir}",
              file=sys.stderr)
        return 130
    if not quiet:
        print(progress_table(run_dir, config, roles), file=sys.stderr)
    return 0


def shutdown(roles: list[Role]) -> None:
    """SIGTERM every live child (actors first, replay last), wait, then SIGKILL stragglers. No orphans."""
    order = sorted(roles, key=lambda r: (r.name == "replay", r.name.startswith("learner:")))
    for role in order:
        if role.name != "replay":
            role.signal(signal.SIGTERM)
    deadline = time.time() + SHUTDOWN_GRACE_SECONDS * 0.7
    for role in order:
        if role.name != "replay":
            role.wait(max(deadline - time.time(), 0.1))
    for role in order:
        if role.name == "replay":
            role.signal(signal.SIGTERM)
    deadline = time.time() + SHUTDOWN_GRACE_SECONDS * 0.3
    for role in order:
        if not role.wait(max(deadline - time.time(), 0.1)):
            role.kill()
