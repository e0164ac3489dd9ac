"""Coverage histograms (actors/coverage.py, the writer), the reader of their files (analysis/coverage.py, numpy only)
and the scalar coverage measures on hand-made positions whose bins, visited fraction and entropy are worked out by
hand below. The scalars are computed on files written by the actors' `CoverageGrid` and read back by analysis.

The u_maze ("#####/#RGG#/###G#/#GGG#/#####") has 7 free cells: (1,1) (1,2) (1,3) (2,3) (3,1) (3,2) (3,3).
At scaling s = 2 and k = 2 bins per cell a bin is 1 world unit wide and bin b covers [b - 1, b): the histogram is
10 x 10 over x, y in [-1, 9).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from actors.coverage import COVERAGE_DIR, CoverageGrid, coverage_path, load
from actors.envs.mazes import LAYOUTS, get_layout
from analysis.coverage import (CoverageMap, bin_coverage_fraction, coverage_entropy, coverage_fraction,
                               free_cell_counts, layout_wall_mask, load_run_coverage, read_coverage, summed)

U_MAZE = get_layout("u_maze", 2.0)


def grid_of(xy, k: int = 2) -> CoverageGrid:
    grid = CoverageGrid(U_MAZE, bins_per_cell=k)
    grid.add(np.asarray(xy, dtype=np.float64))
    return grid


def read_back(grid: CoverageGrid, tmp_path, role: str = "actor_0") -> CoverageMap:
    """What analysis sees of `grid`: its file, written by the actors' code, read by analysis' own reader."""
    path = coverage_path(tmp_path, role)
    grid.save(path)
    return read_coverage(path)


def test_shape_extent_and_empty_counts():
    grid = CoverageGrid(U_MAZE, bins_per_cell=2)
    assert grid.shape == (10, 10)
    assert grid.counts.shape == (10, 10) and grid.counts.dtype == np.int64 and grid.counts.sum() == 0
    assert grid.extent == (-1.0, 9.0, -1.0, 9.0)
    assert grid.bin_size == 1.0
    assert CoverageGrid(U_MAZE).shape == (20, 20)  # default k = 4


@pytest.mark.parametrize("xy, expected_bin", [
    ((0.0, 0.0), (1, 1)),      # centre of cell (0, 0): floor((0 + 1) / 1) = 1
    ((-1.0, -1.0), (0, 0)),    # lower edge is inclusive
    ((2.99, 0.5), (3, 1)),     # floor(3.99) = 3
    ((3.0, 4.2), (4, 5)),      # x = 3 starts bin 4 (upper edge of bin 3 is exclusive)
    ((9.0, 8.99), (9, 9)),     # x = 9 is the histogram's upper edge: clipped into the last bin
    ((-5.0, 100.0), (0, 9)),   # far outside: clipped into the edge bins
])
def test_each_position_lands_in_the_hand_computed_bin(xy, expected_bin):
    grid = grid_of([xy])
    assert grid.counts.sum() == 1
    assert tuple(np.argwhere(grid.counts)[0]) == expected_bin


def test_x_runs_along_layout_rows_and_y_along_columns():
    # World (x, y) = (i s, j s) is cell (row i, col j): a point at cell (3, 1) must count in row 3, col 1.
    grid = grid_of(U_MAZE.cell_to_xy(np.array([[3, 1]])))
    cells = grid.cell_counts()
    assert cells.shape == (5, 5) and cells[3, 1] == 1 and cells.sum() == 1


def test_add_accepts_any_leading_shape_accumulates_and_drops_non_finite():
    grid = CoverageGrid(U_MAZE, bins_per_cell=2)
    grid.add(np.zeros((3, 4, 2)))  # [T, E, 2]
    grid.add(np.array([[np.nan, 0.0], [0.0, np.inf], [0.0, 0.0]]))
    assert grid.counts[1, 1] == 13
    assert grid.counts.sum() == 13
    assert grid.dropped == 2
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        grid.add(np.zeros((4, 3)))


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="bins_per_cell"):
        CoverageGrid(U_MAZE, bins_per_cell=0)
    with pytest.raises(ValueError, match="needs"):
        CoverageGrid(U_MAZE, bins_per_cell=2, counts=np.zeros((5, 5), dtype=np.int64))


def test_save_load_round_trip_is_atomic_and_exact(tmp_path):
    grid = grid_of([(0.0, 2.0), (0.0, 2.0), (6.0, 6.0), (np.nan, 1.0)])
    path = coverage_path(tmp_path, "actor_3")
    assert path == tmp_path / COVERAGE_DIR / "actor_3.npz"
    grid.save(path, env_steps=1234)
    assert sorted(p.name for p in path.parent.iterdir()) == ["actor_3.npz"]  # no temp file left behind
    with np.load(path, allow_pickle=False) as data:  # readable without pickle: plain arrays only
        assert set(data.files) >= {"counts", "layout_rows", "scaling", "bins_per_cell", "env_steps"}
        assert list(data["layout_rows"]) == list(U_MAZE.rows)
    back = load(path)
    assert back.layout == U_MAZE
    assert back.bins_per_cell == 2 and back.env_steps == 1234 and back.dropped == 1
    np.testing.assert_array_equal(back.counts, grid.counts)
    # Saving again replaces the file (the actor saves the running total, not increments).
    grid.add([(0.0, 0.0)])
    grid.save(path, env_steps=2000)
    assert load(path).counts.sum() == 4 and load(path).env_steps == 2000


def test_load_refuses_a_file_that_is_not_a_coverage_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError):
        load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, counts=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="missing"):
        load(other)


def test_merged_sums_counts_and_env_steps_and_refuses_other_mazes():
    a, b = grid_of([(0.0, 0.0)]), grid_of([(0.0, 0.0), (2.0, 2.0)])
    a.env_steps, b.env_steps = 100, 50
    total = CoverageGrid.merged([a, b])
    assert total.counts[1, 1] == 2 and total.counts.sum() == 3 and total.env_steps == 150
    with pytest.raises(ValueError, match="cannot merge"):
        CoverageGrid.merged([a, CoverageGrid(get_layout("u_maze", 4.0), bins_per_cell=2)])
    with pytest.raises(ValueError, match="cannot merge"):
        CoverageGrid.merged([a, CoverageGrid(U_MAZE, bins_per_cell=4)])


# --- scalar coverage ------------------------------------------------------------------------------------------------

# Cell centres (x, y) = (2 i, 2 j). Two visits to (1,1), one each to (1,2) and (1,3), one to the wall cell (0,0).
TRAJECTORY = [(2.0, 2.0), (2.4, 1.6), (2.0, 4.0), (2.0, 6.0), (0.0, 0.0)]


def test_fraction_and_entropy_of_a_hand_made_trajectory(tmp_path):
    grid = read_back(grid_of(TRAJECTORY), tmp_path)
    np.testing.assert_array_equal(free_cell_counts(grid), [2, 1, 1, 0, 0, 0, 0])
    assert coverage_fraction(grid) == pytest.approx(3 / 7)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2; normalised by ln 7 (7 free cells). The wall visit is ignored.
    assert coverage_entropy(grid) == pytest.approx(1.5 * math.log(2) / math.log(7))
    assert coverage_entropy(grid) == pytest.approx(0.534311, abs=1e-6)  # 1.039721 / 1.945910


def test_uniform_visits_give_entropy_one_and_a_single_cell_gives_zero(tmp_path):
    uniform = read_back(grid_of(U_MAZE.cell_to_xy(U_MAZE.free_cells)), tmp_path, "uniform")
    assert coverage_fraction(uniform) == 1.0
    assert coverage_entropy(uniform) == pytest.approx(1.0)
    single = read_back(grid_of([(2.0, 2.0)] * 5), tmp_path, "single")
    assert coverage_fraction(single) == pytest.approx(1 / 7)
    assert coverage_entropy(single) == 0.0
    empty = read_back(CoverageGrid(U_MAZE, bins_per_cell=2), tmp_path, "empty")
    assert coverage_fraction(empty) == 0.0 and math.isnan(coverage_entropy(empty))


def test_bin_coverage_counts_bins_of_free_cells_only():
    # A hand-made map of the u_maze at k = 2: 7 free cells hold 28 bins. Cell (1, 1) holds bins rows 2-3, cols 2-3.
    counts = np.zeros((10, 10), dtype=np.int64)
    counts[2, 2] = 5  # cell (1, 1), two of its four bins
    counts[3, 2] = 1
    counts[2, 6] = 1  # cell (1, 3), one bin
    counts[0, 0] = 9  # wall cell (0, 0): not counted
    counts[5, 3] = 4  # wall cell (2, 1): not counted
    cmap = CoverageMap(counts=counts, layout_rows=U_MAZE.rows, scaling=2.0, bins_per_cell=2)
    assert bin_coverage_fraction(cmap) == pytest.approx(3 / 28)
    assert coverage_fraction(cmap) == pytest.approx(2 / 7)  # the cell level sees 2 of 7 cells
    # Every bin of one cell touched: the cell level says 1/7 as before, the bin level 4/28 -- and one bin per
    # free cell saturates the cell level at 1 while the bin level says 1/4.
    one_cell = np.zeros_like(counts)
    one_cell[2:4, 2:4] = 1
    assert bin_coverage_fraction(dataclasses.replace(cmap, counts=one_cell)) == pytest.approx(4 / 28)
    corners = np.zeros_like(counts)
    for i, j in U_MAZE.free_cells:
        corners[2 * i, 2 * j] = 1
    spread = dataclasses.replace(cmap, counts=corners)
    assert coverage_fraction(spread) == 1.0 and bin_coverage_fraction(spread) == pytest.approx(1 / 4)
    assert bin_coverage_fraction(dataclasses.replace(cmap, counts=np.zeros_like(counts))) == 0.0


def test_layout_wall_mask_parses_and_refuses():
    np.testing.assert_array_equal(layout_wall_mask(["#.", "RG"]), [[True, False], [False, False]])
    with pytest.raises(ValueError, match="where: unknown layout characters"):
        layout_wall_mask(["#x"], "where")
    with pytest.raises(ValueError, match="not a non-empty rectangle"):
        layout_wall_mask(["#.", "#"])


def test_a_run_sums_all_its_actors_and_reports_a_broken_file(tmp_path):
    grid_of(TRAJECTORY[:2]).save(coverage_path(tmp_path, "actor_0"), env_steps=10)
    grid_of(TRAJECTORY[2:]).save(coverage_path(tmp_path, "actor_1"), env_steps=20)
    (tmp_path / COVERAGE_DIR / "actor_2.npz").write_bytes(b"truncated")
    grid, problems = load_run_coverage(tmp_path)
    np.testing.assert_array_equal(grid.counts, grid_of(TRAJECTORY).counts)
    assert grid.env_steps == 30 and grid.layout_rows == U_MAZE.rows
    assert len(problems) == 1 and "actor_2.npz" in problems[0]
    assert load_run_coverage(tmp_path / "nothing_here") == (None, [])


# --- the analysis side's reader -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_reader_parses_every_layout_as_the_maze_does(tmp_path, name):
    # analysis reads the layout text itself (it does not import actors): walls, free, start and goal cells, the
    # extent and the per-cell sums must be the writer's, for every registered layout.
    layout = get_layout(name, 1.5)
    grid = CoverageGrid(layout, bins_per_cell=3)
    grid.add(np.random.default_rng(0).uniform(-1.0, 15.0, size=(200, 2)))
    grid.add(np.array([[np.nan, 0.0]]))
    grid.save(coverage_path(tmp_path, "actor_0"), env_steps=77)
    back = read_coverage(coverage_path(tmp_path, "actor_0"))
    assert back.layout_rows == layout.rows and back.layout_name == name and back.scaling == 1.5
    assert back.bins_per_cell == 3 and back.env_steps == 77 and back.dropped == 1
    assert back.counts.dtype == np.int64
    np.testing.assert_array_equal(back.counts, grid.counts)
    np.testing.assert_array_equal(back.wall_mask, layout.wall_mask)
    np.testing.assert_array_equal(back.free_cells, layout.free_cells)
    np.testing.assert_array_equal(back.start_cells, layout.start_cells)
    np.testing.assert_array_equal(back.goal_cells, layout.goal_cells)
    np.testing.assert_array_equal(back.cell_counts(), grid.cell_counts())
    assert back.extent == grid.extent and back.cells_shape == layout.shape


def test_the_reader_refuses_what_is_not_a_coverage_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        read_coverage(junk)
    other = tmp_path / "other.npz"
    np.savez(other, counts=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="missing"):
        read_coverage(other)
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, counts=np.zeros((5, 5), np.int64), layout_rows=np.array(U_MAZE.rows),
             scaling=np.float64(2.0), bins_per_cell=np.int64(2), env_steps=np.int64(0))
    with pytest.raises(ValueError, match="needs"):
        read_coverage(wrong_shape)


def test_summed_adds_counts_and_env_steps_and_refuses_other_mazes(tmp_path):
    a = read_back(grid_of([(0.0, 0.0)]), tmp_path, "a")
    b = read_back(grid_of([(0.0, 0.0), (2.0, 2.0)]), tmp_path, "b")
    total = summed([a, b])
    assert total.counts[1, 1] == 2 and total.counts.sum() == 3
    with pytest.raises(ValueError, match="cannot merge"):
        summed([a, read_back(CoverageGrid(get_layout("u_maze", 4.0), bins_per_cell=2), tmp_path, "s4")])
    with pytest.raises(ValueError, match="cannot merge"):
        summed([a, read_back(CoverageGrid(U_MAZE, bins_per_cell=4), tmp_path, "k4")])
