"""Helpers for end-to-end tests: run the real `depthrl` CLI in a subprocess and read what it wrote.

The CLI runs as `python -m experiments.cli` (works from a checkout and from an installed venv alike) with
`PYTHONPATH=<repo root>` and `JAX_PLATFORMS=cpu`. Every process is started in its own session so that a timeout
kills the whole process group it started (the CLI itself spawns `git`), never anything else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# The tiny trainer config of the default suite: 16 slots x 20 steps per iteration, 5 prefill iterations (1,600 env
# steps), K = round(0.0252 x 320) = 8 SGD steps per iteration. Every e2e run uses these shapes (only budgets differ),
# so the compiled programs are shared through the session's compilation cache.
TINY_NUM_ENVS = 16
TINY_UNROLL = 20
TINY_PREFILL_ENV_STEPS = 1600
TINY_SGD_STEPS_PER_ITERATION = 8
TINY_ARGS = [
    "--env", "point_u_maze",
    "--num-envs", str(TINY_NUM_ENVS),
    "--unroll-length", str(TINY_UNROLL),
    "--batch-size", "64",
    "--prefill-steps-per-env", "100",
    "--num-eval-envs", "8",
    "--width", "32",
]


def cli_env(compilation_cache_dir: Path) -> dict[str, str]:
    """Environment of a CLI subprocess. The persistent compilation cache is what keeps the default suite short: the
    first run compiles (~25 s on 2 busy cores), later runs with the same shapes load the programs (~5 s)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["JAX_COMPILATION_CACHE_DIR"] = str(compilation_cache_dir)
    # Cache every program, however quick to compile: a bad-input test relies on "nothing compiled -> cache empty".
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "experiments.cli", *args]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group this test started (the CLI was started with start_new_session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="session")
def compilation_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_compilation_cache")


@pytest.fixture(scope="session")
def run_cli(compilation_cache_dir) -> RunCli:
    """`run_cli(args, timeout, cwd=REPO_ROOT, cache_dir=None)` -> (returncode, stdout, stderr).

    On timeout the process group is killed and the test fails with the output so far. `cache_dir` replaces the
    session's compilation cache (a test that must see no compilation passes a fresh one)."""

    def run(args: list[str], timeout: float, cwd: Path = REPO_ROOT, cache_dir: Optional[Path] = None):
        proc = subprocess.Popen(
            cli_command(args), cwd=cwd, env=cli_env(cache_dir or compilation_cache_dir),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            stdout, stderr = proc.communicate()
            pytest.fail(f"`depthrl {' '.join(args)}` ran past {timeout} s and was killed.\n"
                        f"stdout tail:\n{stdout[-2000:]}\nstderr tail:\n{stderr[-4000:]}")
        return proc.returncode, stdout, stderr

    return run


@pytest.fixture
def spawn_cli(compilation_cache_dir):
    """`spawn_cli(args, stdout_path, stderr_path)` -> Popen, for tests that signal a running trainer. Output goes to
    files (a pipe nobody reads could fill up and stall the child). Whatever is still running at teardown is killed."""
    procs: list[subprocess.Popen] = []
    files = []

    def spawn(args: list[str], stdout_path: Path, stderr_path: Path) -> subprocess.Popen:
        out, err = open(stdout_path, "w"), open(stderr_path, "w")
        files.extend([out, err])
        proc = subprocess.Popen(
            cli_command(args), cwd=REPO_ROOT, env=cli_env(compilation_cache_dir),
            stdout=out, stderr=err, text=True, start_new_session=True,
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        kill_group(proc)
    for f in files:
        f.close()


def read_rows(path: Path) -> list[dict]:
    """Every line of a JSONL metrics file, parsed; an unparsable line fails the test."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            pytest.fail(f"{path}:{number} is not JSON ({e}): {line[:200]!r}")
    return rows


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Env-step numbers of the orbax checkpoints in run_dir, ascending (orbax names each step dir by its number)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def wait_for(predicate: Callable[[], bool], timeout: float, poll_seconds: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; returns whether it held. (A wait for an event, not a
    sleep standing in for one.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_seconds)
    return predicate()
