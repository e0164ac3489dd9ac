"""Figures render from the synthetic grid of test_analysis_tables: axes, scales, series and error bars are what the
data says, and `save_figure` writes real PNG and PDF files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from actors.coverage import CoverageGrid, coverage_path
from actors.envs.mazes import get_layout
from analysis.coverage import coverage_frame, merge_by_collector_depth, read_coverage
from analysis.figures import (coverage_figure, diagnostics_figure, expressivity_figure, learning_curves_figure,
                              save_figure)
from analysis.load import load
from analysis.tables import ablation_table
from tests.unit.test_analysis_tables import make_grid


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    result = load(make_grid(tmp_path_factory.mktemp("grid")))
    coverage, grids, _ = coverage_frame(result.runs)
    return result.frame, ablation_table(result.frame, coverage=coverage), coverage, grids


def _main_axes(fig: Figure):
    """Plot axes (colorbars excluded)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_expressivity_log2_axis_one_line_per_collector_depth_with_se_bars(data):
    _, table, _, _ = data
    fig = expressivity_figure(table, "time_at_goal")
    (ax,) = _main_axes(fig)
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert ax.get_xlabel() == "learner depth (log2 scale)"
    assert ax.get_ylabel() == "final time at goal"
    assert list(ax.get_xticks()) == [4, 16]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 4  # per collector depth: the passive-learner line and the own-eval star
    assert ax.get_legend_handles_labels()[1] == ["collector depth 4", "collector depth 16"]
    # The C=4 line: learner depths 4, 16 at means 3, 40 with bars of +- SE (sqrt(7/3), 0).
    line = bars[0]
    x, y = line.lines[0].get_data()
    assert list(x) == [4.0, 16.0] and list(y) == [3.0, 40.0]
    (segments,) = [c.get_segments() for c in line.lines[2]]
    half_heights = [(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    assert half_heights == pytest.approx([math.sqrt(7 / 3), 0.0])
    # The C=4 own eval: a star at x = 4 with mean 20 +- 10/sqrt(3).
    star = bars[1]
    assert list(star.lines[0].get_data()[0]) == [4.0] and list(star.lines[0].get_data()[1]) == [20.0]
    (segments,) = [c.get_segments() for c in star.lines[2]]
    assert (segments[0][1][1] - segments[0][0][1]) / 2 == pytest.approx(10 / math.sqrt(3))


def test_learning_curves_one_row_per_collector_depth_two_x_axes(data):
    frame = data[0]
    fig = learning_curves_figure(frame, "time_at_goal", ("eval",))
    axes = _main_axes(fig)
    assert len(axes) == 2 * 2  # collector depths 4, 16 x (env steps, wall time)
    assert [ax.get_xlabel() for ax in axes] == ["env steps", "wall-clock time (s)"] * 2
    assert {ax.get_ylabel() for ax in axes} == {"time at goal"}
    # C=4 panel: 3 seeds x 3 learners = 9 lines, one legend entry per learner.
    assert len(axes[0].get_lines()) == 9
    assert axes[0].get_legend_handles_labels()[1] == ["collector (d4)", "learner d4", "learner d16"]
    assert len(axes[2].get_lines()) == 3  # C=16: one seed
    xs, ys = axes[2].get_lines()[0].get_data()
    assert list(xs) == [0, 1000, 2000, 3000, 4000, 5000, 6000]
    assert list(ys) == [1000, 1000, 48, 49, 50, 51, 52]  # the C=16 collector's own eval series


def test_learning_curves_of_training_metrics(data):
    fig = learning_curves_figure(data[0], "critic_loss", ("collector", "learner"), xs=("env_steps",))
    axes = _main_axes(fig)
    assert len(axes) == 2 and len(axes[0].get_lines()) == 9
    assert list(axes[0].get_lines()[0].get_data()[1]) == [4.0, 3.0, 2.0]


def test_diagnostics_policy_lag_and_update_to_data_per_learner(data):
    fig = diagnostics_figure(data[0])
    axes = _main_axes(fig)
    assert len(axes) == 2 * 2  # (policy lag, update to data) x collector depths 4, 16
    assert [ax.get_ylabel() for ax in axes] == ["policy lag", "policy lag", "update to data", "update to data"]
    assert {ax.get_xlabel() for ax in axes} == {"wall-clock time (s)"}
    assert len(axes[0].get_lines()) == 9 and len(axes[1].get_lines()) == 3
    assert list(axes[0].get_lines()[0].get_data()[1]) == [10.0, 20.0, 30.0]


def test_coverage_map_shows_the_summed_counts_over_the_maze(data, tmp_path):
    _, _, coverage, grids = data
    merged = merge_by_collector_depth(coverage, grids)
    assert list(merged) == [("point_u_maze", 4)]
    grid = merged[("point_u_maze", 4)]
    # Seeds 0, 1, 2 visit 1, 2, 3 cells twice each: cell (1,1) 6 times, (1,2) 4, (1,3) 2.
    assert grid.cell_counts()[1, 1:4].tolist() == [6, 4, 2] and grid.counts.sum() == 12
    CoverageGrid(get_layout("u_maze", 2.0), 2).save(coverage_path(tmp_path, "empty"))
    fig = coverage_figure({"collector depth 4": grid, "empty": read_coverage(coverage_path(tmp_path, "empty"))})
    axes = _main_axes(fig)
    assert len(axes) == 2
    ax = axes[0]
    assert ax.get_xlabel() == "world y" and ax.get_ylabel() == "world x"
    (image,) = ax.get_images()
    np.testing.assert_array_equal(np.ma.filled(image.get_array(), 0), grid.counts)
    assert image.get_extent() == [-1.0, 9.0, 9.0, -1.0]  # x down the page, like the layout text
    n_walls = int(get_layout("u_maze", 2.0).wall_mask.sum())
    assert len(ax.patches) == n_walls + 6 + 1  # walls + 6 goal outlines + 1 start outline
    assert "visited 43% of free cells" in ax.get_title()


def test_save_figure_writes_png_and_pdf(tmp_path, data):
    paths = save_figure(expressivity_figure(data[1]), tmp_path / "figs", "expr")
    assert [p.name for p in paths] == ["expr.png", "expr.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
