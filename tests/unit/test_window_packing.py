"""`WindowSpec.pack` / `unpack`: the one-column replay layout loses nothing (pure numpy, no Reverb)."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_pack_shapes_match_the_declared_column() -> None:
    spec = WindowSpec(window_length=7, obs_dim=6, action_dim=2)
    packed = spec.pack(_batch(spec, 5))
    declared = spec.packed_shapes_and_dtypes()
    assert list(declared) == ["window"]
    assert (packed.shape[1:], packed.dtype) == declared["window"]
    # W = 6 + 2 + 1 = 9 floats per step; the 3 int64 of provenance (6 floats) fit in one trailer row.
    assert packed.shape == (5, 7 + 1, 9) and len(PROVENANCE_FIELDS) == 3


@pytest.mark.parametrize("obs_dim, action_dim, trailer_rows", [(6, 2, 1), (3, 1, 2), (2, 1, 2), (1, 1, 2),
                                                                (4, 1, 1)])
def test_unpack_inverts_pack_bit_for_bit_one_item_and_time_major(obs_dim: int, action_dim: int,
                                                                 trailer_rows: int) -> None:
    """Narrow steps (W < 6) spread the provenance over more trailer rows; every bit survives either way."""
    spec = WindowSpec(window_length=7, obs_dim=obs_dim, action_dim=action_dim)
    assert spec.trailer_rows == trailer_rows
    batch = _batch(spec, 5)
    packed = spec.pack(batch)  # [E, T + R, W]
    time_major = spec.unpack(np.swapaxes(packed, 0, 1))  # fields [T, E, ...], as the sampler stacks items
    for env in (0, 4):
        one = spec.unpack(packed[env])  # one item: fields [T, ...], provenance 0-d
        for name in Window._fields:
            want = np.asarray(getattr(batch, name))[env]
            stacked = getattr(time_major, name)
            for got in (getattr(one, name), stacked[:, env] if stacked.ndim > 1 else stacked[env]):
                assert (got.shape, got.dtype) == (want.shape, want.dtype), name
                np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint8),
                                              np.ascontiguousarray(want).view(np.uint8), err_msg=name)
    assert time_major.obs.flags.c_contiguous and time_major.traj_id.flags.c_contiguous


def test_trailer_words_after_the_provenance_are_zero() -> None:
    spec = WindowSpec(window_length=4, obs_dim=5, action_dim=3)  # W 9: 6 provenance words and 3 zeros
    packed = spec.pack(_batch(spec, 2))
    assert packed.shape == (2, 5, 9)
    np.testing.assert_array_equal(packed[:, 4, 6:].view(np.uint32), 0)


def test_raw_bytes_per_item_count_the_unpacked_fields() -> None:
    spec = WindowSpec(window_length=10, obs_dim=4, action_dim=2)
    assert spec.bytes_per_item() == 10 * 4 * 4 + 10 * 2 * 4 + 10 * 4 + 4 + 8 + 8


def test_validate_counts_windows_and_names_the_wrong_field() -> None:
    spec = WindowSpec(window_length=7, obs_dim=6, action_dim=2)
    batch = _batch(spec, 5)
    assert spec.validate(batch, batched=True) == 5
    one = Window(*(np.asarray(field)[2] for field in batch))
    assert spec.validate(one) == 1
    with pytest.raises(ValueError, match="'obs': dtype float64"):
        spec.validate(batch._replace(obs=batch.obs.astype(np.float64)), batched=True)
    with pytest.raises(ValueError, match=r"'env_steps': shape \(4,\), expected \(5,\)"):
        spec.validate(batch._replace(env_steps=batch.env_steps[:4]), batched=True)
    with pytest.raises(ValueError, match=r"'obs': shape \(5, 7, 6\), expected \(7, 6\)"):
        spec.validate(batch)  # a batch is not one item
    with pytest.raises(ValueError, match="'obs': shape"):
        spec.validate(batch._replace(obs=np.float32(0.0)), batched=True)
