"""The Reverb transport against real server processes on 127.0.0.1.

Every blocking call is bounded: by the backend's own timeouts (asserted to fire) and by pytest-timeout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from replay import params as params_lib
from replay import reverb_backend as rb
from replay.schema import Window, WindowSpec
from tests.integration.conftest import REPO_ROOT, SHARED_WINDOW_SPEC, LaunchServer, ServerProcess, network_params

pytestmark = pytest.mark.timeout(180)


def make_batch(spec: WindowSpec, num_envs: int, seed: int, first_env_steps: int = 0) -> Window:
    """E windows with distinct values everywhere; env_steps is unique per window and identifies it."""
    rng = np.random.default_rng(seed)
    t = spec.window_length
    traj_id = np.repeat((np.arange(t) >= t // 2)[None, :], num_envs, axis=0).astype(np.int32)  # one reset mid-window
    traj_id += np.arange(num_envs, dtype=np.int32)[:, None] * 10
    # Bit patterns that are NaNs, infinities and negative zero as float32: traj_id travels inside a float column.
    traj_id[0, :4] = [0x7FC00001, 0x7F800000, -0x80000000, 2**31 - 1]
    return Window(
        obs=rng.standard_normal((num_envs, t, spec.obs_dim), dtype=np.float32),
        action=rng.uniform(-1.0, 1.0, (num_envs, t, spec.action_dim)).astype(np.float32),
        traj_id=traj_id,
        actor_id=np.full(num_envs, 7, dtype=np.int32),
        param_version=np.arange(num_envs, dtype=np.int64) + 1000 * seed,
        env_steps=first_env_steps + np.arange(num_envs, dtype=np.int64) * 11 + 5,
    )


def window_by_env_steps(batch: Window) -> dict[int, int]:
    return {int(steps): index for index, steps in enumerate(batch.env_steps)}


# ------------------------------------------------------------------------------------------------- pure parts


def test_importing_schema_params_and_protocols_loads_neither_reverb_nor_tensorflow() -> None:
    code = ("import sys, replay.schema, replay.params, replay.protocols; "
            "print(sorted(m for m in ('reverb', 'tensorflow', 'jax') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_tables_config_validates() -> None:
    config = rb.ReplayTablesConfig(
        learners=(rb.LearnerTableConfig("collector", 12.9, 100, 64.0), rb.LearnerTableConfig("learner_d4", None, 100)),
        max_size_windows=1000, param_roles=("collector",))
    config.validate()
    too_narrow = rb.LearnerTableConfig("collector", samples_per_insert=4.0, min_size_to_sample_windows=1,
                                       error_buffer_samples=2.0)  # Reverb needs >= max(1, samples_per_insert)
    duplicate = rb.LearnerTableConfig("collector", None, 1)
    for learners in [(too_narrow,), (duplicate, duplicate), (rb.LearnerTableConfig("params/collector", None, 1),)]:
        with pytest.raises(ValueError):
            rb.ReplayTablesConfig(learners=learners, max_size_windows=10).validate()


# ---------------------------------------------------------------------------------------------- writer/sampler


def test_writer_sampler_round_trip_preserves_every_field(replay_server: ServerProcess) -> None:
    spec = SHARED_WINDOW_SPEC
    batch = make_batch(spec, num_envs=30, seed=1)  # > envs per intermediate flush: exercises the partial flushes
    # Rollouts are time-major: write [E, T, ...] views of [T, E, ...] memory, as an actor would after swapaxes.
    batch = batch._replace(**{name: np.ascontiguousarray(np.swapaxes(getattr(batch, name), 0, 1)).swapaxes(0, 1)
                              for name in ("obs", "action", "traj_id")})
    assert not batch.obs.flags.c_contiguous
    with rb.WindowWriter(replay_server.address, ("rt_a", "rt_b"), spec, flush_timeout_ms=10_000) as writer:
        writer.write(batch)
        assert writer.windows_written == 30
    metrics = rb.replay_metrics(replay_server.address, timeout_s=10)
    assert metrics["replay/rt_a/size"] == 30 and metrics["replay/rt_b/size"] == 30
    assert metrics["replay/rt_a/inserts"] == 30

    by_steps = window_by_env_steps(batch)
    for table in ("rt_a", "rt_b"):
        sampler = rb.WindowSampler(replay_server.address, table, windows_per_sample=40, timeout_s=10.0,
                                   window_spec=spec)
        sample = sampler.sample()
        t, n = spec.window_length, 40
        expected_shapes = {"obs": (t, n, spec.obs_dim), "action": (t, n, spec.action_dim), "traj_id": (t, n),
                           "actor_id": (n,), "param_version": (n,), "env_steps": (n,)}
        for name, (_, dtype) in spec.shapes_and_dtypes().items():
            value = getattr(sample, name)
            assert value.shape == expected_shapes[name], name
            assert value.dtype == dtype, name
        for column in range(n):
            source = by_steps[int(sample.env_steps[column])]  # KeyError if a window is not one we wrote
            np.testing.assert_array_equal(sample.obs[:, column], batch.obs[source])
            np.testing.assert_array_equal(sample.action[:, column], batch.action[source])
            np.testing.assert_array_equal(sample.traj_id[:, column], batch.traj_id[source])
            assert sample.actor_id[column] == batch.actor_id[source]
            assert sample.param_version[column] == batch.param_version[source]
    assert rb.replay_metrics(replay_server.address, timeout_s=10)["replay/rt_a/samples"] == 40


def test_writer_rejects_malformed_batches_and_mismatched_tables(replay_server: ServerProcess) -> None:
    spec = SHARED_WINDOW_SPEC
    good = make_batch(spec, num_envs=2, seed=2)
    with rb.WindowWriter(replay_server.address, ("rt_a",), spec, flush_timeout_ms=5_000) as writer:
        with pytest.raises(ValueError, match="obs"):
            writer.write(good._replace(obs=good.obs.astype(np.float64)))
        with pytest.raises(ValueError, match="env_steps"):
            writer.write(good._replace(env_steps=good.env_steps[:1]))
    with pytest.raises(ValueError, match="no table"):
        rb.WindowWriter(replay_server.address, ("missing",), spec, flush_timeout_ms=1_000)
    other_spec = WindowSpec(window_length=spec.window_length, obs_dim=spec.obs_dim + 1, action_dim=spec.action_dim)
    with pytest.raises(ValueError, match="obs_dim 32"):
        rb.WindowWriter(replay_server.address, ("rt_a",), other_spec, flush_timeout_ms=1_000)


def test_sampler_times_out_at_the_rate_limit_and_resumes_after_inserts(replay_server: ServerProcess) -> None:
    # Table "ratio": samples_per_insert 1, min size 2, error buffer 2 -> allowed error inserts - samples in [0, 4].
    spec = SHARED_WINDOW_SPEC
    timeout_s = 1.0
    writer = rb.WindowWriter(replay_server.address, ("ratio",), spec, flush_timeout_ms=10_000)
    sampler = rb.WindowSampler(replay_server.address, "ratio", windows_per_sample=1, timeout_s=timeout_s, window_spec=spec)
    writer.write(make_batch(spec, num_envs=2, seed=3))  # 2 inserts: exactly 2 samples allowed (error 2 -> 0)
    sampler.sample()
    sampler.sample()
    for _ in range(2):  # the second call waits on the same outstanding request, not a new one
        start = time.monotonic()
        with pytest.raises(rb.ReplayTimeout):
            sampler.sample()
        elapsed = time.monotonic() - start
        assert timeout_s * 0.9 <= elapsed < 2 * timeout_s
    assert rb.replay_metrics(replay_server.address, timeout_s=10)["replay/ratio/worker_waiting_for_inserts_ms"] > 0
    writer.write(make_batch(spec, num_envs=1, seed=4, first_env_steps=10_000))  # allows one more sample
    resumed = sampler.sample()
    assert int(resumed.env_steps[0]) in set(window_by_env_steps(make_batch(spec, 2, 3))) | {10_005}
    metrics = rb.replay_metrics(replay_server.address, timeout_s=10)
    # 3 samples, not 4: the timed-out request was resumed, not duplicated.
    assert (metrics["replay/ratio/inserts"], metrics["replay/ratio/samples"]) == (3, 3)
    writer.close()


def test_writer_times_out_when_a_limiter_blocks_inserts_and_delivers_later(replay_server: ServerProcess) -> None:
    # Table "insert_block": samples_per_insert 1, min size 1, error buffer 2 -> inserts block once
    # inserts - samples would exceed 3.
    spec = SHARED_WINDOW_SPEC
    writer = rb.WindowWriter(replay_server.address, ("insert_block",), spec, flush_timeout_ms=1_000)
    writer.write(make_batch(spec, num_envs=3, seed=5))
    start = time.monotonic()
    with pytest.raises(rb.ReplayTimeout, match="insert_block"):
        writer.write(make_batch(spec, num_envs=1, seed=6))
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 2.0
    assert writer.windows_written == 3
    metrics = rb.replay_metrics(replay_server.address, timeout_s=10)
    assert metrics["replay/insert_block/limiter_error"] == metrics["replay/insert_block/limiter_max_diff"] == 3
    assert metrics["replay/insert_block/worker_waiting_for_sampling_ms"] > 0  # the stall shows in metrics
    start = time.monotonic()
    with pytest.raises(rb.ReplayTimeout):  # waiting again without writing more is bounded too
        writer.wait_confirmed(timeout_s=0.5)
    assert time.monotonic() - start < 1.0
    # One sample makes room for the queued fourth window, which the writer still delivers (once, not twice).
    rb.WindowSampler(replay_server.address, "insert_block", windows_per_sample=1, timeout_s=5.0, window_spec=spec).sample()
    writer.wait_confirmed(timeout_s=10.0)
    assert writer.windows_written == 4
    assert rb.replay_metrics(replay_server.address, timeout_s=5)["replay/insert_block/size"] == 4
    writer.close()


def test_limiter_without_insert_blocking_only_limits_sampling(replay_server: ServerProcess) -> None:
    # Table "sample_only_limit": samples_per_insert 1, min size 1, error buffer 2, blocks_inserts False ->
    # allowed error inserts - samples in [-1, +inf): 5 inserts never block (the "insert_block" table would stop
    # at 3), and they allow 6 samples; the 7th blocks.
    spec = SHARED_WINDOW_SPEC
    with rb.WindowWriter(replay_server.address, ("sample_only_limit",), spec, flush_timeout_ms=5_000) as writer:
        writer.write(make_batch(spec, num_envs=5, seed=30))
    rb.WindowSampler(replay_server.address, "sample_only_limit", windows_per_sample=6, timeout_s=5.0, window_spec=spec).sample()
    with pytest.raises(rb.ReplayTimeout):
        rb.WindowSampler(replay_server.address, "sample_only_limit", windows_per_sample=1, timeout_s=0.5, window_spec=spec).sample()
    metrics = rb.replay_metrics(replay_server.address, timeout_s=5)
    assert (metrics["replay/sample_only_limit/inserts"], metrics["replay/sample_only_limit/samples"]) == (5, 6)


# ----------------------------------------------------------------------------------------------------- params


def test_params_publish_latest_version_and_fingerprint_refusal(replay_server: ServerProcess) -> None:
    fingerprint = params_lib.fingerprint({"depth": 4, "width": 16})
    other = params_lib.fingerprint({"depth": 64, "width": 16})
    template = network_params(seed=0)
    # Tiny parts force a multi-part item: 7*16*4 + 16*4 + 4 + 16*4*4 + 3*4 bytes = 784 bytes -> 8 parts of 100.
    store = rb.ParamStore(replay_server.address, connect_timeout_s=10, max_part_bytes=100)
    assert len(params_lib.pack(template, max_part_bytes=100)[1]) == 8
    for version in (1, 2):
        store.publish("collector", network_params(seed=version), version=version, fingerprint=fingerprint,
                      meta={"env_steps": 100 * version, "final": version == 2}, timeout_s=10)
    store.publish("learner_d4", network_params(seed=9), version=5, fingerprint=other, meta={}, timeout_s=10)

    polled = store.latest_version("collector", timeout_s=5)
    assert (polled.params, polled.version, polled.fingerprint) == (None, 2, fingerprint)
    latest = store.latest("collector", template, fingerprint, timeout_s=5)
    assert (latest.version, latest.fingerprint) == (2, fingerprint)
    params = latest.params
    expected = network_params(seed=2)
    np.testing.assert_array_equal(params["actor"]["Dense_0"]["kernel"], expected["actor"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(params["critic"][1], expected["critic"][1])
    assert params["actor"]["log_std_scale"] == np.float32(2) and isinstance(params["critic"], list)
    assert latest.meta == polled.meta == {"env_steps": 200, "final": True}
    assert store.latest("learner_d4", template, other, timeout_s=5).meta == {}  # published with an empty meta
    with pytest.raises(TypeError):  # refused before anything is sent
        store.publish("collector", template, version=3, fingerprint=fingerprint, meta={"bad": np.zeros(1)},
                      timeout_s=10)
    metrics = rb.replay_metrics(replay_server.address, timeout_s=5)
    assert metrics["replay/params/collector/size"] == 1  # version 1 was evicted, not kept
    polled = store.latest_version("collector", timeout_s=5)
    assert (polled.version, polled.fingerprint) == (2, fingerprint)

    with pytest.raises(params_lib.FingerprintMismatch):
        store.latest("learner_d4", template, fingerprint, timeout_s=5)
    wrong_template = network_params(seed=0)
    wrong_template["critic"][0] = np.zeros((16, 5), np.float32)
    with pytest.raises(ValueError, match="shape"):
        store.latest("learner_d4", wrong_template, other, timeout_s=5)


def test_params_latest_times_out_when_nothing_was_published(replay_server: ServerProcess) -> None:
    store = rb.ParamStore(replay_server.address, connect_timeout_s=10)
    start = time.monotonic()
    with pytest.raises(rb.ReplayTimeout):
        store.latest("never_published", network_params(0), "0" * 16, timeout_s=0.5)
    assert time.monotonic() - start < 1.0
    with pytest.raises(ValueError, match="no params tables"):
        store.latest_version("unknown_role", timeout_s=0.5)


# ------------------------------------------------------------------------------------------ server processes


def test_learner_tables_share_chunks_instead_of_copying(replay_server: ServerProcess) -> None:
    # 300 windows of T=1000, obs 31, action 8 = 48 MB of incompressible payload, written once into one table and
    # then (fresh data) into three tables of the same server. With one chunk per window shared by every table,
    # the server grows by about the payload both times; copying chunks per table would triple the second growth.
    spec = SHARED_WINDOW_SPEC
    payload_bytes = 300 * spec.bytes_per_item()
    process = psutil.Process(replay_server.pid)
    growth = {}
    for tables in [("mem_1",), ("mem_3a", "mem_3b", "mem_3c")]:
        with rb.WindowWriter(replay_server.address, tables, spec, flush_timeout_ms=60_000) as writer:
            writer.write(make_batch(spec, num_envs=5, seed=7))  # warm-up allocations out of the measurement
            before = process.memory_info().rss
            for chunk in range(6):
                writer.write(make_batch(spec, num_envs=50, seed=8 + chunk))
            growth[len(tables)] = process.memory_info().rss - before
        metrics = rb.replay_metrics(replay_server.address, timeout_s=10)
        assert [metrics[f"replay/{table}/size"] for table in tables] == [305] * len(tables)
    assert growth[1] > 0.5 * payload_bytes, f"1-table growth {growth[1] / 1e6:.1f} MB: data not stored?"
    assert growth[3] < 1.5 * growth[1], f"growth 1 table {growth[1] / 1e6:.1f} MB, 3 tables {growth[3] / 1e6:.1f} MB"


@pytest.mark.parametrize("old_layout", [1, 2])
def test_a_checkpoint_of_an_older_replay_layout_is_refused_not_silently_loaded(launch_server: LaunchServer,
                                                                               tmp_path: Path, old_layout: int) -> None:
    """Reverb restores a checkpointed table with the signature it was saved with, whatever the server asks for. A
    checkpoint of an older layout (written here the way depthrl wrote it then: six columns, or provenance + steps)
    must stop the server with a message naming the layout, and the stamp says which layout the directory holds."""
    import reverb
    import tensorflow as tf
    from reverb.platform import checkpointers_lib

    from replay.schema import REPLAY_LAYOUT, checkpoint_layout, layout_file

    spec = WindowSpec(window_length=4, obs_dim=3, action_dim=2)
    old_columns = spec.shapes_and_dtypes() if old_layout == 1 else {
        "provenance": ((3,), np.dtype(np.int64)), "steps": ((4, spec.step_width), np.dtype(np.float32))}
    checkpoint_dir = tmp_path / "checkpoints"
    old_signature = {name: tf.TensorSpec(shape, tf.as_dtype(dtype), name=name)
                     for name, (shape, dtype) in old_columns.items()}
    old = reverb.Server([reverb.Table("collector", reverb.selectors.Uniform(), reverb.selectors.Fifo(), 100,
                                      reverb.rate_limiters.MinSize(1), signature=old_signature)],
                        port=None, checkpointer=checkpointers_lib.DefaultCheckpointer(path=str(checkpoint_dir)))
    try:
        reverb.Client(f"127.0.0.1:{old.port}").checkpoint()
    finally:
        old.stop()
    if old_layout > 1:  # layout 2 stamped its directories; layout 1 predates the stamp
        layout_file(checkpoint_dir).write_text(f"{old_layout}\n")
    assert checkpoint_layout(checkpoint_dir) == old_layout

    config = rb.ReplayTablesConfig(learners=(rb.LearnerTableConfig("collector", None, 1),), max_size_windows=100)
    server = launch_server(config, spec, checkpoint_dir=checkpoint_dir)
    assert server.process.wait(timeout=120) != 0
    assert f"holds windows in replay layout {old_layout}" in server.log_tail(), server.log_tail()
    assert checkpoint_layout(checkpoint_dir) == old_layout  # the old checkpoint is not relabelled

    fresh_dir = tmp_path / "fresh"
    rb.start_server(config, spec, None, str(fresh_dir)).stop()
    assert (tmp_path / "fresh.layout").read_text().strip() == str(REPLAY_LAYOUT) == "3"
    assert checkpoint_layout(fresh_dir) is None


def test_checkpoint_on_sigterm_and_restart_restores_items(launch_server: LaunchServer, tmp_path: Path) -> None:
    spec = WindowSpec(window_length=16, obs_dim=5, action_dim=3)
    config = rb.ReplayTablesConfig(learners=(rb.LearnerTableConfig("collector", None, 1),), max_size_windows=100)
    checkpoint_dir = tmp_path / "checkpoints"
    first = launch_server(config, spec, checkpoint_dir=checkpoint_dir)
    first.wait_ready()
    batch = make_batch(spec, num_envs=12, seed=20)
    with rb.WindowWriter(first.address, ("collector",), spec, flush_timeout_ms=10_000) as writer:
        writer.write(batch)
    assert first.terminate() == 0, first.log_tail()
    assert "final checkpoint written" in first.log_tail(), first.log_tail()
    with pytest.raises(rb.ReplayTimeout):  # a dead server gives a bounded failure, not a hang
        rb.WindowSampler(first.address, "collector", windows_per_sample=1, timeout_s=1.0, window_spec=spec)

    second = launch_server(config, spec, checkpoint_dir=checkpoint_dir)
    second.wait_ready()
    metrics = rb.replay_metrics(second.address, timeout_s=10)
    assert metrics["replay/collector/size"] == 12
    sample = rb.WindowSampler(second.address, "collector", windows_per_sample=24, timeout_s=10.0, window_spec=spec).sample()
    by_steps = window_by_env_steps(batch)
    for column in range(24):
        source = by_steps[int(sample.env_steps[column])]
        np.testing.assert_array_equal(sample.obs[:, column], batch.obs[source])

