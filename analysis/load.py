"""Run and grid directories -> one tidy pandas DataFrame, one row per (run, role, logged step).

A *run directory* is any directory holding ``config.json`` and ``metrics/`` (written by `depthrl run` or `depthrl
train`). A *grid directory* is any directory with run directories somewhere below it (`depthrl ablate` puts them in
``<grid>/runs/c{C}_s{seed}/``, but nothing here depends on that layout or on ``grid.json``).

Columns of the frame (`load`):

- ``run`` (run dir path relative to the loaded root, or its name when the root is the run), ``env``, ``seed``,
  ``run_kind`` ("run": decoupled, "train": single process);
- ``collector_depth``: depth of the network whose policy collected the data (``runtime.collector_depth``; a train
  run's ``agent.critic_depth``);
- ``role`` (as logged), ``kind`` (collector / learner / eval / actor / replay / other), ``learner`` (the learner a
  row is about: "collector" or "learner_d{D}"; an eval row names the learner it evaluates; None for actors/replay),
  ``learner_depth`` (depth of that learner; None for actors/replay);
- ``env_steps``, ``grad_steps``, ``param_version``, ``wall_time`` (seconds since the role started);
- one column per metric, named without its ``"{role}/"`` prefix (``time_at_goal``, ``critic_loss``, ...). A metric
  a role does not log is NaN there.

In a train run the single learner is also the collector (its policy acts), so its rows get kind "collector" and
learner "collector", and its "evaluator" rows evaluate "collector".

Damaged input does not stop loading: a JSONL line that is not a JSON object (a line cut short by a crash) is skipped,
an unreadable config.json skips its run, and each such problem is returned as a message (and sent to
`warnings.warn`) naming the file and what was read and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["LoadResult", "RunInfo", "find_run_dirs", "load", "read_jsonl_tolerant", "role_info"]

CONFIG_FILE = "config.json"
METRICS_DIR = "metrics"
STEP_COLUMNS = ("env_steps", "grad_steps", "param_version", "wall_time")
ID_COLUMNS = ("run", "env", "seed", "run_kind", "collector_depth", "role", "kind", "learner", "learner_depth")
_RESERVED = frozenset(ID_COLUMNS + STEP_COLUMNS)
COLLECTOR = "collector"
_LEARNER_RE = re.compile(r"^learner_d(\d+)$")
_EVAL_LEARNER_RE = re.compile(r"^eval_learner_d(\d+)$")


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the analysis needs from one run directory's config.json."""

    name: str
    """Run label: the run dir path relative to the loaded root (its directory name when the root is the run)."""
    path: Path
    """The run directory."""
    run_kind: str
    """"run" (decoupled `depthrl run`) or "train" (single-process `depthrl train`)."""
    env: str | None
    """Env name (config.env.env)."""
    seed: int | None
    """Root seed (config.run.seed)."""
    collector_depth: int | None
    """Depth of the network whose policy collected the data."""
    learner_depths: tuple[int, ...]
    """Depths of the passive learners (empty for train runs)."""
    config: dict[str, Any]
    """The whole config.json payload, for the report."""


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """`load`'s answer."""

    frame: pd.DataFrame
    """The tidy frame described in the module docstring (empty, with the id columns, when nothing was read)."""
    runs: list[RunInfo]
    """Every run directory that was read, in sorted path order."""
    problems: list[str]
    """One message per damaged file or skipped run (also sent to warnings.warn)."""


def role_info(role: str, run_kind: str, collector_depth: int | None) -> tuple[str, str | None, int | None]:
    """(kind, learner, learner_depth) of a logged role; see the module docstring."""
    if role == COLLECTOR or (run_kind == "train" and role == "learner"):
        return "collector", COLLECTOR, collector_depth
    if role == "eval_collector" or (run_kind == "train" and role == "evaluator"):
        return "eval", COLLECTOR, collector_depth
    if m := _LEARNER_RE.match(role):
        return "learner", role, int(m.group(1))
    if m := _EVAL_LEARNER_RE.match(role):
        return "eval", role.removeprefix("eval_"), int(m.group(1))
    if role.startswith("actor"):
        return "actor", None, None
    if role == "replay":
        return "replay", None, None
    return "other", None, None


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories at or below `root` (any dir with config.json and a metrics/ dir), sorted. A run directory's
    own sub-directories (checkpoints, replay checkpoints) are not searched."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if CONFIG_FILE in filenames and (here / METRICS_DIR).is_dir():
            found.append(here)
            dirnames[:] = []
        else:
            dirnames.sort()
    return sorted(found)


def read_jsonl_tolerant(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows of a JSONL file and the 1-based numbers of the lines that were skipped (not a JSON object: a truncated
    last line after a crash, a torn write, binary junk). Blank lines are neither rows nor skipped."""
    rows, skipped = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped.append(number)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                skipped.append(number)
    return rows, skipped


def _describe_skipped(path: Path, n_rows: int, skipped: list[int]) -> str:
    shown = ", ".join(str(n) for n in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
    return (f"{path}: read {n_rows} row(s), skipped {len(skipped)} unreadable line(s) (line {shown}; a line cut "
            f"short by a crash or a torn write)")


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _run_info(run_dir: Path, name: str) -> RunInfo:
    """Parse config.json; raises ValueError with a message naming the file."""
    path = run_dir / CONFIG_FILE
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the run config ({e}); run skipped") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        raise ValueError(f"{path}: no 'config' object; run skipped")
    config = payload["config"]
    run_kind = str(payload.get("kind", "unknown"))
    runtime = config.get("runtime") or {}
    if runtime:
        collector_depth = _as_int(runtime.get("collector_depth"))
        learner_depths = tuple(d for d in (_as_int(x) for x in runtime.get("learner_depths") or ()) if d is not None)
    else:
        collector_depth = _as_int((config.get("agent") or {}).get("critic_depth"))
        learner_depths = ()
    return RunInfo(
        name=name, path=run_dir, run_kind=run_kind, env=(config.get("env") or {}).get("env"),
        seed=_as_int((config.get("run") or {}).get("seed")), collector_depth=collector_depth,
        learner_depths=learner_depths, config=payload,
    )


def _run_frame(info: RunInfo, problems: list[str]) -> pd.DataFrame:
    records = []
    for path in sorted((info.path / METRICS_DIR).glob("*.jsonl")):
        try:
            rows, skipped = read_jsonl_tolerant(path)
        except OSError as e:
            problems.append(f"{path}: cannot read ({e}); file skipped")
            continue
        if skipped:
            problems.append(_describe_skipped(path, len(rows), skipped))
        for row in rows:
            role = str(row.get("role", path.stem))
            kind, learner, learner_depth = role_info(role, info.run_kind, info.collector_depth)
            record: dict[str, Any] = {
                "run": info.name, "env": info.env, "seed": info.seed, "run_kind": info.run_kind,
                "collector_depth": info.collector_depth, "role": role, "kind": kind, "learner": learner,
                "learner_depth": learner_depth,
            }
            for column in STEP_COLUMNS:
                record[column] = row.get(column)
            prefix = role + "/"
            for key, value in row.items():
                if key in ("role",) + STEP_COLUMNS:
                    continue
                name = key.removeprefix(prefix)
                # A metric named like an id column ("learner", "seed") keeps its prefix rather than overwrite it.
                record[key if name in _RESERVED else name] = value
            records.append(record)
    return pd.DataFrame.from_records(records)


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    """Column order (ids, steps, metrics A-Z) and dtypes: ids as nullable Int64 / object, steps and metrics float."""
    for column in ID_COLUMNS + STEP_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series([None] * len(frame), dtype=object)
    metrics = sorted(c for c in frame.columns if c not in ID_COLUMNS + STEP_COLUMNS)
    frame = frame[list(ID_COLUMNS + STEP_COLUMNS) + metrics].copy()
    for column in ("seed", "collector_depth", "learner_depth"):
        frame[column] = pd.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v)
                                  for v in frame[column]], dtype="Int64")
    for column in ("run", "env", "run_kind", "role", "kind", "learner"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    for column in STEP_COLUMNS + tuple(metrics):
        # A non-numeric value where a number belongs (a bug elsewhere) becomes NaN instead of an object column.
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame.sort_values(["run", "role", "env_steps", "wall_time"], kind="stable").reset_index(drop=True)


def load(root: Path, *, warn: bool = True) -> LoadResult:
    """Load the run directory `root`, or every run directory below it (a grid). Raises FileNotFoundError when
    `root` is not a directory. Problems are collected in the result and, with `warn`, sent to warnings.warn."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    problems: list[str] = []
    runs: list[RunInfo] = []
    frames = []
    for run_dir in find_run_dirs(root):
        name = run_dir.name if run_dir == root else run_dir.relative_to(root).as_posix()
        try:
            info = _run_info(run_dir, name)
        except ValueError as e:
            problems.append(str(e))
            continue
        runs.append(info)
        frame = _run_frame(info, problems)
        if len(frame):
            frames.append(frame)
        else:
            problems.append(f"{run_dir / METRICS_DIR}: no metric rows")
    frame = _finish(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
    if warn:
        for message in problems:
            warnings.warn(message, stacklevel=2)
    return LoadResult(frame=frame, runs=runs, problems=problems)
