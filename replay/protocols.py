"""The interfaces between roles: what an actor writes with, what a learner samples from, where params are published.

Two backends implement them: `replay.memory.InProcessReplay` (threads in one process, for tests and in-process
wiring) and `replay.reverb_backend` (a Reverb server, one process per role). One contract test suite runs against
both (`tests/integration/test_transport_contract.py`). Nothing here imports a backend.

Outcomes are types, not `None`:
- `ReplayTimeout`: a bounded wait ran out (table below its minimum size, a rate limiter, a server that does not
  answer). The call may be repeated; nothing was lost.
- `ReplayUnavailable` (a `ReplayTimeout`): the connection broke (the server died or is restarting).
- `ReplayExhausted`: no more data will ever come for this sampler (every actor finished and its table's limiter allows
  no further sample). Raised by the learner's sampling policy, not by a backend.
- `Stopped`: the caller's stop event was set while it waited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from replay.schema import Window


class ReplayTimeout(TimeoutError):
    """A bounded wait on the replay transport ran out (server down, table empty or a rate limiter blocking)."""


class ReplayUnavailable(ReplayTimeout):
    """The connection to the replay server broke (it died or is restarting). A subclass of `ReplayTimeout` because
    callers handle both alike: report, wait, call again."""


class ReplayExhausted(Exception):
    """No more data will come: every actor has finished and the table's rate limiter allows no further sample."""


class Stopped(Exception):
    """The role was asked to stop (SIGTERM/SIGINT, or its launcher is gone) while it waited."""


@dataclasses.dataclass(frozen=True)
class Versioned:
    """One published params version, as a reader receives it."""

    params: Any
    """The params pytree rebuilt into the reader's template (numpy leaves); None from `ParamStore.latest_version`."""
    version: int
    """The publisher's version number (its grad steps). It can go *down*: a learner resumed from a checkpoint."""
    fingerprint: str
    """Hash of the network config that produced the params (`replay.params.fingerprint`)."""
    meta: Mapping[str, Any]
    """JSON mapping given to `publish`, e.g. ``{"env_steps": 12800, "final": False}``."""


@runtime_checkable
class WindowWriter(Protocol):
    """Writes batches of per-env windows into every learner table (held by an actor)."""

    def write(self, window: Window) -> None:
        """Write ``window`` (fields ``[E, T, ...]``, provenance ``[E]``) as E windows into every table and return
        once they are confirmed. `ReplayTimeout` when that takes longer than the writer's bound; the windows stay
        queued and `wait_confirmed` keeps waiting for them (nothing is written twice)."""

    def wait_confirmed(self, timeout_s: float) -> None:
        """Keep waiting for the windows of a `write` that raised `ReplayTimeout`; `ReplayTimeout` again if they are
        still unconfirmed after `timeout_s`. Returns at once when nothing is pending."""

    def close(self) -> None:
        """Release the writer; unconfirmed windows are dropped."""


@runtime_checkable
class WindowSampler(Protocol):
    """Samples N windows at a time from one learner's table (held by a learner)."""

    def sample(self) -> Window:
        """N windows, fields ``[T, N, ...]`` (time-major, as relabelling wants) and provenance ``[N]``.
        `ReplayTimeout` after the sampler's bound; calling again keeps waiting for the same request."""

    def close(self) -> None:
        """Release the sampler."""


@runtime_checkable
class ParamStore(Protocol):
    """Versioned params: `publish` by the owning learner, `latest` / `latest_version` by actors and evaluators."""

    def publish(self, role: str, params: Any, version: int, fingerprint: str, meta: Mapping[str, Any],
                timeout_s: float) -> None:
        """Make `params` (a pytree of arrays) the newest params of `role`, replacing the previous version.
        `ReplayTimeout` when the store does not confirm within `timeout_s`."""

    def latest(self, role: str, template: Any, expected_fingerprint: str, timeout_s: float) -> Versioned:
        """The newest params of `role` rebuilt into the structure of `template`. `ReplayTimeout` when none are
        published within `timeout_s`; `replay.params.FingerprintMismatch` when they come from another network."""

    def latest_version(self, role: str, timeout_s: float) -> Versioned:
        """Version, fingerprint and meta of the newest params of `role` without the params (``params=None``): a
        cheap poll. `ReplayTimeout` when none are published within `timeout_s`."""


class Logger(Protocol):
    """Metric rows of one role (`experiments.metrics.JsonlLogger` writes them as JSONL)."""

    role: str
    start_time: float

    def log(self, metrics: Mapping[str, float], *, env_steps: int, grad_steps: int, param_version: int) -> Any:
        """One row; keys are namespaced ``"{role}/{name}"`` by the logger."""

    def close(self) -> None:
        """Flush and close."""
