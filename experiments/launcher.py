"""`depthrl run` / `depthrl resume`: start every role of a decoupled run as its own process and supervise them.

Roles (each is also a standalone subcommand that takes a replay address, so they can be started by hand elsewhere):
replay server, learner(s), one evaluator per learner, N actors. Processes are started with exec (subprocess), never
fork: JAX and gRPC deadlock after fork. Each role writes its own log file under ``logs/``.

Shutdown: Ctrl-C or SIGTERM to the launcher sends SIGTERM to every child; roles checkpoint and exit; stragglers get
SIGKILL after `SHUTDOWN_GRACE_SECONDS`. The run can then be continued with `depthrl resume RUN_DIR`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from experiments.config import COLLECTOR, DecoupledConfig
from experiments.metrics import read_jsonl

SHUTDOWN_GRACE_SECONDS = 10.0
PROGRESS_EVERY_SECONDS = 10.0


def port_is_free(port: int, host: str = "") -> bool:
    """True when nothing listens on `port` (Reverb binds all interfaces, so check those)."""
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


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

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _role_env(config: DecoupledConfig, role: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    r = config.runtime
    if r.devices:
        mapping = dict(item.split("=", 1) for item in r.devices.split(","))
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
    names = config.runtime.learner_names()
    groups = [names] if config.runtime.sampling_mode == "shared-batch" else [(n,) for n in names]
    for group in groups:
        label = "+".join(group)
        roles.append(Role(f"learner:{label}", base + ["learner", *common, "--replay", replay_address,
                                                      "--learners", ",".join(group)],
                          _role_env(config, group[0]), logs / f"learner_{label}.log"))
    for name in names:
        roles.append(Role(f"eval_{name}", base + ["evaluator", *common, "--replay", replay_address,
                                                  "--learner", name],
                          _role_env(config, f"eval_{name}"), logs / f"eval_{name}.log"))
    for i in range(config.runtime.actors):
        roles.append(Role(f"actor_{i}", base + ["actor", *common, "--replay", replay_address, "--actor-id", str(i)],
                          _role_env(config, f"actor_{i}"), logs / f"actor_{i}.log"))
    return roles


def progress_table(run_dir: Path, config: DecoupledConfig) -> str:
    """One line per role from the tails of the metrics files: env steps, grad steps, latest eval, lag, replay size."""
    metrics = run_dir / "metrics"
    lines = []
    for path in sorted(metrics.glob("*.jsonl")):
        rows, _ = read_jsonl(path)
        if not rows:
            continue
        last, role = rows[-1], rows[-1]["role"]
        parts = [f"{role:<16}", f"env {last['env_steps']:>10,}", f"grad {last['grad_steps']:>8,}"]
        for key, label, fmt in (
            ("time_at_goal", "time_at_goal", "{:.1f}"), ("success_any", "success_any", "{:.2f}"),
            ("critic_accuracy", "acc", "{:.2f}"), ("update_to_data", "utd", "{:.4f}"),
            ("policy_lag", "lag", "{:.0f}"), ("env_steps_per_second", "env/s", "{:,.0f}"),
            ("blocked_seconds", "blocked_s", "{:.1f}"), ("distinct_param_versions", "versions", "{:.0f}"),
            ("table_size", "replay_items", "{:.0f}"),
        ):
            value = last.get(f"{role}/{key}")
            if value is not None:
                parts.append(f"{label} " + fmt.format(value))
        lines.append("  ".join(parts))
    return "\n".join(lines)


def supervise(config: DecoupledConfig, run_dir: Path, roles: list[Role], quiet: bool = False) -> int:
    """Run until every learner and evaluator has finished; restart crashed roles (bounded); stop on a signal."""
    stopping = {"signal": 0}

    def on_signal(signum, frame):
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    for role in roles:
        role.start()
    if config.runtime.replay_address is not None or any(r.name == "replay" for r in roles):
        addr_note = [r for r in roles if r.name == "replay"]
        if addr_note:
            print(f"replay server listening on all interfaces (no auth): {addr_note[0].argv[-1]}", file=sys.stderr)
    failed = ""
    last_progress = 0.0
    try:
        while not stopping["signal"]:
            time.sleep(0.5)
            for role in roles:
                code = role.poll()
                if code is None or role.done:
                    continue
                if code == 0:
                    role.done = True
                    continue
                role.last_error = role.tail()
                if role.restarts >= config.runtime.max_restarts:
                    failed = (f"role {role.name} failed {role.restarts + 1} times (exit {code}); last output:\n"
                              f"{role.last_error}")
                    break
                role.restarts += 1
                print(f"role {role.name} exited with {code}; restart {role.restarts}/{config.runtime.max_restarts}",
                      file=sys.stderr, flush=True)
                time.sleep(min(2.0**role.restarts, 10.0))
                role.start()
            if failed:
                break
            learners_and_evals = [r for r in roles if r.name.startswith(("learner:", "eval_"))]
            if all(r.done for r in learners_and_evals):
                break
            if not quiet and time.time() - last_progress > PROGRESS_EVERY_SECONDS:
                table = progress_table(run_dir, config)
                if table:
                    print(f"--- {time.strftime('%H:%M:%S')}\n{table}", file=sys.stderr, flush=True)
                last_progress = time.time()
    finally:
        shutdown(roles)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        print(f"depthrl run: {failed}", file=sys.stderr)
        return 1
    if stopping["signal"]:
        print(f"depthrl run: stopped by signal {stopping['signal']}; continue with: depthrl resume {run_dir}",
              file=sys.stderr)
        return 130
    if not quiet:
        print(progress_table(run_dir, config), file=sys.stderr)
    return 0


def shutdown(roles: list[Role]) -> None:
    """SIGTERM every live child (actors first, replay last), wait, then SIGKILL stragglers. No orphans."""
    order = sorted(roles, key=lambda r: (r.name == "replay", r.name.startswith("learner:")))
    for role in order:
        if role.name != "replay":
            role.signal(signal.SIGTERM)
    deadline = time.time() + SHUTDOWN_GRACE_SECONDS * 0.7
    for role in order:
        if role.name == "replay" or role.process is None:
            continue
        try:
            role.process.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            pass
    for role in order:
        if role.name == "replay":
            role.signal(signal.SIGTERM)
    deadline = time.time() + SHUTDOWN_GRACE_SECONDS * 0.3
    for role in order:
        if role.process is None:
            continue
        try:
            role.process.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            role.process.kill()
            role.process.wait()
