"""Soak: a decoupled point-maze run for an hour; replay-server and learner memory must stay flat.

Optional and marked `soak` (`make test` skips it): ``pytest -m soak tests/e2e/test_soak.py``. The length and warm-up
are set by ``DEPTHRL_SOAK_SECONDS`` (default 3600) and ``DEPTHRL_SOAK_WARMUP_SECONDS`` (default 600); the RSS samples
are written as JSON to ``DEPTHRL_SOAK_OUT`` when set. After the warm-up (the replay tables are full by then: 16 slots x
2,000 steps), every role's RSS must stay within 10% of its post-warm-up minimum, and SIGTERM must still end the run
cleanly with no process left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import REPO_ROOT, cli_env, kill_group

pytestmark = pytest.mark.soak

SOAK_SECONDS = float(os.environ.get("DEPTHRL_SOAK_SECONDS", 3600))
WARMUP_SECONDS = float(os.environ.get("DEPTHRL_SOAK_WARMUP_SECONDS", 600))
SAMPLE_EVERY_SECONDS = 30.0
RSS_TOLERANCE = 0.10

ARGS = [
    "run", "--env", "point_u_maze", "--num-envs", "16", "--unroll-length", "50", "--batch-size", "128",
    "--prefill-steps-per-env", "200", "--buffer-capacity-steps", "2000", "--width", "64", "--num-eval-envs", "16",
    "--eval-every-env-steps", "50000", "--collector-depth", "8", "--learner-depths", "8,4", "--actors", "2",
    "--env-steps", "1000000000", "--checkpoint-every-seconds", "120", "--replay-checkpoint-every-seconds", "300",
]


def _role_processes(run_dir: Path) -> dict[str, psutil.Process]:
    """Role name -> process, for the replay server and the learner processes of the run in `run_dir`."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if str(run_dir) not in " ".join(cmd) or "experiments.cli" not in cmd:
            continue
        command = cmd[cmd.index("experiments.cli") + 1]
        if command == "replay":
            found["replay"] = proc
        elif command == "learner":
            found["learner:" + cmd[cmd.index("--learners") + 1]] = proc
    return found


@pytest.mark.timeout(SOAK_SECONDS + 600)  # the suite-wide 900 s limit would end the soak
def test_memory_stays_flat_over_a_long_decoupled_run(tmp_path, compilation_cache_dir):
    run_dir = tmp_path / "soak"
    log = open(tmp_path / "launcher.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", *ARGS, "--run-dir", str(run_dir)],
                            cwd=REPO_ROOT, env=cli_env(compilation_cache_dir), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    samples: list[dict] = []
    start = time.time()
    try:
        while time.time() - start < SOAK_SECONDS:
            time.sleep(SAMPLE_EVERY_SECONDS)
            assert proc.poll() is None, f"the run ended early ({proc.returncode}); see {tmp_path / 'launcher.log'}"
            row = {"t": round(time.time() - start, 1)}
            for role, p in _role_processes(run_dir).items():
                try:
                    row[role] = p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            samples.append(row)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 130
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"processes left after SIGTERM: {[p.pid for p in alive]}"
    finally:
        kill_group(proc)
        log.close()
        if os.environ.get("DEPTHRL_SOAK_OUT"):
            Path(os.environ["DEPTHRL_SOAK_OUT"]).write_text(json.dumps(samples, indent=1))

    after = [s for s in samples if s["t"] >= WARMUP_SECONDS]
    assert len(after) >= 3, "the soak is too short for its warm-up"
    roles = sorted({k for s in after for k in s} - {"t"})
    assert "replay" in roles and any(r.startswith("learner:") for r in roles), roles
    for role in roles:
        rss = [s[role] for s in after if role in s]
        growth = max(rss) / min(rss) - 1
        assert growth <= RSS_TOLERANCE, (
            f"{role}: RSS grew {growth:.1%} after warm-up ({min(rss) / 2**20:.0f} -> {max(rss) / 2**20:.0f} MiB)")
    # The run kept making progress all along (a stalled run would also keep memory flat).
    rows = [json.loads(line) for line in (run_dir / "metrics" / "collector.jsonl").read_text().splitlines()
            if line.strip()]
    assert max(r["grad_steps"] for r in rows) > 0
    assert max(r["wall_time"] for r in rows) > SOAK_SECONDS * 0.8
