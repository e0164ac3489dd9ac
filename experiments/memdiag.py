"""Memory diagnostics of a role process, for telling a leak from allocator growth (opt-in, off by default).

Set ``DEPTHRL_MEMDIAG_SECONDS=S`` in the environment of a run (`depthrl run`, `resume`; every role inherits it) and
each role process starts a daemon thread that appends a row every S seconds to
``<run_dir>/diagnostics/<role>-<pid>.jsonl``:

- ``rss_mib`` and its parts ``rss_anon_mib`` and ``rss_file_mib`` (`rss_parts`), ``threads`` (native threads),
  ``fds``, and the process's ``MALLOC_ARENA_MAX``;
- glibc's heap, from ``mallinfo2``: ``heap_in_use_mib`` (bytes malloc handed out and not freed), ``heap_free_mib``
  (freed bytes the arenas keep: fragmentation), ``mmap_mib`` (large blocks, mapped one by one);
- ``py_objects`` (objects the garbage collector tracks) and the 12 types whose counts grew most since the baseline;
- with JAX imported: ``jax_live_arrays`` and ``jax_live_mib``;
- with ``DEPTHRL_MEMDIAG_TRACEMALLOC=1`` (slower): ``py_traced_mib`` and the 12 source lines whose Python
  allocations grew most since the baseline.

The baseline is taken ``DEPTHRL_MEMDIAG_WARMUP_SECONDS`` (default 300) after the process starts. Growth of
``heap_in_use`` with flat Python and JAX numbers is a native leak; growth of ``rss_anon`` with flat ``heap_in_use``
and rising ``heap_free`` is fragmentation, which `experiments.allocator` bounds; its trimmer's calls and their time
are in every row (``heap_trims``, ``heap_trim_ms``).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from experiments.allocator import libc, trim_stats
from experiments.metrics import process_rss_mib

INTERVAL_ENV = "DEPTHRL_MEMDIAG_SECONDS"
WARMUP_ENV = "DEPTHRL_MEMDIAG_WARMUP_SECONDS"
TRACEMALLOC_ENV = "DEPTHRL_MEMDIAG_TRACEMALLOC"
TOP_N = 12
_MIB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.lru_cache(maxsize=1)
def _mallinfo2():
    """glibc's `mallinfo2` function, or None (another libc, or glibc < 2.33)."""
    fn = getattr(libc(), "mallinfo2", None)
    if fn is not None:
        fn.restype = _MallInfo2
    return fn


def heap_numbers() -> dict[str, float]:
    """glibc heap totals in MiB: in use, free inside the arenas, and mmapped blocks ({} without glibc)."""
    fn = _mallinfo2()
    if fn is None:
        return {}
    info = fn()
    return {"heap_in_use_mib": (info.uordblks + info.hblkhd) / _MIB, "heap_free_mib": info.fordblks / _MIB,
            "mmap_mib": info.hblkhd / _MIB}


def rss_parts() -> dict[str, float]:
    """Resident memory split by kind, in MiB, from ``/proc/self/status``: ``rss_anon_mib`` (heap, stacks, anonymous
    mappings: where leaks live) and ``rss_file_mib`` (pages of mapped files, mostly shared-library code paged in as it
    runs: bounded by the libraries' size, and reclaimable). {} without /proc."""
    wanted = {"RssAnon:": "rss_anon_mib", "RssFile:": "rss_file_mib"}
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, *value = line.split()
                if key in wanted:
                    out[wanted[key]] = int(value[0]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _count_dir(path: str) -> int | None:
    try:
        return len(os.listdir(path))
    except OSError:
        return None


def _type_counts() -> collections.Counter:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


class MemoryDiagnostics:
    """The sampling thread (see the module docstring). `sample` is one row, callable without the thread."""

    def __init__(self, path: Path, warmup_seconds: float, trace_python: bool) -> None:
        self.path = Path(path)
        self.warmup_seconds = warmup_seconds
        self.trace_python = trace_python
        self._start = time.monotonic()
        self._base_types: collections.Counter | None = None
        self._base_snapshot: tracemalloc.Snapshot | None = None
        self._stop = threading.Event()
        if trace_python and not tracemalloc.is_tracing():
            tracemalloc.start(1)

    def sample(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self._start
        row: dict[str, Any] = {"t": round(elapsed, 1), "rss_mib": process_rss_mib(),
                               "threads": _count_dir("/proc/self/task"), "fds": _count_dir("/proc/self/fd"),
                               "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX")}
        row.update({k: round(v, 3) for k, v in {**rss_parts(), **heap_numbers()}.items()})
        row.update(trim_stats())
        types = _type_counts()
        row["py_objects"] = sum(types.values())
        if "jax" in sys.modules:
            arrays = sys.modules["jax"].live_arrays()
            row["jax_live_arrays"] = len(arrays)
            row["jax_live_mib"] = round(sum(a.nbytes for a in arrays) / _MIB, 3)
        snapshot = tracemalloc.take_snapshot() if self.trace_python and tracemalloc.is_tracing() else None
        if snapshot is not None:
            row["py_traced_mib"] = round(tracemalloc.get_traced_memory()[0] / _MIB, 3)
        if elapsed >= self.warmup_seconds:
            if self._base_types is None:
                self._base_types, self._base_snapshot = types, snapshot
            else:
                grown = (types - self._base_types).most_common(TOP_N)
                row["types_grown"] = dict(grown)
                if snapshot is not None and self._base_snapshot is not None:
                    stats = snapshot.compare_to(self._base_snapshot, "lineno")
                    row["lines_grown_kib"] = {str(s.traceback): round(s.size_diff / 1024, 1)
                                              for s in stats[:TOP_N] if s.size_diff > 0}
        return row

    def _loop(self, interval_seconds: float) -> None:
        with open(self.path, "a", buffering=1) as f:
            while not self._stop.wait(interval_seconds):
                try:
                    f.write(json.dumps(self.sample()) + "\n")
                except Exception as e:  # noqa: BLE001 (a diagnostic must never end the role)
                    f.write(json.dumps({"error": repr(e)}) + "\n")

    def start(self, interval_seconds: float) -> None:
        threading.Thread(target=self._loop, args=(interval_seconds,), name="depthrl-memdiag", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def env_error() -> str | None:
    """What is wrong with the diagnostics variables of this environment, or None (checked before a run starts)."""
    for name, zero_ok in ((INTERVAL_ENV, False), (WARMUP_ENV, True)):
        value = os.environ.get(name)
        if not value:
            continue
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not (seconds >= 0 if zero_ok else seconds > 0):  # also refuses nan
            return (f"{name}={value!r} must be a number of seconds, {'0 or more' if zero_ok else 'above 0'} "
                    "(memory diagnostics, experiments/memdiag.py)")
    return None


def start_from_env(run_dir: Path, role: str) -> MemoryDiagnostics | None:
    """Start the diagnostics of this role process when `INTERVAL_ENV` asks for them; None otherwise."""
    interval = os.environ.get(INTERVAL_ENV)
    if not interval:
        return None
    diagnostics = MemoryDiagnostics(Path(run_dir) / "diagnostics" / f"{role}-{os.getpid()}.jsonl",
                                    float(os.environ.get(WARMUP_ENV, 300)),
                                    os.environ.get(TRACEMALLOC_ENV, "") not in ("", "0"))
    diagnostics.path.parent.mkdir(parents=True, exist_ok=True)
    diagnostics.start(float(interval))
    return diagnostics
