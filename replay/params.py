"""Parameter pytrees as flat numpy buffers, for publishing network params between processes.

A publisher turns its params pytree into (description, parts): ``description`` is a JSON string naming every
leaf's path, shape and dtype in a fixed order; ``parts`` are uint8 buffers holding the leaves' raw bytes back to
back, cut into pieces of bounded size so that no single transport message is huge. The receiver never
reconstructs a structure from the wire: it already holds a *template* pytree of the right network (built from its
own config) and pours the received leaves into it with `unflatten_like`, which checks paths, shapes and dtypes.
Nothing here uses pickle, so a replay server or a peer can never make a reader execute code.

`fingerprint` hashes a JSON-serialisable network config, so a reader refuses params of a different network
(`FingerprintMismatch`) before it even looks at their shapes.

Pure numpy and the standard library: importing this module never loads reverb, tensorflow or jax.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DESCRIPTION_FORMAT = "depthrl.params/v1"
"""Tag written into every description, so that a future layout change is detected instead of misread."""

DEFAULT_MAX_PART_BYTES = 32 * 1024 * 1024
"""Largest uint8 part `pack` emits (32 MiB): keeps each transport chunk well under gRPC message limits."""


class FingerprintMismatch(ValueError):
    """Received params were produced by a network config other than the one the reader expects."""


def fingerprint(config: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable network config.

    Keys are sorted and separators fixed, so the same config gives the same fingerprint in every process and
    Python version. Values must be JSON types (str, int, float, bool, None, lists/tuples, str-keyed mappings):
    anything else (numpy scalars, dataclasses, callables) raises TypeError instead of hashing an unstable repr.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"fingerprint expects a mapping, got {type(config).__name__}")
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_fingerprint(got: str, expected: str, source: str) -> None:
    """`FingerprintMismatch` unless `got` is `expected`; `source` names the params in the message, e.g.
    ``"params of 'collector' (version 3)"``. Every `ParamStore` runs it before rebuilding params into a template."""
    if got != expected:
        raise FingerprintMismatch(f"{source} have fingerprint {got!r}, expected {expected!r}: the publisher runs "
                                  f"another network config")


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def flatten_with_paths(tree: Any) -> list[tuple[str, np.ndarray]]:
    """Leaves of `tree` as ``(path, array)`` pairs in a deterministic order.

    Containers: mappings (keys visited in sorted order, as JAX does for dicts; keys must be str), named tuples
    (by field name), lists and tuples (by index). Everything else is a leaf and goes through `np.asarray`, which
    also copies JAX device arrays to host. Paths join keys with "/", e.g. ``"params/Dense_0/kernel"``.
    """
    out: list[tuple[str, np.ndarray]] = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key in sorted(node):
                if not isinstance(key, str):
                    raise TypeError(f"params mapping keys must be str, got {key!r} at {path or '<root>'}")
                visit(node[key], f"{path}/{key}" if path else key)
        elif _is_namedtuple(node):
            for key in node._fields:
                visit(getattr(node, key), f"{path}/{key}" if path else key)
        elif isinstance(node, (list, tuple)):
            for index, child in enumerate(node):
                visit(child, f"{path}/{index}" if path else str(index))
        elif node is None:
            raise TypeError(f"params leaf at {path or '<root>'} is None")
        else:
            out.append((path, np.asarray(node)))

    visit(tree, "")
    return out


def describe(tree: Any) -> str:
    """JSON description (format tag, leaf paths, shapes, dtypes) of `tree`, in `flatten_with_paths` order."""
    return _description_json(flatten_with_paths(tree))


def _description_json(leaves: Sequence[tuple[str, np.ndarray]]) -> str:
    entries = [{"path": path, "shape": list(leaf.shape), "dtype": leaf.dtype.str} for path, leaf in leaves]
    return json.dumps({"format": DESCRIPTION_FORMAT, "leaves": entries}, separators=(",", ":"))


def _parse_description(description: str) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    decoded = json.loads(description)
    if decoded.get("format") != DESCRIPTION_FORMAT:
        raise ValueError(f"unknown params description format {decoded.get('format')!r}")
    return [(e["path"], tuple(e["shape"]), np.dtype(e["dtype"])) for e in decoded["leaves"]]


def pack(tree: Any, max_part_bytes: int = DEFAULT_MAX_PART_BYTES) -> tuple[str, list[np.ndarray]]:
    """``(description, parts)``: every leaf's bytes concatenated (C order) then cut into uint8 parts.

    Each part has at most `max_part_bytes` bytes; a tree with no bytes at all gives one empty part, so a
    transport always has at least one column to carry.
    """
    if max_part_bytes <= 0:
        raise ValueError(f"max_part_bytes must be positive, got {max_part_bytes}")
    leaves = flatten_with_paths(tree)
    # Object or string leaves have no fixed byte layout: refuse them rather than ship pointers.
    for path, leaf in leaves:
        if leaf.dtype.hasobject or leaf.dtype.kind in "USV":
            raise TypeError(f"params leaf {path!r} has non-numeric dtype {leaf.dtype}")
    blob = np.concatenate([np.ascontiguousarray(leaf).reshape(-1).view(np.uint8) for _, leaf in leaves]
                          or [np.zeros(0, np.uint8)])
    parts = [blob[start:start + max_part_bytes] for start in range(0, blob.size, max_part_bytes)]
    return _description_json(leaves), parts or [blob]


def unpack(description: str, parts: Sequence[np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Inverse of `pack`: ``(path, array)`` pairs with the described shapes and dtypes.

    Raises ValueError when the parts do not hold exactly the described number of bytes.
    """
    entries = _parse_description(description)
    blob = np.concatenate([np.asarray(p, dtype=np.uint8).reshape(-1) for p in parts] or [np.zeros(0, np.uint8)])
    expected = sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for _, shape, dtype in entries)
    if blob.size != expected:
        raise ValueError(f"params parts hold {blob.size} bytes, description needs {expected}")
    out: list[tuple[str, np.ndarray]] = []
    offset = 0
    for path, shape, dtype in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        # .copy() so that each leaf owns aligned memory instead of pinning the whole received blob.
        out.append((path, blob[offset:offset + nbytes].view(dtype).reshape(shape).copy()))
        offset += nbytes
    return out


def unflatten_like(template: Any, leaves: Sequence[tuple[str, np.ndarray]]) -> Any:
    """Rebuild `template`'s structure with the given ``(path, array)`` leaves.

    The leaves must match the template's leaves one to one: same paths in the same order, same shapes and same
    dtypes; the first difference raises ValueError naming the leaf. Containers are rebuilt with the template's
    own types (dict subclasses through ``type(node)(...)``, named tuples field by field).
    """
    expected = flatten_with_paths(template)
    if len(expected) != len(leaves):
        raise ValueError(f"params have {len(leaves)} leaves, template has {len(expected)}")
    for (want_path, want), (got_path, got) in zip(expected, leaves):
        got = np.asarray(got)
        if want_path != got_path:
            raise ValueError(f"params leaf path {got_path!r}, template expects {want_path!r}")
        if want.shape != got.shape:
            raise ValueError(f"params leaf {got_path!r}: shape {got.shape}, template expects {want.shape}")
        if want.dtype != got.dtype:
            raise ValueError(f"params leaf {got_path!r}: dtype {got.dtype}, template expects {want.dtype}")
    queue = iter(np.asarray(leaf) for _, leaf in leaves)

    def build(node: Any) -> Any:
        # Visits containers in exactly the order of flatten_with_paths, so leaves line up with the check above.
        if isinstance(node, Mapping):
            by_key = {key: build(node[key]) for key in sorted(node)}
            rebuilt = {key: by_key[key] for key in node}  # keep the template's key order
            return rebuilt if type(node) is dict else type(node)(rebuilt)
        if _is_namedtuple(node):
            return type(node)(**{key: build(getattr(node, key)) for key in node._fields})
        if isinstance(node, (list, tuple)):
            return type(node)(build(child) for child in node)
        return next(queue)

    return build(template)
