"""The agent learns: `depthrl train` on point_u_maze with depth-4 networks, on a budget of minutes, ends clearly
above the untrained policy.

Config: the paper's defaults of `depthrl train` (width 256, 64 slots x 50 steps per iteration, batch 256, paper UTD)
and a 192,000 env-step budget. The prefill is 64 x 200 = 12,800 env steps; with evaluations every 16,000 env steps
the first one comes after a single training iteration (81 SGD steps), so it scores the (nearly) untrained policy.
Measured (see the report in the commit): the untrained policy scores 0 time-at-goal; runs cross 15 around 80k env
steps and end near 50-60 of the 100-step episode.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import read_rows

TOTAL_ENV_STEPS = 192_000  # 12,800 prefill + 56 iterations of 3,200: the last iteration lands on it exactly
EVAL_EVERY_ENV_STEPS = 16_000
EPISODE_STEPS = 100
FIRST_EVAL_ENV_STEPS = 16_000  # prefill 12,800 + one iteration of 3,200


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.timeout(1800)
def test_point_u_maze_depth4_learns(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--env", "point_u_maze", "--actor-depth", "4", "--critic-depth", "4", "--seed", "0",
            "--total-env-steps", str(TOTAL_ENV_STEPS), "--eval-every-env-steps", str(EVAL_EVERY_ENV_STEPS),
            "--run-dir", str(run_dir)]
    started = time.monotonic()
    code, _, stderr = run_cli(args, timeout=1700)
    seconds = time.monotonic() - started
    assert code == 0, f"exit code {code}\n{stderr[-5000:]}"

    evals = read_rows(run_dir / "metrics" / "eval_collector.jsonl")
    curve = [(r["env_steps"], r["eval_collector/time_at_goal"]) for r in evals]
    print(f"{seconds:.0f} s; time_at_goal by env step: {curve}")
    assert curve[0][0] == FIRST_EVAL_ENV_STEPS and curve[-1][0] == TOTAL_ENV_STEPS
    initial, final = curve[0][1], curve[-1][1]
    assert all(0.0 <= value <= EPISODE_STEPS for _, value in curve)
    assert final >= 15.0, f"final time_at_goal {final:.1f} < 15; curve {curve}"
    assert final >= 3 * initial + 5, f"final {final:.1f} not clearly above initial {initial:.1f}; curve {curve}"
