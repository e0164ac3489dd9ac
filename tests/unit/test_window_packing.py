"""`WindowSpec.pack` / `unpack`: the two-column replay layout loses nothing (pure numpy, no Reverb)."""

from __future__ import annotations

import numpy as np

from replay.schema import PROVENANCE_FIELDS, Window, WindowSpec


def _batch(spec: WindowSpec, num_envs: int) -> Window:
    rng = np.random.default_rng(0)
    t = spec.window_length
    traj_id = rng.integers(-2**31, 2**31, (num_envs, t), dtype=np.int64).astype(np.int32)
    # int32 values whose bits are a quiet NaN with payload, a signalling NaN, +inf and -0.0 as float32.
    traj_id[0, :4] = [0x7FC00001, 0x7F800001, 0x7F800000, -0x80000000]
    return Window(
        obs=rng.standard_normal((num_envs, t, spec.obs_dim), dtype=np.float32),
        action=rng.uniform(-1, 1, (num_envs, t, spec.action_dim)).astype(np.float32),
        traj_id=traj_id,
        actor_id=np.arange(num_envs, dtype=np.int32) + np.int32(2**31 - num_envs),  # up to int32 max
        param_version=np.arange(num_envs, dtype=np.int64) * 2**40,
        env_steps=np.arange(num_envs, dtype=np.int64) - 5,
    )


def test_pack_shapes_match_the_declared_columns() -> None:
    spec = WindowSpec(window_length=7, obs_dim=6, action_dim=2)
    provenance, steps = spec.pack(_batch(spec, 5))
    declared = spec.packed_shapes_and_dtypes()
    assert list(declared) == ["provenance", "steps"]  # Reverb flattens by sorted key: the order items are written
    assert (provenance.shape[1:], provenance.dtype) == declared["provenance"]
    assert (steps.shape[1:], steps.dtype) == declared["steps"]
    assert steps.shape == (5, 7, 6 + 2 + 1) and len(PROVENANCE_FIELDS) == 3


def test_unpack_inverts_pack_bit_for_bit_batch_major_and_time_major() -> None:
    spec = WindowSpec(window_length=7, obs_dim=6, action_dim=2)
    batch = _batch(spec, 5)
    provenance, steps = spec.pack(batch)
    back = spec.unpack(provenance, steps)  # [E, T, ...]
    time_major = spec.unpack(provenance, np.swapaxes(steps, 0, 1))  # [T, E, ...], as the sampler stacks items
    for name in Window._fields:
        want = np.asarray(getattr(batch, name))
        for got, swap in ((getattr(back, name), False), (getattr(time_major, name), want.ndim > 1)):
            got = np.swapaxes(got, 0, 1) if swap else got
            assert got.dtype == want.dtype, name
            assert got.shape == want.shape, name
            np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint8),
                                          np.ascontiguousarray(want).view(np.uint8), err_msg=name)
    assert back.obs.flags.c_contiguous and time_major.traj_id.flags.c_contiguous


def test_raw_bytes_per_item_count_the_unpacked_fields() -> None:
    spec = WindowSpec(window_length=10, obs_dim=4, action_dim=2)
    assert spec.bytes_per_item() == 10 * 4 * 4 + 10 * 2 * 4 + 10 * 4 + 4 + 8 + 8
