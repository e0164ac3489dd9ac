"""The `replay.protocols` contract, run against every backend: Reverb and in-process.

Each test gets a `Transport`: two fresh window tables and two fresh param roles of one backend. The Reverb backend is
one real server on 127.0.0.1 for the whole module (started in this process with `start_server`), whose tables and
roles are handed out so that no two tests share any; the in-process backend is a new `InProcessReplay` per test.
What only one backend does (Reverb's rate limiters, checkpoints, metrics) is tested in that backend's own tests.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from replay import params as params_lib
from replay.memory import InProcessReplay
from replay.protocols import ParamStore, ReplayTimeout, WindowSampler, WindowWriter
from replay.schema import Window, WindowSpec
from tests.integration.conftest import network_params

pytestmark = pytest.mark.timeout(120)

SPEC = WindowSpec(window_length=6, obs_dim=3, action_dim=2)
MIN_SIZE_WINDOWS = 2
"""Every table's minimum size to sample."""
MAX_SIZE_WINDOWS = 8
"""Every table's capacity (small, so that a test fills one)."""
REVERB_SLOTS = 16
"""Tests the module's Reverb server has tables and roles for (at least the number of tests here)."""
SHORT_S = 0.3
"""Timeout of the waits that must run out."""


@dataclasses.dataclass(frozen=True)
class Transport:
    """One backend's interfaces, with tables and param roles that no other test uses."""

    tables: tuple[str, str]
    roles: tuple[str, str]
    writer: Callable[[], WindowWriter]
    """A writer into both `tables`."""
    sampler: Callable[[str, int, float], WindowSampler]
    """``sampler(table, windows_per_sample, timeout_s)``."""
    table_size: Callable[[str], int]
    params: ParamStore


@dataclasses.dataclass
class _ReverbServer:
    address: str
    slots: Iterator[int]


@pytest.fixture(scope="module")
def reverb_server() -> Iterator[_ReverbServer]:
    from replay import reverb_backend as rb  # here, so that `-k memory` never loads TensorFlow

    config = rb.ReplayTablesConfig(
        learners=tuple(rb.LearnerTableConfig(f"s{slot}_{side}", samples_per_insert=None,
                                             min_size_to_sample_windows=MIN_SIZE_WINDOWS)
                       for slot in range(REVERB_SLOTS) for side in "ab"),
        max_size_windows=MAX_SIZE_WINDOWS,
        param_roles=tuple(f"s{slot}_{role}" for slot in range(REVERB_SLOTS) for role in ("p", "q")),
    )
    server = rb.start_server(config, SPEC, port=None)
    try:
        yield _ReverbServer(f"127.0.0.1:{server.port}", iter(range(REVERB_SLOTS)))
    finally:
        server.stop()


def _reverb_transport(server: _ReverbServer) -> Transport:
    from replay import reverb_backend as rb

    slot = next(server.slots)  # StopIteration: raise REVERB_SLOTS
    tables = (f"s{slot}_a", f"s{slot}_b")
    return Transport(
        tables=tables,
        roles=(f"s{slot}_p", f"s{slot}_q"),
        writer=lambda: rb.WindowWriter(server.address, tables, SPEC, flush_timeout_ms=10_000),
        sampler=lambda table, num, timeout_s: rb.WindowSampler(server.address, table, num, timeout_s, SPEC),
        table_size=lambda table: int(rb.replay_metrics(server.address, timeout_s=10)[f"replay/{table}/size"]),
        params=rb.ParamStore(server.address, connect_timeout_s=10),
    )


def _memory_transport() -> Transport:
    replay = InProcessReplay(SPEC, ("a", "b"), max_size_windows=MAX_SIZE_WINDOWS,
                             min_size_to_sample_windows=MIN_SIZE_WINDOWS, seed=0)
    return Transport(tables=("a", "b"), roles=("p", "q"), writer=replay.writer, sampler=replay.sampler,
                     table_size=replay.table_size, params=replay.params)


@pytest.fixture(params=["reverb", "memory"])
def transport(request: pytest.FixtureRequest) -> Transport:
    if request.param == "reverb":
        return _reverb_transport(request.getfixturevalue("reverb_server"))
    return _memory_transport()


def make_batch(num_windows: int, seed: int) -> Window:
    """E windows with distinct values everywhere; env_steps identifies a window. Time-major memory seen through
    ``[E, T, ...]`` views (as an actor writes its rollout), so the arrays are not contiguous."""
    rng = np.random.default_rng(seed)
    t = SPEC.window_length
    traj_id = rng.integers(-2**31, 2**31, (t, num_windows), dtype=np.int64).astype(np.int32)
    traj_id[:4, 0] = [0x7FC00001, 0x7F800001, 0x7F800000, -0x80000000]  # NaN, inf and -0.0 bit patterns as float32
    return Window(
        obs=rng.standard_normal((t, num_windows, SPEC.obs_dim), dtype=np.float32).swapaxes(0, 1),
        action=rng.uniform(-1, 1, (t, num_windows, SPEC.action_dim)).astype(np.float32).swapaxes(0, 1),
        traj_id=traj_id.swapaxes(0, 1),
        actor_id=np.arange(num_windows, dtype=np.int32) + np.int32(2**31 - num_windows),
        param_version=np.arange(num_windows, dtype=np.int64) * 2**40 + seed,
        env_steps=np.arange(num_windows, dtype=np.int64) * 7 + 1000 * seed,
    )


# --------------------------------------------------------------------------------------------------- interfaces


def test_every_backend_implements_the_protocols(transport: Transport) -> None:
    writer = transport.writer()
    sampler = transport.sampler(transport.tables[0], 1, SHORT_S)
    assert isinstance(writer, WindowWriter)
    assert isinstance(sampler, WindowSampler)
    assert isinstance(transport.params, ParamStore)
    writer.close()
    sampler.close()


# ------------------------------------------------------------------------------------------------------ windows


def test_every_window_lands_in_every_table_and_samples_back_bit_for_bit(transport: Transport) -> None:
    batch = make_batch(num_windows=3, seed=1)
    assert not batch.obs.flags.c_contiguous
    writer = transport.writer()
    writer.write(batch)
    writer.close()
    source_of = {int(steps): index for index, steps in enumerate(batch.env_steps)}
    t, n = SPEC.window_length, 40
    expected_shapes = {"obs": (t, n, SPEC.obs_dim), "action": (t, n, SPEC.action_dim), "traj_id": (t, n),
                       "actor_id": (n,), "param_version": (n,), "env_steps": (n,)}
    for table in transport.tables:
        assert transport.table_size(table) == 3
        sample = transport.sampler(table, n, 10.0).sample()
        for name, (_, dtype) in SPEC.shapes_and_dtypes().items():
            assert (getattr(sample, name).shape, getattr(sample, name).dtype) == (expected_shapes[name], dtype), name
        # 40 uniform draws with replacement miss one of 3 windows with probability 3 * (2/3)^40 < 1e-6.
        assert {int(steps) for steps in sample.env_steps} == set(source_of)
        for column in range(n):
            source = source_of[int(sample.env_steps[column])]
            for name in Window._fields:
                got = getattr(sample, name)
                got = got[:, column] if got.ndim > 1 else got[column]
                want = np.asarray(getattr(batch, name))[source]
                np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint8),
                                              np.ascontiguousarray(want).view(np.uint8), err_msg=name)


def test_sample_times_out_below_the_minimum_size_and_resumes_after_writes(transport: Transport) -> None:
    table = transport.tables[0]
    sampler = transport.sampler(table, 1, SHORT_S)
    writer = transport.writer()
    for held in (0, 1):  # below MIN_SIZE_WINDOWS = 2
        start = time.monotonic()
        with pytest.raises(ReplayTimeout):
            sampler.sample()
        assert 0.9 * SHORT_S <= time.monotonic() - start < SHORT_S + 2.0
        writer.write(make_batch(num_windows=1, seed=10 + held))
    assert int(sampler.sample().env_steps[0]) in (10_000, 11_000)
    writer.close()
    sampler.close()


def test_a_sample_waiting_in_another_thread_gets_windows_written_meanwhile(transport: Transport) -> None:
    sampler = transport.sampler(transport.tables[1], 4, 30.0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(sampler.sample)
        time.sleep(0.2)
        assert not waiting.done()  # the table is empty
        writer = transport.writer()
        writer.write(make_batch(num_windows=MIN_SIZE_WINDOWS, seed=5))
        sample = waiting.result(timeout=10.0)
    assert set(sample.env_steps.tolist()) <= {5000, 5007}
    writer.close()


def test_a_full_table_drops_its_oldest_windows_first(transport: Transport) -> None:
    batch = make_batch(num_windows=MAX_SIZE_WINDOWS + 2, seed=6)
    writer = transport.writer()
    writer.write(batch._replace(**{name: getattr(batch, name)[:3] for name in Window._fields}))
    writer.write(batch._replace(**{name: getattr(batch, name)[3:] for name in Window._fields}))
    writer.close()
    for table in transport.tables:
        assert transport.table_size(table) == MAX_SIZE_WINDOWS
        # 300 draws miss one of 8 windows with probability 8 * (7/8)^300 < 1e-16.
        sampled = set(transport.sampler(table, 300, 10.0).sample().env_steps.tolist())
        assert sampled == set(batch.env_steps[2:].tolist())


def test_writer_rejects_a_malformed_batch_before_writing_anything(transport: Transport) -> None:
    good = make_batch(num_windows=2, seed=2)
    writer = transport.writer()
    with pytest.raises(ValueError, match="obs"):
        writer.write(good._replace(obs=good.obs.astype(np.float64)))
    with pytest.raises(ValueError, match="env_steps"):
        writer.write(good._replace(env_steps=good.env_steps[:1]))
    with pytest.raises(ValueError, match="traj_id"):
        writer.write(good._replace(traj_id=good.traj_id[:, :-1]))
    assert [transport.table_size(table) for table in transport.tables] == [0, 0]
    writer.close()


def test_wait_confirmed_returns_when_nothing_is_pending_and_close_ends_the_writer(transport: Transport) -> None:
    writer = transport.writer()
    start = time.monotonic()
    writer.wait_confirmed(timeout_s=5.0)  # nothing written yet
    writer.write(make_batch(num_windows=2, seed=3))
    writer.wait_confirmed(timeout_s=5.0)  # everything written is confirmed already
    assert time.monotonic() - start < 4.0
    writer.close()
    writer.close()  # twice is fine
    with pytest.raises(RuntimeError):
        writer.write(make_batch(num_windows=1, seed=4))
    assert [transport.table_size(table) for table in transport.tables] == [2, 2]


# ------------------------------------------------------------------------------------------------------- params


def _assert_same_params(got: dict, want: dict) -> None:
    got_leaves, want_leaves = params_lib.flatten_with_paths(got), params_lib.flatten_with_paths(want)
    assert [path for path, _ in got_leaves] == [path for path, _ in want_leaves]
    for (path, got_leaf), (_, want_leaf) in zip(got_leaves, want_leaves):
        assert (got_leaf.shape, got_leaf.dtype) == (want_leaf.shape, want_leaf.dtype), path
        np.testing.assert_array_equal(got_leaf, want_leaf, err_msg=path)


FINGERPRINT = params_lib.fingerprint({"depth": 4, "width": 16})


def test_publish_then_latest_and_latest_version_round_trip_params_version_and_meta(transport: Transport) -> None:
    role = transport.roles[0]
    store = transport.params
    store.publish(role, network_params(seed=1), 3, FINGERPRINT, {"env_steps": 300, "final": False}, timeout_s=10)
    got = store.latest(role, network_params(seed=0), FINGERPRINT, timeout_s=10)
    assert (got.version, got.fingerprint, got.meta) == (3, FINGERPRINT, {"env_steps": 300, "final": False})
    _assert_same_params(got.params, network_params(seed=1))
    assert isinstance(got.params["critic"], list)
    polled = store.latest_version(role, timeout_s=10)
    assert (polled.params, polled.version, polled.fingerprint, polled.meta) == (
        None, 3, FINGERPRINT, {"env_steps": 300, "final": False})
    with pytest.raises(TypeError):  # meta must be JSON; refused before anything is stored
        store.publish(role, network_params(seed=2), 4, FINGERPRINT, {"bad": np.zeros(1)}, timeout_s=10)
    assert store.latest_version(role, timeout_s=10).version == 3


def test_a_newer_publish_replaces_the_older_and_a_lower_version_is_returned_as_is(transport: Transport) -> None:
    role = transport.roles[0]
    store = transport.params
    template = network_params(seed=0)
    for version, seed in ((5, 1), (6, 2), (2, 3)):  # 2 after 6: a learner resumed from an older checkpoint
        store.publish(role, network_params(seed=seed), version, FINGERPRINT, {"seed": seed}, timeout_s=10)
        got = store.latest(role, template, FINGERPRINT, timeout_s=10)
        assert (got.version, got.meta) == (version, {"seed": seed})
        _assert_same_params(got.params, network_params(seed=seed))
        assert store.latest_version(role, timeout_s=10).version == version


def test_params_of_another_network_are_refused(transport: Transport) -> None:
    role = transport.roles[0]
    other = params_lib.fingerprint({"depth": 64, "width": 16})
    transport.params.publish(role, network_params(seed=1), 1, other, {}, timeout_s=10)
    with pytest.raises(params_lib.FingerprintMismatch, match=other):
        transport.params.latest(role, network_params(seed=0), FINGERPRINT, timeout_s=10)
    wrong_template = network_params(seed=0)
    wrong_template["critic"][0] = np.zeros((16, 5), np.float32)
    with pytest.raises(ValueError, match="shape"):
        transport.params.latest(role, wrong_template, other, timeout_s=10)
    assert transport.params.latest_version(role, timeout_s=10).fingerprint == other  # the poll does not check


def test_latest_and_latest_version_time_out_when_nothing_was_published(transport: Transport) -> None:
    role = transport.roles[1]
    store = transport.params
    for read in (lambda: store.latest(role, network_params(seed=0), FINGERPRINT, timeout_s=SHORT_S),
                 lambda: store.latest_version(role, timeout_s=SHORT_S)):
        start = time.monotonic()
        with pytest.raises(ReplayTimeout):
            read()
        assert 0.9 * SHORT_S <= time.monotonic() - start < SHORT_S + 2.0
    # A publish ends the waits (on Reverb, the timed-out reads still in flight complete too).
    store.publish(role, network_params(seed=1), 1, FINGERPRINT, {}, timeout_s=10)
    assert store.latest_version(role, timeout_s=10).version == 1
