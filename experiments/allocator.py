"""How depthrl's long-running processes keep their memory flat: two arenas, a periodic trim, an interned-string table
sized at start.

A role process allocates from many native threads (gRPC, TensorFlow, XLA). glibc frees memory into the arenas and
keeps it there; pages of a freed chunk stay resident until malloc reuses or trims them, so a process whose live memory
is flat still gains resident pages for hours as allocations wander over the kept free space (measurements:
docs/replay.md, "Memory over hours"). Two things bound that:

- `ALLOCATOR_ENV`, set in the environment of every process depthrl starts, unless the user's environment sets it;
- `HeapTrimmer`, a daemon thread in every role process that calls glibc's ``malloc_trim(0)`` every
  ``DEPTHRL_MALLOC_TRIM_SECONDS`` (default 60; 0 turns it off). ``malloc_trim`` hands the whole free pages inside
  every arena back to the kernel, so resident memory follows the memory in use. `trim_stats` counts the calls and the
  time they took (the memory diagnostics rows carry them, `experiments.memdiag`).

A third step is not about glibc: `settle_interned_strings`, run once, a minute after a role starts
(`start_housekeeping_from_env` starts it and the trimmer). CPython 3.11 keeps the strings it interns (identifiers, and
every file-name part pathlib touches) in one dict. When that dict runs out of free slots it is rebuilt at 3x its live
strings, rounded up to a power of two. After its imports a role holds 116-138K live interned strings in a 2^18-slot
table, so its next rebuild doubles it to 2^19 slots: a one-time step of 3.6 MiB. Strings interned and dropped again
(status and parameter file names, orbax's parameter names: 0-40 a second) use up the last 30-56K free slots, so the step
comes wherever that churn takes it: about minute 50 in a learner, after two hours in an actor, never in the replay
server. `settle_interned_strings` makes that rebuild happen now, so that a role's memory is flat after its first minutes
(docs/replay.md, "Memory over hours").

Pure standard library; without glibc (another libc) trimming is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
import time

ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "2"}
"""Set in the environment of every process depthrl starts (roles of the local and Ray launchers, the runs of
`depthrl ablate`) unless the user's environment sets it; a `depthrl train` started by hand keeps glibc's default. glibc
gives each thread that allocates its own arena, up to 8 per core; the thread pools of a role then spread its heap over
many arenas, each keeping its own free space. Two arenas halve that free space (docs/replay.md)."""

TRIM_ENV = "DEPTHRL_MALLOC_TRIM_SECONDS"
DEFAULT_TRIM_SECONDS = 60.0

SETTLE_INTERNED_STRINGS = 1 << 17
"""Strings `settle_interned_strings` interns and drops. A 2^18-slot table that its live strings have outgrown (over
2^18 / 3 of them) has at most 2^18 * 2/3 - 2^18 / 3 = 87K free slots left, so this many insertions always rebuild it."""

SETTLE_AFTER_SECONDS = 60.0
"""Delay from a role's start to `settle_interned_strings`: past its imports and first compilation, which add live
interned strings (the rebuilt table's size follows the live count)."""


@functools.lru_cache(maxsize=1)
def libc() -> ctypes.CDLL | None:
    """The C library this process runs on, or None where ctypes cannot load it."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim` function with its signature set, or None (another libc)."""
    fn = getattr(libc(), "malloc_trim", None)
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> bool | None:
    """Return the free pages of every malloc arena to the kernel (glibc's ``malloc_trim(0)``). True when memory was
    released, False when there was none to release, None without glibc."""
    fn = _malloc_trim()
    return None if fn is None else bool(fn(0))


def settle_interned_strings(count: int = SETTLE_INTERNED_STRINGS) -> None:
    """Intern `count` new strings, dropping each at once, so that the interpreter's interned-string table makes now
    the rebuild that such churn would make later in the run (module docstring). Each string is freed before the next,
    as churned file names are, so the table is rebuilt for the live strings alone: to the size the run would reach.
    Takes ~0.1 s."""
    for i in range(count):
        sys.intern(f"depthrl-settle-{i}")


class HeapTrimmer:
    """Calls `trim_heap` every `interval_seconds` from a daemon thread; `calls` and `seconds_spent` say what it cost."""

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self.calls = 0
        self.seconds_spent = 0.0
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            start = time.perf_counter()
            if trim_heap() is None:
                return
            self.seconds_spent += time.perf_counter() - start
            self.calls += 1

    def start(self) -> HeapTrimmer:
        threading.Thread(target=self._loop, name="depthrl-malloc-trim", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()


_trimmer: HeapTrimmer | None = None
_settler: threading.Timer | None = None


def trim_seconds_from_env() -> float:
    """The trim interval `TRIM_ENV` asks for (0: off). Raises ValueError for anything but a number >= 0."""
    value = os.environ.get(TRIM_ENV, "")
    if not value:
        return DEFAULT_TRIM_SECONDS
    seconds = float(value)
    if not seconds >= 0:  # also refuses nan
        raise ValueError(value)
    return seconds


def env_error() -> str | None:
    """What is wrong with `TRIM_ENV` in this environment, or None (checked before a run starts)."""
    try:
        trim_seconds_from_env()
    except ValueError:
        return (f"{TRIM_ENV}={os.environ[TRIM_ENV]!r} must be a number of seconds, 0 or more (0: never trim the heap; "
                "experiments/allocator.py)")
    return None


def start_housekeeping_from_env() -> HeapTrimmer | None:
    """Start this process's trimmer at the interval `TRIM_ENV` asks for, and its `settle_interned_strings` after
    `SETTLE_AFTER_SECONDS` (both once per process). Returns the trimmer, None when `TRIM_ENV` is 0."""
    global _trimmer, _settler
    if _settler is None:
        _settler = threading.Timer(SETTLE_AFTER_SECONDS, settle_interned_strings)
        _settler.name, _settler.daemon = "depthrl-settle-interned", True
        _settler.start()
    seconds = trim_seconds_from_env()
    if _trimmer is None and seconds > 0 and libc() is not None:
        _trimmer = HeapTrimmer(seconds).start()
    return _trimmer


def trim_stats() -> dict[str, float]:
    """Calls of this process's trimmer and the milliseconds they took in all ({} when it is not running)."""
    if _trimmer is None:
        return {}
    return {"heap_trims": _trimmer.calls, "heap_trim_ms": round(_trimmer.seconds_spent * 1000, 3)}
