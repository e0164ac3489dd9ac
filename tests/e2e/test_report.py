"""`depthrl report` on a real tiny `depthrl train` run, both through the real CLI: the report holds the run's final
eval (the mean of its evaluator rows, read back from the JSONL), links figures that exist, and still comes out,
with a warning, after a crash-truncated metrics line.

The run is the tiny config of conftest (critic depth 4) for 2,240 env steps with evals every 960: evaluator rows
at 1,920 and 2,240, so the "last 5" average is over both rows.
"""

from __future__ import annotations

import re
import shutil

import pytest

from tests.e2e.conftest import TINY_ARGS, read_rows


@pytest.fixture(scope="module")
def tiny_run(run_cli, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    args = ["train", *TINY_ARGS, "--total-env-steps", "2240", "--eval-every-env-steps", "960", "--seed", "0",
            "--run-dir", str(run_dir)]
    code, _, stderr = run_cli(args, timeout=400)
    assert code == 0, f"exit code {code}\nstderr:\n{stderr[-5000:]}"
    return run_dir


def test_report_of_a_real_train_run(run_cli, tiny_run, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["report", str(tiny_run), "--out", str(out)], timeout=180)
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "warning" not in stderr
    evals = read_rows(tiny_run / "metrics" / "eval_collector.jsonl")
    assert [r["env_steps"] for r in evals] == [1920, 2240]
    expected = sum(r["eval_collector/time_at_goal"] for r in evals) / len(evals)
    report = (out / "report.md").read_text()
    assert f"| 4 | {expected:.2f} ± n/a (n=1) |" in report
    assert f"| 4 | {expected:.2f} ± n/a (n=1) |" in stdout and f"report: {out / 'report.md'}" in stdout
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert "figures/curves_time_at_goal.png" in links and "figures/diagnostics.png" in links
    assert all((out / link).is_file() for link in links)


def test_report_survives_a_truncated_metrics_line(run_cli, tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    path = run_dir / "metrics" / "collector.jsonl"
    n_rows = len(path.read_text().splitlines())
    with open(path, "a") as f:
        f.write('{"role": "collector", "wall_time": 99.0, "env_st')
    code, _, stderr = run_cli(["report", str(run_dir)], timeout=180)
    assert code == 0, stderr[-3000:]
    assert f"{path}: read {n_rows} row(s), skipped 1 unreadable line(s)" in stderr
    assert "## Warnings" in (run_dir / "report.md").read_text()
