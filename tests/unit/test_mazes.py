"""Maze layouts: parsing, validation, hand-counted cells and the cell <-> world convention."""

from __future__ import annotations

import numpy as np
import pytest

from actors.envs.mazes import LAYOUTS, MazeLayout, get_layout, parse_layout

PAPER_LAYOUTS = (
    "u_maze", "u_maze_eval", "u4_maze", "u4_maze_eval", "u5_maze", "u5_maze_eval",
    "big_maze", "big_maze_eval", "humanoid_big_maze_eval", "hardest_maze",
)  # fmt: skip


def test_every_registered_layout_parses():
    assert set(PAPER_LAYOUTS) | {"arena"} == set(LAYOUTS)
    for name in LAYOUTS:
        layout = get_layout(name, scaling=1.0)
        assert layout.name == name
        assert layout.wall_mask.shape == layout.shape


# (name, shape, start cells, number of G cells, number of free cells), all counted by hand from the layout text.
HAND_COUNTS = [
    ("u_maze", (5, 5), [[1, 1]], 6, 7),
    ("u_maze_eval", (5, 5), [[1, 1]], 3, 7),
    ("u4_maze", (7, 5), [[2, 1]], 10, 11),
    ("u4_maze_eval", (7, 5), [[2, 1]], 4, 11),
    ("u5_maze", (7, 8), [[2, 1]], 16, 17),
    ("u5_maze_eval", (7, 8), [[2, 1]], 8, 17),
    ("big_maze", (8, 8), [[1, 1]], 25, 26),
    ("big_maze_eval", (8, 8), [[1, 1]], 9, 26),
    ("hardest_maze", (9, 12), [[1, 1]], 45, 46),
    ("arena", (7, 7), [[3, 3]], 24, 25),
]


@pytest.mark.parametrize("name,shape,starts,n_goals,n_free", HAND_COUNTS)
def test_hand_counted_cells(name, shape, starts, n_goals, n_free):
    layout = get_layout(name, scaling=1.0)
    assert layout.shape == shape
    np.testing.assert_array_equal(layout.start_cells, np.array(starts))
    assert layout.goal_cells.shape == (n_goals, 2)
    assert layout.free_cells.shape == (n_free, 2)
    assert (~layout.wall_mask).sum() == n_free
    # R and G cells are free cells, never walls.
    for cells in (layout.start_cells, layout.goal_cells):
        assert not layout.wall_mask[cells[:, 0], cells[:, 1]].any()


def test_u_maze_cells_by_hand():
    layout = get_layout("u_maze", scaling=1.0)
    expected_walls = np.array(
        [
            [1, 1, 1, 1, 1],
            [1, 0, 0, 0, 1],
            [1, 1, 1, 0, 1],
            [1, 0, 0, 0, 1],
            [1, 1, 1, 1, 1],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(layout.wall_mask, expected_walls)
    np.testing.assert_array_equal(layout.goal_cells, [[1, 2], [1, 3], [2, 3], [3, 1], [3, 2], [3, 3]])


def test_humanoid_big_maze_eval_differs_from_ant_one_in_row_2_only():
    ant = get_layout("big_maze_eval", 1.0).rows
    humanoid = get_layout("humanoid_big_maze_eval", 1.0).rows
    assert [i for i, (a, h) in enumerate(zip(ant, humanoid)) if a != h] == [2]
    assert (ant[2], humanoid[2]) == ("#..#..G#", "#..#.GG#")


def test_cell_world_convention():
    layout = get_layout("u4_maze", scaling=4.0)
    # Paper convention: cell (i, j) <-> (x, y) = (i s, j s); i is the row (down the text).
    np.testing.assert_allclose(layout.cell_to_xy(np.array([2, 1])), [8.0, 4.0])
    np.testing.assert_allclose(layout.cell_to_xy(np.array([[0, 0], [5, 3]])), [[0.0, 0.0], [20.0, 12.0]])
    np.testing.assert_array_equal(layout.xy_to_cell(np.array([8.0 + 1.9, 4.0 - 1.9])), [2, 1])
    np.testing.assert_array_equal(layout.xy_to_cell(np.array([[2.1, 0.0], [17.9, 10.5]])), [[1, 0], [4, 3]])
    free = layout.free_cells
    np.testing.assert_array_equal(layout.xy_to_cell(layout.cell_to_xy(free)), free)


BAD_LAYOUTS = [
    ("#####/#RG#/#####", "not rectangular"),
    ("#####/#RG..", "at least 3 rows"),
    ("#####/#RG.#/#.G..", "border"),
    ("#####/.RG.#/#####", "border"),
    ("#####/#..G#/#####", "'R'"),
    ("#####/#R..#/#####", "'G'"),
    ("#####/#RxG#/#####", "unknown cell characters"),
]


@pytest.mark.parametrize("text,message", BAD_LAYOUTS)
def test_bad_layout_raises(text, message):
    with pytest.raises(ValueError, match=message):
        parse_layout("bad", text, scaling=1.0)


@pytest.mark.parametrize("scaling", [0.0, -1.0, float("nan")])
def test_bad_scaling_raises(scaling):
    with pytest.raises(ValueError, match="scaling"):
        get_layout("u_maze", scaling)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as info:
        get_layout("u6_maze", 1.0)
    message = str(info.value)
    assert "u6_maze" in message
    for name in ("arena", "big_maze", "hardest_maze", "u_maze_eval"):
        assert name in message


def test_layout_is_frozen():
    layout = get_layout("u_maze", 1.0)
    with pytest.raises(AttributeError):
        layout.scaling = 2.0  # type: ignore[misc]
    assert isinstance(layout, MazeLayout)
