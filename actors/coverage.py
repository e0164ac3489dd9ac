"""Where the collector's data went: a histogram of achieved-goal positions over a maze, saved per actor.

Written by the actor processes of a maze env (one file per actor role, ``<run_dir>/coverage/<role>.npz``); read by
`analysis.coverage` with numpy alone, which sums the files of a run and turns them into coverage maps, the visited
fraction of free cells and the visitation entropy.

The file format and the bin axes are a contract with that reader, stated once in docs/run-directory.md ("Coverage
files"): keys, dtypes and shapes, layout characters, and which world interval each bin covers. `CoverageGrid.save`
writes it and `load` reads it back (an actor resuming its counts). Bins follow the maze's world axes (see
`actors.envs.mazes`): each cell holds ``k x k`` bins (``k = bins_per_cell``) and the histogram covers the whole grid,
wall border included.

Pure numpy: no JAX, no Reverb, so an actor can update it on the host.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from actors.envs.mazes import MazeLayout

__all__ = ["COVERAGE_DIR", "CoverageGrid", "bin_index", "coverage_path", "load"]

COVERAGE_DIR = "coverage"
"""Sub-directory of a run directory holding one ``<role>.npz`` per actor."""


def coverage_path(run_dir: Path, role: str) -> Path:
    """Where actor `role` of the run in `run_dir` saves its coverage: ``<run_dir>/coverage/<role>.npz``."""
    return Path(run_dir) / COVERAGE_DIR / f"{role}.npz"


def bin_index(xy, scaling: float, bins_per_cell: int, shape: tuple[int, int], xp=np):
    """``(ix [M], iy [M])``: the bins of finite positions ``xy [M, 2]``, clipped into the edge bins. `xp` is the
    array module (numpy here; `jax.numpy` in the single-process trainer, which bins inside its jitted step)."""
    # Bin b along an axis covers [b h - s/2, (b + 1) h - s/2), h = s / k; so cell i's k bins are i k .. i k + k-1.
    index = xp.floor((xy + scaling / 2) / (scaling / bins_per_cell)).astype(xp.int32)
    n_x, n_y = shape
    return xp.clip(index[:, 0], 0, n_x - 1), xp.clip(index[:, 1], 0, n_y - 1)


@dataclasses.dataclass
class CoverageGrid:
    """A running int64 histogram of achieved-goal positions ``xy`` over the bins of a maze (see the module docstring).

    Mutable on purpose: an actor keeps one and calls `add` after every rollout, then `save` now and then.
    """

    layout: MazeLayout
    """The maze whose grid the bins subdivide."""
    bins_per_cell: int = 4
    """Bins along each axis of one maze cell (k); the histogram is ``[n_rows k, n_cols k]``."""
    counts: np.ndarray | None = None
    """int64 ``[n_rows k, n_cols k]`` visit counts; None -> zeros of that shape."""
    env_steps: int = 0
    """Env steps of the writer when last saved (set by `save`, read back by `load`)."""
    dropped: int = 0
    """Positions that were not counted because they were NaN or infinite."""

    def __post_init__(self) -> None:
        if isinstance(self.bins_per_cell, bool) or not isinstance(self.bins_per_cell, (int, np.integer)) \
                or self.bins_per_cell < 1:
            raise ValueError(f"bins_per_cell must be a positive integer, got {self.bins_per_cell!r}")
        self.bins_per_cell = int(self.bins_per_cell)
        if self.counts is None:
            self.counts = np.zeros(self.shape, dtype=np.int64)
        else:
            self.counts = np.asarray(self.counts)
            if self.counts.shape != self.shape:
                raise ValueError(f"counts has shape {self.counts.shape}, the layout {self.layout.name!r} with "
                                 f"bins_per_cell={self.bins_per_cell} needs {self.shape}")
            self.counts = self.counts.astype(np.int64, copy=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(n_rows k, n_cols k): bins along world x, bins along world y."""
        n_rows, n_cols = self.layout.shape
        return n_rows * self.bins_per_cell, n_cols * self.bins_per_cell

    @property
    def bin_size(self) -> float:
        """World size of one (square) bin: scaling / bins_per_cell."""
        return self.layout.scaling / self.bins_per_cell

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) world units covered by the histogram."""
        s = self.layout.scaling
        n_rows, n_cols = self.layout.shape
        return -s / 2, (n_rows - 0.5) * s, -s / 2, (n_cols - 0.5) * s

    def add(self, xy: np.ndarray) -> None:
        """Count positions ``xy [..., 2]`` (world x, world y). Positions outside the grid are clipped into the edge
        bins (the border is all walls, so only a body pushed into the outer wall lands there); NaN/inf positions are
        counted in `dropped` instead."""
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim == 0 or xy.shape[-1] != 2:
            raise ValueError(f"xy must have shape [..., 2], got {xy.shape}")
        xy = xy.reshape(-1, 2)
        finite = np.isfinite(xy).all(axis=1)
        self.dropped += int((~finite).sum())
        xy = xy[finite]
        if not len(xy):
            return
        ix, iy = bin_index(xy, self.layout.scaling, self.bins_per_cell, self.shape)
        n_x, n_y = self.shape
        self.counts += np.bincount(ix * n_y + iy, minlength=n_x * n_y).reshape(n_x, n_y)

    def cell_counts(self) -> np.ndarray:
        """int64 ``[n_rows, n_cols]``: counts summed over each cell's k x k bins."""
        n_rows, n_cols = self.layout.shape
        k = self.bins_per_cell
        return self.counts.reshape(n_rows, k, n_cols, k).sum(axis=(1, 3))

    def save(self, path: Path, env_steps: int | None = None) -> None:
        """Write the histogram to `path` atomically (a temp file then `os.replace`), so a reader never sees half a
        file. `env_steps`, when given, is recorded as the writer's env steps."""
        if env_steps is not None:
            self.env_steps = int(env_steps)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                counts=self.counts,
                layout_rows=np.array(self.layout.rows),
                layout_name=np.array(self.layout.name),
                scaling=np.float64(self.layout.scaling),
                bins_per_cell=np.int64(self.bins_per_cell),
                env_steps=np.int64(self.env_steps),
                dropped=np.int64(self.dropped),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @staticmethod
    def merged(grids: Iterable["CoverageGrid"]) -> "CoverageGrid":
        """One grid holding the summed counts (and env steps, dropped) of `grids`, e.g. every actor of a run.
        All must share the layout rows, scaling and bins_per_cell; ValueError otherwise or when `grids` is empty."""
        grids = list(grids)
        if not grids:
            raise ValueError("merged() needs at least one CoverageGrid")
        first = grids[0]
        for g in grids[1:]:
            if (g.layout.rows, g.layout.scaling, g.bins_per_cell) != (first.layout.rows, first.layout.scaling,
                                                                     first.bins_per_cell):
                raise ValueError(f"cannot merge coverage of maze {g.layout.name!r} (scaling {g.layout.scaling}, "
                                 f"k={g.bins_per_cell}) into {first.layout.name!r} (scaling {first.layout.scaling}, "
                                 f"k={first.bins_per_cell})")
        return CoverageGrid(
            layout=first.layout, bins_per_cell=first.bins_per_cell,
            counts=np.sum([g.counts for g in grids], axis=0, dtype=np.int64),
            env_steps=sum(g.env_steps for g in grids), dropped=sum(g.dropped for g in grids),
        )


def load(path: Path) -> CoverageGrid:
    """Read a file written by `CoverageGrid.save`. Raises OSError/ValueError (bad zip, missing key, bad layout)."""
    try:
        data = np.load(Path(path), allow_pickle=False)
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable npz file ({e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an npz archive")
    with data:
        try:
            rows = tuple(str(r) for r in data["layout_rows"])
            name = str(data["layout_name"]) if "layout_name" in data else "maze"
            layout = MazeLayout(name=name, rows=rows, scaling=float(data["scaling"]))
            return CoverageGrid(
                layout=layout, bins_per_cell=int(data["bins_per_cell"]), counts=data["counts"],
                env_steps=int(data["env_steps"]), dropped=int(data["dropped"]) if "dropped" in data else 0,
            )
        except KeyError as e:
            raise ValueError(f"{path}: not a coverage file, missing {e}") from None
