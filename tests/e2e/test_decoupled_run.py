"""`depthrl run` through the real launcher: real Reverb server, real actor/learner/evaluator processes.

Small form of the runtime's evidence: every learner's grad steps advance to their target, actors see several param
versions, policy lag is logged, each learner's measured update-to-data ratio is within 10% of its setting, and every
process exits (after completion, and within seconds after SIGTERM, with no orphans).
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

REPO = Path(__file__).resolve().parents[2]

SMALL = [
    "--env", "point_u_maze", "--num-envs", "16", "--batch-size", "64", "--prefill-steps-per-env", "100",
    "--width", "32", "--num-eval-envs", "8", "--param-publish-every-grad-steps", "4", "--quiet",
    "--rpc-timeout-seconds", "20", "--checkpoint-every-seconds", "20",
]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["JAX_PLATFORMS"] = "cpu"
    return e


def rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def children_of_run(run_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(run_dir) in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_run_collector_and_two_passive_learners(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "experiments.cli", "run", "--run-dir", str(run_dir), "--collector-depth", "8",
            "--learner-depths", "8,4", "--actors", "2", "--env-steps", "16000", "--eval-every-env-steps", "4000",
            "--log", "jsonl,tensorboard", *SMALL]
    proc = subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert children_of_run(run_dir) == []

    config = json.loads((run_dir / "config.json").read_text())
    assert config["kind"] == "run"
    utd_setting = config["config"]["schedule"]["sgd_steps_per_env_step"]
    metrics = run_dir / "metrics"
    for name in ("collector", "learner_d8", "learner_d4"):
        learner_rows = rows(metrics / f"{name}.jsonl")
        grad = [r["grad_steps"] for r in learner_rows]
        assert grad == sorted(grad) and grad[-1] > grad[0] > 0, name
        train_rows = learner_rows[:-1]  # the last row is the end-of-run summary (final update-to-data)
        assert train_rows and all(f"{name}/policy_lag" in r for r in train_rows)
        assert all(r[f"{name}/critic_loss"] is not None for r in train_rows)
        # measured update-to-data at the end of the run vs the setting (SGD steps per env step after prefill)
        assert abs(learner_rows[-1][f"{name}/update_to_data"] / utd_setting - 1) < 0.10, (name, learner_rows[-1])
        evals = rows(metrics / f"eval_{name}.jsonl")
        assert evals and all(0 <= r[f"eval_{name}/time_at_goal"] <= 100 for r in evals)
        assert evals[-1]["grad_steps"] == grad[-1]  # the final params were evaluated
    versions = set()
    for actor in (0, 1):
        actor_rows = rows(metrics / f"actor_{actor}.jsonl")
        assert actor_rows[-1]["env_steps"] == 8000
        versions |= {r["param_version"] for r in actor_rows}
        assert len({r["param_version"] for r in actor_rows}) >= 2  # each actor picks up new params
    assert len(versions) >= 5, versions  # the actors together act with at least 5 collector versions
    assert (run_dir / "replay_checkpoint").exists()
    assert list((run_dir / "checkpoints").iterdir())
    for log in ("replay", "learner_collector", "actor_0", "eval_learner_d4"):
        assert (run_dir / "logs" / f"{log}.log").stat().st_size > 0
    # The physics libraries' start-up noise is silenced at its source in every real role process.
    for log in (run_dir / "logs").glob("*.log"):
        text = log.read_text()
        assert "Failed to import warp" not in text and "not actively being maintained" not in text, log.name
    assert "Failed to import warp" not in proc.stderr + proc.stdout
    # TensorBoard: every role's event files hold exactly its JSONL rows' scalars, learners against grad steps,
    # evaluators and actors against env steps.
    for role, step in (("learner_d4", "grad_steps"), ("eval_collector", "env_steps"), ("actor_1", "env_steps")):
        assert tensorboard_scalars(run_dir / "tb" / role) == jsonl_scalars(metrics / f"{role}.jsonl", role, step), role

    # The topology probe of a decoupled run, from the learners' final checkpoints; the report tabulates it.
    probe = subprocess.run([sys.executable, "-m", "experiments.cli", "probe", str(run_dir.parent)], cwd=REPO,
                           env=env(), capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    for name in ("collector", "learner_d8", "learner_d4"):
        (row,) = rows(metrics / f"probe_{name}.jsonl")
        assert row["role"] == f"eval_{name}" and row["grad_steps"] == rows(metrics / f"{name}.jsonl")[-1]["grad_steps"]
        assert 0.0 <= row[f"eval_{name}/topo_through_wall_fraction"] <= 1.0
        assert (run_dir / "probes" / f"{name}.npz").is_file()
        assert f"{name} at {row['grad_steps']} grad steps: through-wall fraction" in probe.stdout
    report = subprocess.run([sys.executable, "-m", "experiments.cli", "report", str(run_dir)], cwd=REPO, env=env(),
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "### Final topo through wall fraction" in (run_dir / "report.md").read_text()


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def jsonl_scalars(path: Path, role: str, step: str) -> dict[str, list[tuple[int, float]]]:
    import numpy as np

    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows(path):
        for key, value in row.items():
            if key.startswith(f"{role}/") and value is not None:
                out.setdefault(key, []).append((row[step], float(np.float32(value))))  # event files hold float32
    return out


def test_sigterm_stops_every_process_within_seconds_and_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "experiments.cli", "run", "--run-dir", str(run_dir), "--collector-depth", "4",
            "--learner-depths", "4", "--actors", "1", "--env-steps", "1000000", "--eval-every-env-steps", "4000",
            *SMALL]
    launcher = subprocess.Popen(args, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        learner_file = run_dir / "metrics" / "learner_d4.jsonl"
        while time.time() < deadline:
            if learner_file.exists() and len(rows(learner_file)) >= 3:
                break
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            time.sleep(1)
        else:
            pytest.fail("learner never logged")
        assert len(children_of_run(run_dir)) >= 5
        stopped_at = time.time()
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=30)
        elapsed = time.time() - stopped_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, stderr[-3000:]
    assert elapsed < 15, elapsed
    time.sleep(0.5)
    assert children_of_run(run_dir) == []
    grad_before = rows(learner_file)[-1]["grad_steps"]

    # resume continues from the checkpoints: grad steps never restart from zero
    resumed = subprocess.Popen([sys.executable, "-m", "experiments.cli", "resume", str(run_dir)], cwd=REPO, env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            after = [r["grad_steps"] for r in rows(learner_file)]
            if any(g > grad_before for g in after):
                break
            assert resumed.poll() is None, resumed.communicate()[1][-3000:]
            time.sleep(1)
        else:
            pytest.fail("resumed learner never logged")
        n_before = after.index(next(g for g in after if g > grad_before))
        assert min(after[n_before:]) >= grad_before  # continues from the checkpoint, never from zero
        resumed.send_signal(signal.SIGTERM)
        resumed.communicate(timeout=30)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert children_of_run(run_dir) == []


def test_shared_batch_mode_trains_every_learner_on_identical_minibatches(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "experiments.cli", "run", "--run-dir", str(run_dir), "--collector-depth", "4",
            "--learner-depths", "8", "--actors", "1", "--env-steps", "8000", "--eval-every-env-steps", "4000",
            "--sampling-mode", "shared-batch", *SMALL]
    # Memory diagnostics on (experiments.memdiag): every role process writes its rows next to the metrics; the heap
    # trimmer (experiments.allocator) runs every second instead of every minute, so that its calls show in them.
    diag_env = {**env(), "DEPTHRL_MEMDIAG_SECONDS": "2", "DEPTHRL_MEMDIAG_WARMUP_SECONDS": "0",
                "DEPTHRL_MALLOC_TRIM_SECONDS": "1"}
    proc = subprocess.run(args, cwd=REPO, env=diag_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    logs = sorted(p.name for p in (run_dir / "logs").iterdir())
    assert "learner_collector+learner_d8.log" in logs  # one learner process hosts both
    collector = rows(run_dir / "metrics" / "collector.jsonl")[:-1]
    passive = rows(run_dir / "metrics" / "learner_d8.jsonl")[:-1]
    # same batches at the same moments: identical grad-step and env-step columns, row for row
    assert [r["grad_steps"] for r in collector] == [r["grad_steps"] for r in passive]
    assert [r["env_steps"] for r in collector] == [r["env_steps"] for r in passive]
    assert collector[-1]["collector/critic_loss"] != passive[-1]["learner_d8/critic_loss"]  # different networks
    assert children_of_run(run_dir) == []
    diagnostics = {p.name.rsplit("-", 1)[0]: rows(p) for p in (run_dir / "diagnostics").glob("*.jsonl")}
    assert set(diagnostics) == {"replay", "learner-collector+learner_d8", "actor-0", "evaluator-collector",
                                "evaluator-learner_d8"}, sorted(diagnostics)
    learner_diag = diagnostics["learner-collector+learner_d8"]
    assert len(learner_diag) >= 2 and "types_grown" in learner_diag[-1]
    assert learner_diag[-1]["jax_live_arrays"] > 0 and learner_diag[-1]["heap_in_use_mib"] > 0
    assert {r["malloc_arena_max"] for d in diagnostics.values() for r in d} == {"2"}  # allocator.ALLOCATOR_ENV
    assert all(d[-1]["heap_trims"] >= 2 and d[-1]["heap_trim_ms"] > 0 for d in diagnostics.values())
    # Resident memory splits into anonymous and file pages (read a moment apart from the total: 5% slack).
    assert all(abs(d[-1]["rss_anon_mib"] + d[-1]["rss_file_mib"] - d[-1]["rss_mib"]) < 0.05 * d[-1]["rss_mib"]
               for d in diagnostics.values())
