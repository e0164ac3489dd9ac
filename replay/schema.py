"""The replay data contract: one item = one env's window of T consecutive steps, with provenance.

Shared by every transport (the in-process buffer of the single-process trainer and the Reverb tables of the
decoupled runtime) and by the learner's relabelling, which consumes windows stacked as ``[T, N, ...]``.
Pure numpy/JAX: importing this module never loads reverb or tensorflow.

On the wire and in replay checkpoints a window is *packed* into one float32 column (`WindowSpec.pack`): Reverb charges
a fixed cost per column of every item (a chunk, its compression, its messages and its bookkeeping), which for small
windows dwarfs the payload. `REPLAY_LAYOUT` names that packing so a run directory can record which one its replay
checkpoint holds.

`GoalSpec` says which slice of an observation is the agent's state, the commanded goal and the achieved goal: the
envs declare it and the learner's relabelling reads windows through it, so it belongs to this contract.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # annotations only: GoalSpec's methods slice numpy and JAX arrays alike
    import jax

REPLAY_LAYOUT = 3
"""Version of the packed item layout stored in Reverb tables and their checkpoints.

1: six columns, one per `Window` field. 2: two columns, ``provenance`` int64 [3] and ``steps`` float32 [T, W].
3: one column ``window`` float32 [T + R, W]: the T steps, then R trailer rows holding the provenance's bits (see
`WindowSpec.pack`). Reverb loads a checkpoint with the signature it was written with, whatever the server asks for, so
a run directory records its layout and a resume refuses another one before anything starts."""

LAYOUT_COLUMNS: dict[tuple[str, ...], int] = {
    ("action", "actor_id", "env_steps", "obs", "param_version", "traj_id"): 1,
    ("provenance", "steps"): 2,
    ("window",): 3,
}
"""Sorted column names of a window table -> the replay layout they belong to (to name an old layout in errors)."""

LAYOUT_SUFFIX = ".layout"
"""Beside a replay checkpoint directory D, the file ``D.layout`` holds the `REPLAY_LAYOUT` of D's checkpoints; it is
written by `start_server` before the first checkpoint. D with complete checkpoints and no such file was written with
layout 1. Not inside D: Reverb treats every entry there as a checkpoint, and deletes all but the newest by name."""

PROVENANCE_FIELDS: tuple[str, ...] = ("actor_id", "param_version", "env_steps")
"""Order of the per-item provenance in the trailer rows of a packed window (each as int64)."""

PROVENANCE_WORDS = 2 * len(PROVENANCE_FIELDS)
"""float32 words the provenance takes in a packed window: one int64 is two words."""


@dataclasses.dataclass(frozen=True)
class GoalSpec:
    """Static description of a goal-conditioned observation: ``obs = concat(state [S], goal [G])``, and the achieved
    goal of a state is ``state[goal_start:goal_end]``. The methods only slice, so they take numpy or JAX arrays."""

    state_dim: int
    """S: number of leading observation dims that are the agent's state."""
    goal_start: int
    """First state dim of the achieved goal (inclusive)."""
    goal_end: int
    """Last state dim of the achieved goal (exclusive); goal_dim = goal_end - goal_start."""
    success_threshold: float
    """`success` fires when the achieved-to-commanded goal distance is below this (env units, e.g. metres)."""
    episode_length: int
    """Default episode length in env steps (truncation); the paper uses 1000 for every task."""

    def __post_init__(self) -> None:
        if not 0 <= self.goal_start < self.goal_end <= self.state_dim:
            raise ValueError(f"goal slice [{self.goal_start}:{self.goal_end}] must lie inside state_dim={self.state_dim}")
        if self.success_threshold <= 0 or self.episode_length <= 0:
            raise ValueError("success_threshold and episode_length must be positive")

    @property
    def goal_dim(self) -> int:
        """G: size of the goal space."""
        return self.goal_end - self.goal_start

    @property
    def obs_dim(self) -> int:
        """S + G: size of an observation."""
        return self.state_dim + self.goal_dim

    def state_of(self, obs: jax.Array) -> jax.Array:
        """``obs [..., S+G] -> state [..., S]``."""
        return obs[..., : self.state_dim]

    def goal_of(self, obs: jax.Array) -> jax.Array:
        """``obs [..., S+G] -> commanded goal [..., G]``."""
        return obs[..., self.state_dim :]

    def achieved_goal(self, state: jax.Array) -> jax.Array:
        """``state [..., S] -> achieved goal [..., G]``."""
        return state[..., self.goal_start : self.goal_end]


class Window(NamedTuple):
    """A window of T consecutive steps of one env slot (leading axes may be batched, e.g. ``[T, N, ...]``).

    Provenance fields describe who wrote the window: they are per item, not per step.
    """

    obs: np.ndarray
    """float32 [T, S+G]: observation at each step (state then commanded goal)."""
    action: np.ndarray
    """float32 [T, A]: action taken at that observation, in [-1, 1]."""
    traj_id: np.ndarray
    """int32 [T]: episode counter of the env slot; relabelling never crosses a change of traj_id."""
    actor_id: np.ndarray
    """int32 []: which actor process wrote the window."""
    param_version: np.ndarray
    """int64 []: version of the collector params the actor used when the window's last step was taken."""
    env_steps: np.ndarray
    """int64 []: the writing actor's cumulative env steps (all its env slots) when the window was written."""


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """Shapes of one window item; builds the Reverb signature and validates writes."""

    window_length: int
    """T: steps per window."""
    obs_dim: int
    """S + G."""
    action_dim: int
    """A."""

    def __post_init__(self) -> None:
        for name in ("window_length", "obs_dim", "action_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WindowSpec.{name} must be positive, got {getattr(self, name)}")

    def shapes_and_dtypes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Field name -> (shape, dtype) of one item."""
        t = self.window_length
        return {
            "obs": ((t, self.obs_dim), np.dtype(np.float32)),
            "action": ((t, self.action_dim), np.dtype(np.float32)),
            "traj_id": ((t,), np.dtype(np.int32)),
            "actor_id": ((), np.dtype(np.int32)),
            "param_version": ((), np.dtype(np.int64)),
            "env_steps": ((), np.dtype(np.int64)),
        }

    def validate(self, window: Window, batched: bool = False) -> int:
        """The number of windows in `window`; ValueError when a field's shape or dtype does not match this spec.

        Unbatched (one item, fields ``[T, ...]``, provenance ``[]``): returns 1. `batched` (what a writer takes, fields
        ``[E, T, ...]``, provenance ``[E]``): returns E, read from ``obs``, and every field must lead with that E."""
        leading: tuple[int, ...] = ()
        if batched:
            leading = np.shape(window.obs)[:1]
            if not leading:
                raise ValueError("window field 'obs': shape (), expected [E, T, S+G] (a batch of E windows)")
        for name, (shape, dtype) in self.shapes_and_dtypes().items():
            value = np.asarray(getattr(window, name))
            expected = leading + shape
            if value.shape != expected:
                batch_note = f" ([E, ...] with E = {leading[0]} windows, from obs)" if batched else ""
                raise ValueError(f"window field {name!r}: shape {value.shape}, expected {expected}{batch_note}")
            if value.dtype != dtype:
                raise ValueError(f"window field {name!r}: dtype {value.dtype}, expected {dtype}")
        return leading[0] if batched else 1

    def bytes_per_item(self) -> int:
        """Raw payload bytes of one item, unpacked (for memory benchmarks)."""
        return sum(int(np.prod(s)) * d.itemsize for s, d in self.shapes_and_dtypes().values())

    @property
    def step_width(self) -> int:
        """W = S+G + A + 1: floats per packed step (obs, action, then traj_id's bits)."""
        return self.obs_dim + self.action_dim + 1

    @property
    def trailer_rows(self) -> int:
        """R: rows of W floats after the T steps that carry the provenance (3 int64 = 6 float32 words)."""
        return -(-PROVENANCE_WORDS // self.step_width)

    def packed_shapes_and_dtypes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Column name -> (shape, dtype) of one packed item: a single ``window`` column."""
        return {"window": ((self.window_length + self.trailer_rows, self.step_width), np.dtype(np.float32))}

    def pack(self, batch: Window) -> np.ndarray:
        """float32 ``[E, T + R, W]`` of a batch of E windows (fields ``[E, T, ...]``, provenance ``[E]``).

        Rows ``[:T]`` are the steps: obs, action, and ``traj_id`` as the bit pattern of an int32 in the last float.
        Rows ``[T:]`` hold the provenance as int64 ``(actor_id, param_version, env_steps)`` bits in their first 6
        floats, zeros after. Bits are copied, never computed with, so every value survives exactly."""
        obs = np.asarray(batch.obs, np.float32)
        num_envs, t, width = obs.shape[0], self.window_length, self.step_width
        packed = np.empty((num_envs, t + self.trailer_rows, width), np.float32)
        packed[:, :t, :self.obs_dim] = obs
        packed[:, :t, self.obs_dim:-1] = batch.action
        packed[:, :t, -1] = np.asarray(batch.traj_id, np.int32).view(np.float32)
        packed[:, t:] = 0.0
        provenance = np.stack([np.asarray(getattr(batch, name), np.int64) for name in PROVENANCE_FIELDS], axis=-1)
        # `packed` is a fresh C-contiguous array, so this reshape is a view: the trailer words start at t * width.
        flat = packed.reshape(num_envs, (t + self.trailer_rows) * width)
        flat[:, t * width:t * width + PROVENANCE_WORDS] = provenance.view(np.float32)
        return packed

    def unpack(self, packed: np.ndarray) -> Window:
        """Inverse of `pack` for items stacked time-major: ``packed [T + R, ..., W]`` (one item ``[T + R, W]``, or
        the sampler's ``[T + R, N, W]``) -> fields ``[T, ..., ...]``, provenance ``[...]``. Fields are contiguous."""
        t = self.window_length
        steps = packed[:t]
        trailer = np.moveaxis(packed[t:], 0, -2)  # [..., R, W]
        trailer = trailer.reshape(*trailer.shape[:-2], -1)[..., :PROVENANCE_WORDS]
        provenance = np.ascontiguousarray(trailer).view(np.int64)  # [..., 3]
        return Window(
            obs=np.ascontiguousarray(steps[..., :self.obs_dim]),
            action=np.ascontiguousarray(steps[..., self.obs_dim:-1]),
            traj_id=np.ascontiguousarray(steps[..., -1]).view(np.int32),
            actor_id=provenance[..., 0].astype(np.int32),
            param_version=provenance[..., 1].copy(),  # copy(), not ascontiguousarray: one item's stays 0-d
            env_steps=provenance[..., 2].copy(),
        )


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete Reverb checkpoints (directories with a DONE marker) in `checkpoint_dir`, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p for p in checkpoint_dir.iterdir() if p.is_dir() and (p / "DONE").exists())


def layout_file(checkpoint_dir: Path) -> Path:
    """Where the layout of the checkpoints in `checkpoint_dir` is recorded (see `LAYOUT_SUFFIX`)."""
    return checkpoint_dir.parent / (checkpoint_dir.name + LAYOUT_SUFFIX)


def checkpoint_layout(checkpoint_dir: Path) -> int | None:
    """The replay layout of the checkpoints in `checkpoint_dir`; None when it holds no complete checkpoint.
    OSError when the layout file exists but cannot be read; ValueError when it does not hold a number."""
    if not complete_checkpoints(checkpoint_dir):
        return None
    try:
        text = layout_file(checkpoint_dir).read_text()
    except FileNotFoundError:
        return 1
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{layout_file(checkpoint_dir)} holds {text[:40]!r}, not a replay layout number") from None


def stamp_checkpoint_layout(checkpoint_dir: Path) -> None:
    """Record `REPLAY_LAYOUT` in `checkpoint_dir` unless it already holds checkpoints (they keep their own layout)."""
    if complete_checkpoints(checkpoint_dir):
        return
    path = layout_file(checkpoint_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{REPLAY_LAYOUT}\n")
    os.replace(tmp, path)
