"""The inline trainer's on-device coverage histogram bins positions exactly as `actors.coverage.CoverageGrid`."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest

from actors.coverage import CoverageGrid
from actors.envs.mazes import get_layout
from experiments.inline import InlineTrainer


@pytest.mark.parametrize("maze, scaling", [("u_maze", 1.0), ("big_maze", 4.0)])
def test_device_binning_matches_coverage_grid(maze, scaling):
    layout = get_layout(maze, scaling)
    trainer = types.SimpleNamespace(layout=layout, coverage_bins_per_cell=4)
    rng = np.random.default_rng(0)
    n_rows, n_cols = layout.shape
    # Inside the grid, on bin edges, outside it (clipped into edge bins) and non-finite (skipped).
    xy = rng.uniform([-scaling, -scaling], [n_rows * scaling, n_cols * scaling], size=(500, 2)).astype(np.float32)
    xy[:20] = (np.arange(40).reshape(20, 2) * scaling / 4 - scaling / 2).astype(np.float32)
    xy[20] = [np.nan, 0.0]
    xy[21] = [np.inf, 1.0]
    counts = InlineTrainer.add_coverage(
        trainer, jnp.zeros((n_rows * 4, n_cols * 4), jnp.int32), jnp.asarray(xy.reshape(10, 50, 2)))
    reference = CoverageGrid(layout)
    reference.add(xy)
    np.testing.assert_array_equal(np.asarray(counts), reference.counts)
    assert int(np.asarray(counts).sum()) == 498


def test_envs_without_a_maze_keep_a_dummy_histogram():
    trainer = types.SimpleNamespace(layout=None, coverage_bins_per_cell=4)
    assert InlineTrainer.coverage_shape(trainer) == (1, 1)
    counts = jnp.zeros((1, 1), jnp.int32)
    assert InlineTrainer.add_coverage(trainer, counts, jnp.ones((3, 2))) is counts
