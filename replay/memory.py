"""In-process replay: no server, no Reverb. Two transports live here.

- `MemoryBuffer`: the single-process trainer's buffer. Per-env FIFO streams held as JAX arrays, sampled as windows;
  pure JAX (jit-able). It stores what the Reverb transport stores (observations, actions and `traj_id` per step; see
  `replay.schema`) so both feed the same relabelling, but as one ``[C, E, ...]`` ring of C steps per env slot instead
  of items. Like the paper's buffer, sampling draws one window of W consecutive steps per env slot.
- `InProcessReplay`: the `replay.protocols` interfaces (`WindowWriter`, `WindowSampler`, `ParamStore`) for threads of
  one process: named window tables and a params store behind one lock. It behaves like the Reverb backend
  (`replay.reverb_backend`) minus the rate limiter; the same contract tests run against both.

Importing this module loads neither reverb nor tensorflow.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from replay import params as params_lib
from replay.protocols import ReplayTimeout, Versioned
from replay.schema import Window, WindowSpec


@flax.struct.dataclass
class MemoryState:
    obs: jax.Array
    """float32 [C, E, S+G]."""
    action: jax.Array
    """float32 [C, E, A]."""
    traj_id: jax.Array
    """int32 [C, E]."""
    inserted_steps: jax.Array
    """int32 []: steps inserted per env slot since the start (the ring position is this modulo C)."""


@dataclasses.dataclass(frozen=True)
class MemoryBuffer:
    """A ring of `capacity_steps` steps for each of `num_envs` env slots."""

    capacity_steps: int
    """C: steps kept per env slot (oldest dropped first)."""
    num_envs: int
    """E."""
    obs_dim: int
    """S + G."""
    action_dim: int
    """A."""

    def init(self) -> MemoryState:
        c, e = self.capacity_steps, self.num_envs
        return MemoryState(
            obs=jnp.zeros((c, e, self.obs_dim), jnp.float32),
            action=jnp.zeros((c, e, self.action_dim), jnp.float32),
            traj_id=jnp.zeros((c, e), jnp.int32),
            inserted_steps=jnp.zeros((), jnp.int32),
        )

    def size_steps(self, state: MemoryState) -> jax.Array:
        """Steps held per env slot."""
        return jnp.minimum(state.inserted_steps, self.capacity_steps)

    def insert(self, state: MemoryState, obs: jax.Array, action: jax.Array, traj_id: jax.Array) -> MemoryState:
        """Append ``obs [T, E, S+G], action [T, E, A], traj_id [T, E]`` (T <= C) to every env slot's stream."""
        rows = (state.inserted_steps + jnp.arange(obs.shape[0])) % self.capacity_steps
        return MemoryState(
            obs=state.obs.at[rows].set(obs),
            action=state.action.at[rows].set(action),
            traj_id=state.traj_id.at[rows].set(traj_id),
            inserted_steps=state.inserted_steps + obs.shape[0],
        )

    def sample_windows(
        self, state: MemoryState, key: jax.Array, window_steps: int
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One window of `window_steps` consecutive steps per env slot, each at a uniform random start.

        Returns ``obs [W, E, S+G], action [W, E, A], traj_id [W, E]``. The caller guarantees that at least W steps
        are stored (the trainer validates prefill >= W before starting).
        """
        size = self.size_steps(state)
        oldest = (state.inserted_steps - size) % self.capacity_steps
        start = jax.random.randint(key, (self.num_envs,), 0, jnp.maximum(size - window_steps, 0) + 1)
        rows = (oldest + start[None, :] + jnp.arange(window_steps)[:, None]) % self.capacity_steps  # [W, E]
        take = lambda x: jnp.take_along_axis(x, rows.reshape(rows.shape + (1,) * (x.ndim - 2)), axis=0)
        return take(state.obs), take(state.action), take(state.traj_id)


# ------------------------------------------------------------------------------------ protocols, in one process


class InProcessReplay:
    """Window tables and a params store shared by the threads of one process (tests, in-process wiring).

    Like the Reverb tables: every table is a FIFO of `max_size_windows` windows that can be sampled once it holds
    `min_size_to_sample_windows` (below that, sampling waits, at most its timeout); sampling is uniform with
    replacement; a writer inserts each window into every table (one stored copy, referenced by each). Params are kept
    per role as the newest publish only, packed as `replay.params.pack` packs them for Reverb.

    Unlike them: **no rate limiter** (no ``samples_per_insert``): a learner samples as often as it likes and inserts
    never wait, so `WindowWriter.write` never times out and no learner can stall the writers. No checkpoints.
    """

    def __init__(self, window_spec: WindowSpec, table_names: Sequence[str], max_size_windows: int,
                 min_size_to_sample_windows: int, seed: int) -> None:
        """`seed` seeds the samplers' draws (each sampler gets its own stream, spawned in creation order)."""
        if not table_names or len(set(table_names)) != len(table_names):
            raise ValueError(f"table names must be given and unique, got {list(table_names)}")
        if not 0 < min_size_to_sample_windows <= max_size_windows:
            raise ValueError(f"need 0 < min_size_to_sample_windows ({min_size_to_sample_windows}) <= "
                             f"max_size_windows ({max_size_windows})")
        self.window_spec = window_spec
        self.min_size_to_sample_windows = min_size_to_sample_windows
        self._tables = {name: _Ring(max_size_windows) for name in table_names}
        self._changed = threading.Condition()
        self._seeds = np.random.SeedSequence(seed)
        self.params = InProcessParamStore()
        """The params store (`replay.protocols.ParamStore`)."""

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(self._tables)

    def table_size(self, table: str) -> int:
        """Windows held by `table` now."""
        with self._changed:
            return self._tables[table].size

    def writer(self) -> InProcessWindowWriter:
        """A writer that inserts every window it is given into every table."""
        return InProcessWindowWriter(self)

    def sampler(self, table: str, windows_per_sample: int, timeout_s: float) -> InProcessWindowSampler:
        """A sampler of `windows_per_sample` windows at a time from `table`, waiting at most `timeout_s` per sample."""
        if table not in self._tables:
            raise ValueError(f"in-process replay has no table {table!r} (tables: {list(self._tables)})")
        if windows_per_sample <= 0:
            raise ValueError(f"windows_per_sample must be positive, got {windows_per_sample}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        with self._changed:
            (seed,) = self._seeds.spawn(1)
        return InProcessWindowSampler(self, table, windows_per_sample, timeout_s, np.random.default_rng(seed))

    def _insert(self, windows: Sequence[Window]) -> None:
        with self._changed:
            for ring in self._tables.values():
                for window in windows:
                    ring.insert(window)
            self._changed.notify_all()

    def _draw(self, table: str, num: int, timeout_s: float, rng: np.random.Generator) -> list[Window]:
        ring = self._tables[table]
        with self._changed:
            if not self._changed.wait_for(lambda: ring.size >= self.min_size_to_sample_windows, timeout_s):
                raise ReplayTimeout(f"sampling {num} windows from {table!r} did not complete within {timeout_s} s: "
                                    f"the table holds {ring.size} windows, below its minimum "
                                    f"{self.min_size_to_sample_windows}")
            return [ring.items[i] for i in rng.integers(0, ring.size, num)]


class _Ring:
    """A FIFO of at most `capacity` items in a list: once full, the oldest is overwritten (O(1) insert and index)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[Window] = []
        self._oldest = 0

    @property
    def size(self) -> int:
        return len(self.items)

    def insert(self, item: Window) -> None:
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            self.items[self._oldest] = item
            self._oldest = (self._oldest + 1) % self.capacity


class InProcessWindowWriter:
    """`replay.protocols.WindowWriter` of an `InProcessReplay`: every window into every table, at once."""

    def __init__(self, replay: InProcessReplay) -> None:
        self._replay = replay
        self._closed = False
        self.windows_written = 0
        """Windows inserted into every table."""

    def write(self, window: Window) -> None:
        """Insert `window` (fields ``[E, T, ...]``, provenance ``[E]``) as E windows into every table. Copies the
        arrays (the caller may reuse its buffers) and returns at once: nothing here waits, so no `ReplayTimeout`.
        ValueError when a field does not match the replay's `WindowSpec`."""
        if self._closed:
            raise RuntimeError("InProcessWindowWriter.close has been called")
        batch = Window(*(np.asarray(field) for field in window))
        num_windows = self._replay.window_spec.validate(batch, batched=True)
        self._replay._insert([Window(*(_frozen_copy(field[i]) for field in batch)) for i in range(num_windows)])
        self.windows_written += num_windows

    def wait_confirmed(self, timeout_s: float) -> None:
        """Returns at once: `write` confirms before it returns, so nothing is ever pending."""

    def close(self) -> None:
        """Later writes raise RuntimeError (as Reverb's writer does). Closing twice is fine."""
        self._closed = True


class InProcessWindowSampler:
    """`replay.protocols.WindowSampler` of one table of an `InProcessReplay`."""

    def __init__(self, replay: InProcessReplay, table: str, windows_per_sample: int, timeout_s: float,
                 rng: np.random.Generator) -> None:
        self._replay = replay
        self._table = table
        self._num = windows_per_sample
        self._timeout_s = timeout_s
        self._rng = rng

    def sample(self) -> Window:
        """N windows drawn uniformly with replacement, fields ``[T, N, ...]`` (time-major) and provenance ``[N]``,
        as the Reverb sampler returns them. `ReplayTimeout` after `timeout_s` while the table is below its minimum
        size."""
        items = self._replay._draw(self._table, self._num, self._timeout_s, self._rng)
        # Fields [T, ...] stack along a new axis 1 (-> [T, N, ...]); 0-d provenance along axis 0 (-> [N]).
        return Window(*(np.stack(values, axis=min(1, values[0].ndim)) for values in zip(*items)))

    def close(self) -> None:
        """Nothing to release."""


class InProcessParamStore:
    """`replay.protocols.ParamStore` in one process: the newest publish per role, behind a lock.

    A publish is packed with `replay.params.pack` (a copy of every leaf's bytes, the same checks as the Reverb store:
    numeric leaves only, JSON meta only) and `latest` rebuilds it into the reader's template with
    `replay.params.unflatten_like`, so a reader gets fresh arrays it may modify and the checks of the Reverb store.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._latest: dict[str, _Published] = {}

    def publish(self, role: str, params: Any, version: int, fingerprint: str, meta: Mapping[str, Any],
                timeout_s: float) -> None:
        """Make `params` the newest params of `role`. Never waits (`timeout_s` is unused): no `ReplayTimeout`.
        TypeError for non-numeric leaves or non-JSON `meta`."""
        description, parts = params_lib.pack(params)
        published = _Published(int(version), fingerprint, json.dumps(dict(meta), sort_keys=True, allow_nan=False),
                               description, parts)
        with self._changed:
            self._latest[role] = published
            self._changed.notify_all()

    def _wait(self, role: str, timeout_s: float) -> _Published:
        with self._changed:
            if not self._changed.wait_for(lambda: role in self._latest, timeout_s):
                raise ReplayTimeout(f"reading params of {role!r} did not complete within {timeout_s} s: none published")
            return self._latest[role]

    def latest_version(self, role: str, timeout_s: float) -> Versioned:
        """Version, fingerprint and meta of the newest params of `role` (``params=None``); `ReplayTimeout` when none
        are published within `timeout_s`."""
        published = self._wait(role, timeout_s)
        return Versioned(params=None, version=published.version, fingerprint=published.fingerprint,
                         meta=json.loads(published.meta_json))

    def latest(self, role: str, template: Any, expected_fingerprint: str, timeout_s: float) -> Versioned:
        """The newest params of `role` rebuilt into `template`; `FingerprintMismatch` when they come from another
        network config, ValueError when leaves differ from the template, `ReplayTimeout` when none are published
        within `timeout_s`."""
        published = self._wait(role, timeout_s)
        params_lib.check_fingerprint(published.fingerprint, expected_fingerprint,
                                     f"params of {role!r} (version {published.version})")
        leaves = params_lib.unpack(published.description, published.parts)
        return Versioned(params=params_lib.unflatten_like(template, leaves), version=published.version,
                         fingerprint=published.fingerprint, meta=json.loads(published.meta_json))


@dataclasses.dataclass(frozen=True)
class _Published:
    version: int
    fingerprint: str
    meta_json: str
    description: str
    parts: list[np.ndarray]


def _frozen_copy(array: np.ndarray) -> np.ndarray:
    """A read-only copy: stored windows are shared by every table and must not change under a sampler."""
    copy = np.array(array)
    copy.flags.writeable = False
    return copy
