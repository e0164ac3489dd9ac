"""The run's control plane: one small status file per role, replaced atomically, read by one function.

"Actor 1 has finished", "the collector is at grad step N", "the run is done" are facts other processes act on (a
learner stops waiting for data, a resumed actor continues its env-step count, a launcher knows the run ended). They
live here, under ``RUN_DIR/status/<role>.json``, not in the metric files, which are for people and analysis and may
change format. A file is written to a temporary name and renamed over the old one, so a reader sees the old or the
new state, never half of one; on a shared filesystem the rename is atomic too (NFS, Lustre).

Pure stdlib: importing it loads neither JAX nor Reverb.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

STATUS_DIR = "status"
State = Literal["running", "finished", "stopped"]
"""'running': at work. 'finished': reached its goal (an actor its env-step share, a learner its SGD-step target or
the end of the data, the launcher: every role finished). 'stopped': ended by a signal before that."""


@dataclasses.dataclass(frozen=True)
class RoleStatus:
    """The last state a role reported."""

    role: str
    state: State
    env_steps: int = 0
    """An actor: env steps it wrote and the replay confirmed. A learner: the env steps of its last row."""
    grad_steps: int = 0
    """A learner: SGD steps taken."""
    wall_time: float = 0.0
    """time.time() when written."""
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Anything else a reader may need (JSON types), e.g. ``{"short_of_target": 40}``."""


class RunStatus:
    """Reads and writes the status files of the run in `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = Path(run_dir) / STATUS_DIR

    def path(self, role: str) -> Path:
        return self.directory / f"{role}.json"

    def set(self, role: str, state: State, *, env_steps: int = 0, grad_steps: int = 0,
            detail: Mapping[str, Any] | None = None) -> RoleStatus:
        """Replace `role`'s status. Costs one small file write and a rename (no fsync: a crash of the whole host may
        lose the last update, and a role then redoes at most the work since its previous one)."""
        status = RoleStatus(role, state, int(env_steps), int(grad_steps), time.time(), dict(detail or {}))
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(role)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(status)))
        os.replace(tmp, target)
        return status

    def get(self, role: str) -> RoleStatus | None:
        """`role`'s last status, or None when it never wrote one (or the file is unreadable)."""
        try:
            data = json.loads(self.path(role).read_text())
            return RoleStatus(**data)
        except (OSError, ValueError, TypeError):
            return None

    def all_finished(self, roles: Iterable[str]) -> bool:
        """True when every role in `roles` reports 'finished'."""
        return all((s := self.get(role)) is not None and s.state == "finished" for role in roles)
