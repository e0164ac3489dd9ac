"""The maze-topology probe: does a critic's energy follow the maze, or cut through its walls?

A contrastive critic's energy f(s, a, g) is higher the closer it judges goal g to state s. In a maze, "close" can
mean the straight line (Euclidean distance, through walls) or the way an agent must actually go (the *geodesic*
distance: the shortest path through free space). This module holds the probe's math, in numpy and scipy:

- `FreeSpaceGrid`: a lattice of nodes over the maze's free space and the geodesic / Euclidean distances between
  them (Dijkstra on a 16-neighbourhood graph, see the class for its error);
- `sample_probe`: the (start, goal) node pairs of a probe, drawn from a seed, and their two distances;
- `topology_scores`: a critic's energy on those pairs scored against both distances (``topo_*`` metrics);
- `QMap`, `save_qmap`, `read_qmap`: the energy from one start to every node, the file
  ``<run_dir>/probes/<learner>.npz`` (format: docs/run-directory.md, "Probe files") that `analysis.figures.qmap_figure`
  draws.

Coordinates are the mazes' (actors/envs/mazes.py, not imported here): cell ``(i, j)`` (row, column of the layout
text) is centred at world ``(x, y) = (i s, j s)`` and covers ``[i s - s/2, i s + s/2] x [j s - s/2, j s + s/2]``,
``s`` = scaling; world x runs down the text, world y to the right. Free space is the union of the closed free cells
('.', 'R', 'G'); walls ('#') are the rest.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import sparse, stats
from scipy.sparse import csgraph

from analysis.coverage import layout_wall_mask, open_npz

__all__ = ["OPEN_SPACE_MAX_RELATIVE_ERROR", "PROBES_DIR", "FreeSpaceGrid", "ProbePairs", "QMap", "load_run_qmaps",
           "qmap_path", "read_qmap", "sample_probe", "save_qmap", "topology_scores"]

PROBES_DIR = "probes"
"""Sub-directory of a run directory holding one Q-map file ``<learner>.npz`` per learner."""

OPEN_SPACE_MAX_RELATIVE_ERROR = 1.0 / math.cos(math.atan(0.5) / 2.0) - 1.0
"""0.0275: the most a 16-neighbourhood path can exceed the straight line in open space, relative to its length.
The graph's steps point along 16 directions, 26.57 deg (between (1, 0) and (2, 1)) or 18.43 deg (between (2, 1) and
(1, 1)) apart; a displacement between two step directions is covered by a two-step-kind path, longest relative to
the straight line halfway between the widest pair: 1 / cos(26.57 deg / 2) - 1."""

# The graph's steps, in sub-cells (rows along world x, columns along world y), one of each +/- pair (the graph is
# undirected), each with every sub-cell its straight segment passes through (the origin and the target included).
# An edge exists only where all of them are free, which makes the segment lie in free space: walls are whole cells,
# so a sub-cell is all free or all wall. King diagonals pass exactly through the corner shared by four sub-cells;
# both orthogonal neighbours are required free there, so a path never squeezes through the point where two wall
# cells touch diagonally (conservative: it also refuses to graze a single wall corner). A knight step (1, 2) from
# (0, 0) crosses row boundary x = 0.5 at y = 1, mid-way along a sub-cell edge: it visits (0, 0), (0, 1), (1, 1),
# (1, 2) and touches no corner; the other knight steps are its mirror images. tests/unit/test_topology.py checks
# each list against points sampled along the segment.
_STEPS: tuple[tuple[tuple[int, int], tuple[tuple[int, int], ...]], ...] = (
    ((0, 1), ((0, 0), (0, 1))),
    ((1, 0), ((0, 0), (1, 0))),
    ((1, 1), ((0, 0), (0, 1), (1, 0), (1, 1))),
    ((1, -1), ((0, 0), (0, -1), (1, 0), (1, -1))),
    ((1, 2), ((0, 0), (0, 1), (1, 1), (1, 2))),
    ((2, 1), ((0, 0), (1, 0), (1, 1), (2, 1))),
    ((1, -2), ((0, 0), (0, -1), (1, -1), (1, -2))),
    ((2, -1), ((0, 0), (1, 0), (1, -1), (2, -1))),
)
_PAD = 2
"""Sub-cells of wall padding around the lattice when testing steps: the longest step reaches 2 sub-cells."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare arrays; the three inputs define the grid
class FreeSpaceGrid:
    """Nodes over the free space of a maze and the graph that gives geodesic distances between them.

    Every free cell is cut into ``k x k`` sub-cells (``k = nodes_per_cell``, side ``h = s / k``); a node sits at the
    centre of each. Nodes are numbered row-major over the whole sub-cell lattice (world x, then world y). Two nodes
    are joined when they are a king step (8 neighbours) or a knight step ((+-1, +-2), (+-2, +-1)) apart and the
    straight segment between them lies in free space; the edge's length is the segment's, in world units.

    Accuracy of `geodesic_from` against the true shortest path through free space between the same two nodes:

    - never shorter: every graph path is a path through free space;
    - in open space, displacements along a step direction (axis-aligned, exact diagonal, knight's 1:2) are exact;
      any other is at most `OPEN_SPACE_MAX_RELATIVE_ERROR` (2.75 %) longer. Measured on an open 12 x 12-cell room at
      k = 8 (9216 nodes, from a corner node and from the centre to every other): max 2.749 %, mean 1.3 %;
    - around a wall corner a path cannot touch the corner (nodes sit h/2 from walls, and the conservative rule of
      `_STEPS` keeps segments off wall corners), which costs a little more per corner turned. Measured on the U-maze
      "#####/#...#/###.#/#...#/#####" at s = 1 between the nodes nearest the centres of cells (1, 1) and (3, 1) (two
      corners turned; Euclidean 2): at k = 9 (nodes on the centres) 4.4321 against the true 1 + sqrt(10) = 4.1623
      (+6.5 %); at k = 8, 4.3316 against 4.0462 (+7.1 %). Over k = 3..32 the excess beyond the 2.75 % was at most
      0.82 h per corner, so: true <= graph <= (1 + 2.75 %) true + h x (corners turned).
    """

    layout_rows: tuple[str, ...]
    """The maze text rows, top -> bottom, over '#', '.', 'R', 'G' (need not have a wall border)."""
    scaling: float
    """s: world size of one maze cell."""
    nodes_per_cell: int = 8
    """k: nodes along each axis of one cell."""
    node_xy: np.ndarray = dataclasses.field(init=False, repr=False)
    """float64 ``[N, 2]``: world (x, y) of every node."""
    node_cell: np.ndarray = dataclasses.field(init=False, repr=False)
    """int64 ``[N, 2]``: (row, col) of the maze cell holding each node."""
    node_of_subcell: np.ndarray = dataclasses.field(init=False, repr=False)
    """int64 ``[n_rows k, n_cols k]``: the node of each sub-cell, -1 on walls."""
    adjacency: sparse.csr_matrix = dataclasses.field(init=False, repr=False)
    """float64 ``[N, N]`` sparse: edge lengths in world units, each edge stored once (read as undirected)."""

    @classmethod
    def from_layout(cls, layout_rows: Sequence[str], scaling: float, nodes_per_cell: int = 8) -> FreeSpaceGrid:
        """The grid of a maze given as text rows (e.g. ``"#####/#R.G#/#####".split("/")``). ValueError when the
        rows are not a rectangle over '#', '.', 'R', 'G', have no free cell, or scaling / nodes_per_cell are not
        positive."""
        return cls(tuple(str(row) for row in layout_rows), float(scaling), int(nodes_per_cell))

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout_rows", tuple(str(row) for row in self.layout_rows))
        walls = layout_wall_mask(self.layout_rows, "free-space grid")
        if not (math.isfinite(self.scaling) and self.scaling > 0):
            raise ValueError(f"free-space grid: scaling must be a positive number, got {self.scaling!r}")
        if int(self.nodes_per_cell) != self.nodes_per_cell or self.nodes_per_cell < 1:
            raise ValueError(f"free-space grid: nodes_per_cell must be a positive integer, got {self.nodes_per_cell!r}")
        if walls.all():
            raise ValueError(f"free-space grid: layout {'/'.join(self.layout_rows)!r} has no free cell "
                             "('.', 'R' or 'G')")
        k, s = self.nodes_per_cell, self.scaling
        free = np.repeat(np.repeat(~walls, k, axis=0), k, axis=1)  # [n_rows k, n_cols k]
        subcells = np.argwhere(free)  # [N, 2], row-major
        index = np.full(free.shape, -1, dtype=np.int64)
        index[subcells[:, 0], subcells[:, 1]] = np.arange(len(subcells))
        object.__setattr__(self, "node_xy", (subcells + 0.5) * (s / k) - s / 2)
        object.__setattr__(self, "node_cell", (subcells // k).astype(np.int64))
        object.__setattr__(self, "node_of_subcell", index)
        object.__setattr__(self, "adjacency", _adjacency(free, index, s / k))

    @property
    def n_nodes(self) -> int:
        """N: the number of nodes."""
        return len(self.node_xy)

    @property
    def node_spacing(self) -> float:
        """h = s / k: world distance between neighbouring nodes along an axis."""
        return self.scaling / self.nodes_per_cell

    def _indices(self, sources: np.ndarray) -> np.ndarray:
        idx = np.asarray(sources)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"sources must be a 1-D integer array of node indices, got {idx.dtype} {idx.shape}")
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_nodes):
            raise ValueError(f"sources must be node indices in [0, {self.n_nodes}), got {idx.min()}..{idx.max()}")
        return idx.astype(np.int64)

    def geodesic_from(self, sources: np.ndarray) -> np.ndarray:
        """float64 ``[S, N]``: shortest-path length (world units) through free space from each of the node indices
        ``sources [S]`` to every node; inf where no path exists (a maze in several pieces). Error: see the class."""
        idx = self._indices(sources)
        if not len(idx):
            return np.zeros((0, self.n_nodes))
        return csgraph.dijkstra(self.adjacency, directed=False, indices=idx).reshape(len(idx), self.n_nodes)

    def euclidean_from(self, sources: np.ndarray) -> np.ndarray:
        """float64 ``[S, N]``: straight-line distance (world units, through walls) from each of ``sources [S]`` to
        every node."""
        idx = self._indices(sources)
        return np.linalg.norm(self.node_xy[idx][:, None, :] - self.node_xy[None, :, :], axis=-1)

    def nearest_node(self, xy: np.ndarray) -> np.ndarray:
        """int64 ``[...]``: the node nearest each world position ``xy [..., 2]``. Inside a free cell that is the node
        of the sub-cell holding it (a lookup); elsewhere (in a wall, outside the maze) the nearest node by Euclidean
        distance, searched over all nodes. ValueError on non-finite positions."""
        xy = np.asarray(xy, dtype=np.float64)
        if xy.shape[-1:] != (2,):
            raise ValueError(f"positions must have shape [..., 2], got {xy.shape}")
        if not np.isfinite(xy).all():
            raise ValueError("positions must be finite")
        flat = xy.reshape(-1, 2)
        sub = np.floor((flat + self.scaling / 2) / self.node_spacing).astype(np.int64)  # [P, 2]
        n_u, n_v = self.node_of_subcell.shape
        inside = (sub[:, 0] >= 0) & (sub[:, 0] < n_u) & (sub[:, 1] >= 0) & (sub[:, 1] < n_v)
        nodes = np.full(len(flat), -1, dtype=np.int64)
        nodes[inside] = self.node_of_subcell[sub[inside, 0], sub[inside, 1]]
        for p in np.flatnonzero(nodes < 0):  # in a wall or outside: rare, so one brute-force search each
            nodes[p] = int(np.argmin(((self.node_xy - flat[p]) ** 2).sum(axis=-1)))
        return nodes.reshape(xy.shape[:-1])


def _adjacency(free: np.ndarray, index: np.ndarray, spacing: float) -> sparse.csr_matrix:
    """The node graph: ``free [U, V]`` sub-cell lattice, ``index [U, V]`` node of each sub-cell, ``spacing`` = h.
    Returns ``[N, N]`` with one entry per edge (see `_STEPS`)."""
    n_u, n_v = free.shape
    padded = np.pad(free, _PAD, constant_values=False)
    sources, targets, lengths = [], [], []
    for (du, dv), cells in _STEPS:
        ok = np.ones_like(free)
        for cu, cv in cells:
            ok &= padded[_PAD + cu:_PAD + cu + n_u, _PAD + cv:_PAD + cv + n_v]
        u, v = np.nonzero(ok)
        sources.append(index[u, v])
        targets.append(index[u + du, v + dv])
        lengths.append(np.full(len(u), spacing * math.hypot(du, dv)))
    n = int(free.sum())
    return sparse.coo_matrix((np.concatenate(lengths), (np.concatenate(sources), np.concatenate(targets))),
                             shape=(n, n)).tocsr()


@dataclasses.dataclass(frozen=True, eq=False)
class ProbePairs:
    """The (start, goal) pairs of a probe: every start with every goal, and their distances."""

    start_idx: np.ndarray
    """int64 ``[S]``: start nodes of the `FreeSpaceGrid`."""
    goal_idx: np.ndarray
    """int64 ``[G]``: goal nodes."""
    geodesic: np.ndarray
    """float64 ``[S, G]``: geodesic distance (world units) from each start to each goal."""
    euclidean: np.ndarray
    """float64 ``[S, G]``: Euclidean distance (world units) from each start to each goal."""


def sample_probe(grid: FreeSpaceGrid, n_starts: int, n_goals: int, seed: int) -> ProbePairs:
    """`n_starts` start and `n_goals` goal nodes drawn uniformly over the grid's nodes (so uniformly over the free
    area), each set without replacement unless it asks for more than N nodes; the same seed gives the same pairs."""
    if n_starts < 1 or n_goals < 1:
        raise ValueError(f"a probe needs n_starts >= 1 and n_goals >= 1, got {n_starts} and {n_goals}")
    rng = np.random.default_rng(seed)
    n = grid.n_nodes
    start_idx = rng.choice(n, size=n_starts, replace=n_starts > n).astype(np.int64)
    goal_idx = rng.choice(n, size=n_goals, replace=n_goals > n).astype(np.int64)
    return ProbePairs(start_idx=start_idx, goal_idx=goal_idx, geodesic=grid.geodesic_from(start_idx)[:, goal_idx],
                      euclidean=grid.euclidean_from(start_idx)[:, goal_idx])


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of ``a [P]`` and ``b [P]`` (average ranks for ties; pairs with a NaN left out;
    inf ranks as the largest). NaN when fewer than two pairs remain or either side is constant."""
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(np.corrcoef(stats.rankdata(a), stats.rankdata(b))[0, 1])


def topology_scores(energy: np.ndarray, geodesic: np.ndarray, euclidean: np.ndarray, margin: float
                    ) -> dict[str, float]:
    """Score a critic's ``energy [S, G]`` (higher = goal judged closer) on a probe's pairs against their
    ``geodesic [S, G]`` and ``euclidean [S, G]`` distances (world units). Returns:

    - ``topo_rank_corr_geodesic``: Spearman rank correlation of energy with -geodesic over all S G pairs;
    - ``topo_rank_corr_euclidean``: the same with -euclidean;
    - ``topo_through_wall_fraction``: over the comparisons of two goals g1, g2 from the same start s where the two
      distances disagree by more than `margin` each way -- ``euclid(s, g1) < euclid(s, g2) - margin`` and
      ``geodesic(s, g1) > geodesic(s, g2) + margin``: g1 is near through a wall, g2 near along the maze -- the
      fraction in which the critic ranks the maze's way, ``energy(s, g2) > energy(s, g1)``; a tie counts half.
      NaN when there is no such comparison (e.g. a maze without inner walls);
    - ``topo_through_wall_comparisons``: how many such comparisons there were.

    A critic whose energy is exactly -geodesic scores 1.0 geodesic correlation and through-wall fraction 1.0; one
    whose energy is exactly -euclidean scores 1.0 Euclidean correlation and through-wall fraction 0.0. `margin`
    should exceed the geodesic's own error (`FreeSpaceGrid`: ~3 % of the distance plus ~h per corner), so that an
    open-space pair never counts as a disagreement; half a maze cell is a safe choice. Pairs with a NaN anywhere
    are left out; an inf geodesic (an unreachable goal) is the farthest."""
    energy, geodesic, euclidean = (np.asarray(x, dtype=np.float64) for x in (energy, geodesic, euclidean))
    if energy.ndim != 2 or energy.shape != geodesic.shape or energy.shape != euclidean.shape:
        raise ValueError(f"energy, geodesic and euclidean must share one [S, G] shape, got {energy.shape}, "
                         f"{geodesic.shape}, {euclidean.shape}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    agree_maze, comparisons = 0.0, 0
    for e, geo, euc in zip(energy, geodesic, euclidean):  # one start at a time: [G, G] comparisons, g1 rows, g2 columns
        through_wall = (euc[:, None] < euc[None, :] - margin) & (geo[:, None] > geo[None, :] + margin)
        through_wall &= ~np.isnan(e)[:, None] & ~np.isnan(e)[None, :]
        maze_minus_wall = (e[None, :] - e[:, None])[through_wall]  # energy(s, g2) - energy(s, g1)
        agree_maze += float((maze_minus_wall > 0).sum()) + 0.5 * float((maze_minus_wall == 0).sum())
        comparisons += int(through_wall.sum())
    return {
        "topo_rank_corr_geodesic": _rank_corr(energy.ravel(), -geodesic.ravel()),
        "topo_rank_corr_euclidean": _rank_corr(energy.ravel(), -euclidean.ravel()),
        "topo_through_wall_fraction": agree_maze / comparisons if comparisons else math.nan,
        "topo_through_wall_comparisons": float(comparisons),
    }


# --- Q-map files -----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare arrays
class QMap:
    """One learner's critic energy from one start position to every node of a maze's `FreeSpaceGrid`: the content
    of a probe file (docs/run-directory.md, "Probe files")."""

    learner: str
    """The learner's name (its role), e.g. "collector" or "learner_d4"."""
    critic_depth: int
    """Residual blocks of its critic."""
    energy: np.ndarray
    """float32 ``[N]``: critic energy from the start to each node (higher = judged closer)."""
    node_xy: np.ndarray
    """float64 ``[N, 2]``: world (x, y) of each node (`FreeSpaceGrid.node_xy`)."""
    start_xy: np.ndarray
    """float64 ``[2]``: world (x, y) of the start."""
    layout_rows: tuple[str, ...]
    """The maze text rows, top -> bottom."""
    scaling: float
    """s: world size of one maze cell."""
    nodes_per_cell: int
    """k: nodes along each axis of one cell."""
    env_steps: int
    """Env steps of the data the learner had seen when the map was drawn."""
    grad_steps: int
    """The learner's grad steps then."""

    def __post_init__(self) -> None:
        where = f"Q-map of {self.learner!r}"
        layout_wall_mask(self.layout_rows, where)
        n = len(self.node_xy)
        if self.node_xy.shape != (n, 2) or self.energy.shape != (n,) or self.start_xy.shape != (2,):
            raise ValueError(f"{where}: needs energy [N], node_xy [N, 2] and start_xy [2], got "
                             f"{self.energy.shape}, {self.node_xy.shape}, {self.start_xy.shape}")

    def grid(self) -> FreeSpaceGrid:
        """The `FreeSpaceGrid` of the map's maze (built anew: Dijkstra's graph and all)."""
        return FreeSpaceGrid.from_layout(self.layout_rows, self.scaling, self.nodes_per_cell)


def qmap_path(run_dir: Path, learner: str) -> Path:
    """``<run_dir>/probes/<learner>.npz``."""
    return Path(run_dir) / PROBES_DIR / f"{learner}.npz"


def save_qmap(path: Path, *, energy: np.ndarray, grid: FreeSpaceGrid, start_xy: np.ndarray, env_steps: int,
              grad_steps: int, learner: str, critic_depth: int) -> QMap:
    """Write a probe file atomically (a temp file, then `os.replace`: a reader never sees half a file) and return
    what it holds. ``energy [N]`` is over `grid`'s nodes, from ``start_xy [2]`` (world units)."""
    energy = np.asarray(energy, dtype=np.float32)
    if energy.shape != (grid.n_nodes,):
        raise ValueError(f"energy must have one value per grid node, shape ({grid.n_nodes},); got {energy.shape}")
    qmap = QMap(learner=str(learner), critic_depth=int(critic_depth), energy=energy,
                node_xy=np.asarray(grid.node_xy, dtype=np.float64),
                start_xy=np.asarray(start_xy, dtype=np.float64).reshape(-1), layout_rows=grid.layout_rows,
                scaling=float(grid.scaling), nodes_per_cell=int(grid.nodes_per_cell), env_steps=int(env_steps),
                grad_steps=int(grad_steps))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, energy=qmap.energy, node_xy=qmap.node_xy, start_xy=qmap.start_xy,
                 layout_rows=np.array(qmap.layout_rows), scaling=np.float64(qmap.scaling),
                 nodes_per_cell=np.int64(qmap.nodes_per_cell), env_steps=np.int64(qmap.env_steps),
                 grad_steps=np.int64(qmap.grad_steps), learner=np.array(qmap.learner),
                 critic_depth=np.int64(qmap.critic_depth))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return qmap


def read_qmap(path: Path) -> QMap:
    """Read a probe file. Raises OSError, or ValueError naming `path` when it is not an npz archive, lacks a key or
    holds inconsistent shapes."""
    with open_npz(path) as data:
        try:
            return QMap(
                learner=str(data["learner"]), critic_depth=int(data["critic_depth"]),
                energy=np.asarray(data["energy"], dtype=np.float32),
                node_xy=np.asarray(data["node_xy"], dtype=np.float64),
                start_xy=np.asarray(data["start_xy"], dtype=np.float64),
                layout_rows=tuple(str(r) for r in data["layout_rows"]), scaling=float(data["scaling"]),
                nodes_per_cell=int(data["nodes_per_cell"]), env_steps=int(data["env_steps"]),
                grad_steps=int(data["grad_steps"]),
            )
        except KeyError as e:
            raise ValueError(f"{path}: not a probe file, missing {e}") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def load_run_qmaps(run_dir: Path) -> tuple[list[QMap], list[str]]:
    """The Q-maps of a run (``probes/*.npz``), the collector first then by critic depth and name, and a message per
    file that could not be read."""
    qmaps, problems = [], []
    for path in sorted((Path(run_dir) / PROBES_DIR).glob("*.npz")):
        try:
            qmaps.append(read_qmap(path))
        except (OSError, ValueError) as e:
            problems.append(f"{path}: cannot read the Q-map ({e}); file skipped")
    qmaps.sort(key=lambda q: (q.learner != "collector", q.critic_depth, q.learner))
    return qmaps, problems
