"""Maze layouts shared by every maze env (point, ant, humanoid).

A layout is text: rows top -> bottom joined by ``'/'``; ``'#'`` wall, ``'.'`` free, ``'R'`` start cell, ``'G'`` goal
cell (``R`` and ``G`` cells are free too). The paper's layouts (§4.2, §4.4 of the research notes) are kept verbatim.

World coordinates follow the paper's convention: cell ``(i, j)`` = (row, col) has its centre at world
``(x, y) = (i * s, j * s)`` with ``s`` = `MazeLayout.scaling`, and covers ``[i s - s/2, i s + s/2] x [j s - s/2,
j s + s/2]``. So world x grows *down* the text and world y grows *right*; the row-0 border sits at x = 0.

Pure numpy: env modules turn these arrays into jax constants themselves.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["LAYOUTS", "MazeLayout", "get_layout", "parse_layout"]

WALL, FREE, START, GOAL = "#", ".", "R", "G"
_CELL_CHARS = frozenset(WALL + FREE + START + GOAL)

LAYOUTS: dict[str, str] = {
    # Paper layouts (ant §4.2; humanoid §4.4 uses u_maze / big_maze and its own big_maze eval variant).
    "u_maze": "#####/#RGG#/###G#/#GGG#/#####",
    "u_maze_eval": "#####/#R..#/###.#/#GGG#/#####",
    "u4_maze": "#####/#GGG#/#R#G#/###G#/#G#G#/#GGG#/#####",
    "u4_maze_eval": "#####/#...#/#R#.#/###.#/#G#.#/#GGG#/#####",
    "u5_maze": "########/#GGGGGG#/#R####G#/######G#/#G####G#/#GGGGGG#/########",
    "u5_maze_eval": "########/#......#/#R####.#/######.#/#G####G#/#GGGGGG#/########",
    "big_maze": "########/#RG##GG#/#GG#GGG#/##GGG###/#GG#GGG#/#G#GG#G#/#GGG#GG#/########",
    "big_maze_eval": "########/#R.##GG#/#..#..G#/##...###/#..#...#/#.#G.#G#/#.GG#GG#/########",
    "humanoid_big_maze_eval": "########/#R.##GG#/#..#.GG#/##...###/#..#...#/#.#G.#G#/#.GG#GG#/########",
    "hardest_maze": (
        "############/#RGGG#GGGGG#/#G##G#G#G#G#/#GGGGGG#GGG#/#G####G###G#/#GG#G#GGGGG#/##G#G#G#G###/"
        "#GG#GGG#GGG#/############"
    ),
    # Ours (not in the paper): an open 5x5 room, start in the middle, goals everywhere else. The wall-free sanity
    # task, useful to tell "cannot learn at all" apart from "cannot find the way around walls".
    "arena": "#######/#GGGGG#/#GGGGG#/#GGRGG#/#GGGGG#/#GGGGG#/#######",
}


@dataclasses.dataclass(frozen=True)
class MazeLayout:
    """A validated maze grid and its world scale. Construction validates; see the module docstring for axes."""

    name: str
    """Layout name (a `LAYOUTS` key, or any label for a custom layout)."""
    rows: tuple[str, ...]
    """Grid rows top -> bottom, each a string over '#', '.', 'R', 'G'."""
    scaling: float
    """World size of one (square) cell, env length units (the paper: 4.0 for ant mazes, 2.0 for humanoid)."""

    def __post_init__(self) -> None:
        where = f"maze layout {self.name!r}"
        if not (np.isfinite(self.scaling) and self.scaling > 0):
            raise ValueError(f"{where}: scaling must be a positive number, got {self.scaling!r}")
        if len(self.rows) < 3:
            raise ValueError(f"{where}: needs at least 3 rows (a border and one free row), got {len(self.rows)}")
        n_cols = len(self.rows[0])
        for i, row in enumerate(self.rows):
            if len(row) != n_cols:
                raise ValueError(f"{where}: not rectangular, row {i} {row!r} has {len(row)} cells, row 0 has {n_cols}")
            bad = set(row) - _CELL_CHARS
            if bad:
                raise ValueError(f"{where}: row {i} {row!r} has unknown cell characters {sorted(bad)}")
        # A closed border is what lets envs skip bounds checks: nothing can walk off the grid.
        border = self.rows[0] + self.rows[-1] + "".join(row[0] + row[-1] for row in self.rows)
        if set(border) != {WALL}:
            raise ValueError(f"{where}: the border must be all walls ('#')")
        text = "".join(self.rows)
        if START not in text or GOAL not in text:
            raise ValueError(f"{where}: needs at least one start 'R' and one goal 'G' cell")

    @property
    def shape(self) -> tuple[int, int]:
        """(n_rows, n_cols) of the grid."""
        return len(self.rows), len(self.rows[0])

    def _cells_where(self, chars: str) -> np.ndarray:
        grid = np.array([list(row) for row in self.rows])
        return np.argwhere(np.isin(grid, list(chars))).astype(np.int32)

    @property
    def wall_mask(self) -> np.ndarray:
        """bool [n_rows, n_cols]: True on wall cells."""
        return np.array([[c == WALL for c in row] for row in self.rows], dtype=bool)

    @property
    def start_cells(self) -> np.ndarray:
        """int32 [n_R, 2]: (row, col) of every 'R' cell, row-major order."""
        return self._cells_where(START)

    @property
    def goal_cells(self) -> np.ndarray:
        """int32 [n_G, 2]: (row, col) of every 'G' cell, row-major order."""
        return self._cells_where(GOAL)

    @property
    def free_cells(self) -> np.ndarray:
        """int32 [n_free, 2]: (row, col) of every non-wall cell ('.', 'R', 'G'), row-major order."""
        return self._cells_where(FREE + START + GOAL)

    def cell_to_xy(self, cells: np.ndarray) -> np.ndarray:
        """``cells [..., 2]`` (row, col) -> cell centres ``xy [..., 2]`` float32 world units: (i s, j s)."""
        return np.asarray(cells, dtype=np.float32) * np.float32(self.scaling)

    def xy_to_cell(self, xy: np.ndarray) -> np.ndarray:
        """``xy [..., 2]`` world units -> int32 (row, col) ``[..., 2]`` of the cell containing it (round(xy / s))."""
        return np.round(np.asarray(xy, dtype=np.float64) / self.scaling).astype(np.int32)


def parse_layout(name: str, text: str, scaling: float) -> MazeLayout:
    """Build a `MazeLayout` from '/'-joined layout text; raises ValueError when it is malformed."""
    return MazeLayout(name=name, rows=tuple(text.split("/")), scaling=float(scaling))


def get_layout(name: str, scaling: float) -> MazeLayout:
    """The registered layout `name` at cell size `scaling`; ValueError listing the known names otherwise."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown maze layout {name!r}; known layouts: {', '.join(sorted(LAYOUTS))}")
    return parse_layout(name, LAYOUTS[name], scaling)
