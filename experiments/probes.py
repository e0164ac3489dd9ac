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
import functools
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
        start = grid.nearest_node(layout.cell_to_xy(layout.start_cells[0]).astype(np.float64))
        return cls(grid=grid, pairs=sample_probe(grid, n_starts, n_goals, seed), qmap_start_node=int(start),
                   margin=0.5 * layout.scaling)

    def energies(self, agent: CRLAgent) -> Any:
        """A jitted ``(actor_params, critic_params, start_xy [P, 2], goal_xy [P, 2]) -> energy [P]`` of `agent`."""
        return jax.jit(agent.energy)

    @functools.cached_property
    def _pair_xy(self) -> tuple[jax.Array, jax.Array]:
        """(start_xy, goal_xy), each float32 ``[S·G, 2]``: every (start, goal) pair of the probe, start-major; built
        once, on the device."""
        xy = self.grid.node_xy.astype(np.float32)
        s_idx, g_idx = self.pairs.start_idx, self.pairs.goal_idx
        return (jnp.asarray(np.repeat(xy[s_idx], len(g_idx), axis=0)),
                jnp.asarray(np.tile(xy[g_idx], (len(s_idx), 1))))

    def score(self, energy_fn: Any, actor_params: Any, critic_params: Any) -> dict[str, float]:
        """The ``topo_*`` metrics of one learner's params."""
        energy = np.asarray(energy_fn(actor_params, critic_params, *self._pair_xy))
        energy = energy.reshape(len(self.pairs.start_idx), len(self.pairs.goal_idx))
        return topology_scores(energy, self.pairs.geodesic, self.pairs.euclidean, self.margin)

    def save_qmap(self, path: Path, energy_fn: Any, actor_params: Any, critic_params: Any, *, learner: str,
                  critic_depth: int, env_steps: int, grad_steps: int) -> None:
        """Write the Q-map of one learner's params: the energy from the fixed start to every node."""
        xy = self.grid.node_xy.astype(np.float32)
        start = np.repeat(xy[self.qmap_start_node][None], len(xy), axis=0)
        energy = np.asarray(energy_fn(actor_params, critic_params, jnp.asarray(start), jnp.asarray(xy)))
        save_qmap(path, energy=energy.astype(np.float32), grid=self.grid, start_xy=xy[self.qmap_start_node],
                  env_steps=env_steps, grad_steps=grad_steps, learner=learner, critic_depth=critic_depth)


# --- `depthrl probe`: the probe of a decoupled run's learners, from their checkpoints ---------------------------------

PROBE_ROWS = "probe_{learner}.jsonl"
"""``metrics/probe_<learner>.jsonl``: the probe of learner <learner>'s newest checkpoint, one row with role
``eval_<learner>`` (so the report puts its ``topo_*`` values next to the evaluations), rewritten by each probe."""


def probe_decoupled_run(run_dir: Path, n_starts: int, n_goals: int) -> list[str]:
    """Probe every learner of a finished or stopped decoupled run at its newest checkpoint: its Q-map file and a
    ``metrics/probe_<learner>.jsonl`` row. Returns one line per learner (or why none was probed)."""
    import json
    import os

    from experiments.compose import RunParts, learner_processes, load_run_config
    from learners.checkpoint import Checkpointer

    config = load_run_config(run_dir)
    parts = RunParts.for_run(config)
    probe = TopologyProbe.for_env(parts.env, n_starts, n_goals, config.run.seed)
    if probe is None:
        return [f"{run_dir}: env {config.env.env!r} has no topology probe (point mazes only)"]
    said = []
    for names in learner_processes(config):
        directory = run_dir / "checkpoints" / "+".join(names)
        template = {n: parts.agent(n).init(jax.random.PRNGKey(0)) for n in names}
        restored = Checkpointer(directory, item="states").restore(template) if directory.is_dir() else None
        if restored is None:
            said.append(f"{run_dir}: no checkpoint of {', '.join(names)} in {directory}")
            continue
        states, counters = restored
        env_steps = int(sum(counters.get("env_steps_by_actor", {}).values()))
        for name in names:
            agent, state = parts.agent(name), states[name]
            fn = probe.energies(agent)
            scores = probe.score(fn, state.actor_params, state.critic_params)
            grad_steps = int(state.grad_steps)
            probe.save_qmap(qmap_path(run_dir, name), fn, state.actor_params, state.critic_params, learner=name,
                            critic_depth=agent.learner.critic_depth, env_steps=env_steps, grad_steps=grad_steps)
            role = f"eval_{name}"
            row = {"role": role, "wall_time": round(float(counters.get("wall_time_offset", 0.0)), 3),
                   "env_steps": env_steps, "grad_steps": grad_steps, "param_version": grad_steps,
                   **{f"{role}/{k}": float(v) for k, v in scores.items()}}
            path = run_dir / "metrics" / PROBE_ROWS.format(learner=name)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(row) + "\n")
            os.replace(tmp, path)
            said.append(f"{run_dir}: {name} at {grad_steps} grad steps: through-wall fraction "
                        f"{scores['topo_through_wall_fraction']:.3f}, rank corr geodesic "
                        f"{scores['topo_rank_corr_geodesic']:.3f} / euclidean {scores['topo_rank_corr_euclidean']:.3f}")
    return said


def main(argv: list[str]) -> int:
    """`depthrl probe DIR`: the topology probe of every decoupled run below DIR (single-process runs already probe
    at every evaluation)."""
    import argparse
    import json
    import sys

    from experiments.config import EvalConfig

    p = argparse.ArgumentParser(prog="depthrl probe", description=(
        "The maze-topology probe (Q-map files, topo_* metrics) of every decoupled run's learners below DIR, at their "
        "newest checkpoints. Single-process runs (train, run --inline, offline) probe at every evaluation already."))
    p.add_argument("dir", type=Path, help="a run directory or a directory with run directories below it")
    p.add_argument("--probe-starts", type=int, default=EvalConfig.probe_starts)
    p.add_argument("--probe-goals", type=int, default=EvalConfig.probe_goals)
    args = p.parse_args(argv)
    if args.probe_starts <= 0 or args.probe_goals <= 0:
        print("depthrl probe: error: --probe-starts and --probe-goals must be positive", file=sys.stderr)
        return 2
    if not args.dir.is_dir():
        print(f"depthrl probe: error: {args.dir} is not a directory", file=sys.stderr)
        return 2
    runs = sorted(path.parent for path in args.dir.rglob("config.json"))
    decoupled = []
    for run_dir in runs:
        try:
            payload = json.loads((run_dir / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        inline = ((payload.get("config") or {}).get("runtime") or {}).get("inline")
        if payload.get("kind") == "run" and not inline:
            decoupled.append(run_dir)
    if not decoupled:
        print(f"depthrl probe: error: no decoupled run directory below {args.dir} ({len(runs)} run dir(s) found; "
              "single-process runs are probed at every evaluation)", file=sys.stderr)
        return 2
    for run_dir in decoupled:
        for line in probe_decoupled_run(run_dir, args.probe_starts, args.probe_goals):
            print(line)
    return 0
