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
                              qmap_figure, save_figure)
from analysis.load import load
from analysis.topology import FreeSpaceGrid, qmap_path, save_qmap
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
    assert "11% of their bins" in ax.get_title()  # 3 of the 28 bins of free cells


def test_qmap_figure_draws_each_learners_energy_over_the_maze_beside_the_geodesic(tmp_path):
    grid = FreeSpaceGrid.from_layout(get_layout("u_maze", 2.0).rows, 2.0, nodes_per_cell=2)
    start = int(grid.nearest_node(np.array([2.0, 2.0])))
    energy = np.arange(grid.n_nodes, dtype=np.float32)
    qmaps = [save_qmap(qmap_path(tmp_path, name), energy=energy * sign, grid=grid, start_xy=grid.node_xy[start],
                       env_steps=5000, grad_steps=70, learner=name, critic_depth=depth)
             for name, depth, sign in (("collector", 4, 1.0), ("learner_d64", 64, -1.0))]
    fig = qmap_figure(qmaps, tmp_path / "qmap.png")
    assert (tmp_path / "qmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = _main_axes(fig)
    assert len(axes) == 3  # the -geodesic reference, then one panel per learner
    assert axes[1].get_title().startswith("collector (critic depth 4)")
    assert axes[2].get_title().startswith("learner_d64 (critic depth 64)")
    ax = axes[1]
    assert ax.get_xlabel() == "world y" and ax.get_ylabel() == "world x"
    assert ax.get_ylim() == (9.0, -1.0)  # x down the page, like the layout text and the coverage maps
    (image,) = ax.get_images()
    pixels = image.get_array()
    # One pixel per node (k = 2: a bin of 1 world unit); node 0 is the first sub-cell of cell (1, 1): pixel (2, 2).
    assert pixels.shape == (10, 10) and pixels[2, 2] == 0.0 and pixels.count() == grid.n_nodes
    assert pixels.mask[0, 0] and pixels.mask[5, 2]  # walls are not painted
    (star,) = ax.lines
    assert list(star.get_xdata()) == [grid.node_xy[start, 1]] and list(star.get_ydata()) == [grid.node_xy[start, 0]]
    reference = axes[0].get_images()[0].get_array()
    # -geodesic: 0 at the start node, (2, 2) -> the sub-cell starting there, pixel (3, 3); -sqrt(2) one step off.
    assert reference.max() == 0.0 and reference[3, 3] == 0.0 and reference[2, 2] == pytest.approx(-math.sqrt(2))
    assert len(_main_axes(qmap_figure([]))) == 1


def test_save_figure_writes_png_and_pdf(tmp_path, data):
    paths = save_figure(expressivity_figure(data[1]), tmp_path / "figs", "expr")
    assert [p.name for p in paths] == ["expr.png", "expr.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


def test_memory_slopes_and_figure_from_rss_rows():
    """A role growing 2 MiB/min after a warm-up jump, and a flat one: slopes by least squares after the warm-up."""
    import pandas as pd

    from analysis.figures import memory_figure, memory_slopes

    t = [float(s) for s in range(0, 1800, 30)]
    frame = pd.DataFrame(
        [{"run": "r", "role": "collector", "wall_time": s, "rss_mib": (500.0 if s < 300 else 900.0) + 2.0 * s / 60}
         for s in t]
        + [{"run": "r", "role": "actor_0", "wall_time": s, "rss_mib": 300.0} for s in t])
    slopes = memory_slopes(frame).set_index("role")
    assert slopes.loc["collector", "slope_mib_per_min"] == pytest.approx(2.0)
    assert slopes.loc["actor_0", "slope_mib_per_min"] == pytest.approx(0.0)
    assert slopes.loc["collector", "first_mib"] == 500.0 and slopes.loc["collector", "rows"] == len(t)
    fig = memory_figure(frame)
    (ax,) = fig.axes
    assert sorted(line.get_label() for line in ax.get_lines()) == ["actor_0", "collector"]
    assert memory_slopes(frame.drop(columns="rss_mib")).empty
