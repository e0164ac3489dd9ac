"""Orbax checkpoints of a learner's state: one `Checkpointer` for the single-process trainer and the learner process.

A checkpoint step holds two items: the state pytree (under `item`) and a small JSON `meta` dict (counters, wall time,
fingerprints). `read_meta` reads the newest finished step's meta without JAX or a template, for checks made before any
process starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax


class Checkpointer:
    """Keeps the newest two checkpoints of one state pytree in `directory`."""

    def __init__(self, directory: Path, item: str) -> None:
        """`item` names the state inside each step ("state" for the trainer, "states" for a learner process; the
        names are part of the on-disk format)."""
        import orbax.checkpoint as ocp

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
