"""Exploration of the collector's data: coverage files of a run read, summed over actors, and scalar coverage measures.

The files are ``<run_dir>/coverage/<role>.npz``, one per actor; their format is the contract in docs/run-directory.md
("Coverage files"), and this module reads them with numpy alone (the writer is `actors.coverage`, which this package
does not import). Scalars, over the *free* cells of the maze only (a count in a wall cell, from a body pushed into a
wall, is ignored):

- coverage fraction = (free cells with any count > 0) / n_free;
- bin coverage = (bins of free cells with any count > 0) / (k^2 n_free): the same at bin resolution (k x k bins per
  cell). The cell-level fraction saturates at 1 once every free cell is touched, which any collector soon does;
  the bin-level one still tells a collector that sweeps each cell from one that grazes its corner;
- normalised entropy = H(p) / log(n_free), where p is the cell-level visitation distribution over free cells
  (``p_c = count_c / sum of free-cell counts``, ``0 log 0 = 0``): 1 = every free cell equally often, 0 = one cell.
  Undefined (NaN) when nothing was counted or the maze has a single free cell.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.load import RunInfo

__all__ = ["COVERAGE_DIR", "CoverageMap", "bin_coverage_fraction", "coverage_entropy", "coverage_fraction",
           "coverage_frame", "free_cell_counts", "layout_wall_mask", "load_run_coverage", "merge_by_collector_depth",
           "open_npz", "read_coverage", "summed"]

COVERAGE_DIR = "coverage"
"""Sub-directory of a run directory holding one ``<role>.npz`` coverage file per actor."""
WALL, FREE, START, GOAL = "#", ".", "R", "G"
"""Maze layout characters: '#' is a wall; '.', 'R' (a start cell) and 'G' (a goal cell) are free."""


def layout_wall_mask(layout_rows: Sequence[str], where: str = "maze layout") -> np.ndarray:
    """bool ``[n_rows, n_cols]``: True on the wall cells of the layout text rows (top -> bottom). Raises ValueError
    starting with `where` when the rows are not a non-empty rectangle or hold characters other than '#', '.', 'R',
    'G'. The one parser of layout text in this package (coverage maps and `analysis.topology` share it)."""
    rows = tuple(layout_rows)
    if not rows or not rows[0] or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError(f"{where}: layout rows {rows!r} are not a non-empty rectangle")
    bad = set("".join(rows)) - set(WALL + FREE + START + GOAL)
    if bad:
        raise ValueError(f"{where}: unknown layout characters {sorted(bad)}")
    return np.array([[c == WALL for c in row] for row in rows], dtype=bool)


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare arrays; compare `maze` instead
class CoverageMap:
    """Achieved-goal visit counts of one coverage file, or of several summed, and the maze they were counted over.

    Axes as in the file: bin rows run along world x (down the layout text), bin columns along world y; cell ``(i, j)``
    is centred at world ``(i s, j s)`` and holds ``k x k`` bins (``s = scaling``, ``k = bins_per_cell``)."""

    counts: np.ndarray
    """int64 ``[n_rows k, n_cols k]`` visits per bin."""
    layout_rows: tuple[str, ...]
    """The maze text rows, top -> bottom, over '#', '.', 'R', 'G'."""
    scaling: float
    """s: world size of one maze cell."""
    bins_per_cell: int
    """k: bins along each axis of one cell."""
    env_steps: int = 0
    """The writers' env steps when they saved (summed over the files of a sum)."""
    dropped: int = 0
    """Non-finite positions the writers did not count (summed likewise)."""
    layout_name: str = "maze"
    """The layout's name, for messages."""

    def __post_init__(self) -> None:
        where = f"coverage of maze {self.layout_name!r}"
        layout_wall_mask(self.layout_rows, where)
        if self.bins_per_cell < 1 or not self.scaling > 0:
            raise ValueError(f"{where}: bins_per_cell {self.bins_per_cell} and scaling {self.scaling} must be positive")
        n_rows, n_cols = self.cells_shape
        expected = (n_rows * self.bins_per_cell, n_cols * self.bins_per_cell)
        if self.counts.shape != expected:
            raise ValueError(f"{where}: counts have shape {self.counts.shape}, the layout with "
                             f"bins_per_cell={self.bins_per_cell} needs {expected}")

    @property
    def cells_shape(self) -> tuple[int, int]:
        """(n_rows, n_cols) of the maze."""
        return len(self.layout_rows), len(self.layout_rows[0])

    @property
    def maze(self) -> tuple[tuple[str, ...], float, int]:
        """(layout rows, scaling, bins_per_cell): maps with the same maze can be summed."""
        return self.layout_rows, self.scaling, self.bins_per_cell

    def _cells_where(self, chars: str) -> np.ndarray:
        grid = np.array([list(row) for row in self.layout_rows])
        return np.argwhere(np.isin(grid, list(chars))).astype(np.int32)

    @property
    def wall_mask(self) -> np.ndarray:
        """bool ``[n_rows, n_cols]``: True on wall cells."""
        return layout_wall_mask(self.layout_rows)

    @property
    def free_cells(self) -> np.ndarray:
        """int32 ``[n_free, 2]``: (row, col) of every non-wall cell, row-major order."""
        return self._cells_where(FREE + START + GOAL)

    @property
    def start_cells(self) -> np.ndarray:
        """int32 ``[n_R, 2]``: (row, col) of every 'R' cell, row-major order."""
        return self._cells_where(START)

    @property
    def goal_cells(self) -> np.ndarray:
        """int32 ``[n_G, 2]``: (row, col) of every 'G' cell, row-major order."""
        return self._cells_where(GOAL)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) world units covered by the bins."""
        s = self.scaling
        n_rows, n_cols = self.cells_shape
        return -s / 2, (n_rows - 0.5) * s, -s / 2, (n_cols - 0.5) * s

    def cell_counts(self) -> np.ndarray:
        """int64 ``[n_rows, n_cols]``: counts summed over each cell's k x k bins."""
        n_rows, n_cols = self.cells_shape
        k = self.bins_per_cell
        return self.counts.reshape(n_rows, k, n_cols, k).sum(axis=(1, 3))


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """An npz archive of the run directory (coverage and probe files), opened without pickles. Raises OSError, or
    ValueError naming `path` when it is not a readable npz archive."""
    try:
        data = np.load(Path(path), allow_pickle=False)
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable npz file ({e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an npz archive")
    return data


def read_coverage(path: Path) -> CoverageMap:
    """Read one coverage file (format: docs/run-directory.md). Raises OSError, or ValueError naming `path` when it is
    not an npz archive, lacks a key or holds an inconsistent layout."""
    with open_npz(path) as data:
        try:
            return CoverageMap(
                counts=np.asarray(data["counts"]).astype(np.int64, copy=False),
                layout_rows=tuple(str(r) for r in data["layout_rows"]),
                scaling=float(data["scaling"]), bins_per_cell=int(data["bins_per_cell"]),
                env_steps=int(data["env_steps"]), dropped=int(data["dropped"]) if "dropped" in data else 0,
                layout_name=str(data["layout_name"]) if "layout_name" in data else "maze",
            )
        except KeyError as e:
            raise ValueError(f"{path}: not a coverage file, missing {e}") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def summed(maps: Iterable[CoverageMap]) -> CoverageMap:
    """One map holding the summed counts, env steps and dropped positions of `maps` (e.g. every actor of a run).
    All must share the maze (layout rows, scaling, bins_per_cell); ValueError otherwise or when `maps` is empty."""
    maps = list(maps)
    if not maps:
        raise ValueError("summed() needs at least one CoverageMap")
    first = maps[0]
    for m in maps[1:]:
        if m.maze != first.maze:
            raise ValueError(f"cannot merge coverage of maze {m.layout_name!r} (scaling {m.scaling}, "
                             f"k={m.bins_per_cell}) into {first.layout_name!r} (scaling {first.scaling}, "
                             f"k={first.bins_per_cell})")
    return dataclasses.replace(
        first, counts=np.sum([m.counts for m in maps], axis=0, dtype=np.int64),
        env_steps=sum(m.env_steps for m in maps), dropped=sum(m.dropped for m in maps),
    )


def free_cell_counts(grid: CoverageMap) -> np.ndarray:
    """int64 ``[n_free]``: visit counts of the free cells, in `CoverageMap.free_cells` (row-major) order."""
    cells = grid.free_cells
    return grid.cell_counts()[cells[:, 0], cells[:, 1]]


def coverage_fraction(grid: CoverageMap) -> float:
    """Fraction of free cells visited at least once (0 when nothing was counted)."""
    counts = free_cell_counts(grid)
    return float((counts > 0).sum() / len(counts))


def bin_coverage_fraction(cmap: CoverageMap) -> float:
    """Fraction of the bins lying in free cells (``k^2 n_free`` of them) visited at least once (0 when nothing was
    counted); bins of wall cells are left out of both counts."""
    k = cmap.bins_per_cell
    free_bins = np.repeat(np.repeat(~cmap.wall_mask, k, axis=0), k, axis=1)  # [n_rows k, n_cols k]
    return float((cmap.counts[free_bins] > 0).sum() / free_bins.sum())


def coverage_entropy(grid: CoverageMap) -> float:
    """Entropy of the free-cell visitation distribution divided by log(n_free), in [0, 1]; NaN when undefined."""
    counts = free_cell_counts(grid).astype(np.float64)
    total = counts.sum()
    if total <= 0 or len(counts) < 2:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum() / np.log(len(counts)))


def load_run_coverage(run_dir: Path) -> tuple[CoverageMap | None, list[str]]:
    """The coverage of every actor of a run summed into one map (None when the run has no coverage files), and a
    message per file that could not be read or merged."""
    problems: list[str] = []
    maps = []
    for path in sorted((Path(run_dir) / COVERAGE_DIR).glob("*.npz")):
        try:
            maps.append((path, read_coverage(path)))
        except (OSError, ValueError) as e:
            problems.append(f"{path}: cannot read coverage ({e}); file skipped")
    if not maps:
        return None, problems
    # Keep the files that match the first one; a mismatch (two mazes in one run dir) is reported, not summed.
    first = maps[0][1]
    kept = [first]
    for path, grid in maps[1:]:
        try:
            summed([first, grid])
        except ValueError as e:
            problems.append(f"{path}: {e}; file skipped")
            continue
        kept.append(grid)
    return summed(kept), problems


def coverage_frame(runs: Iterable[RunInfo]) -> tuple[pd.DataFrame, dict[str, CoverageMap], list[str]]:
    """Per run with coverage files: a row (run, env, seed, collector_depth, coverage_fraction, bin_coverage,
    coverage_entropy, coverage_env_steps, coverage_count), the summed grid per run name, and the problems met."""
    rows, grids, problems = [], {}, []
    for info in runs:
        grid, run_problems = load_run_coverage(info.path)
        problems.extend(run_problems)
        if grid is None:
            continue
        grids[info.name] = grid
        rows.append({
            "run": info.name, "env": info.env, "seed": info.seed, "collector_depth": info.collector_depth,
            "coverage_fraction": coverage_fraction(grid), "bin_coverage": bin_coverage_fraction(grid),
            "coverage_entropy": coverage_entropy(grid),
            "coverage_env_steps": grid.env_steps, "coverage_count": int(grid.counts.sum()),
        })
    columns = ["run", "env", "seed", "collector_depth", "coverage_fraction", "bin_coverage", "coverage_entropy",
               "coverage_env_steps", "coverage_count"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["collector_depth"] = frame["collector_depth"].astype("Int64")
    return frame, grids, problems


def merge_by_collector_depth(coverage: pd.DataFrame, grids: dict[str, CoverageMap]
                             ) -> dict[tuple[str, int], CoverageMap]:
    """Sum the run grids of each (env, collector depth) over seeds into one grid, for the coverage maps. Runs whose
    maze differs from the first run of their group are left out."""
    merged: dict[tuple[str, int], CoverageMap] = {}
    for (env, depth), group in coverage.groupby(["env", "collector_depth"], sort=True, dropna=False):
        if pd.isna(depth):
            continue
        members = [grids[name] for name in group["run"]]
        same = [g for g in members if g.maze == members[0].maze]
        merged[(str(env), int(depth))] = summed(same)
    return merged
