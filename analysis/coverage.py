"""Exploration of the collector's data: coverage files of a run summed over actors, and scalar coverage measures.

The files are written by the actors (`actors.coverage`, ``<run_dir>/coverage/<role>.npz``). Scalars, over the
*free* cells of the maze only (a count in a wall cell, from a body pushed into a wall, is ignored):

- coverage fraction = (free cells with any count > 0) / n_free;
- normalised entropy = H(p) / log(n_free), where p is the cell-level visitation distribution over free cells
  (``p_c = count_c / sum of free-cell counts``, ``0 log 0 = 0``): 1 = every free cell equally often, 0 = one cell.
  Undefined (NaN) when nothing was counted or the maze has a single free cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from actors.coverage import COVERAGE_DIR, CoverageGrid
from actors.coverage import load as load_grid
from analysis.load import RunInfo

__all__ = ["coverage_entropy", "coverage_fraction", "coverage_frame", "free_cell_counts", "load_run_coverage",
           "merge_by_collector_depth"]


def free_cell_counts(grid: CoverageGrid) -> np.ndarray:
    """int64 ``[n_free]``: visit counts of the free cells, in `MazeLayout.free_cells` (row-major) order."""
    cells = grid.layout.free_cells
    return grid.cell_counts()[cells[:, 0], cells[:, 1]]


def coverage_fraction(grid: CoverageGrid) -> float:
    """Fraction of free cells visited at least once (0 when nothing was counted)."""
    counts = free_cell_counts(grid)
    return float((counts > 0).sum() / len(counts))


def coverage_entropy(grid: CoverageGrid) -> float:
    """Entropy of the free-cell visitation distribution divided by log(n_free), in [0, 1]; NaN when undefined."""
    counts = free_cell_counts(grid).astype(np.float64)
    total = counts.sum()
    if total <= 0 or len(counts) < 2:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum() / np.log(len(counts)))


def load_run_coverage(run_dir: Path) -> tuple[CoverageGrid | None, list[str]]:
    """The coverage of every actor of a run summed into one grid (None when the run has no coverage files), and a
    message per file that could not be read or merged."""
    problems: list[str] = []
    grids = []
    for path in sorted((Path(run_dir) / COVERAGE_DIR).glob("*.npz")):
        try:
            grids.append((path, load_grid(path)))
        except (OSError, ValueError) as e:
            problems.append(f"{path}: cannot read coverage ({e}); file skipped")
    if not grids:
        return None, problems
    # Keep the files that match the first one; a mismatch (two mazes in one run dir) is reported, not summed.
    first = grids[0][1]
    kept = [first]
    for path, grid in grids[1:]:
        try:
            CoverageGrid.merged([first, grid])
        except ValueError as e:
            problems.append(f"{path}: {e}; file skipped")
            continue
        kept.append(grid)
    return CoverageGrid.merged(kept), problems


def coverage_frame(runs: Iterable[RunInfo]) -> tuple[pd.DataFrame, dict[str, CoverageGrid], list[str]]:
    """Per run with coverage files: a row (run, env, seed, collector_depth, coverage_fraction, coverage_entropy,
    coverage_env_steps, coverage_count), the summed grid per run name, and the problems met."""
    rows, grids, problems = [], {}, []
    for info in runs:
        grid, run_problems = load_run_coverage(info.path)
        problems.extend(run_problems)
        if grid is None:
            continue
        grids[info.name] = grid
        rows.append({
            "run": info.name, "env": info.env, "seed": info.seed, "collector_depth": info.collector_depth,
            "coverage_fraction": coverage_fraction(grid), "coverage_entropy": coverage_entropy(grid),
            "coverage_env_steps": grid.env_steps, "coverage_count": int(grid.counts.sum()),
        })
    columns = ["run", "env", "seed", "collector_depth", "coverage_fraction", "coverage_entropy", "coverage_env_steps",
               "coverage_count"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["collector_depth"] = frame["collector_depth"].astype("Int64")
    return frame, grids, problems


def merge_by_collector_depth(coverage: pd.DataFrame, grids: dict[str, CoverageGrid]
                             ) -> dict[tuple[str, int], CoverageGrid]:
    """Sum the run grids of each (env, collector depth) over seeds into one grid, for the coverage maps. Runs whose
    maze differs from the first run of their group are left out."""
    merged: dict[tuple[str, int], CoverageGrid] = {}
    for (env, depth), group in coverage.groupby(["env", "collector_depth"], sort=True, dropna=False):
        if pd.isna(depth):
            continue
        members = [grids[name] for name in group["run"]]
        key = (members[0].layout.rows, members[0].layout.scaling, members[0].bins_per_cell)
        same = [g for g in members if (g.layout.rows, g.layout.scaling, g.bins_per_cell) == key]
        merged[(str(env), int(depth))] = CoverageGrid.merged(same)
    return merged
