"""`PointMaze`: a 2-D kinematic point in a grid maze, cheap enough to learn on two CPU cores.

The point has no velocity: an action ``a [2]`` in [-1, 1] moves it by ``a * max_step`` world units per env step.
State = position ``(x, y)``; observation = ``[x, y, gx, gy]``; the achieved goal is the whole state (goal slice
[0:2]). Axes follow `actors.envs.mazes` (cell (i, j) is centred at (i s, j s)).

Walls. The point is a square footprint of half-size `radius` (a conservative stand-in for a disk of that radius: if
the square stays off every wall cell, so does the disk). A move is resolved axis by axis, x first, then y. If the
footprint after an axis move would overlap a wall cell, the point stops at contact (its footprint ``contact_gap``
short of the wall) instead of taking the move, so it can still slide along a wall with the other axis and can get
right up to walls. Because ``max_step < scaling`` a single axis move crosses at most one cell boundary, so a wall cell
can never be jumped over. Everything is `jnp.where`, no Python branching, so `step` jits and vmaps.

Where the env state lives: in the observation itself (``obs[0:2]`` position, ``obs[2:4]`` goal); `pipeline_state` is
None and `info` is left to the wrappers. Any wrapper that restores a cached observation on auto-reset therefore
restores the whole env, and a test can build any state from an observation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from actors.envs.base import GoalEnv, GoalSpec, State
from actors.envs.mazes import MazeLayout, get_layout

__all__ = ["PointMaze"]


class PointMaze(GoalEnv):
    """Kinematic point mass in a maze; see the module docstring for dynamics and the collision rule."""

    def __init__(
        self,
        layout: str = "u_maze",
        scaling: float = 1.0,
        max_step: float = 0.2,
        success_threshold: float = 0.3,
        episode_length: int = 100,
        start_noise: float = 0.1,
        goal_noise: float = 0.0,
        radius: float = 0.1,
    ) -> None:
        """
        Args:
          layout: a `actors.envs.mazes.LAYOUTS` name.
          scaling: world size of one maze cell, world units.
          max_step: displacement per env step at |action| = 1, world units; must be < scaling (no tunnelling).
          success_threshold: `success` fires when the point is closer than this to the goal, world units.
          episode_length: default truncation length in env steps, only recorded in the `GoalSpec`.
          start_noise: start = random 'R' cell centre + U(-start_noise, start_noise) per axis, world units.
          goal_noise: goal = random 'G' cell centre + U(-goal_noise, goal_noise) per axis, world units.
          radius: half-size of the point's square footprint, world units (keeps it off the wall squares).
        """
        self._layout = get_layout(layout, scaling)  # validates `layout` and `scaling`
        s = float(scaling)
        if not 0 < radius < 0.25 * s:
            # A footprint wider than half a cell would make one-cell corridors too tight to move through.
            raise ValueError(f"radius must be in (0, {0.25 * s}) for scaling {s}, got {radius}")
        if not 0 < max_step < s:
            raise ValueError(f"max_step must be in (0, scaling={s}) so the point cannot jump a wall, got {max_step}")
        if success_threshold <= 0:
            raise ValueError(f"success_threshold must be positive, got {success_threshold}")
        if int(episode_length) != episode_length or episode_length <= 0:
            raise ValueError(f"episode_length must be a positive integer, got {episode_length}")
        # The point's centre must stay at least `radius` (+ the contact gap) inside its cell, so noisy starts are
        # always legal and noisy goals always reachable.
        max_noise = 0.5 * s - radius - 2 * self._contact_gap(s)
        for label, noise in (("start_noise", start_noise), ("goal_noise", goal_noise)):
            if not 0 <= noise <= max_noise:
                raise ValueError(f"{label} must be in [0, {max_noise:.4g}] (half a cell minus radius), got {noise}")

        self._scaling = s
        self._max_step = float(max_step)
        self._radius = float(radius)
        # Collision checks use a footprint half a gap wider than `radius`: a point stopped at contact (a full gap
        # short) is legal, while one whose footprint exactly touches a wall face (reachable by plain float steps,
        # e.g. 1.0 - 2 * 0.2 - 0.1 = 0.5) is not, so the disk of `radius` never touches a wall square.
        self._check_radius = self._radius + 0.5 * self._contact_gap(s)
        self._start_noise = float(start_noise)
        self._goal_noise = float(goal_noise)
        self._n_rows, self._n_cols = self._layout.shape
        self._blocked_table = self._footprint_table(self._layout.wall_mask)
        self._start_xy = self._layout.cell_to_xy(self._layout.start_cells)  # float32 [n_R, 2]
        self._goal_xy = self._layout.cell_to_xy(self._layout.goal_cells)  # float32 [n_G, 2]
        self._spec = GoalSpec(
            state_dim=2,
            goal_start=0,
            goal_end=2,
            success_threshold=float(success_threshold),
            episode_length=int(episode_length),
        )

    @staticmethod
    def _footprint_table(wall_mask: np.ndarray) -> np.ndarray:
        """bool [2 * 2 * n_rows * n_cols]: entry (di, dj, i, j) says whether any wall lies in cells
        [i, i + di] x [j, j + dj]. A footprint spans at most 2 x 2 cells, so one lookup replaces four (2x faster)."""
        n_rows, n_cols = wall_mask.shape
        padded = np.pad(wall_mask, ((0, 1), (0, 1)), constant_values=True)
        table = np.zeros((2, 2, n_rows, n_cols), dtype=bool)
        for di in (0, 1):
            for dj in (0, 1):
                for a in range(di + 1):
                    for b in range(dj + 1):
                        table[di, dj] |= padded[a : a + n_rows, b : b + n_cols]
        return table.reshape(-1)

    @staticmethod
    def _contact_gap(scaling: float) -> float:
        # How far short of a wall a blocked move stops. Far above float32 resolution at maze coordinates (~1e-5 at
        # x = 50) so the stopped footprint rounds into its own cell, and far below anything a policy would notice.
        return 1e-3 * scaling

    # --- GoalEnv interface -------------------------------------------------------------------------------------

    @property
    def spec(self) -> GoalSpec:
        return self._spec

    @property
    def action_size(self) -> int:
        return 2

    @property
    def backend(self) -> str:
        return "jax"

    @property
    def layout(self) -> MazeLayout:
        """The `actors.envs.mazes.MazeLayout` this env runs in."""
        return self._layout

    def reset(self, key: jax.Array) -> State:
        """`key` -> a start state: random 'R' cell + noise, random 'G' cell (+ noise) as the goal."""
        k_start, k_start_noise, k_goal, k_goal_noise = jax.random.split(key, 4)
        start_xy = jnp.asarray(self._start_xy)[jax.random.randint(k_start, (), 0, self._start_xy.shape[0])]
        start_xy = start_xy + jax.random.uniform(
            k_start_noise, (2,), minval=-self._start_noise, maxval=self._start_noise
        )
        goal_xy = jnp.asarray(self._goal_xy)[jax.random.randint(k_goal, (), 0, self._goal_xy.shape[0])]
        goal_xy = goal_xy + jax.random.uniform(k_goal_noise, (2,), minval=-self._goal_noise, maxval=self._goal_noise)
        obs = jnp.concatenate([start_xy, goal_xy]).astype(jnp.float32)
        dist = jnp.linalg.norm(start_xy - goal_xy)
        zero = jnp.zeros((), jnp.float32)
        return State(
            pipeline_state=None,
            obs=obs,
            reward=zero,
            done=zero,
            metrics=self._metrics(dist),
        )

    def step(self, state: State, action: jax.Array) -> State:
        """Move by ``clip(action, -1, 1) * max_step``, x then y, stopping at walls. ``action [2]``."""
        pos, goal = state.obs[0:2], state.obs[2:4]
        delta = jnp.clip(action.astype(jnp.float32), -1.0, 1.0) * self._max_step
        x, y = pos[0], pos[1]
        x = self._move_axis(moving=x, other=y, delta=delta[0], moving_is_row=True)
        y = self._move_axis(moving=y, other=x, delta=delta[1], moving_is_row=False)
        new_pos = jnp.stack([x, y])
        dist = jnp.linalg.norm(new_pos - goal)
        return state.replace(
            obs=jnp.concatenate([new_pos, goal]),
            reward=-dist,
            done=jnp.zeros((), jnp.float32),
            metrics=self._metrics(dist),
        )

    # --- internals ---------------------------------------------------------------------------------------------

    def _metrics(self, dist: jax.Array) -> dict[str, jax.Array]:
        dist = dist.astype(jnp.float32)
        return {"dist": dist, "success": (dist < self._spec.success_threshold).astype(jnp.float32)}

    def _cell_index(self, coord: jax.Array) -> jax.Array:
        # Nearest cell centre, i.e. floor(c / s + 1/2); one rounding rule used by every collision check.
        return jnp.floor(coord / self._scaling + 0.5).astype(jnp.int32)

    def _overlaps_wall(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """Does the footprint centred at scalar (x, y) overlap a wall cell? It spans at most 2 x 2 cells."""
        r = self._check_radius
        i_lo = jnp.clip(self._cell_index(x - r), 0, self._n_rows - 1)
        i_hi = jnp.clip(self._cell_index(x + r), 0, self._n_rows - 1)
        j_lo = jnp.clip(self._cell_index(y - r), 0, self._n_cols - 1)
        j_hi = jnp.clip(self._cell_index(y + r), 0, self._n_cols - 1)
        # Clipping maps positions off the grid onto the border, which is all wall, so "off the grid" is blocked.
        flat = (((i_hi - i_lo) * 2 + (j_hi - j_lo)) * self._n_rows + i_lo) * self._n_cols + j_lo
        return jnp.asarray(self._blocked_table)[flat]

    def _move_axis(self, moving: jax.Array, other: jax.Array, delta: jax.Array, moving_is_row: bool) -> jax.Array:
        """New coordinate along one axis after trying to move by `delta` (|delta| < scaling), other axis fixed."""

        def overlaps(m: jax.Array) -> jax.Array:
            return self._overlaps_wall(m, other) if moving_is_row else self._overlaps_wall(other, m)

        s, r, gap = self._scaling, self._radius, self._contact_gap(self._scaling)
        target = moving + delta
        blocked = overlaps(target)
        # The cell the (checked) footprint's leading edge would enter; the first wall on the way is its near face.
        forward = delta > 0
        lead = target + jnp.where(forward, self._check_radius, -self._check_radius)
        lead_cell = self._cell_index(lead).astype(jnp.float32)
        contact = jnp.where(forward, (lead_cell - 0.5) * s - r - gap, (lead_cell + 0.5) * s + r + gap)
        # Never further than asked and never backwards (contact can sit a gap behind a point already touching).
        contact = jnp.clip(contact, jnp.minimum(moving, target), jnp.maximum(moving, target))
        # No second check of `contact`: from a legal position the footprint's leading edge crosses at most one cell
        # boundary (|delta| < s), the rows/columns it already covered are free, so stopping a gap before the face
        # of the entered cell is legal. (A hand-built state that starts inside a wall is not repaired.)
        return jnp.where(blocked, contact, target)
