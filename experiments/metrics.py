"""Metric rows as JSON lines. Every row carries role, wall_time, env_steps, grad_steps and param_version; metric keys
are namespaced ``"{role}/{name}"``. Every row also records the logging process's resident memory
(``"{role}/rss_mib"``), so that memory over time can be plotted for any run and growth flagged while it runs."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence


class Sink(Protocol):
    """Another destination of the same rows (`experiments.tracking`: TensorBoard, W&B)."""

    def write(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


RSS_KEY = "rss_mib"
"""Every row's memory metric: the logging process's resident set size in MiB (`process_rss_mib`)."""
_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 0.0


def process_rss_mib() -> float | None:
    """This process's resident set size in MiB, from ``/proc/self/statm`` (one read, ~10 µs); None without /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_MIB
    except (OSError, IndexError, ValueError):
        return None


class JsonlLogger:
    """The logging seam of every role: appends one JSON object per `log` call to `path`, flushed immediately (a crash
    loses at most one line), and hands the same row to each of its `sinks`."""

    def __init__(self, path: Path, role: str, start_time: float | None = None, sinks: Sequence[Sink] = ()) -> None:
        self.path = Path(path)
        self.role = role
        self.start_time = time.time() if start_time is None else start_time
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self._sinks = tuple(sinks)

    def log(
        self, metrics: Mapping[str, Any], *, env_steps: int, grad_steps: int, param_version: int, wall_time: float | None = None
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "role": self.role,
            "wall_time": round(time.time() - self.start_time if wall_time is None else wall_time, 3),
            "env_steps": int(env_steps),
            "grad_steps": int(grad_steps),
            "param_version": int(param_version),
        }
        for key, value in metrics.items():
            value = float(value)
            row[f"{self.role}/{key}"] = value if math.isfinite(value) else None
        rss = process_rss_mib()
        if rss is not None and f"{self.role}/{RSS_KEY}" not in row:
            row[f"{self.role}/{RSS_KEY}"] = round(rss, 2)
        self._file.write(json.dumps(row) + "\n")
        for sink in self._sinks:
            sink.write(row)
        return row

    def close(self) -> None:
        self._file.close()
        for sink in self._sinks:
            sink.close()


def make_logger(run_dir: Path, role: str, sinks: Sequence[str] = ("jsonl",), start_time: float | None = None,
                extra: Sequence[Sink] = ()) -> JsonlLogger:
    """`role`'s logger in `run_dir`: ``metrics/<role>.jsonl`` plus the TensorBoard sink when `sinks` names it, plus
    `extra` sinks (the trainer's W&B sink)."""
    from experiments.tracking import TensorBoardSink

    chosen = [TensorBoardSink(run_dir, role)] if "tensorboard" in sinks else []
    return JsonlLogger(Path(run_dir) / "metrics" / f"{role}.jsonl", role, start_time, [*chosen, *extra])


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSONL file and the number of unreadable lines (e.g. a line truncated by a crash)."""
    rows, bad = [], 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    return rows, bad
