"""experiments.allocator: trimming glibc's heap gives freed pages back; the trimmer's interval comes from the env."""

from __future__ import annotations

import time

import pytest

from experiments import allocator
from experiments.memdiag import rss_parts


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
