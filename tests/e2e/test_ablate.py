"""`depthrl ablate` end to end: a real 2-run grid, interrupted mid-grid and resumed; bad grid input."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from experiments.ablate import GRID_FILE
from tests.e2e.conftest import REPO_ROOT, TINY_ARGS, cli_command, cli_env, kill_group


GRID_ARGS = [
    *[a for a in TINY_ARGS if a not in ("--env", "point_u_maze")],
    "--env", "point_u_maze", "--collector-depths", "4,8", "--learner-depths", "4", "--seeds", "1",
    "--env-steps", "3200", "--eval-every-env-steps", "1600", "--inline", "--quiet", "--no-report",
]


def _grid_state(grid_dir: Path) -> dict:
    return json.loads((grid_dir / GRID_FILE).read_text())


def _wait_for(predicate, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"ablate exited early with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError("condition not reached in time")


def test_ablate_resumes_after_interrupt_without_repeating_finished_runs(tmp_path, compilation_cache_dir):
    grid = tmp_path / "grid"
    env = cli_env(compilation_cache_dir)
    proc = subprocess.Popen(cli_command(["ablate", "--grid-dir", str(grid), *GRID_ARGS]), cwd=REPO_ROOT, env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Interrupt once the first run is done and the second has started.
        _wait_for(lambda: (grid / GRID_FILE).exists() and _grid_state(grid)["runs"]["c8_s0"]["status"] == "running",
                  timeout_s=300, proc=proc)
        first = _grid_state(grid)["runs"]["c4_s0"]
        assert first["status"] == "done"
        finished_rows = (grid / "runs/c4_s0/metrics/eval_learner_d4.jsonl").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        kill_group(proc)
    assert _grid_state(grid)["runs"]["c8_s0"]["status"] == "interrupted"

    again = subprocess.run(cli_command(["ablate", "--grid-dir", str(grid), *GRID_ARGS]), cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 2 runs already done, skipped" in again.stderr
    assert "resuming c8_s0" in again.stderr or "starting c8_s0" in again.stderr
    state = _grid_state(grid)
    assert {name: r["status"] for name, r in state["runs"].items()} == {"c4_s0": "done", "c8_s0": "done"}
    # The finished run was not touched: its metrics are byte-identical.
    assert (grid / "runs/c4_s0/metrics/eval_learner_d4.jsonl").read_text() == finished_rows
    # The resumed run reached the full budget, once per eval point (no duplicated rows from a restart at zero).
    rows = [json.loads(line) for line in (grid / "runs/c8_s0/metrics/eval_learner_d4.jsonl").read_text().splitlines()]
    assert max(r["env_steps"] for r in rows) >= 3200


@pytest.mark.parametrize("extra, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--env", "point_u_maze", "--collector-depths", "4,6", "--learner-depths", "4"], "(4, 8, ..., 1024), got 6"),
    (["--env", "point_u_maze", "--collector-depths", "4", "--learner-depths", ""], "--learner-depths"),
    (["--env", "point_u_maze", "--collector-depths", "4,4", "--learner-depths", "4"], "lists a depth twice"),
    (["--env", "no_such_env", "--collector-depths", "4", "--learner-depths", "4"], "unknown env"),
    (["--preset", "demo", "--seeds", "0"], "--seeds must be >= 1"),
    (["--preset", "demo", "--seed", "3"], "--seed is set by the grid"),
    (["--preset", "demo", "--parallel", "2", "--replay-port", "5000"], "--replay-port cannot be fixed"),
])
def test_ablate_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, extra, message):
    from experiments.ablate import main

    grid = tmp_path / "grid"
    assert main(["--grid-dir", str(grid), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not grid.exists()


def test_ablate_refuses_a_grid_dir_holding_another_grid(tmp_path, capsys):
    from experiments.ablate import main

    grid = tmp_path / "grid"
    grid.mkdir()
    spec = {"format_version": 1, "kind": "grid", "spec": {"preset": "other"}, "runs": {}}
    (grid / GRID_FILE).write_text(json.dumps(spec))
    before = (grid / GRID_FILE).read_text()
    assert main(["--grid-dir", str(grid), "--preset", "demo"]) == 2
    assert "holds a different grid" in capsys.readouterr().err
    assert (grid / GRID_FILE).read_text() == before
    (grid / GRID_FILE).unlink()
    (grid / "notes.txt").write_text("mine")
    assert main(["--grid-dir", str(grid), "--preset", "demo"]) == 2
    assert "not empty" in capsys.readouterr().err
