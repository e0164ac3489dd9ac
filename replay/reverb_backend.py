"""Reverb transport of the decoupled runtime: tables, server, and the `replay.protocols` interfaces over Reverb.

`WindowWriter`, `WindowSampler` and `ParamStore` implement the protocols of the same names (the contract tests in
tests/integration/test_transport_contract.py run them beside `replay.memory.InProcessReplay`); `start_server` starts a
server in the calling process (the ``depthrl replay`` role runs it, with its checkpoint timer).

The only module in the project that imports ``reverb`` or ``tensorflow``. Everything that crosses it is numpy
(`replay.schema.Window`, flat param buffers from `replay.params`), so actors and learners never see Reverb types.

Layout on one server (see replay/README.md for the reasoning):
- one *window table* per learner (the collector learner and every passive learner), all with a Uniform sampler,
  a Fifo remover and the same ``max_size_windows``. A writer appends each env's window once and creates an item
  in every table from that one step, so the stored chunks are shared; each table has its own rate limiter, hence
  its own update-to-data ratio.
- a window item is packed into one column (`replay.schema.WindowSpec.pack`, `REPLAY_LAYOUT`): Reverb's cost per
  column of an item is fixed, so fewer columns mean cheaper writes and less memory per stored step.
- two tiny *params tables* per publishing role: ``params/{role}`` (max_size 1, the newest params) and
  ``params_version/{role}`` (max_size 1, only version, fingerprint and meta, so a reader can poll cheaply).

Liveness: Reverb's ``client.sample`` and ``server_info()`` without a deadline block forever (no server, empty
table, rate limiter). Every blocking call here has a bound and raises `ReplayTimeout` instead of hanging.

Security: the server listens on all interfaces with insecure gRPC credentials (no auth, no TLS). Keep it inside
a private network.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import reverb
import tensorflow as tf
from reverb import pybind
from reverb.platform import checkpointers_lib

from replay import params as params_lib
# Defined with the interfaces; imported here so that callers of this backend can keep writing `rb.ReplayTimeout`.
from replay.protocols import ReplayTimeout, ReplayUnavailable, Versioned
from replay.schema import LAYOUT_COLUMNS, REPLAY_LAYOUT, Window, WindowSpec, stamp_checkpoint_layout

# Learners are JAX processes that import this module for the sampler: TensorFlow must not claim an accelerator
# there (a no-op with tensorflow-cpu, which is what the lock pins). RuntimeError: TF already initialised its
# devices elsewhere in this process, too late to change; nothing here runs TF ops on a device anyway.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:
    pass

_T = TypeVar("_T")

PARAMS_TABLE_PREFIX = "params/"
PARAMS_VERSION_TABLE_PREFIX = "params_version/"


# gRPC's words for a connection that failed or broke (status UNAVAILABLE); Reverb raises them as RuntimeError.
_CONNECTION_ERRORS = ("Connection reset", "Connection refused", "Socket closed", "failed to connect", "Broken pipe",
                      "UNAVAILABLE", "Unavailable", "unavailable", "Stream removed", "GOAWAY")


def _lost_connection(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _CONNECTION_ERRORS)


# --------------------------------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class LearnerTableConfig:
    """The window table of one learner and its rate limiter."""

    name: str
    """Learner name, also the table name, e.g. "collector" or "learner_d4"."""
    samples_per_insert: float | None
    """Windows sampled per inserted window (the learner's plan computes it from the update-to-data setting); None: no
    ratio, only MinSize."""
    min_size_to_sample_windows: int
    """Sampling blocks until the table holds this many windows."""
    error_buffer_samples: float = 0.0
    """How far (in sampled windows) the learner may run ahead of or behind the ratio before the limiter blocks
    sampling (ahead) or *inserting* (behind). Reverb requires >= max(1, samples_per_insert); make it at least one
    learner batch of windows. Because a writer inserts into every table, a learner that falls this far behind
    stalls every actor. Ignored when samples_per_insert is None."""

    blocks_inserts: bool = True
    """True: a learner that falls `error_buffer_samples` behind blocks inserts (and with them every actor, since a
    writer inserts into all tables). False: only sampling is limited (the learner can never run *ahead* of its
    ratio), inserts never wait for this table, and a slow learner simply falls behind its ratio."""

    def rate_limiter(self) -> reverb.rate_limiters.RateLimiter:
        if self.samples_per_insert is None:
            return reverb.rate_limiters.MinSize(self.min_size_to_sample_windows)
        if not self.blocks_inserts:
            centre = self.samples_per_insert * self.min_size_to_sample_windows
            return reverb.rate_limiters.RateLimiter(
                samples_per_insert=self.samples_per_insert,
                min_size_to_sample=self.min_size_to_sample_windows,
                min_diff=centre - self.error_buffer_samples,
                max_diff=sys.float_info.max,
            )
        return reverb.rate_limiters.SampleToInsertRatio(
            samples_per_insert=self.samples_per_insert,
            min_size_to_sample=self.min_size_to_sample_windows,
            error_buffer=self.error_buffer_samples,
        )


@dataclasses.dataclass(frozen=True)
class ReplayTablesConfig:
    """Every table of the replay server: one window table per learner, two params tables per publishing role."""

    learners: tuple[LearnerTableConfig, ...]
    """One window table per learner; the collector learner is one of them."""
    max_size_windows: int
    """Capacity of every window table, in windows. Equal for all tables, with the same Fifo remover, so that all
    tables evict the same windows in the same order and the chunks they share are freed together."""
    param_roles: tuple[str, ...] = ("collector",)
    """Roles that publish params (e.g. the collector learner); each gets ``params/{role}`` tables."""

    @property
    def table_names(self) -> tuple[str, ...]:
        """Window table names, in `learners` order."""
        return tuple(learner.name for learner in self.learners)

    def validate(self) -> None:
        """Raise ValueError on an unusable configuration (also catches Reverb's limiter checks early)."""
        if not self.learners:
            raise ValueError("ReplayTablesConfig needs at least one learner table")
        if self.max_size_windows <= 0:
            raise ValueError(f"max_size_windows must be positive, got {self.max_size_windows}")
        names = list(self.table_names) + [params_table(r) for r in self.param_roles]
        names += [params_version_table(r) for r in self.param_roles]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"table names must be non-empty and unique, got {names}")
        for learner in self.learners:
            if learner.name.startswith(("params/", "params_version/")):
                raise ValueError(f"learner name {learner.name!r} collides with the params tables")
            if learner.min_size_to_sample_windows > self.max_size_windows:
                raise ValueError(f"{learner.name}: min_size_to_sample_windows exceeds max_size_windows")
            learner.rate_limiter()  # Reverb validates the error buffer against samples_per_insert


def params_table(role: str) -> str:
    return PARAMS_TABLE_PREFIX + role


def params_version_table(role: str) -> str:
    return PARAMS_VERSION_TABLE_PREFIX + role


def window_signature(window_spec: WindowSpec) -> dict[str, tf.TensorSpec]:
    """Reverb table signature of one packed window item: ``window`` float32 [T + R, W] (`WindowSpec.pack`)."""
    return {
        name: tf.TensorSpec(shape, tf.as_dtype(dtype), name=name)
        for name, (shape, dtype) in window_spec.packed_shapes_and_dtypes().items()
    }


def _check_signature(info: reverb.reverb_types.TableInfo, window_spec: WindowSpec) -> None:
    got = info.signature
    want = window_signature(window_spec)
    old_layout = LAYOUT_COLUMNS.get(tuple(sorted(got))) if isinstance(got, Mapping) else None
    if old_layout is not None and old_layout != REPLAY_LAYOUT:
        raise ValueError(f"table {info.name!r} holds windows in replay layout {old_layout} (columns {sorted(got)}), "
                         f"restored from a checkpoint written by an older depthrl; this depthrl stores layout "
                         f"{REPLAY_LAYOUT}")
    if not isinstance(got, Mapping) or set(got) != set(want):
        raise ValueError(f"table {info.name!r} has signature {got}, expected window columns {sorted(want)}")
    for name, spec in want.items():
        if got[name].shape != spec.shape or got[name].dtype != spec.dtype:
            raise ValueError(
                f"table {info.name!r} column {name!r}: server has {got[name]}, expected {spec} (windows of "
                f"{window_spec.window_length} steps, obs_dim {window_spec.obs_dim}, action_dim "
                f"{window_spec.action_dim}): the table was built for another env or window length")


def check_window_tables(client: reverb.Client, table_names: Sequence[str], window_spec: WindowSpec,
                        timeout_s: float) -> None:
    """ValueError unless every table in `table_names` exists with the window signature of `window_spec`.

    A server checks this after start: Reverb restores a checkpointed table with the signature it was written with
    and ignores the one the server was configured with, so a checkpoint of another layout or shape loads silently
    and would only fail at the first write or sample."""
    infos = server_info(client, timeout_s)
    for name in table_names:
        if name not in infos:
            raise ValueError(f"replay server {client.server_address} has no table {name!r} (tables: {sorted(infos)})")
        _check_signature(infos[name], window_spec)


# ---------------------------------------------------------------------------------------------------- server


def build_tables(tables_config: ReplayTablesConfig, window_spec: WindowSpec) -> list[reverb.Table]:
    tables_config.validate()
    signature = window_signature(window_spec)
    tables = [
        reverb.Table(
            name=learner.name,
            sampler=reverb.selectors.Uniform(),
            remover=reverb.selectors.Fifo(),
            max_size=tables_config.max_size_windows,
            rate_limiter=learner.rate_limiter(),
            max_times_sampled=0,  # >0 would partition data between readers; every learner must see all windows
            signature=signature,
        )
        for learner in tables_config.learners
    ]
    for role in tables_config.param_roles:
        for name in (params_table(role), params_version_table(role)):
            tables.append(reverb.Table(
                name=name,
                sampler=reverb.selectors.Fifo(),
                remover=reverb.selectors.Fifo(),
                max_size=1,  # only the newest params matter; publishing evicts the previous version
                rate_limiter=reverb.rate_limiters.MinSize(1),
            ))
    return tables


def start_server(
    tables_config: ReplayTablesConfig,
    window_spec: WindowSpec,
    port: int | None,
    checkpoint_dir: str | None = None,
) -> reverb.Server:
    """Start a Reverb server in this process (it serves from background threads until ``server.stop()``).

    With `checkpoint_dir`, checkpoints are written there and the newest one found there is loaded at start, so
    a restarted server resumes with its items (and its rate-limiter counters). Without it Reverb would use a fresh
    temp dir that a restart never sees. A directory without checkpoints gets the `REPLAY_LAYOUT` stamp
    (`replay.schema.checkpoint_layout`). Reverb restores a checkpointed table with the signature it was written with,
    whatever `window_spec` says, so after a restore the tables are checked (`check_window_tables`) and a mismatch
    stops the server with a ValueError instead of failing at the first write or sample of every client.
    `port` None lets Reverb pick a free port (``server.port``).
    """
    checkpointer = None
    if checkpoint_dir is not None:
        stamp_checkpoint_layout(Path(checkpoint_dir))
        checkpointer = checkpointers_lib.DefaultCheckpointer(path=checkpoint_dir)
    server = reverb.Server(tables=build_tables(tables_config, window_spec), port=port, checkpointer=checkpointer)
    if checkpointer is not None:
        try:
            check_window_tables(reverb.Client(f"127.0.0.1:{server.port}"), tables_config.table_names, window_spec,
                                30.0)
        except BaseException:
            server.stop()
            raise
    return server


def _timeout_seconds_arg(timeout_s: float) -> int:
    # server_info takes whole seconds and treats 0 as "no deadline": never pass 0.
    return max(1, math.ceil(timeout_s))


def server_info(client: reverb.Client, timeout_s: float) -> dict[str, reverb.reverb_types.TableInfo]:
    """``client.server_info`` with a deadline; `ReplayTimeout` when the server does not answer in time."""
    try:
        return client.server_info(timeout=_timeout_seconds_arg(timeout_s))
    except reverb.errors.DeadlineExceededError as error:
        raise ReplayTimeout(f"replay server {client.server_address} did not answer within {timeout_s} s") from error
    except RuntimeError as error:
        if not _lost_connection(error):
            raise
        raise ReplayUnavailable(f"replay server {client.server_address} unavailable: {error}") from error


def wait_for_server(address: str, timeout_s: float) -> reverb.Client:
    """A client of the server at `address` once it answers; `ReplayTimeout` if it does not within `timeout_s`."""
    client = reverb.Client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            server_info(client, min(max(remaining, 0.0), 1.0))
            return client
        except (ReplayTimeout, RuntimeError) as error:
            if time.monotonic() >= deadline:
                raise ReplayTimeout(f"replay server {address} not reachable within {timeout_s} s") from error
            time.sleep(0.05)


def table_metrics(infos: Mapping[str, reverb.reverb_types.TableInfo], role: str = "replay") -> dict[str, float]:
    """Flat per-table metrics ``"{role}/{table}/{name}"`` from ``server_info()`` (reverb 0.14 fields).

    - size, max_size: items now / capacity.
    - inserts, samples: inserts and samples the rate limiter let through (restored from checkpoints too).
    - samples_per_insert_observed: samples / inserts.
    - limiter_error: inserts * samples_per_insert - samples, with min_diff / max_diff, its allowed range: the
      limiter blocks samples at min_diff and inserts at max_diff, so an error sitting at max_diff means this
      table's learner is stalling the writers.
    - unique_samples: items sampled at least once; deleted_episodes: Reverb's episode eviction count.
    - worker_*_ms: cumulative table worker time running / inserting / sampling / sleeping, and the two stall
      counters (measured on 0.14): worker_waiting_for_sampling_ms grows while *inserts* are blocked (the table
      waits for samples to make room: this learner is stalling the actors), worker_waiting_for_inserts_ms grows
      while *samples* are blocked (the learner waits for data).
    """
    out: dict[str, float] = {}
    for name, info in infos.items():
        limiter = info.rate_limiter_info
        inserts = float(limiter.insert_stats.completed)
        samples = float(limiter.sample_stats.completed)
        prefix = f"{role}/{name}/"
        worker = info.table_worker_time
        out.update({
            prefix + "size": float(info.current_size),
            prefix + "max_size": float(info.max_size),
            prefix + "inserts": inserts,
            prefix + "samples": samples,
            prefix + "samples_per_insert_observed": samples / inserts if inserts else 0.0,
            prefix + "samples_per_insert": float(limiter.samples_per_insert),
            prefix + "limiter_error": inserts * limiter.samples_per_insert - samples,
            prefix + "limiter_min_diff": float(limiter.min_diff),
            prefix + "limiter_max_diff": float(limiter.max_diff),
            prefix + "unique_samples": float(info.num_unique_samples),
            prefix + "deleted_episodes": float(info.num_deleted_episodes),
            prefix + "worker_running_ms": float(worker.running_ms),
            prefix + "worker_inserting_ms": float(worker.inserting_ms),
            prefix + "worker_sampling_ms": float(worker.sampling_ms),
            prefix + "worker_sleeping_ms": float(worker.sleeping_ms),
            prefix + "worker_waiting_for_sampling_ms": float(worker.waiting_for_sampling_ms),
            prefix + "worker_waiting_for_inserts_ms": float(worker.waiting_for_inserts_ms),
        })
    return out


def replay_metrics(address: str, timeout_s: float, role: str = "replay") -> dict[str, float]:
    """`table_metrics` of the server at `address`, bounded by `timeout_s`."""
    return table_metrics(server_info(reverb.Client(address), timeout_s), role)


# ---------------------------------------------------------------------------------------------- bounded calls


def _start_in_thread(fn: Callable[[], _T]) -> concurrent.futures.Future[_T]:
    """Run `fn` on a daemon thread. Daemon, because a call stuck inside Reverb cannot be cancelled and must not
    keep the interpreter alive at exit (a ThreadPoolExecutor would join it and hang)."""
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as error:  # noqa: BLE001 (handed to the waiting caller)
            future.set_exception(error)

    threading.Thread(target=run, name="reverb-bounded-call", daemon=True).start()
    return future


def _await(future: concurrent.futures.Future[_T], timeout_s: float, what: str) -> _T:
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise ReplayTimeout(f"{what} did not complete within {timeout_s} s") from None
    except RuntimeError as error:
        if not _lost_connection(error):
            raise
        raise ReplayUnavailable(f"{what} failed, the replay server connection broke: {error}") from error


# ---------------------------------------------------------------------------------------------------- writer


class WindowWriter:
    """Writes batches of per-env windows into every learner table of one server.

    Each env's window is packed (`WindowSpec.pack`) and appended as ONE step of one column (one Python call per
    window instead of per env step, and one chunk per window), then an item referencing that step is created in
    every table, so the tables share the chunk instead of copying it.
    """

    def __init__(
        self,
        address: str,
        table_names: Sequence[str],
        window_spec: WindowSpec,
        flush_timeout_ms: int,
        connect_timeout_s: float = 30.0,
    ) -> None:
        """`flush_timeout_ms` bounds each `write` call (all its flushes together); `connect_timeout_s` bounds
        the wait for the server here and checks that every table exists with the window signature."""
        if not table_names:
            raise ValueError("WindowWriter needs at least one table")
        if flush_timeout_ms <= 0:
            raise ValueError(f"flush_timeout_ms must be positive, got {flush_timeout_ms}")
        self._address = address
        self._table_names = tuple(table_names)
        self._window_spec = window_spec
        self._flush_timeout_ms = flush_timeout_ms
        client = wait_for_server(address, connect_timeout_s)
        check_window_tables(client, self._table_names, window_spec, connect_timeout_s)
        self._client = client
        # The C++ writer behind `client.trajectory_writer`, driven directly: the Python wrapper rebuilds a
        # `history` tree and re-flattens every item, which halved write throughput (measured 5K vs 8.7K
        # windows/s at T=100, obs dim 31, two tables). This relies on reverb's private `_client` attribute and
        # pybind signatures, safe because dm-reverb is pinned to its final release (0.14.0) and the integration
        # tests exercise this path. Chunker: one step per window and items never span steps, so keeping one
        # reference alive per column is enough (and every window is its own chunk, freed with its items).
        # Items are validated against the schema in `write`, which is cheaper than Reverb's per-item check.
        self._writer = client._client.NewTrajectoryWriter(  # noqa: SLF001 (see above)
            pybind.AutoTunedChunkerOptions(1, 1.0), False)  # (num_keep_alive_refs, throughput_weight), validate_items
        # The item's one column is one squeezed step ([T + R, W], not [1, T + R, W]).
        self._squeezed = [True]
        # Reverb warns when 50 items are pending; flush every few envs to stay well below that.
        self._envs_per_flush = max(1, 24 // len(self._table_names))
        self.windows_written = 0
        """Windows whose items were confirmed by the server in every table."""
        self._unconfirmed_windows = 0

    def write(self, batch: Window) -> None:
        """Write `batch` (fields ``[E, T, ...]``, provenance ``[E]``) as E windows into every table.

        Returns once the server confirmed every item. Raises `ReplayTimeout` when that takes longer than
        `flush_timeout_ms` (server gone, or a table's rate limiter blocking inserts because its learner is too
        far behind); the unconfirmed items stay queued and are still delivered if the server recovers.
        """
        batch = Window(*(np.asarray(field) for field in batch))  # device arrays copied to host once
        num_envs = self._window_spec.validate(batch, batched=True)
        deadline = time.monotonic() + self._flush_timeout_ms / 1000.0
        self._unconfirmed_windows += num_envs
        packed = self._window_spec.pack(batch)
        for env in range(num_envs):
            (ref,) = self._writer.Append([packed[env]])
            step = [[ref]]
            for table in self._table_names:
                self._writer.CreateItem(table, 1.0, step, self._squeezed)
            if (env + 1) % self._envs_per_flush == 0 and env + 1 < num_envs:
                self._flush(deadline, keep_pending=24)
        self._flush(deadline, keep_pending=0)
        self._count_confirmed()

    def wait_confirmed(self, timeout_s: float) -> None:
        """Keep waiting for items of an earlier `write` that raised `ReplayTimeout` (nothing is written twice).
        Raises `ReplayTimeout` again when they are still unconfirmed after `timeout_s`."""
        self._flush(time.monotonic() + timeout_s, keep_pending=0)
        self._count_confirmed()

    def _count_confirmed(self) -> None:
        # Windows of a write that timed out count once a later flush confirms them.
        self.windows_written += self._unconfirmed_windows
        self._unconfirmed_windows = 0

    def _flush(self, deadline: float, keep_pending: int) -> None:
        remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
        try:
            self._writer.Flush(keep_pending, remaining_ms)
        except RuntimeError as error:
            if _lost_connection(error):
                raise ReplayUnavailable(f"replay server {self._address} unavailable: {error}") from error
            if "Timeout exceeded" not in str(error):  # the message reverb's own wrapper matches on
                raise
            raise ReplayTimeout(
                f"replay server {self._address} did not confirm items into tables {list(self._table_names)} "
                f"in time (server down, or a table's rate limiter blocks inserts)"
            ) from error

    def close(self) -> None:
        """Release the writer. Unconfirmed items (after a ReplayTimeout) are dropped, without blocking."""
        self._writer.Close()

    def __enter__(self) -> WindowWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------- sampler


class WindowSampler:
    """Samples N windows at a time from one learner table, stacked time-major.

    Each `sample` opens one Reverb sampler for all N windows (not N `client.sample` calls) on a worker thread and
    waits at most `timeout_s`. On timeout the request stays in flight and the next `sample` call waits for
    *that* request instead of issuing a new one: windows the rate limiter already charged to this learner are
    not thrown away, and at most one request per sampler is ever outstanding.
    """

    def __init__(
        self,
        address: str,
        table_name: str,
        windows_per_sample: int,
        timeout_s: float,
        window_spec: WindowSpec,
    ) -> None:
        """`window_spec` must match the table's signature; it also says how to unpack items into a `Window`."""
        if windows_per_sample <= 0:
            raise ValueError(f"windows_per_sample must be positive, got {windows_per_sample}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._address = address
        self._table = table_name
        self._num = windows_per_sample
        self._timeout_s = timeout_s
        client = wait_for_server(address, timeout_s)
        check_window_tables(client, (table_name,), window_spec, timeout_s)
        self._window_spec = window_spec
        self._client = client
        self._pending: concurrent.futures.Future[list[list[np.ndarray]]] | None = None

    def _fetch(self) -> list[list[np.ndarray]]:
        # `client.sample` hard-codes a flexible batch of 1 (one table operation per item) and wraps every item
        # in Python objects; a pybind sampler that may take all N items per table operation was 3.5x faster
        # (6K vs 21K windows/s at T=100, obs dim 31). It still never fetches more than N items, so nothing is
        # prefetched against the rate limiter. Private API: see the note in WindowWriter.__init__.
        sampler = self._client._client.NewSampler(self._table, self._num, self._num)  # noqa: SLF001
        skip = pybind.Sampler.NUM_INFO_TENSORS  # key, probability, table_size, priority, times_sampled
        return [sampler.GetNextTrajectory()[skip:] for _ in range(self._num)]

    def sample(self) -> Window:
        """N windows as a `Window` with fields ``[T, N, ...]`` and provenance ``[N]``.

        Raises `ReplayTimeout` after `timeout_s` (table below its min size, rate limiter ahead of inserts, or no
        server); calling again resumes waiting for the same request.
        """
        if self._pending is None:
            self._pending = _start_in_thread(self._fetch)
        try:
            items = _await(self._pending, self._timeout_s, f"sampling {self._num} windows from {self._table!r}")
        finally:
            # A request that finished, with items or with its own error (e.g. the server died), is not waited for
            # again: the next call starts a fresh one. One still running is (see the class docstring).
            if self._pending.done():
                self._pending = None
        packed = np.stack([item[0] for item in items], axis=1)  # [T + R, N, W]: time-major, as relabelling wants
        return self._window_spec.unpack(packed)

    def close(self) -> None:
        """Forget the client. A request still blocked inside Reverb cannot be cancelled: its daemon thread ends
        when the request completes or the process exits."""
        self._pending = None


# ---------------------------------------------------------------------------------------------------- params


class ParamStore:
    """Versioned params over Reverb: `publish` by the owning role, `latest` / `latest_version` by readers.

    One item per publish, one step with columns ``[version int64[], fingerprint uint8[F], meta uint8[M] (JSON),
    description uint8[D], part_0 uint8[...], ...]`` (see `replay.params.pack`). ``params/{role}`` references all columns,
    ``params_version/{role}`` only the first three, so polling the version (and the meta, e.g. a final flag) moves a
    few bytes, not the network.
    """

    def __init__(self, address: str, connect_timeout_s: float = 30.0,
                 max_part_bytes: int = params_lib.DEFAULT_MAX_PART_BYTES) -> None:
        self._address = address
        self._client = wait_for_server(address, connect_timeout_s)
        self._tables = set(server_info(self._client, connect_timeout_s))
        self._max_part_bytes = max_part_bytes

    def _require_role(self, role: str) -> None:
        if params_table(role) not in self._tables or params_version_table(role) not in self._tables:
            raise ValueError(f"replay server {self._address} has no params tables for role {role!r}")

    def publish(self, role: str, params: Any, version: int, fingerprint: str, meta: Mapping[str, Any],
                timeout_s: float) -> None:
        """Make `params` (any pytree of arrays) the newest params of `role`, evicting the previous version.
        `meta` (JSON types only, e.g. env steps and a final flag; TypeError otherwise, before anything is sent)
        travels with them. `ReplayTimeout` when the server does not confirm within `timeout_s`."""
        self._require_role(role)
        description, parts = params_lib.pack(params, self._max_part_bytes)
        meta_json = json.dumps(dict(meta), sort_keys=True, allow_nan=False)
        columns = [
            np.asarray(version, dtype=np.int64),
            np.frombuffer(fingerprint.encode("utf-8"), dtype=np.uint8),
            np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8),
            np.frombuffer(description.encode("utf-8"), dtype=np.uint8),
            *parts,
        ]
        # A fresh writer per publish: the number of parts may differ between roles, and publishing is rare.
        # Not a `with` block: TrajectoryWriter.__exit__ flushes without a deadline and could hang.
        writer = self._client.trajectory_writer(num_keep_alive_refs=1, validate_items=False)
        try:
            writer.append(columns)
            step = [column[-1] for column in writer.history]
            writer.create_item(params_table(role), 1.0, step)
            writer.create_item(params_version_table(role), 1.0, step[:3])
            writer.flush(timeout_ms=max(1, int(timeout_s * 1000)))
        except reverb.errors.DeadlineExceededError as error:
            raise ReplayTimeout(f"publishing params of {role!r} not confirmed within {timeout_s} s") from error
        except RuntimeError as error:
            if not _lost_connection(error):
                raise
            raise ReplayUnavailable(f"publishing params of {role!r}: replay server unavailable: {error}") from error
        finally:
            writer.close()

    def _sample_one(self, table: str, timeout_s: float) -> list[np.ndarray]:
        # MinSize(1) tables block until the first publish; the stuck thread (if any) costs nothing else.
        future = _start_in_thread(
            lambda: next(iter(self._client.sample(table, num_samples=1, emit_timesteps=False))).data)
        return _await(future, timeout_s, f"reading {table!r}")

    def latest_version(self, role: str, timeout_s: float) -> Versioned:
        """Version, fingerprint and meta of the newest params of `role` without the params (``params=None``).
        `ReplayTimeout` when none are published within `timeout_s`."""
        self._require_role(role)
        version, fingerprint_bytes, *rest = self._sample_one(params_version_table(role), timeout_s)
        # Items restored from a checkpoint written before the meta column was added to this table have no meta.
        meta = json.loads(bytes(rest[0]).decode("utf-8")) if rest else {}
        return Versioned(params=None, version=int(version), fingerprint=bytes(fingerprint_bytes).decode("utf-8"),
                         meta=meta)

    def latest(self, role: str, template: Any, expected_fingerprint: str, timeout_s: float) -> Versioned:
        """The newest params of `role`, rebuilt into the structure of `template`, with their version and meta.

        Raises `FingerprintMismatch` when they come from another network config than `expected_fingerprint`,
        ValueError when leaves differ from the template, `ReplayTimeout` when nothing arrives within `timeout_s`.
        Leaves come back as numpy arrays; put them on a device at the caller's jit boundary.
        """
        self._require_role(role)
        version, fingerprint_bytes, meta_bytes, description, *parts = self._sample_one(params_table(role), timeout_s)
        got = bytes(fingerprint_bytes).decode("utf-8")
        params_lib.check_fingerprint(got, expected_fingerprint, f"params of {role!r} (version {int(version)})")
        leaves = params_lib.unpack(bytes(description).decode("utf-8"), parts)
        return Versioned(params=params_lib.unflatten_like(template, leaves), version=int(version), fingerprint=got,
                         meta=json.loads(bytes(meta_bytes).decode("utf-8")))
