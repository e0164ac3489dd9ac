"""Fixtures for integration tests: real Reverb servers in their own processes on 127.0.0.1.

Servers are started with subprocess (exec of ``python -c SERVER_SCRIPT``, which calls `start_server`), never fork:
gRPC and JAX are not fork-safe. Every wait here is bounded; teardown sends SIGTERM and kills only the processes these
fixtures started.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import portpicker
import pytest

from bench.replay_overhead import SERVER_SCRIPT  # one server script for the benches and the tests
from replay import reverb_backend
from replay.schema import WindowSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 120.0
"""Generous: importing TensorFlow alone takes seconds on a busy 2-core machine."""


@dataclasses.dataclass
class ServerProcess:
    """A replay server running in a child process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, num_chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:] if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        """Block until the server answers `server_info`; fail with its log if it exits or takes too long."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"replay server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                reverb_backend.wait_for_server(self.address, timeout_s=1.0)
                return
            except reverb_backend.ReplayTimeout:
                if time.monotonic() > deadline:
                    pytest.fail(f"replay server not ready after {timeout_s} s:\n{self.log_tail()}")

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (checkpoint + clean stop), then SIGKILL if it does not exit in time; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


LaunchServer = Callable[..., ServerProcess]


def _launch(
    tables_config: reverb_backend.ReplayTablesConfig,
    window_spec: WindowSpec,
    log_dir: Path,
    checkpoint_dir: Path | None = None,
) -> ServerProcess:
    """Start a server process on a free port without waiting for it (start several, then `wait_ready` each)."""
    port = portpicker.pick_unused_port()
    log_path = log_dir / f"reverb_server_{port}.log"
    args = {"tables": dataclasses.asdict(tables_config), "window_spec": dataclasses.asdict(window_spec), "port": port,
            "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir)}
    command = [sys.executable, "-c", SERVER_SCRIPT, json.dumps(args)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "wb") as log:  # the child keeps its own descriptor; a file never fills like a pipe
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return ServerProcess(process=process, port=port, log_path=log_path)


@pytest.fixture
def launch_server(tmp_path: Path) -> Iterator[LaunchServer]:
    """Factory: ``launch_server(tables_config, window_spec, checkpoint_dir=None)``.

    Returns a started `ServerProcess` that may not answer yet: call ``wait_ready()``. All are terminated at
    teardown.
    """
    started: list[ServerProcess] = []

    def launch(tables_config, window_spec, checkpoint_dir=None) -> ServerProcess:
        server = _launch(tables_config, window_spec, tmp_path, checkpoint_dir)
        started.append(server)
        return server

    yield launch
    for server in started:  # signal all first: each takes ~2 s to exit (TensorFlow teardown)
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in started:
        server.terminate()


SHARED_WINDOW_SPEC = WindowSpec(window_length=1000, obs_dim=31, action_dim=8)
"""Windows of the session server: T=1000 and Humanoid-sized obs, so that the memory test moves tens of MB."""

SHARED_TABLES = reverb_backend.ReplayTablesConfig(
    learners=(
        # Round trip: two learner tables fed by one writer, no ratio limit.
        reverb_backend.LearnerTableConfig("rt_a", samples_per_insert=None, min_size_to_sample_windows=1),
        reverb_backend.LearnerTableConfig("rt_b", samples_per_insert=None, min_size_to_sample_windows=1),
        # Sampling limit: offset = 1 * 2 = 2, allowed error range [0, 4].
        reverb_backend.LearnerTableConfig("ratio", samples_per_insert=1.0, min_size_to_sample_windows=2,
                                          error_buffer_samples=2.0),
        # Insert limit: offset = 1 * 1 = 1, allowed error range [-1, 3].
        reverb_backend.LearnerTableConfig("insert_block", samples_per_insert=1.0, min_size_to_sample_windows=1,
                                          error_buffer_samples=2.0),
        # Same limiter with blocks_inserts=False: allowed error [-1, +inf), only sampling is limited.
        reverb_backend.LearnerTableConfig("sample_only_limit", samples_per_insert=1.0, min_size_to_sample_windows=1,
                                          error_buffer_samples=2.0, blocks_inserts=False),
        # Memory sharing: the same volume written into one table, then into three.
        *(reverb_backend.LearnerTableConfig(name, samples_per_insert=None, min_size_to_sample_windows=1)
          for name in ("mem_1", "mem_3a", "mem_3b", "mem_3c")),
    ),
    max_size_windows=1000,
    param_roles=("collector", "learner_d4", "never_published"),
)
"""Tables of the session server; each test uses its own tables so tests do not interfere."""


@pytest.fixture(scope="session")
def replay_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server process for the functional tests of the session."""
    server = _launch(SHARED_TABLES, SHARED_WINDOW_SPEC, tmp_path_factory.mktemp("reverb_server"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


def network_params(seed: int) -> dict:
    """A small params pytree (nested dicts and a list; float and int leaves) that differs with `seed`."""
    rng = np.random.default_rng(seed)
    return {
        "actor": {"Dense_0": {"kernel": rng.standard_normal((7, 16), dtype=np.float32),
                              "bias": np.zeros(16, np.float32)},
                  "log_std_scale": np.float32(seed)},
        "critic": [rng.standard_normal((16, 4), dtype=np.float32), np.arange(3, dtype=np.int32) + seed],
    }
