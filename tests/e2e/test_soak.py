"""Soak: a decoupled point-maze run for hours; the memory of every process must stay flat.

Optional and marked `soak` (`make test` skips it): ``make soak`` or ``pytest -m soak tests/e2e/test_soak.py``; run it
on an otherwise idle machine. The warm-up and the whole length are set by ``DEPTHRL_SOAK_WARMUP_SECONDS`` (default
1800) and ``DEPTHRL_SOAK_SECONDS`` (default: the warm-up and 2 hours, 9000). Every process of the run (replay server,
learners, actors, evaluators) is sampled every 30 s; after the warm-up (the replay tables are full long before; in one
soak a learner's RSS still rose by 8 MiB between minutes 15 and 35), each one's least-squares RSS slope
(through 10-minute block means: `block_mean_slope_mib_per_min`) must be below ``DEPTHRL_SOAK_MAX_SLOPE_MIB_PER_MIN``
(default 0.05, i.e. 3 MiB an hour, 216 MiB in 3 days), and SIGTERM must still end the run cleanly with no process left
behind.

The slope's standard error goes to ``slopes.json`` next to it: over 2 hours a learner's is ~0.03 MiB/min (its block
means wander by a few MiB), so a learner within ~0.03 of the goal may land on either side of it from run to run.

With ``DEPTHRL_SOAK_OUT=DIR`` the samples (``samples.json``), the slopes (``slopes.json``) and every process's
`experiments.memdiag` rows (``diagnostics/``: RSS split into anonymous and file pages, glibc heap in use and free,
Python objects, JAX live arrays) are kept in DIR.

No 10-minute variant runs in `make test`: the first 10-15 minutes of every process hold a warm-up growth of several
MiB/min (code paths paged in, caches, arenas reaching their size) that a short window cannot tell from a leak.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.e2e.conftest import REPO_ROOT, cli_env, kill_group

pytestmark = pytest.mark.soak

WARMUP_SECONDS = float(os.environ.get("DEPTHRL_SOAK_WARMUP_SECONDS", 1800))
SOAK_SECONDS = float(os.environ.get("DEPTHRL_SOAK_SECONDS", WARMUP_SECONDS + 7200))
MAX_SLOPE_MIB_PER_MIN = float(os.environ.get("DEPTHRL_SOAK_MAX_SLOPE_MIB_PER_MIN", 0.05))
SAMPLE_EVERY_SECONDS = 30.0

ARGS = [
    "run", "--env", "point_u_maze", "--num-envs", "16", "--unroll-length", "50", "--batch-size", "128",
    "--prefill-steps-per-env", "200", "--buffer-capacity-steps", "2000", "--width", "64", "--num-eval-envs", "16",
    "--eval-every-env-steps", "50000", "--collector-depth", "8", "--learner-depths", "8,4", "--actors", "2",
    "--env-steps", "1000000000", "--checkpoint-every-seconds", "120", "--replay-checkpoint-every-seconds", "300",
]


def _role_processes(run_dir: Path) -> dict[str, psutil.Process]:
    """Process name -> process, for every role process of the run in `run_dir` (e.g. "learner:collector",
    "actor:0", "evaluator:learner_d4", "replay")."""
    found = {}
    flags = {"learner": "--learners", "actor": "--actor-id", "evaluator": "--learner"}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if str(run_dir) not in " ".join(cmd) or "experiments.cli" not in cmd:
            continue
        command = cmd[cmd.index("experiments.cli") + 1]
        if command == "replay":
            found["replay"] = proc
        elif command in flags:
            found[f"{command}:{cmd[cmd.index(flags[command]) + 1]}"] = proc
    return found


def rss_slope_mib_per_min(t_seconds: list[float], rss_bytes: list[float]) -> float:
    """Least-squares slope of RSS over time, in MiB per minute."""
    t = np.asarray(t_seconds, float) / 60
    return float(np.polyfit(t, np.asarray(rss_bytes, float) / 2**20, 1)[0])


def block_mean_slope_mib_per_min(t_seconds: list[float], rss_bytes: list[float],
                                 block_seconds: float = 600) -> tuple[float, float]:
    """Least-squares slope of RSS averaged over consecutive `block_seconds` blocks, and its standard error, in MiB per
    minute. Every role trims its heap once a minute (`experiments.allocator`), so RSS is a sawtooth of ~10 MiB whose
    phase drifts against the 30-s sampling; block means remove it, where a slope through the raw samples can alias it
    into a trend. The error says what the window can resolve: over 2 hours a learner's is ~0.03 MiB/min, because its
    block means wander by a few MiB with the arrays alive at the time."""
    t, rss = np.asarray(t_seconds, float), np.asarray(rss_bytes, float)
    block = ((t - t[0]) // block_seconds).astype(int)
    full = [b for b in np.unique(block) if (block == b).sum() >= 0.8 * block_seconds / SAMPLE_EVERY_SECONDS]
    minutes = np.array([t[block == b].mean() for b in full]) / 60
    mib = np.array([rss[block == b].mean() for b in full]) / 2**20
    # A short trial soak: with under 2 blocks the raw samples give the slope; with under 4 there is no error.
    if len(full) < 2:
        return rss_slope_mib_per_min(t_seconds, rss_bytes), float("nan")
    if len(full) < 4:
        return float(np.polyfit(minutes, mib, 1)[0]), float("nan")
    (slope, _), cov = np.polyfit(minutes, mib, 1, cov=True)
    return float(slope), float(np.sqrt(cov[0, 0]))


@pytest.mark.timeout(SOAK_SECONDS + 600)  # the suite-wide 900 s limit would end the soak
def test_memory_stays_flat_over_a_long_decoupled_run(tmp_path, compilation_cache_dir):
    out = Path(os.environ.get("DEPTHRL_SOAK_OUT") or tmp_path / "out")
    out.mkdir(parents=True, exist_ok=True)
    run_dir = tmp_path / "soak"
    log = open(out / "launcher.log", "w")
    env = {**cli_env(compilation_cache_dir), "DEPTHRL_MEMDIAG_SECONDS": "120",
           "DEPTHRL_MEMDIAG_WARMUP_SECONDS": str(WARMUP_SECONDS)}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", *ARGS, "--run-dir", str(run_dir)],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    samples: list[dict] = []
    pids: dict[str, set[int]] = {}
    start = time.time()
    try:
        while time.time() - start < SOAK_SECONDS:
            time.sleep(SAMPLE_EVERY_SECONDS)
            assert proc.poll() is None, f"the run ended early ({proc.returncode}); see {out / 'launcher.log'}"
            row: dict = {"t": round(time.time() - start, 1)}
            for name, p in _role_processes(run_dir).items():
                try:
                    memory = p.memory_info()
                except psutil.NoSuchProcess:
                    continue
                row[name] = memory.rss
                row[name + ":file"] = memory.shared  # RssFile + RssShmem: mapped files, mostly library code
                pids.setdefault(name, set()).add(p.pid)
            samples.append(row)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 130
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"processes left after SIGTERM: {[p.pid for p in alive]}"
    finally:
        kill_group(proc)
        log.close()
        (out / "samples.json").write_text(json.dumps(samples))
        if (run_dir / "diagnostics").is_dir():
            shutil.copytree(run_dir / "diagnostics", out / "diagnostics", dirs_exist_ok=True)

    after = [s for s in samples if s["t"] >= WARMUP_SECONDS]
    assert len(after) >= 10, "the soak is too short for its warm-up"
    names = sorted({k for s in after for k in s} - {"t"} - {k for s in after for k in s if k.endswith(":file")})
    assert "replay" in names and {n.split(":")[0] for n in names} == {"replay", "learner", "actor", "evaluator"}, names
    restarted = {n: sorted(p) for n, p in pids.items() if len(p) > 1}
    assert not restarted, f"processes were restarted during the soak: {restarted}"
    slopes = {}
    for name in names:
        t = [s["t"] for s in after if name in s]
        rss = [s[name] for s in after if name in s]
        anon = [s[name] - s[name + ":file"] for s in after if name in s]
        half = len(t) // 2
        slope, error = block_mean_slope_mib_per_min(t, rss)
        slopes[name] = {"rss_mib_per_min": round(slope, 4), "rss_mib_per_min_stderr": round(error, 4),
                        "raw_rss_mib_per_min": round(rss_slope_mib_per_min(t, rss), 4),
                        "anon_mib_per_min": round(rss_slope_mib_per_min(t, anon), 4),
                        # Each half of the window on its own: a warm-up that ends shows in the first half only.
                        "rss_mib_per_min_halves": [round(rss_slope_mib_per_min(t[:half], rss[:half]), 4),
                                                   round(rss_slope_mib_per_min(t[half:], rss[half:]), 4)],
                        "rss_mib_first_last": [round(rss[0] / 2**20, 1), round(rss[-1] / 2**20, 1)],
                        "samples": len(t)}
    (out / "slopes.json").write_text(json.dumps(slopes, indent=1))
    too_fast = {n: s for n, s in slopes.items() if s["rss_mib_per_min"] >= MAX_SLOPE_MIB_PER_MIN}
    assert not too_fast, f"RSS slopes at or above {MAX_SLOPE_MIB_PER_MIN} MiB/min after warm-up: {too_fast}"
    # The run kept making progress all along (a stalled run would also keep memory flat).
    rows = [json.loads(line) for line in (run_dir / "metrics" / "collector.jsonl").read_text().splitlines()
            if line.strip()]
    assert max(r["grad_steps"] for r in rows) > 0
    assert max(r["wall_time"] for r in rows) > SOAK_SECONDS * 0.8
