"""experiments.allocator: trimming glibc's heap gives freed pages back; the trimmer's interval comes from the env;
settling the interned-string table moves its rebuild to the start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import allocator
from experiments.memdiag import rss_parts

REPO = Path(__file__).resolve().parents[2]


def test_trimming_returns_the_free_pages_inside_the_heap():
    # 96 MiB in 2 KiB strings (malloc'd, under the mmap threshold: inside an arena). Keep every 64th, so that the
    # arena's top stays in use and free() cannot shrink it; only malloc_trim can release the pages in between.
    blocks = [bytes(2048) + bytes([i % 256]) for i in range(48 * 1024)]
    kept = blocks[::64]
    del blocks
    allocator.trim_heap()
    blocks = [bytes(2048) + bytes([i % 256]) for i in range(48 * 1024)]  # touch the freed pages again
    kept += blocks[::64]
    del blocks
    before = rss_parts()["rss_anon_mib"]
    assert allocator.trim_heap() is True
    after = rss_parts()["rss_anon_mib"]
    assert before - after > 48, (before, after)
    assert len(kept) == 2 * 768


def test_the_trimmer_counts_its_calls_and_their_time():
    trimmer = allocator.HeapTrimmer(0.01).start()
    try:
        deadline = time.time() + 30
        while trimmer.calls < 3 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        trimmer.stop()
    assert trimmer.calls >= 3 and trimmer.seconds_spent > 0


@pytest.mark.parametrize("value, seconds", [("", 60.0), ("0", 0.0), ("2.5", 2.5)])
def test_the_interval_comes_from_the_environment(monkeypatch, value, seconds):
    monkeypatch.setenv(allocator.TRIM_ENV, value)
    assert allocator.trim_seconds_from_env() == seconds and allocator.env_error() is None


@pytest.mark.parametrize("value", ["-1", "nan", "often"])
def test_a_bad_interval_is_named(monkeypatch, value):
    monkeypatch.setenv(allocator.TRIM_ENV, value)
    assert f"DEPTHRL_MALLOC_TRIM_SECONDS={value!r} must be a number of seconds" in allocator.env_error()


# Run in a fresh interpreter with a role's imports: churns 90K interned strings (each dropped at once, as file names
# are) under tracemalloc and prints the bytes still traced afterwards, i.e. a rebuilt interned-string table if the
# churn rebuilt it. 90K is more than the free slots a role's table has after its imports (under 60K) and fewer than
# it has after settling (~160K).
_CHURN = """
import sys, tracemalloc
import flax, jax, optax, reverb
from experiments import allocator
if sys.argv[1] == "settle":
    allocator.settle_interned_strings()
tracemalloc.start()
for i in range(90_000):
    sys.intern(f"churned-file-name-{i}")
print(tracemalloc.get_traced_memory()[0])
"""


def _bytes_left_by_churn(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _CHURN, mode], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_settling_moves_the_interned_table_rebuild_to_the_start():
    # Without settling, the churn rebuilds the table from 2^18 to 2^19 slots: a new 7.3 MiB block stays behind.
    assert _bytes_left_by_churn("plain") > 6 * 2**20
    # Settled, the table already has room for the churn: nothing of that size is allocated.
    assert _bytes_left_by_churn("settle") < 2**20


def test_housekeeping_settles_the_table_once_after_its_delay(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "_settler", None)
    monkeypatch.setattr(allocator, "_trimmer", None)
    monkeypatch.setattr(allocator, "SETTLE_AFTER_SECONDS", 0.05)
    monkeypatch.setattr(allocator, "settle_interned_strings", lambda: calls.append(time.time()))
    monkeypatch.setenv(allocator.TRIM_ENV, "0")  # no trimmer: this checks the settling alone
    started = time.time()
    assert allocator.start_housekeeping_from_env() is None
    allocator.start_housekeeping_from_env()
    allocator._settler.join(timeout=30)
    time.sleep(0.2)
    assert len(calls) == 1 and calls[0] - started >= 0.05
