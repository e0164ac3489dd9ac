"""The ablation table on a synthetic grid with hand-computed finals, means and standard errors.

Grid: collector depth 4 with seeds 0, 1, 2 and collector depth 16 with seed 0; passive learners at depths 4 and 16.
Final time at goal (mean of the last 5 evals, see test_analysis_load.eval_series) per seed:

  C=4  collector 10, 20, 30  -> mean 20, SE = std(ddof=1) 10 / sqrt(3)            = 5.773503
       learner_d4  1,  2,  6 -> mean  3, SE = sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) / sqrt(3) = sqrt(7/3) = 1.527525
       learner_d16 40, 40, 40 -> mean 40, SE 0
  C=16 collector 50, learner_d4 7, learner_d16 60 (n = 1: SE undefined)
Final success_any of the C=4 collector: 0, 0.5, 1 -> mean 0.5, SE 0.5 / sqrt(3) = 0.288675.
Coverage (C=4 only): seed s visits s + 1 free cells once each -> fraction (s + 1)/7, entropy ln(s + 1)/ln 7.
"""

from __future__ import annotations

import json
import math

import pytest

from analysis.coverage import coverage_frame
from analysis.load import load
from analysis.tables import (FINAL_METRICS, PROBE_METRICS, ablation_matrix, ablation_table, coverage_summary,
                             final_evals, mean_se, table_metrics, to_latex, to_markdown)
from tests.unit.test_analysis_load import write_run

FINALS = {
    (4, 0): {"collector": (10.0, 0.0), "learner_d4": (1.0, 0.2), "learner_d16": (40.0, 0.4)},
    (4, 1): {"collector": (20.0, 0.5), "learner_d4": (2.0, 0.2), "learner_d16": (40.0, 0.4)},
    (4, 2): {"collector": (30.0, 1.0), "learner_d4": (6.0, 0.2), "learner_d16": (40.0, 0.4)},
    (16, 0): {"collector": (50.0, 0.25), "learner_d4": (7.0, 0.1), "learner_d16": (60.0, 0.75)},
}
# Free cells of the u_maze in row-major order, as world (x, y) centres at s = 2.
FREE_XY = [(2.0, 2.0), (2.0, 4.0), (2.0, 6.0), (4.0, 6.0), (6.0, 2.0), (6.0, 4.0), (6.0, 6.0)]


def make_grid(root):
    for (depth, seed), finals in FINALS.items():
        # Two visits per cell split over two actors: both actors' files must be summed to get 2 per cell.
        xy = FREE_XY[: seed + 1] * 2 if depth == 4 else None
        write_run(root / "runs" / f"c{depth}_s{seed}", collector_depth=depth, seed=seed, learner_depths=(4, 16),
                  finals=finals, coverage_xy=xy)
    return root


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = make_grid(tmp_path_factory.mktemp("grid"))
    result = load(root)
    coverage, _, problems = coverage_frame(result.runs)
    assert problems == []
    return result.frame, coverage


def row(table, depth, learner):
    match = table[(table["collector_depth"] == depth) & (table["learner"] == learner)]
    assert len(match) == 1, (depth, learner)
    return match.iloc[0]


def test_mean_se_by_hand():
    assert mean_se([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3) / 2, 4))
    mean, se, n = mean_se([7.0])
    assert (mean, n) == (7.0, 1) and math.isnan(se)
    mean, se, n = mean_se([float("nan"), 3.0, 5.0])  # NaN is not a value
    assert (mean, n) == (4.0, 2) and se == pytest.approx(math.sqrt(2) / math.sqrt(2))
    assert mean_se([])[2] == 0


def test_final_evals_average_exactly_the_last_n(grid):
    frame, _ = grid
    finals = final_evals(frame)
    assert len(finals) == 4 * 3  # 4 runs x 3 eval roles
    one = finals[(finals["run"] == "runs/c4_s2") & (finals["learner"] == "learner_d4")].iloc[0]
    assert one["time_at_goal"] == 6.0 and one["n_evals"] == 5 and one["final_env_steps"] == 6000.0
    assert one["role"] == "eval_learner_d4" and one["learner_depth"] == 4 and one["seed"] == 2
    last_one = final_evals(frame, last_n=1)
    assert last_one.set_index(["run", "role"]).loc[("runs/c4_s2", "eval_learner_d4"), "time_at_goal"] == 8.0  # v+2
    all_evals = final_evals(frame, last_n=100)
    assert all_evals["n_evals"].unique().tolist() == [7]
    assert all_evals.set_index(["run", "role"]).loc[("runs/c4_s2", "eval_learner_d4"), "time_at_goal"] == \
        pytest.approx((2000 + 5 * 6) / 7)
    with pytest.raises(ValueError):
        final_evals(frame, last_n=0)


def test_ablation_table_values_and_standard_errors(grid):
    frame, coverage = grid
    table = ablation_table(frame, coverage=coverage)
    assert len(table) == 6
    # Order: per collector depth, its own eval first, then passive learners by depth.
    assert list(zip(table["collector_depth"], table["learner"])) == [
        (4, "collector"), (4, "learner_d4"), (4, "learner_d16"),
        (16, "collector"), (16, "learner_d4"), (16, "learner_d16")]
    r = row(table, 4, "collector")
    assert r["n_seeds"] == 3 and r["learner_depth"] == 4
    assert r["time_at_goal_mean"] == pytest.approx(20.0)
    assert r["time_at_goal_se"] == pytest.approx(10 / math.sqrt(3))
    assert r["success_any_mean"] == pytest.approx(0.5)
    assert r["success_any_se"] == pytest.approx(0.5 / math.sqrt(3))
    r = row(table, 4, "learner_d4")
    assert r["time_at_goal_mean"] == pytest.approx(3.0)
    assert r["time_at_goal_se"] == pytest.approx(math.sqrt(7 / 3))
    r = row(table, 4, "learner_d16")
    assert (r["time_at_goal_mean"], r["time_at_goal_se"]) == (pytest.approx(40.0), pytest.approx(0.0))
    r = row(table, 16, "learner_d16")
    assert r["n_seeds"] == 1 and r["time_at_goal_mean"] == 60.0 and math.isnan(r["time_at_goal_se"])
    assert r["success_any_mean"] == 0.75
    assert row(table, 16, "collector")["learner_depth"] == 16


def test_coverage_columns_per_collector_depth(grid):
    _, coverage = grid
    assert sorted(coverage["run"]) == ["runs/c4_s0", "runs/c4_s1", "runs/c4_s2"]
    by_run = coverage.set_index("run")
    assert by_run.loc["runs/c4_s2", "coverage_fraction"] == pytest.approx(3 / 7)
    assert by_run.loc["runs/c4_s2", "coverage_entropy"] == pytest.approx(math.log(3) / math.log(7))
    assert by_run.loc["runs/c4_s2", "coverage_count"] == 6  # both actors' files summed
    # One bin per visited cell (a cell centre (2i, 2j) at s = 2, k = 2 falls in bin (2i + 1, 2j + 1)); 28 free bins.
    assert by_run.loc["runs/c4_s2", "bin_coverage"] == pytest.approx(3 / 28)
    summary = coverage_summary(coverage).iloc[0]
    assert summary["collector_depth"] == 4 and summary["n_coverage_runs"] == 3
    assert summary["coverage_fraction_mean"] == pytest.approx(2 / 7)
    assert summary["coverage_fraction_se"] == pytest.approx((1 / 7) / math.sqrt(3))
    assert summary["bin_coverage_mean"] == pytest.approx(2 / 28)
    entropies = [0.0, math.log(2) / math.log(7), math.log(3) / math.log(7)]
    assert summary["coverage_entropy_mean"] == pytest.approx(sum(entropies) / 3)


def test_rendered_matrix_markdown_and_latex(grid):
    frame, coverage = grid
    table = ablation_table(frame, coverage=coverage)
    matrix = ablation_matrix(table, "time_at_goal")
    assert list(matrix.columns) == ["collector depth", "collector (own eval)", "learner d4", "learner d16",
                                    "coverage fraction", "bin coverage", "coverage entropy"]
    assert matrix.iloc[0].tolist()[:4] == ["4", "20.00 ± 5.77 (n=3)", "3.00 ± 1.53 (n=3)", "40.00 ± 0.00 (n=3)"]
    assert matrix.iloc[0]["coverage fraction"] == "0.29 ± 0.08 (n=3)"
    assert matrix.iloc[0]["bin coverage"] == "0.07 ± 0.02 (n=3)"  # 2/28 ± (1/28)/sqrt(3)
    assert matrix.iloc[1].tolist() == ["16", "50.00 ± n/a (n=1)", "7.00 ± n/a (n=1)", "60.00 ± n/a (n=1)", "–", "–",
                                       "–"]
    md = to_markdown(matrix)
    lines = md.splitlines()
    assert lines[0].startswith("| collector depth | collector (own eval) |") and lines[1].startswith("|---|")
    assert "| 4 | 20.00 ± 5.77 (n=3) | 3.00 ± 1.53 (n=3) |" in md and len(lines) == 4
    success = ablation_matrix(table, "success_any")
    assert success.iloc[0]["collector (own eval)"] == "0.50 ± 0.29 (n=3)"
    tex = to_latex(success, "final success_any")
    assert r"\caption{final success\_any}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"0.50 $\pm$ 0.29 (n=3)" in tex and "--" in tex
    assert tex.count(r" \\") == 3  # header + 2 rows


def test_a_table_without_coverage_has_no_coverage_columns(grid):
    frame, _ = grid
    table = ablation_table(frame)
    assert "coverage_fraction_mean" not in table.columns
    assert "coverage fraction" not in ablation_matrix(table).columns


def test_runs_without_probe_metrics_get_the_table_they_always_had(grid):
    frame, coverage = grid
    assert table_metrics(frame) == FINAL_METRICS
    table = ablation_table(frame, coverage=coverage)
    assert not any(c.startswith(("topo_", "heldout_")) for c in table.columns)
    assert [c for c in table.columns if c.endswith("_n")] == []


def add_probe_metrics(run_dir, role: str, values: dict[str, float]) -> None:
    """Add `values` (metric -> value) to every evaluation row of `role` in a synthetic run, as the evaluator logs
    them: prefixed with the role. The rows stay the same rows, so the other metrics' finals do not move."""
    path = run_dir / "metrics" / f"{role}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(row | {f"{role}/{k}": v for k, v in values.items()}) + "\n" for row in rows))


def test_probe_metrics_join_the_table_where_runs_log_them(tmp_path):
    # Seeds 0 and 1 of C=4 log the probes (older runs, seed 2 and C=16, do not): the mean is over the runs that do.
    root = make_grid(tmp_path / "grid")
    for seed, through_wall in ((0, 0.25), (1, 0.75)):
        for learner in ("collector", "learner_d4", "learner_d16"):
            add_probe_metrics(root / "runs" / f"c4_s{seed}", f"eval_{learner}",
                              {"topo_rank_corr_geodesic": 0.5 + 0.1 * seed, "topo_through_wall_fraction": through_wall,
                               "heldout_critic_accuracy": 0.9})
    frame = load(root).frame
    assert table_metrics(frame) == FINAL_METRICS + ("topo_rank_corr_geodesic", "topo_through_wall_fraction",
                                                    "heldout_critic_accuracy")
    table = ablation_table(frame)
    r = row(table, 4, "learner_d4")
    assert r["time_at_goal_mean"] == pytest.approx(3.0)  # unchanged
    assert r["topo_through_wall_fraction_mean"] == pytest.approx(0.5)
    assert r["topo_through_wall_fraction_se"] == pytest.approx(0.25)  # std 0.3536 / sqrt(2)
    assert r["topo_through_wall_fraction_n"] == 2 and r["n_seeds"] == 3  # the n of the mean: runs that log it
    assert r["topo_rank_corr_geodesic_mean"] == pytest.approx(0.55)
    assert "topo_rank_corr_euclidean_mean" not in table.columns  # no run logs it
    assert math.isnan(row(table, 16, "learner_d4")["topo_through_wall_fraction_mean"])
    matrix = ablation_matrix(table, "topo_through_wall_fraction")
    assert matrix.iloc[0]["learner d4"] == "0.50 ± 0.25 (n=2)"
    assert matrix.iloc[1]["learner d4"] == "–"
    assert set(PROBE_METRICS) >= set(table_metrics(frame)) - set(FINAL_METRICS)


def test_paired_differences_by_hand(grid):
    """C=4: d16 - d4 per seed = 39, 38, 34 -> mean 37, SE = std(ddof=1)(2, 1, -3) / sqrt(3) = sqrt(7/3) = 1.527525,
    beyond 2 SE; C=16: one run (53), SE undefined, not beyond. success_any C=4: 0.2 per seed -> SE 0, beyond."""
    from analysis.tables import paired_differences

    frame, _ = grid
    pairs = paired_differences(frame)
    at = {(int(r.collector_depth), r.metric): r for r in pairs.itertuples()}
    c4 = at[(4, "time_at_goal")]
    assert (c4.setting, c4.deep, c4.shallow, c4.n) == ("learner", 16, 4, 3)
    assert c4.diff_mean == pytest.approx(37.0) and c4.diff_se == pytest.approx(math.sqrt(7 / 3))
    assert c4.beyond_2se
    c16 = at[(16, "time_at_goal")]
    assert c16.diff_mean == pytest.approx(53.0) and c16.n == 1 and math.isnan(c16.diff_se) and not c16.beyond_2se
    assert at[(4, "success_any")].diff_mean == pytest.approx(0.2) and at[(4, "success_any")].beyond_2se
    assert len(pairs) == 4  # 2 collector depths x 2 metrics; the collectors' own evals are not paired
    # A difference far below 0 is beyond 2 SE too (a loss: the deeper learner lower).
    flipped = frame.assign(time_at_goal=-frame["time_at_goal"])
    c4 = paired_differences(flipped).set_index(["collector_depth", "metric"]).loc[(4, "time_at_goal")]
    assert c4["diff_mean"] == pytest.approx(-37.0) and c4["beyond_2se"]
