"""Orbax checkpoints of a learner's state: one `Checkpointer` for the single-process trainer and the learner process.

A checkpoint step holds two items: the state pytree (under `item`) and a small JSON `meta` dict (counters, wall time,
fingerprints). `read_meta` reads the newest finished step's meta without JAX or a template, for checks made before any
process starts.

Orbax (0.12.8) asks TensorStore for its kvstore byte counters before and after writing the arrays of every save, to log
a "raw throughput" line. TensorStore's `experimental_collect_matching_metrics` (0.1.86, the newest) never frees what it
returns: 8 objects, 4.4 KiB of Python heap and ~12 KiB of RSS per call with the file kvstore (measured 2026-11-30), ~26
objects per save, for the life of the process. `Checkpointer` turns that count off (`_stop_raw_bytes_leak`); orbax then
skips that log line and the JAX monitoring events of it, and nothing else changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax


def _no_raw_bytes(direction: Any = None) -> int:
    """Stands in for orbax's TensorStore byte count: 0 bytes, so orbax records no raw-throughput metrics."""
    return 0


def _stop_raw_bytes_leak() -> None:
    """Replace orbax's `get_tensorstore_raw_bytes` (see the module docstring) with `_no_raw_bytes`. Orbax's array
    handlers look it up on its module at every call. A later orbax without that function is left alone
    (tests/integration/test_checkpoint_memory.py tells whether its saves still leak)."""
    try:
        from orbax.checkpoint._src.serialization import tensorstore_utils
    except ImportError:
        return
    if hasattr(tensorstore_utils, "get_tensorstore_raw_bytes"):
        tensorstore_utils.get_tensorstore_raw_bytes = _no_raw_bytes


class Checkpointer:
    """Keeps the newest two checkpoints of one state pytree in `directory`."""

    def __init__(self, directory: Path, item: str) -> None:
        """`item` names the state inside each step ("state" for the trainer, "states" for a learner process; the
        names are part of the on-disk format)."""
        import orbax.checkpoint as ocp

        _stop_raw_bytes_leak()
        self._ocp = ocp
        self._item = item
        self._manager = ocp.CheckpointManager(Path(directory).resolve(),
                                              options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Write `state` and `meta` as checkpoint `step` and wait until it is on disk; a no-op when the newest
        checkpoint already is `step`."""
        if self._manager.latest_step() == step:
            return
        ocp = self._ocp
        self._manager.save(step, args=ocp.args.Composite(
            **{self._item: ocp.args.StandardSave(state)}, meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()

    def restore(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
        """``(state, meta)`` of the newest checkpoint, shaped like `template`; None when there is none."""
        step = self._manager.latest_step()
        if step is None:
            return None
        ocp = self._ocp
        restored = self._manager.restore(step, args=ocp.args.Composite(
            **{self._item: ocp.args.StandardRestore(jax.eval_shape(lambda: template))}, meta=ocp.args.JsonRestore()))
        return restored[self._item], restored["meta"]

    def close(self) -> None:
        self._manager.close()


def read_meta(directory: Path) -> tuple[int, dict[str, Any]] | None:
    """``(step, meta)`` of the newest finished checkpoint under `directory`, read without JAX or a template; None
    when there is none. Orbax writes each step to a temporary name and renames it when complete, so only all-digit
    names are finished steps. ValueError when the meta cannot be read (a damaged checkpoint)."""
    if not directory.is_dir():
        return None
    steps = sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    if not steps:
        return None
    path = directory / str(steps[-1]) / "meta" / "metadata"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the counters of checkpoint {path.parent.parent}: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path.parent.parent} has no counters in {path.name}")
    return steps[-1], meta
