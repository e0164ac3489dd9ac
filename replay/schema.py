"""The replay data contract: one item = one env's window of T consecutive steps, with provenance.

Shared by every transport (the in-process buffer of the single-process trainer and the Reverb tables of the
decoupled runtime) and by the learner's relabelling, which consumes windows stacked as ``[T, N, ...]``.
Pure numpy/JAX: importing this module never loads reverb or tensorflow.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np


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

    def validate(self, window: Window) -> None:
        """Raise ValueError when `window` (one unbatched item) does not match this spec."""
        for name, (shape, dtype) in self.shapes_and_dtypes().items():
            value = np.asarray(getattr(window, name))
            if value.shape != shape:
                raise ValueError(f"window field {name!r}: shape {value.shape}, expected {shape}")
            if value.dtype != dtype:
                raise ValueError(f"window field {name!r}: dtype {value.dtype}, expected {dtype}")

    def bytes_per_item(self) -> int:
        """Raw payload bytes of one item (for memory benchmarks)."""
        return sum(int(np.prod(s)) * d.itemsize for s, d in self.shapes_and_dtypes().values())
