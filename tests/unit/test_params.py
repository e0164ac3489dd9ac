"""Param flattening, packing and fingerprints (pure numpy, no transport)."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from replay import params as params_lib

Pair = collections.namedtuple("Pair", ["mean", "log_std"])


def _tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "critic": {"sa_encoder": {"Dense_0": {"kernel": rng.standard_normal((3, 4)).astype(np.float32),
                                              "bias": np.zeros(4, np.float32)}},
                   "g_encoder": [rng.standard_normal(2).astype(np.float32), np.float32(1.5)]},
        "actor": Pair(mean=np.arange(6, dtype=np.int64).reshape(2, 3), log_std=np.array(True)),
        "alpha": (np.float16(0.25),),
    }


def test_flatten_orders_mapping_keys_and_names_paths() -> None:
    paths = [path for path, _ in params_lib.flatten_with_paths(_tree())]
    assert paths == [
        "actor/mean", "actor/log_std", "alpha/0",
        "critic/g_encoder/0", "critic/g_encoder/1",
        "critic/sa_encoder/Dense_0/bias", "critic/sa_encoder/Dense_0/kernel",
    ]


def test_flatten_does_not_depend_on_dict_insertion_order() -> None:
    forward = {"a": np.ones(1), "b": np.zeros(2)}
    backward = {"b": np.zeros(2), "a": np.ones(1)}
    assert params_lib.describe(forward) == params_lib.describe(backward)


@pytest.mark.parametrize("max_part_bytes", [1, 7, 64, params_lib.DEFAULT_MAX_PART_BYTES])
def test_pack_unpack_unflatten_round_trip_is_exact(max_part_bytes: int) -> None:
    tree = _tree(seed=3)
    description, parts = params_lib.pack(tree, max_part_bytes=max_part_bytes)
    # 3*4*4 + 4*4 + 2*4 + 4 + 6*8 + 1 + 2 = 127 bytes in total.
    assert sum(part.size for part in parts) == 127
    assert len(parts) == -(-127 // max_part_bytes)
    assert all(part.dtype == np.uint8 and part.size <= max_part_bytes for part in parts)
    rebuilt = params_lib.unflatten_like(_tree(seed=0), params_lib.unpack(description, parts))
    assert isinstance(rebuilt["actor"], Pair) and isinstance(rebuilt["alpha"], tuple)
    assert isinstance(rebuilt["critic"]["g_encoder"], list)
    assert list(rebuilt) == list(tree)  # the template's key order is kept
    for (path_a, leaf_a), (path_b, leaf_b) in zip(params_lib.flatten_with_paths(rebuilt),
                                                  params_lib.flatten_with_paths(tree)):
        assert path_a == path_b
        assert leaf_a.dtype == leaf_b.dtype and leaf_a.shape == leaf_b.shape
        np.testing.assert_array_equal(leaf_a, leaf_b)


def test_description_is_plain_json_with_shapes_and_dtypes() -> None:
    decoded = json.loads(params_lib.describe({"w": np.zeros((2, 5), np.float32)}))
    assert decoded == {"format": params_lib.DESCRIPTION_FORMAT,
                       "leaves": [{"path": "w", "shape": [2, 5], "dtype": "<f4"}]}


def test_unflatten_like_refuses_shape_dtype_path_and_count_mismatches() -> None:
    template = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.int32)}
    good = params_lib.flatten_with_paths(template)
    with pytest.raises(ValueError, match="shape"):
        params_lib.unflatten_like(template, [good[0][:1] + (np.zeros((3, 2), np.float32),), good[1]])
    with pytest.raises(ValueError, match="dtype"):
        params_lib.unflatten_like(template, [good[0], ("b", np.zeros(4, np.int64))])
    with pytest.raises(ValueError, match="path"):
        params_lib.unflatten_like(template, [("z", good[0][1]), good[1]])
    with pytest.raises(ValueError, match="leaves"):
        params_lib.unflatten_like(template, good[:1])


def test_unpack_refuses_truncated_parts_and_unknown_formats() -> None:
    description, parts = params_lib.pack({"w": np.ones(10, np.float32)}, max_part_bytes=16)
    with pytest.raises(ValueError, match="bytes"):
        params_lib.unpack(description, parts[:-1])
    with pytest.raises(ValueError, match="format"):
        params_lib.unpack(json.dumps({"format": "other", "leaves": []}), [])


def test_pack_refuses_object_leaves_and_none() -> None:
    with pytest.raises(TypeError):
        params_lib.pack({"w": np.array(["a"], dtype=object)})
    with pytest.raises(TypeError):
        params_lib.pack({"w": None})
    with pytest.raises(TypeError):
        params_lib.flatten_with_paths({1: np.zeros(1)})


def test_empty_tree_packs_to_one_empty_part() -> None:
    description, parts = params_lib.pack({})
    assert [part.size for part in parts] == [0]
    assert params_lib.unflatten_like({}, params_lib.unpack(description, parts)) == {}


def test_fingerprint_is_stable_and_sensitive() -> None:
    config = {"depth": 64, "width": 256, "activation": "swish", "layer_norm": True, "heads": [64, 64]}
    reordered = dict(reversed(list(config.items())))
    assert params_lib.fingerprint(config) == params_lib.fingerprint(reordered)
    assert len(params_lib.fingerprint(config)) == 16
    assert params_lib.fingerprint(config) != params_lib.fingerprint(config | {"depth": 32})
    assert params_lib.fingerprint(config) != params_lib.fingerprint(config | {"width": 256.5})
    # Fixed known value (`printf '{"depth":4}' | sha256sum`): stable across processes and Python versions.
    assert params_lib.fingerprint({"depth": 4}) == "66e41417846f7e02"


def test_fingerprint_refuses_non_json_values() -> None:
    with pytest.raises(TypeError):
        params_lib.fingerprint({"depth": np.int64(4)})
    with pytest.raises(TypeError):
        params_lib.fingerprint([("depth", 4)])  # not a mapping
    with pytest.raises(ValueError):
        params_lib.fingerprint({"lr": float("nan")})
