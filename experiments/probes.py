"""Instruments that see a learner apart from the data it was given: the maze-topology probe of its critic.

`TopologyProbe` (point mazes, where the state is the position): fixed start and goal positions over the maze's free
space, drawn once per run from the run's seed, with their geodesic and Euclidean distances (`analysis.topology`,
numpy). At each evaluation, a learner's critic energy f(s, π(s, g), g) on every (start, goal) pair is scored against
both distances (`analysis.topology.topology_scores`: ``topo_*`` metrics), and the energy from one fixed start to
every node of the free-space grid is the Q-map (`analysis.topology.save_qmap`, ``probes/<learner>.npz``).

The probe reads only params: it runs in any process that holds a learner's actor and critic params (the
single-process trainer, `depthrl offline`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analysis.topology import FreeSpaceGrid, ProbePairs, qmap_path, sample_probe, save_qmap, topology_scores
from learners.crl import CRLAgent

__all__ = ["TopologyProbe", "qmap_path"]


@dataclasses.dataclass(frozen=True)
class TopologyProbe:
    """The probe of one run: its positions and distances; `score` and `qmap` evaluate a learner on them."""

    grid: FreeSpaceGrid
    pairs: ProbePairs
    qmap_start_node: int
    """Node the Q-map is drawn from: the one nearest the centre of the maze's first start cell."""
    margin: float
    """Distance margin (world units) of a through-wall comparison: half a maze cell."""

    @classmethod
    def for_env(cls, env: Any, n_starts: int, n_goals: int, seed: int) -> TopologyProbe | None:
        """The probe of `env`, or None when it has none: no maze layout, `n_starts` 0, or a state that is not the
        2-D position (the probe builds states from positions; ant and humanoid states hold joints too)."""
        layout = getattr(env, "layout", None)
        spec = env.spec
        if layout is None or n_starts == 0 or not (spec.state_dim == 2 and spec.goal_start == 0
                                                   and spec.goal_end == 2):
            return None
        grid = FreeSpaceGrid.from_layout(layout.rows, layout.scaling)
        start_cell = np.argwhere(np.array([list(row) for row in layout.rows]) == "R")[0]
        start = grid.nearest_node(start_cell.astype(np.float64) * layout.scaling)
        return cls(grid=grid, pairs=sample_probe(grid, n_starts, n_goals, seed), qmap_start_node=int(start),
                   margin=0.5 * layout.scaling)

    def energies(self, agent: CRLAgent) -> Any:
        """A jitted ``(actor_params, critic_params, start_xy [P, 2], goal_xy [P, 2]) -> energy [P]`` of `agent`."""
        return jax.jit(lambda actor, critic, s, g: agent.energy(actor, critic, s, g))

    def score(self, energy_fn: Any, actor_params: Any, critic_params: Any) -> dict[str, float]:
        """The ``topo_*`` metrics of one learner's params."""
        xy = self.grid.node_xy.astype(np.float32)
        s_idx, g_idx = self.pairs.start_idx, self.pairs.goal_idx
        starts = np.repeat(xy[s_idx], len(g_idx), axis=0)
        goals = np.tile(xy[g_idx], (len(s_idx), 1))
        energy = np.asarray(energy_fn(actor_params, critic_params, jnp.asarray(starts), jnp.asarray(goals)))
        energy = energy.reshape(len(s_idx), len(g_idx))
        return topology_scores(energy, self.pairs.geodesic, self.pairs.euclidean, self.margin)

    def save_qmap(self, path: Path, energy_fn: Any, actor_params: Any, critic_params: Any, *, learner: str,
                  critic_depth: int, env_steps: int, grad_steps: int) -> None:
        """Write the Q-map of one learner's params: the energy from the fixed start to every node."""
        xy = self.grid.node_xy.astype(np.float32)
        start = np.repeat(xy[self.qmap_start_node][None], len(xy), axis=0)
        energy = np.asarray(energy_fn(actor_params, critic_params, jnp.asarray(start), jnp.asarray(xy)))
        save_qmap(path, energy=energy.astype(np.float32), grid=self.grid, start_xy=xy[self.qmap_start_node],
                  env_steps=env_steps, grad_steps=grad_steps, learner=learner, critic_depth=critic_depth)
