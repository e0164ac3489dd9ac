"""Smoke tests of the performance benches (bench/*.py).

The cheap part always runs: every bench module imports, its `--quick` arguments parse, and the helpers that decide
what is timed and how it is attributed behave as documented (hand-computed expectations).

Running the benches themselves in ``--quick`` mode takes far more than the 20 s budget of a smoke test on the 2-core
development machine (measured under load: replay_overhead 28-45 s, actor_overhead ~55 s, replay_memory ~2 min,
end_to_end ~2 min, window_write_cost ~30 s, ray_overhead ~4.5 min: five runs, three of them on Ray; each starts
a replay server and compiles a learner or a rollout), so that test is opt-in:
``DEPTHRL_BENCH_SMOKE=1 pytest -m slow tests/integration/test_bench_smoke.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import (actor_overhead, end_to_end, gpu_learner_step, ray_overhead, replay_memory, replay_overhead,
                   window_write_cost)

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHES = ("replay_overhead", "actor_overhead", "replay_memory", "end_to_end", "gpu_learner_step",
           "window_write_cost", "ray_overhead")
QUICK_TIMEOUT_SECONDS = {"ray_overhead": 900}
"""Per bench, where 600 s is not enough for its --quick mode on 2 busy cores."""


@pytest.mark.parametrize("module", [replay_overhead, actor_overhead, replay_memory, end_to_end, gpu_learner_step,
                                    window_write_cost, ray_overhead])
def test_quick_arguments_parse(module):
    args = module.parse_args(["--quick"])
    assert args.quick


def test_abba_order_alternates_pairs():
    assert replay_overhead.abba_order("a", "b", 3) == ("a", "b", "b", "a", "a", "b")


def test_phased_feed_serves_warmup_then_phases_and_records_sources():
    calls = []
    feed = replay_overhead.PhasedFeed({"x": lambda: calls.append("x") or "X", "y": lambda: calls.append("y") or "Y"},
                                      order=("x", "y", "y", "x"), phase_updates=2, warmup=1)
    served = [feed.sample() for _ in range(9)]
    # warm-up (x), then phases x x | y y | y y | x x
    assert served == ["X", "X", "X", "Y", "Y", "Y", "Y", "X", "X"]
    assert feed.served == calls
    assert [feed.source_of(i) for i in (0, 1, 3, 5, 8)] == [("x", -1), ("x", 0), ("y", 1), ("y", 2), ("x", 3)]


def test_synthetic_windows_have_the_schema_and_a_goal_constant_per_episode():
    windows = replay_overhead.synthetic_windows(window_length=50, obs_dim=6, action_dim=3, num_windows=8,
                                                episode_steps=30, seed=0, goal_dim=2)
    assert windows.obs.shape == (8, 50, 6) and windows.obs.dtype == np.float32
    assert windows.action.shape == (8, 50, 3) and windows.traj_id.shape == (8, 50)
    assert windows.actor_id.shape == windows.param_version.shape == windows.env_steps.shape == (8,)
    for w in range(8):
        for episode in np.unique(windows.traj_id[w]):
            goals = windows.obs[w, windows.traj_id[w] == episode, 4:]
            assert np.all(goals == goals[0])
        # T = 50 > episode of 30 steps: every window crosses at least one episode boundary
        assert len(np.unique(windows.traj_id[w])) >= 2


def test_memory_feed_samples_time_major_windows_that_were_stored():
    windows = replay_overhead.synthetic_windows(20, 4, 2, 10, 20, seed=1)
    feed = replay_overhead.MemoryWindows(windows, windows_per_sample=5, seed=0)
    sample = feed.sample()
    assert sample.obs.shape == (20, 5, 4) and sample.traj_id.shape == (20, 5) and sample.env_steps.shape == (5,)
    for column in range(5):
        source = int(sample.env_steps[column]) // 20 - 1  # env_steps = (index + 1) * T
        np.testing.assert_array_equal(sample.obs[:, column], windows.obs[source])


def test_bench_config_lands_on_the_requested_updates():
    from experiments.compose import RunParts

    config = replay_overhead.bench_config("point_u_maze", depth=4, batch_size=256, window_steps=100,
                                          sgd_steps_per_update=4, num_updates=13, seed=0)
    plan = RunParts.for_run(config).plan
    assert (plan.sgd_steps_per_update, plan.target_grad_steps) == (4, 52)
    assert plan.windows_per_update == 11  # ceil(4 * 256 / 100)


def test_raw_bytes_per_step_counts_provenance_per_window():
    from replay.schema import WindowSpec

    # obs 4 + action 2 float32 = 24 B, traj_id 4 B, provenance int32 + 2 int64 = 20 B per window of 100 steps
    assert replay_memory.raw_bytes_per_step(WindowSpec(100, 4, 2)) == pytest.approx(28.2)


def test_actor_transport_alternates_by_phase_and_times_all_but_the_first_iteration_of_each():
    # Only the schedule is under test: skip __init__, which attaches to live processes.
    transport = actor_overhead.AlternatingTransport.__new__(actor_overhead.AlternatingTransport)
    transport.order, transport.warmup, transport.phase_iterations = ("reverb", "local", "local", "reverb"), 2, 3
    feeds = [transport.feed_of(i) for i in range(14)]
    assert feeds == ["reverb"] * 2 + ["reverb"] * 3 + ["local"] * 6 + ["reverb"] * 3
    assert [i for i in range(14) if transport.timed(i)] == [3, 4, 6, 7, 9, 10, 12, 13]


def test_actor_transport_uses_reverb_only_in_its_phases_and_marks_once_per_iteration():
    import threading

    from replay.protocols import ParamStore, Versioned, WindowWriter

    calls = []

    class Writer:
        def write(self, window):
            calls.append(("write", window))

    class Store:
        def latest_version(self, role, timeout_s):
            calls.append(("latest_version", role))
            return Versioned(None, 0, "fp", {})

        def latest(self, role, template, expected_fingerprint, timeout_s):
            calls.append(("latest", role))
            return Versioned("params", 0, "fp", {})

    stop = threading.Event()
    # The transport's own process stands in for the server: only CPU times are read from it.
    transport = actor_overhead.AlternatingTransport(Writer(), Store(), ("reverb", "local"), warmup=1,
                                                    server_pid=os.getpid(), stop_event=stop, phase_iterations=2)
    assert isinstance(transport, WindowWriter) and isinstance(transport, ParamStore)
    # What run_actor does: the first fetch (version poll + params), then per iteration one write and one poll.
    transport.latest_version("collector", 1.0)
    assert transport.latest("collector", None, "fp", 1.0).params == "params"
    heads = []
    for i in range(5):
        transport.write(i)
        heads.append(transport.latest_version("collector", 1.0).version)
    assert heads == [0] * 5 and stop.is_set()  # local polls answer the known version: nothing new
    assert calls == [("latest_version", "collector"), ("latest", "collector"),
                     *[c for i in (0, 1, 2) for c in (("write", i), ("latest_version", "collector"))]]
    assert len(transport.marks) == 1 + 5

def test_end_to_end_role_names_from_command_lines():
    base = [sys.executable, "-m", "experiments.cli"]
    assert end_to_end.role_of(base + ["learner", "--run-dir", "d", "--learners", "collector"]) == "learner:collector"
    assert end_to_end.role_of(base + ["actor", "--run-dir", "d", "--actor-id", "1"]) == "actor_1"
    assert end_to_end.role_of(base + ["evaluator", "--learner", "learner_d4"]) == "eval_learner_d4"
    assert end_to_end.role_of(base + ["replay", "--port", "1"]) == "replay"
    assert end_to_end.role_of(["bash"]) == "other"


def test_ray_overhead_reads_start_lines_and_names_ray_processes(tmp_path):
    log = tmp_path / "learner_collector.log"
    log.write_text("\n=== start 2026-01-02 03:04:05 pid 123 on node 127.0.0.1 (abc123) CUDA_VISIBLE_DEVICES='': python -m "
                   "experiments.cli learner\nsome output\n=== start 2026-01-02 03:05:00 pid 456 on node 127.0.0.1 "
                   "(def456) CUDA_VISIBLE_DEVICES='': python\n")
    assert ray_overhead.ray_starts(log) == [(123, "127.0.0.1", "abc123"), (456, "127.0.0.1", "def456")]
    # The local launcher's start lines count as starts too (no pid or node in them).
    log.write_text(log.read_text() + "=== start 2026-01-02 03:06:00 restarts=1: python -m experiments.cli learner\n")
    assert ray_overhead.start_count(log) == 3
    assert ray_overhead.ray_kind(["ray::RoleHost.wait"]) == "role host workers"
    assert ray_overhead.ray_kind(["ray::IDLE"]) == "idle workers"
    assert ray_overhead.ray_kind(["/venv/lib/ray/core/src/ray/raylet/raylet", "--node_ip_address=127.0.0.1"]) == "raylet"
    assert ray_overhead.ray_kind(["/venv/bin/python", "-u", "/venv/lib/ray/dashboard/agent.py"]) == "dashboard_agent"
    assert ray_overhead.is_role([sys.executable, "-m", "experiments.cli", "actor", "--actor-id", "0"])
    # 6 roles on 2 cores: each asks for a third of a CPU, rounded down, so all fit at once.
    assert ray_overhead.role_share(2, 6) == 0.33 and ray_overhead.role_share(2, 6) * 6 <= 2


def test_ray_overhead_steady_window_is_the_stretch_end_to_end_measures():
    samples = [(float(t), 0.0, g, 0) for t, g in enumerate([0, 0, 10, 30, 50, 80, 95, 100])]
    assert ray_overhead.steady_window(samples, 0.3, 0.9) == (3.0, 5.0)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DEPTHRL_BENCH_SMOKE") != "1",
                    reason="minutes on 2 cores; opt in with DEPTHRL_BENCH_SMOKE=1")
@pytest.mark.parametrize("bench", BENCHES)
def test_bench_quick_mode_runs(bench, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, f"bench/{bench}.py", "--quick", "--json-out", str(out)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=QUICK_TIMEOUT_SECONDS.get(bench, 600))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists() and out.stat().st_size > 0
