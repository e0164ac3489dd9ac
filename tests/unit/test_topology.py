"""The maze-topology probe's math (analysis/topology.py): geodesic distances on hand-made layouts against values worked
out by hand, the edge rule of the node graph, the scores of synthetic critics, and the Q-map file round trip.

The U-maze used below, at s = 1 (cell (i, j) covers [i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]):

    #####      row 0
    #...#      row 1: free (1,1) (1,2) (1,3)
    ###.#      row 2: walls (2,1) (2,2) -- the block x in [1.5, 2.5], y in [0.5, 2.5] -- and free (2,3)
    #...#      row 3: free (3,1) (3,2) (3,3)
    #####

From the centre of (1,1) = (1, 1) to the centre of (3,1) = (3, 1): Euclidean 2 (through the wall block). Along the
corridor centres it is 2 + 2 + 2 = 6, but the true shortest path hugs the block's two convex corners (1.5, 2.5) and
(2.5, 2.5): sqrt(0.5^2 + 1.5^2) + 1 + sqrt(0.5^2 + 1.5^2) = 1 + sqrt(10) = 4.16228.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.topology import (OPEN_SPACE_MAX_RELATIVE_ERROR, PROBES_DIR, FreeSpaceGrid, _STEPS, load_run_qmaps,
                               qmap_path, read_qmap, sample_probe, save_qmap, topology_scores)

CORRIDOR = "#####/#...#/#####".split("/")
U_MAZE = "#####/#...#/###.#/#...#/#####".split("/")
U4_MAZE = "#####/#...#/#.#.#/###.#/#.#.#/#...#/#####".split("/")
TRUE_U_GEODESIC = 1 + math.sqrt(10)


def _true_u_geodesic(a: np.ndarray, b: np.ndarray) -> float:
    """Shortest path in the U-maze from a point a of row 1 to a point b of row 3, both left of the corner column:
    straight to the corner (1.5, 2.5), along the block's edge to (2.5, 2.5), straight to b."""
    return float(np.linalg.norm(a - (1.5, 2.5)) + 1.0 + np.linalg.norm(b - (2.5, 2.5)))


# --- the grid -------------------------------------------------------------------------------------------------------

def test_nodes_sit_at_sub_cell_centres_of_free_cells_only():
    grid = FreeSpaceGrid.from_layout(CORRIDOR, scaling=2.0, nodes_per_cell=2)
    assert grid.n_nodes == 3 * 4 and grid.node_spacing == 1.0
    # Cell (1, 1) is centred at (2, 2) and covers [1, 3] x [1, 3]: sub-cell centres at 1.5 and 2.5.
    np.testing.assert_allclose(grid.node_xy[:2], [[1.5, 1.5], [1.5, 2.5]])
    assert grid.node_xy.dtype == np.float64 and grid.node_xy.shape == (12, 2)
    assert grid.node_cell.shape == (12, 2) and set(map(tuple, grid.node_cell)) == {(1, 1), (1, 2), (1, 3)}
    assert all(CORRIDOR[i][j] != "#" for i, j in grid.node_cell)
    # Every node lies inside the cell it names.
    assert np.all(np.abs(grid.node_xy - grid.node_cell * 2.0) < 1.0)


def test_axis_aligned_diagonal_and_knight_displacements_are_exact_in_open_space():
    grid = FreeSpaceGrid.from_layout(CORRIDOR, scaling=1.0)  # k = 8: a free 8 x 24 lattice of nodes
    h = grid.node_spacing
    sources = np.arange(0, grid.n_nodes, 7)
    geo, euc = grid.geodesic_from(sources), grid.euclidean_from(sources)
    assert geo.shape == euc.shape == (len(sources), grid.n_nodes)
    du = np.abs(np.rint((grid.node_xy[None, :, 0] - grid.node_xy[sources, None, 0]) / h))
    dv = np.abs(np.rint((grid.node_xy[None, :, 1] - grid.node_xy[sources, None, 1]) / h))
    on_a_step = (du == 0) | (dv == 0) | (du == dv) | (du == 2 * dv) | (dv == 2 * du)
    np.testing.assert_allclose(geo[on_a_step], euc[on_a_step], rtol=1e-12, atol=1e-12)
    # Every other displacement: never shorter than the straight line, at most 2.75 % longer.
    assert np.all(geo >= euc - 1e-12)
    moved = euc > 0
    assert np.max(geo[moved] / euc[moved] - 1) <= OPEN_SPACE_MAX_RELATIVE_ERROR + 1e-12
    # E.g. (3, 1) sub-cells = a knight step plus an axis step: sqrt(5) + 1 against sqrt(10).
    a = grid.nearest_node(np.array([1.0 - 3.5 * h, 1.0 - 3.5 * h]))  # the lattice's corner node
    b = grid.nearest_node(grid.node_xy[a] + (3 * h, h))
    assert grid.geodesic_from(np.array([a]))[0, b] == pytest.approx((math.sqrt(5) + 1) * h)


def test_the_open_space_bound_is_the_half_angle_between_step_directions():
    assert OPEN_SPACE_MAX_RELATIVE_ERROR == pytest.approx(0.027486, abs=1e-6)
    # Reached on a large open room: the worst displacement lies halfway between (1, 0) and (2, 1).
    grid = FreeSpaceGrid.from_layout(["." * 12] * 12, scaling=1.0)
    geo, euc = grid.geodesic_from(np.array([0]))[0], grid.euclidean_from(np.array([0]))[0]
    worst = np.max(geo[1:] / euc[1:] - 1)
    assert 0.027 < worst <= OPEN_SPACE_MAX_RELATIVE_ERROR + 1e-12


def test_the_u_maze_geodesic_goes_around_the_wall():
    # k = 9: the middle node of each cell is its centre, so these are the cell centres exactly.
    grid = FreeSpaceGrid.from_layout(U_MAZE, scaling=1.0, nodes_per_cell=9)
    a, b = grid.nearest_node(np.array([[1.0, 1.0], [3.0, 1.0]]))
    np.testing.assert_allclose(grid.node_xy[[a, b]], [[1.0, 1.0], [3.0, 1.0]], atol=1e-12)
    assert grid.euclidean_from(np.array([a]))[0, b] == pytest.approx(2.0)
    geodesic = grid.geodesic_from(np.array([a]))[0, b]
    assert geodesic == pytest.approx(4.4321, abs=1e-4)  # the value stated in FreeSpaceGrid's docstring
    # The documented tolerance: never below the true path; above it by at most 2.75 % plus h per corner (2 here).
    assert TRUE_U_GEODESIC <= geodesic <= (1 + OPEN_SPACE_MAX_RELATIVE_ERROR) * TRUE_U_GEODESIC + 2 * grid.node_spacing
    assert geodesic > 2 * 2.0  # far more than the Euclidean 2: the wall counts
    assert geodesic == pytest.approx(grid.geodesic_from(np.array([b]))[0, a])  # symmetric


@pytest.mark.parametrize("k", [3, 4, 8, 16])
def test_the_u_maze_tolerance_holds_at_other_resolutions(k):
    grid = FreeSpaceGrid.from_layout(U_MAZE, scaling=1.0, nodes_per_cell=k)
    a, b = grid.nearest_node(np.array([[1.0, 1.0], [3.0, 1.0]]))
    truth = _true_u_geodesic(grid.node_xy[a], grid.node_xy[b])
    geodesic = grid.geodesic_from(np.array([a]))[0, b]
    assert truth <= geodesic <= (1 + OPEN_SPACE_MAX_RELATIVE_ERROR) * truth + 2 * grid.node_spacing
    if k == 8:  # the default resolution, stated in the docstring
        assert (geodesic, truth) == (pytest.approx(4.3316, abs=1e-4), pytest.approx(4.0462, abs=1e-4))


def test_scaling_scales_every_distance():
    one = FreeSpaceGrid.from_layout(U_MAZE, scaling=1.0, nodes_per_cell=4)
    four = FreeSpaceGrid.from_layout(U_MAZE, scaling=4.0, nodes_per_cell=4)
    np.testing.assert_allclose(four.node_xy, 4 * one.node_xy)
    np.testing.assert_allclose(four.geodesic_from(np.array([0, 5])), 4 * one.geodesic_from(np.array([0, 5])))


@pytest.mark.parametrize("step, cells", _STEPS, ids=[str(step) for step, _ in _STEPS])
def test_each_step_lists_every_sub_cell_its_segment_crosses(step, cells):
    # Sub-cell (p, q) covers [p - 0.5, p + 0.5] x [q - 0.5, q + 0.5]; sample the segment from (0, 0) to the step.
    t = (np.arange(4000) + 0.5) / 4000
    points = t[:, None] * np.array(step, dtype=np.float64)
    crossed = set(map(tuple, np.rint(points).astype(int)))
    assert crossed <= set(cells)
    if abs(step[0]) == abs(step[1]):  # a king diagonal: the two orthogonal neighbours are required on top
        assert set(cells) - crossed == {(step[0], 0), (0, step[1])}
    else:
        assert crossed == set(cells)


def edge(grid: FreeSpaceGrid, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether the node of sub-cell a and the node of sub-cell b are joined."""
    i, j = grid.node_of_subcell[a], grid.node_of_subcell[b]
    return bool(grid.adjacency[i, j] or grid.adjacency[j, i])


def test_an_edge_needs_every_crossed_sub_cell_free():
    # k = 1: a node per cell, so the layouts below are the sub-cell lattices themselves.
    open_ = FreeSpaceGrid.from_layout(["...", "..."], 1.0, nodes_per_cell=1)
    assert edge(open_, (0, 0), (1, 2)) and edge(open_, (0, 0), (1, 1)) and edge(open_, (0, 2), (1, 0))
    assert open_.geodesic_from(np.array([0]))[0, 5] == pytest.approx(math.sqrt(5))
    # A wall the knight's segment does not touch leaves the edge; one it crosses removes it.
    assert edge(FreeSpaceGrid.from_layout(["..#", "..."], 1.0, 1), (0, 0), (1, 2))
    assert edge(FreeSpaceGrid.from_layout(["...", "#.."], 1.0, 1), (0, 0), (1, 2))
    assert not edge(FreeSpaceGrid.from_layout([".#.", "..."], 1.0, 1), (0, 0), (1, 2))
    assert not edge(FreeSpaceGrid.from_layout(["...", ".#."], 1.0, 1), (0, 0), (1, 2))
    # A diagonal needs both orthogonal neighbours.
    corner = FreeSpaceGrid.from_layout(["..", "#."], 1.0, 1)
    assert not edge(corner, (0, 0), (1, 1))
    assert corner.geodesic_from(np.array([0]))[0, 2] == pytest.approx(2.0)  # round by (0, 1)


def test_walls_touching_at_a_corner_cut_the_maze_in_two():
    grid = FreeSpaceGrid.from_layout(["#.", ".#"], 1.0, nodes_per_cell=2)
    geo = grid.geodesic_from(np.arange(grid.n_nodes))
    cells = [tuple(c) for c in grid.node_cell]
    same = np.array([[a == b for b in cells] for a in cells])
    assert np.all(np.isfinite(geo[same])) and np.all(np.isinf(geo[~same]))


def test_nearest_node_keeps_the_leading_shape_and_finds_a_node_from_inside_a_wall():
    grid = FreeSpaceGrid.from_layout(U_MAZE, scaling=2.0, nodes_per_cell=4)
    xy = grid.node_xy[[3, 10, 20]] + 0.1  # within each node's sub-cell (h = 0.5)
    nodes = grid.nearest_node(np.stack([xy, xy]))
    assert nodes.shape == (2, 3) and nodes.dtype == np.int64 and nodes.tolist() == [[3, 10, 20]] * 2
    assert grid.nearest_node(grid.node_xy[7]).shape == () and int(grid.nearest_node(grid.node_xy[7])) == 7
    # (3.2, 2.1) lies in wall cell (2, 1) (x in [3, 5], y in [1, 3]); the nearest node is row 1's at (2.75, 2.25).
    in_wall = int(grid.nearest_node(np.array([3.2, 2.1])))
    assert tuple(grid.node_cell[in_wall]) == (1, 1) and np.allclose(grid.node_xy[in_wall], (2.75, 2.25))
    far = int(grid.nearest_node(np.array([-50.0, -50.0])))
    assert np.allclose(grid.node_xy[far], (1.25, 1.25))
    with pytest.raises(ValueError, match="finite"):
        grid.nearest_node(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        grid.nearest_node(np.zeros(3))


@pytest.mark.parametrize("rows, message", [
    (["###", "###"], "no free cell"),
    (["#x#", "#.#"], "unknown layout characters"),
    (["#.#", "#."], "not a non-empty rectangle"),
    ([], "not a non-empty rectangle"),
])
def test_bad_layouts_are_refused_with_a_clear_message(rows, message):
    with pytest.raises(ValueError, match=message):
        FreeSpaceGrid.from_layout(rows, 1.0)


def test_bad_scaling_nodes_per_cell_and_sources_are_refused():
    with pytest.raises(ValueError, match="scaling"):
        FreeSpaceGrid.from_layout(U_MAZE, 0.0)
    with pytest.raises(ValueError, match="nodes_per_cell"):
        FreeSpaceGrid.from_layout(U_MAZE, 1.0, nodes_per_cell=0)
    grid = FreeSpaceGrid.from_layout(U_MAZE, 1.0, nodes_per_cell=2)
    with pytest.raises(ValueError, match="node indices"):
        grid.geodesic_from(np.array([grid.n_nodes]))
    with pytest.raises(ValueError, match="1-D integer"):
        grid.euclidean_from(np.array([0.5]))


# --- probe pairs and scores -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def u4_probe():
    grid = FreeSpaceGrid.from_layout(U4_MAZE, scaling=2.0, nodes_per_cell=4)
    return grid, sample_probe(grid, n_starts=16, n_goals=64, seed=3)


def test_sample_probe_is_deterministic_distinct_and_consistent(u4_probe):
    grid, pairs = u4_probe
    assert pairs.start_idx.shape == (16,) and pairs.goal_idx.shape == (64,)
    assert len(set(pairs.start_idx)) == 16 and len(set(pairs.goal_idx)) == 64  # without replacement
    again = sample_probe(grid, 16, 64, seed=3)
    np.testing.assert_array_equal(again.start_idx, pairs.start_idx)
    np.testing.assert_array_equal(again.goal_idx, pairs.goal_idx)
    assert not np.array_equal(sample_probe(grid, 16, 64, seed=4).goal_idx, pairs.goal_idx)
    np.testing.assert_array_equal(pairs.geodesic, grid.geodesic_from(pairs.start_idx)[:, pairs.goal_idx])
    np.testing.assert_array_equal(pairs.euclidean, grid.euclidean_from(pairs.start_idx)[:, pairs.goal_idx])
    # More nodes than the grid has: drawn with replacement rather than refused.
    tiny = FreeSpaceGrid.from_layout(["."], 1.0, nodes_per_cell=1)
    assert sample_probe(tiny, 3, 2, seed=0).geodesic.shape == (3, 2)
    with pytest.raises(ValueError, match="n_starts"):
        sample_probe(grid, 0, 4, seed=0)


def test_scores_of_a_hand_made_probe():
    # One start, three goals. g0 is near through a wall (euclid 1, geodesic 5); g1 and g2 are near along the maze.
    euclidean = np.array([[1.0, 2.0, 3.0]])
    geodesic = np.array([[5.0, 2.0, 3.0]])
    # Comparisons (g1, g2) with euclid(g1) < euclid(g2) - 0.5 and geodesic(g1) > geodesic(g2) + 0.5: (g0, g1) and
    # (g0, g2); (g1, g2) agrees. Energy [0, 1, 0]: g1 beats g0 (1), g2 ties g0 (1/2) -> 1.5 / 2.
    scores = topology_scores(np.array([[0.0, 1.0, 0.0]]), geodesic, euclidean, margin=0.5)
    assert scores["topo_through_wall_comparisons"] == 2.0
    assert scores["topo_through_wall_fraction"] == pytest.approx(0.75)
    # Spearman by hand: energy ranks (1.5, 3, 1.5), -geodesic ranks (1, 3, 2) -> r = 0.866025.
    assert scores["topo_rank_corr_geodesic"] == pytest.approx(math.sqrt(3) / 2)
    assert scores["topo_rank_corr_euclidean"] == pytest.approx(0.0)  # -euclid ranks (3, 2, 1)
    # A wider margin keeps only (g0, g2) (1 < 3 - 1.5 and 5 > 3 + 1.5), a tie; wider still, nothing.
    wider = topology_scores(np.array([[0.0, 1.0, 0.0]]), geodesic, euclidean, margin=1.5)
    assert (wider["topo_through_wall_comparisons"], wider["topo_through_wall_fraction"]) == (1.0, 0.5)
    widest = topology_scores(np.array([[0.0, 1.0, 0.0]]), geodesic, euclidean, margin=2.0)
    assert widest["topo_through_wall_comparisons"] == 0.0 and math.isnan(widest["topo_through_wall_fraction"])


def test_a_critic_that_follows_the_maze_scores_one_and_one_that_cuts_through_walls_zero(u4_probe):
    _, pairs = u4_probe
    margin = 1.0  # half a cell at s = 2
    maze = topology_scores(-pairs.geodesic, pairs.geodesic, pairs.euclidean, margin)
    assert set(maze) == {"topo_rank_corr_geodesic", "topo_rank_corr_euclidean", "topo_through_wall_fraction",
                         "topo_through_wall_comparisons"}
    assert maze["topo_rank_corr_geodesic"] == pytest.approx(1.0)
    assert maze["topo_through_wall_fraction"] == 1.0
    assert maze["topo_through_wall_comparisons"] > 100  # the U4-maze's walls make plenty
    assert maze["topo_rank_corr_euclidean"] < 0.9
    crow = topology_scores(-pairs.euclidean, pairs.geodesic, pairs.euclidean, margin)
    assert crow["topo_rank_corr_euclidean"] == pytest.approx(1.0)
    assert crow["topo_through_wall_fraction"] == 0.0
    assert crow["topo_through_wall_comparisons"] == maze["topo_through_wall_comparisons"]
    noise = topology_scores(np.random.default_rng(0).normal(size=pairs.geodesic.shape), pairs.geodesic,
                            pairs.euclidean, margin)
    assert 0.3 < noise["topo_through_wall_fraction"] < 0.7
    assert abs(noise["topo_rank_corr_geodesic"]) < 0.2
    flat = topology_scores(np.zeros_like(pairs.geodesic), pairs.geodesic, pairs.euclidean, margin)
    assert flat["topo_through_wall_fraction"] == 0.5 and math.isnan(flat["topo_rank_corr_geodesic"])


def test_a_maze_without_walls_has_no_through_wall_comparisons():
    grid = FreeSpaceGrid.from_layout(["....", "....", "...."], scaling=1.0)
    pairs = sample_probe(grid, 16, 128, seed=0)
    scores = topology_scores(-pairs.geodesic, pairs.geodesic, pairs.euclidean, margin=0.5)
    assert scores["topo_through_wall_comparisons"] == 0.0
    assert math.isnan(scores["topo_through_wall_fraction"])
    assert scores["topo_rank_corr_euclidean"] > 0.99  # open space: the two distances nearly agree


def test_scores_refuse_mismatched_shapes_and_a_negative_margin():
    with pytest.raises(ValueError, match="shape"):
        topology_scores(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((3, 2)), 0.5)
    with pytest.raises(ValueError, match="margin"):
        topology_scores(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), -1.0)


# --- Q-map files ----------------------------------------------------------------------------------------------------

def test_qmap_save_read_round_trip(tmp_path):
    grid = FreeSpaceGrid.from_layout(U_MAZE, scaling=4.0, nodes_per_cell=2)
    start = int(grid.nearest_node(np.array([4.0, 4.0])))
    energy = -grid.geodesic_from(np.array([start]))[0]
    path = qmap_path(tmp_path, "learner_d64")
    assert path == tmp_path / PROBES_DIR / "learner_d64.npz"
    written = save_qmap(path, energy=energy, grid=grid, start_xy=grid.node_xy[start], env_steps=12_000,
                        grad_steps=345, learner="learner_d64", critic_depth=64)
    assert sorted(p.name for p in path.parent.iterdir()) == ["learner_d64.npz"]  # no temp file left behind
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert set(data.files) == {"energy", "node_xy", "start_xy", "layout_rows", "scaling", "nodes_per_cell",
                                   "env_steps", "grad_steps", "learner", "critic_depth"}
        assert data["energy"].dtype == np.float32 and data["node_xy"].shape == (grid.n_nodes, 2)
    back = read_qmap(path)
    assert (back.learner, back.critic_depth, back.env_steps, back.grad_steps) == ("learner_d64", 64, 12_000, 345)
    assert back.layout_rows == tuple(U_MAZE) and back.scaling == 4.0 and back.nodes_per_cell == 2
    np.testing.assert_array_equal(back.energy, energy.astype(np.float32))
    np.testing.assert_array_equal(back.energy, written.energy)
    np.testing.assert_array_equal(back.node_xy, grid.node_xy)
    np.testing.assert_array_equal(back.start_xy, grid.node_xy[start])
    np.testing.assert_array_equal(back.grid().node_xy, grid.node_xy)
    with pytest.raises(ValueError, match="one value per grid node"):
        save_qmap(path, energy=energy[:-1], grid=grid, start_xy=grid.node_xy[start], env_steps=0, grad_steps=0,
                  learner="x", critic_depth=4)


def test_read_qmap_refuses_what_is_not_a_probe_file_and_a_run_lists_its_maps(tmp_path):
    grid = FreeSpaceGrid.from_layout(CORRIDOR, scaling=1.0, nodes_per_cell=2)
    for learner, depth in (("learner_d64", 64), ("collector", 16), ("learner_d4", 4)):
        save_qmap(qmap_path(tmp_path, learner), energy=np.zeros(grid.n_nodes), grid=grid, start_xy=grid.node_xy[0],
                  env_steps=1, grad_steps=1, learner=learner, critic_depth=depth)
    (tmp_path / PROBES_DIR / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        read_qmap(tmp_path / PROBES_DIR / "junk.npz")
    other = tmp_path / "other.npz"
    np.savez(other, energy=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        read_qmap(other)
    qmaps, problems = load_run_qmaps(tmp_path)
    assert [q.learner for q in qmaps] == ["collector", "learner_d4", "learner_d64"]
    assert len(problems) == 1 and "junk.npz" in problems[0]
    assert load_run_qmaps(tmp_path / "nothing_here") == ([], [])
