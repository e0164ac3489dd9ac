"""experiments.memdiag: the rows that tell a leak from allocator growth."""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np

from experiments.memdiag import MemoryDiagnostics, heap_numbers, rss_parts, start_from_env


class _Leaked:
    pass


def test_a_sample_splits_resident_memory_and_reports_the_heap():
    parts, heap = rss_parts(), heap_numbers()
    assert parts["rss_anon_mib"] > 0 and parts["rss_file_mib"] > 0
    assert heap["heap_in_use_mib"] > 0 and heap["heap_free_mib"] >= 0
    before = heap_numbers()["heap_in_use_mib"]
    block = np.ones(64 * 2**20 // 8)  # 64 MiB from malloc (mmapped: above the mmap threshold)
    assert heap_numbers()["heap_in_use_mib"] - before > 60
    del block


def test_growth_after_the_baseline_names_the_type_and_the_line(tmp_path):
    diagnostics = MemoryDiagnostics(tmp_path / "d.jsonl", warmup_seconds=0.0, trace_python=True)
    try:
        first = diagnostics.sample()  # the baseline
        assert "types_grown" not in first and first["py_traced_mib"] > 0
        kept = [_Leaked() for _ in range(20_000)]
        grown = diagnostics.sample()
    finally:
        tracemalloc.stop()
    assert grown["types_grown"]["_Leaked"] == 20_000
    assert any(line.startswith(__file__) and kib > 500 for line, kib in grown["lines_grown_kib"].items()), \
        grown["lines_grown_kib"]
    assert len(kept) == 20_000


def test_diagnostics_start_only_when_the_environment_asks(tmp_path, monkeypatch):
    monkeypatch.delenv("DEPTHRL_MEMDIAG_SECONDS", raising=False)
    assert start_from_env(tmp_path, "learner-x") is None
    assert not (tmp_path / "diagnostics").exists()
    monkeypatch.setenv("DEPTHRL_MEMDIAG_SECONDS", "0.05")
    diagnostics = start_from_env(tmp_path, "learner-x")
    try:
        deadline = time.time() + 30
        def rows() -> int:
            return len(diagnostics.path.read_text().splitlines()) if diagnostics.path.exists() else 0

        while time.time() < deadline and rows() < 2:
            time.sleep(0.05)
    finally:
        diagnostics.stop()
    assert diagnostics.path.parent == tmp_path / "diagnostics" and diagnostics.path.name.startswith("learner-x-")
    row = json.loads(diagnostics.path.read_text().splitlines()[0])
    assert row["rss_mib"] > 0 and "types_grown" not in row  # the default warm-up is 300 s


def test_role_processes_get_two_malloc_arenas_unless_the_user_chose(monkeypatch):
    from experiments.config import DecoupledConfig
    from experiments.launcher import _role_env

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert _role_env(DecoupledConfig(), "collector")["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert _role_env(DecoupledConfig(), "actor_0")["MALLOC_ARENA_MAX"] == "8"
