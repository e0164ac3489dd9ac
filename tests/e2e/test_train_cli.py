"""`depthrl train` end to end, through real subprocesses: bad input fails fast and writes nothing; a tiny run writes
its config, parseable metrics and a checkpoint; SIGTERM stops a run resumably; --resume continues it; --overwrite
replaces a run dir; `depthrl envs` lists the envs.

Hand-computed schedule of the tiny config (conftest.TINY_ARGS): prefill = ceil(100 / 20) = 5 iterations of
16 x 20 = 320 env steps = 1,600 env steps; then each iteration adds 320 env steps and K = round(800 / (512 x 62) x 320)
= round(8.06) = 8 SGD steps, so after n training iterations env_steps = 1600 + 320 n and grad_steps = 8 n.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import time
from importlib import metadata
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    TINY_ARGS,
    TINY_NUM_ENVS,
    TINY_PREFILL_ENV_STEPS,
    TINY_SGD_STEPS_PER_ITERATION,
    TINY_UNROLL,
    checkpoint_steps,
    read_rows,
    wait_for,
)

STEPS_PER_ITERATION = TINY_NUM_ENVS * TINY_UNROLL  # 320
COMMON_KEYS = ("role", "wall_time", "env_steps", "grad_steps", "param_version")
BAD_INPUT_TIMEOUT_SECONDS = 20.0
"""Bad input must be refused before JAX compiles anything; a timeout here kills the process and fails the test."""


def expected_grad_steps(env_steps: int) -> int:
    return TINY_SGD_STEPS_PER_ITERATION * (env_steps - TINY_PREFILL_ENV_STEPS) // STEPS_PER_ITERATION


# --- bad input -----------------------------------------------------------------------------------------------------

# (id, args, substrings expected on stderr, what the run dir holds beforehand: None | "files" | "fake_run")
BAD_INPUT = [
    ("critic_depth_6", ["--critic-depth", "6"], ["collector.critic_depth must be a positive multiple of 4", "got 6"], None),
    ("actor_depth_10", ["--actor-depth", "10"], ["collector.actor_depth must be a positive multiple of 4", "got 10"], None),
    ("unknown_env", ["--env", "nope"], ["env: unknown env 'nope'", "known envs", "point_u_maze", "reacher"], None),
    ("unknown_eval_env", ["--eval-env", "nope"], ["eval_env: unknown env 'nope'", "point_u_maze_eval"], None),
    # Tried as a new user would: before the cross-field check it created the run dir, then died in flax (exit 1).
    ("eval_env_of_another_family", ["--eval-env", "ant"],
     ["eval_env 'ant' cannot evaluate a policy trained on env 'point_u_maze'", "family 'ant' instead of 'point'"], None),
    ("log_unknown_sink", ["--log", "jsonl,mlflow"], ["log: unknown sink 'mlflow'", "tensorboard", "wandb"], None),
    ("log_wandb_not_installed", ["--log", "jsonl,wandb"], ["wandb is not installed", "requirements-wandb.lock"],
     None),
    ("batch_larger_than_data", ["--batch-size", "100000"], ["batch_size (100000)", "data available"], None),
    ("num_envs_0", ["--num-envs", "0"], ["num_envs must be a positive integer, got 0"], None),
    ("unroll_length_negative", ["--unroll-length", "-1"], ["unroll_length must be a positive integer, got -1"], None),
    ("total_env_steps_0", ["--total-env-steps", "0"], ["total_env_steps must be a positive integer, got 0"], None),
    ("batch_size_0", ["--batch-size", "0"], ["batch_size must be a positive integer, got 0"], None),
    ("malformed_int", ["--num-envs", "abc"], ["--num-envs", "abc"], None),
    ("window_longer_than_prefill", ["--window-steps", "300"], ["window_steps (300)", "prefill_steps_per_env (200)"],
     None),
    ("existing_run_dir", TINY_ARGS, ["already exists", "--resume", "--overwrite"], "files"),
    ("resume_not_a_run_dir", ["--resume"], ["not a run directory", "config.json"], "files"),
    # On a real run dir: before the fix in cli.py, --overwrite was silently dropped and the run resumed.
    ("resume_and_overwrite", ["--resume", "--overwrite"], ["--resume and --overwrite exclude each other"], "fake_run"),
    # A train run written before config.json format 2 named its learner 'learner': refused, with what to do.
    ("resume_format_1_train_run", ["--resume"], ["format_version 1", "'collector'", "start a new run"], "fake_run"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args, expected, setup", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_exits_2_names_the_field_and_writes_nothing(run_cli, tmp_path, args, expected, setup):
    if "jsonl,wandb" in args and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed in this venv (it is an optional extra); the case needs it absent")
    run_dir = tmp_path / "run"
    if setup == "files":
        (run_dir / "metrics").mkdir(parents=True)
        (run_dir / "notes.txt").write_text("an earlier experiment\n")
        (run_dir / "metrics" / "collector.jsonl").write_text('{"role": "learner", "env_steps": 7}\n')
    elif setup == "fake_run":
        run_dir.mkdir()
        # A valid run-dir record (every field at its default) that --resume would accept.
        (run_dir / "config.json").write_text(json.dumps({"format_version": 1, "kind": "train", "config": {}}))
    before = _snapshot(run_dir) if run_dir.exists() else None
    cwd = tmp_path / "cwd"  # an empty working directory: catches stray writes such as a default runs/ dir
    cwd.mkdir()
    cache = tmp_path / "compilation_cache"  # stays empty unless JAX compiled something

    started = time.monotonic()
    code, stdout, stderr = run_cli(
        ["train", *args, "--run-dir", str(run_dir)], timeout=BAD_INPUT_TIMEOUT_SECONDS, cwd=cwd, cache_dir=cache
    )
    seconds = time.monotonic() - started

    assert code == 2, f"exit code {code}\nstdout: {stdout[-1000:]}\nstderr: {stderr[-3000:]}"
    for text in expected:
        assert text in stderr, f"{text!r} not in stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    if before is None:
        assert not run_dir.exists(), f"run dir created: {sorted(os.listdir(run_dir))}"
    else:
        assert _snapshot(run_dir) == before, "the existing run dir changed"
    assert list(cwd.iterdir()) == [], "something was written to the working directory"
    assert not cache.exists() or list(cache.iterdir()) == [], f"JAX compiled {len(list(cache.iterdir()))} programs"
    print(f"{' '.join(args)}: refused in {seconds:.1f} s")


# --- a short real run ----------------------------------------------------------------------------------------------

SHORT_TOTAL_ENV_STEPS = 3200  # 5 training iterations after the 1,600-step prefill
SHORT_EVAL_EVERY = 960  # evals at 1920, 2880 and the final 3200: three rows, so their order can be checked


@pytest.fixture(scope="module")
def short_run(run_cli, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("short") / "run"
    args = ["train", *TINY_ARGS, "--total-env-steps", str(SHORT_TOTAL_ENV_STEPS),
            "--eval-every-env-steps", str(SHORT_EVAL_EVERY), "--seed", "0", "--run-dir", str(run_dir)]
    started = time.monotonic()
    code, stdout, stderr = run_cli(args, timeout=400)
    print(f"short run: {time.monotonic() - started:.1f} s")
    assert code == 0, f"exit code {code}\nstderr:\n{stderr[-5000:]}"
    return run_dir, stdout, stderr


def test_short_run_exits_0_and_reports(short_run):
    run_dir, stdout, stderr = short_run
    assert "Traceback" not in stderr
    assert re.search(r"final eval: time_at_goal \d+\.\d", stdout), stdout
    assert f"run dir: {run_dir}" in stdout


def test_short_run_records_config_revision_and_packages(short_run):
    run_dir, _, _ = short_run
    payload = json.loads((run_dir / "config.json").read_text())
    assert payload["format_version"] == 2
    assert payload["kind"] == "train"
    assert payload["learners"] == [{"name": "collector", "actor_depth": 4, "critic_depth": 4, "collects": True}]
    config = payload["config"]
    assert config["env"]["env"] == "point_u_maze"
    assert config["schedule"]["num_envs"] == TINY_NUM_ENVS
    assert config["schedule"]["total_env_steps"] == SHORT_TOTAL_ENV_STEPS
    assert config["agent"]["network"]["width"] == 32
    assert config["run"]["run_dir"] == str(run_dir)
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", payload["git_revision"]), payload["git_revision"]
    assert payload["packages"]["jax"] == metadata.version("jax")
    assert payload["packages"]["flax"] == metadata.version("flax")


def _check_rows(rows: list[dict], role: str, required: tuple[str, ...]) -> None:
    assert rows, f"no {role} rows"
    for row in rows:
        for key in COMMON_KEYS:
            assert key in row, f"{key} missing from {row}"
        assert row["role"] == role
        assert row["param_version"] == row["grad_steps"]  # inline: the learner's version is its grad step count
        extra = [k for k in row if k not in COMMON_KEYS and not k.startswith(f"{role}/")]
        assert extra == [], f"keys not namespaced {role}/...: {extra}"
        for key in required:
            assert isinstance(row[key], float), f"{key} = {row.get(key)!r} in {row}"
    walls = [r["wall_time"] for r in rows]
    assert walls == sorted(walls) and walls[0] > 0


def test_learner_rows(short_run):
    run_dir, _, _ = short_run
    rows = read_rows(run_dir / "metrics" / "collector.jsonl")
    _check_rows(rows, "collector", ("collector/critic_loss", "collector/actor_loss", "collector/alpha",
                                    "collector/critic_accuracy", "collector/update_to_data"))
    assert [r["env_steps"] for r in rows] == [1920, 2240, 2560, 2880, 3200]
    assert [r["grad_steps"] for r in rows] == [8, 16, 24, 32, 40]


def test_evaluator_rows(short_run):
    run_dir, _, _ = short_run
    rows = read_rows(run_dir / "metrics" / "eval_collector.jsonl")
    _check_rows(rows, "eval_collector", ("eval_collector/time_at_goal", "eval_collector/success_any",
                                         "eval_collector/final_dist"))
    assert [r["env_steps"] for r in rows] == [1920, 2880, 3200]
    assert [r["grad_steps"] for r in rows] == [8, 32, 40]
    for row in rows:
        assert 0.0 <= row["eval_collector/time_at_goal"] <= 100.0  # steps at the goal out of the 100-step episode
        assert row["eval_collector/episode_length"] == 100.0


def test_measured_update_to_data_matches_config(short_run):
    run_dir, _, _ = short_run
    configured = json.loads((run_dir / "config.json").read_text())["config"]["schedule"]["sgd_steps_per_env_step"]
    assert configured == pytest.approx(800 / (512 * 62))
    for row in read_rows(run_dir / "metrics" / "collector.jsonl"):
        measured = row["collector/update_to_data"]
        # grad steps per post-prefill env step: 8 / 320 exactly; K rounds 8.06 down, 0.8 % under the configured ratio.
        assert measured == pytest.approx(8 / 320)
        assert measured == pytest.approx(configured, rel=0.02)


def test_checkpoint_saved_at_the_end(short_run):
    run_dir, _, _ = short_run
    assert checkpoint_steps(run_dir)[-1:] == [SHORT_TOTAL_ENV_STEPS]


def test_compilation_cache_sees_compiles(short_run, compilation_cache_dir):
    """Positive control for the bad-input tests' "cache stays empty" check: a run that compiles fills the cache."""
    assert list(compilation_cache_dir.iterdir())


# --- SIGTERM, then --resume ----------------------------------------------------------------------------------------

RESUME_TOTAL_ENV_STEPS = 64_000  # 195 training iterations: seconds of work left when the signal arrives


def test_sigterm_checkpoints_and_resume_continues(spawn_cli, run_cli, tmp_path):
    run_dir = tmp_path / "run"
    learner_file = run_dir / "metrics" / "collector.jsonl"
    args = ["train", *TINY_ARGS, "--total-env-steps", str(RESUME_TOTAL_ENV_STEPS), "--eval-every-env-steps", "6400",
            "--run-dir", str(run_dir)]
    proc = spawn_cli(args, tmp_path / "first.out", tmp_path / "first.err")

    def first_row_or_exit() -> bool:
        return proc.poll() is not None or (learner_file.exists() and learner_file.read_text().endswith("\n"))

    assert wait_for(first_row_or_exit, timeout=300), "no learner row within 300 s"
    assert proc.poll() is None, f"exited early ({proc.returncode}):\n{(tmp_path / 'first.err').read_text()[-3000:]}"
    os.kill(proc.pid, signal.SIGTERM)
    signalled = time.monotonic()
    assert wait_for(lambda: proc.poll() is not None, timeout=30, poll_seconds=0.1), "still running 30 s after SIGTERM"
    print(f"exited {time.monotonic() - signalled:.1f} s after SIGTERM")
    first_err = (tmp_path / "first.err").read_text()
    assert proc.returncode == 130, f"exit code {proc.returncode}\n{first_err[-3000:]}"
    assert f"stopped by signal {int(signal.SIGTERM)}" in first_err

    steps = checkpoint_steps(run_dir)
    assert steps, "no checkpoint after SIGTERM"
    stopped_at = steps[-1]
    assert TINY_PREFILL_ENV_STEPS < stopped_at < RESUME_TOTAL_ENV_STEPS, f"stopped at {stopped_at}: no resume to test"
    rows_before = read_rows(learner_file)
    assert rows_before[-1]["env_steps"] == stopped_at  # the checkpoint holds the last logged iteration

    code, _, stderr = run_cli(["train", "--run-dir", str(run_dir), "--resume"], timeout=400)
    assert code == 0, f"exit code {code}\n{stderr[-5000:]}"
    assert f"resumed from checkpoint at {stopped_at} env steps" in stderr

    rows = read_rows(learner_file)
    resumed = rows[len(rows_before):]
    assert rows[: len(rows_before)] == rows_before  # appended, not rewritten
    assert resumed[0]["env_steps"] == stopped_at + STEPS_PER_ITERATION  # continues; never restarts from zero
    env_steps = [r["env_steps"] for r in rows]
    assert env_steps == list(range(1920, RESUME_TOTAL_ENV_STEPS + 1, STEPS_PER_ITERATION))
    assert [r["grad_steps"] for r in rows] == [expected_grad_steps(s) for s in env_steps]
    assert resumed[0]["wall_time"] >= rows_before[-1]["wall_time"]  # the clock continues from the checkpoint too

    evals = read_rows(run_dir / "metrics" / "eval_collector.jsonl")
    eval_steps = [r["env_steps"] for r in evals]
    assert eval_steps == sorted(set(eval_steps)) and eval_steps[-1] == RESUME_TOTAL_ENV_STEPS
    assert all(r["grad_steps"] == expected_grad_steps(r["env_steps"]) for r in evals)
    assert checkpoint_steps(run_dir)[-1] == RESUME_TOTAL_ENV_STEPS


# --- --overwrite ---------------------------------------------------------------------------------------------------


def test_overwrite_replaces_a_finished_run(short_run, run_cli, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(short_run[0], run_dir)  # a complete earlier run: config, metrics, a checkpoint at 3200
    (run_dir / "notes.txt").write_text("stale\n")
    args = ["train", *TINY_ARGS, "--total-env-steps", "2240", "--eval-every-env-steps", "960", "--seed", "1",
            "--run-dir", str(run_dir), "--overwrite"]
    code, _, stderr = run_cli(args, timeout=400)
    assert code == 0, f"exit code {code}\n{stderr[-5000:]}"
    assert not (run_dir / "notes.txt").exists()
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["run"]["seed"] == 1 and config["schedule"]["total_env_steps"] == 2240
    # Fresh metrics (not appended to the old ones) and a fresh checkpoint (the old 3200 one would have been resumed).
    assert [r["env_steps"] for r in read_rows(run_dir / "metrics" / "collector.jsonl")] == [1920, 2240]
    assert [r["env_steps"] for r in read_rows(run_dir / "metrics" / "eval_collector.jsonl")] == [1920, 2240]
    assert checkpoint_steps(run_dir) == [2240]


# --- depthrl envs --------------------------------------------------------------------------------------------------


def test_envs_lists_obs_sizes(run_cli):
    code, stdout, stderr = run_cli(["envs"], timeout=120)
    assert code == 0, stderr[-3000:]
    # Columns: name family obs state goal-dims episode actions backend.
    table = {line.split()[0]: line.split() for line in stdout.splitlines() if len(line.split()) == 8}
    assert table["point_u_maze"][2] == "4"
    assert table["reacher"][2] == "13"
    assert table["point_u_maze"][1] == "point" and table["reacher"][1] == "reacher"
    # The arm tasks (their models come from the asset cache that set-up fills).
    assert table["arm_push_easy"][1:3] == ["arm", "20"] and table["arm_push_easy"][6:] == ["5", "mjx"]
    assert table["arm_reach"][1:3] == ["arm", "16"] and table["arm_reach"][6:] == ["4", "mjx"]
