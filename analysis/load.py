"""Run and grid directories -> one tidy pandas DataFrame, one row per (run, role, logged step).

A *run directory* is any directory holding ``config.json`` and ``metrics/`` (written by `depthrl run` or `depthrl
train`). A *grid directory* is any directory with run directories somewhere below it (`depthrl ablate` puts them in
``<grid>/runs/c{C}_s{seed}/``, but nothing here depends on that layout or on ``grid.json``).

Columns of the frame (`load`):

- ``run`` (run dir path relative to the loaded root, or its name when the root is the run), ``env``, ``seed``,
  ``run_kind`` ("run": decoupled, "train": single process);
- ``collector_depth``: critic depth of the learner whose policy collected the data (the one with ``collects``);
- ``role`` (as logged), ``kind`` (collector / learner / eval / actor / replay / other), ``learner`` (the name of the
  learner a row is about, e.g. "collector" or "learner_d4"; an eval row names the learner it evaluates; None for
  actors/replay), ``learner_depth`` (that learner's critic depth; None for actors/replay);
- ``env_steps``, ``grad_steps``, ``param_version``, ``wall_time`` (seconds since the role started);
- one column per metric, named without its ``"{role}/"`` prefix (``time_at_goal``, ``critic_loss``, ...). A metric
  a role does not log is NaN there.

Every run's learners are one list (`learners_of`, read from config.json once): name, actor and critic depth, and
whether its policy collects. A role named like a learner is that learner (kind "collector" when it collects, else
"learner"); ``eval_<name>`` evaluates it. Depths are looked up in the list, never parsed out of a role name.
config.json format 2 states the list; format 1 (written before it) is converted: a decoupled run's collector
(``runtime.collector_depth``) and passive learners ``learner_d{D}`` for each D of ``runtime.learner_depths``; a train
run's single learner "collector" (``agent.actor_depth`` / ``agent.critic_depth``), whose format-1 roles "learner" and
"evaluator" stand for "collector" and "eval_collector". See docs/run-directory.md for both formats.

Damaged input does not stop loading: a JSONL line that is not a JSON object (a line cut short by a crash) is skipped,
an unreadable config.json skips its run, and each such problem is returned as a message (and sent to
`warnings.warn`) naming the file and what was read and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["Learner", "LoadResult", "RunInfo", "find_run_dirs", "learners_of", "load", "parse_config",
           "read_jsonl_tolerant", "role_info"]

CONFIG_FILE = "config.json"
METRICS_DIR = "metrics"
STEP_COLUMNS = ("env_steps", "grad_steps", "param_version", "wall_time")
ID_COLUMNS = ("run", "env", "seed", "run_kind", "collector_depth", "role", "kind", "learner", "learner_depth")
_RESERVED = frozenset(ID_COLUMNS + STEP_COLUMNS)
COLLECTOR = "collector"
"""Name of the learner whose policy collects the data, in both config formats (tables and figures pick its rows by
it)."""
EVAL_PREFIX = "eval_"
FORMAT1_TRAIN_ROLES = {"learner": COLLECTOR, "evaluator": EVAL_PREFIX + COLLECTOR}
"""Format-1 train runs logged their one learner as "learner" and its evaluator as "evaluator"."""


@dataclasses.dataclass(frozen=True)
class Learner:
    """One learner of a run, as config.json states it (format 2) or as `learners_of` derives it (format 1)."""

    name: str
    """Its role name: its metrics are logged as role ``name``, its evaluations as ``eval_<name>``."""
    actor_depth: int | None
    """Residual blocks of its actor (None when the config does not say)."""
    critic_depth: int | None
    """Residual blocks of its critic: the ``learner_depth`` of its rows (None when the config does not say)."""
    collects: bool
    """Whether its policy collects the data (exactly one learner of a run does)."""


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
    learners: tuple[Learner, ...]
    """Every learner of the run (`learners_of`), the collecting one first."""
    config: dict[str, Any]
    """The whole config.json payload, for the report."""
    role_aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    """Logged role -> the role it stands for (format-1 train runs' "learner" / "evaluator"; empty otherwise)."""

    @property
    def collector(self) -> Learner:
        """The learner whose policy collects."""
        return next(learner for learner in self.learners if learner.collects)

    @property
    def collector_depth(self) -> int | None:
        """Critic depth of the learner whose policy collected the data."""
        return self.collector.critic_depth

    @property
    def learner_depths(self) -> tuple[int, ...]:
        """Critic depths of the passive learners, in config order (empty for train runs)."""
        return tuple(x.critic_depth for x in self.learners if not x.collects and x.critic_depth is not None)

    def role_info(self, role: str) -> tuple[str, str | None, int | None]:
        """(kind, learner, learner_depth) of a role this run logged; see `role_info`."""
        return role_info(self.role_aliases.get(role, role), self.learners)


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """`load`'s answer."""

    frame: pd.DataFrame
    """The tidy frame described in the module docstring (empty, with the id columns, when nothing was read)."""
    runs: list[RunInfo]
    """Every run directory that was read, in sorted path order."""
    problems: list[str]
    """One message per damaged file or skipped run (also sent to warnings.warn)."""


def role_info(role: str, learners: Sequence[Learner]) -> tuple[str, str | None, int | None]:
    """(kind, learner, learner_depth) of a role of a run with `learners`: a learner's own role is kind "collector"
    (its policy collects) or "learner"; ``eval_<name>`` is kind "eval" of learner <name>; then actor / replay /
    other. The depth is the learner's critic depth from the list."""
    by_name = {learner.name: learner for learner in learners}
    if role in by_name:
        learner = by_name[role]
        return ("collector" if learner.collects else "learner"), learner.name, learner.critic_depth
    if role.startswith(EVAL_PREFIX) and role.removeprefix(EVAL_PREFIX) in by_name:
        learner = by_name[role.removeprefix(EVAL_PREFIX)]
        return "eval", learner.name, learner.critic_depth
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


def learners_of(payload: dict[str, Any]) -> tuple[Learner, ...]:
    """The learners of a run from its config.json payload, the collecting one first; the one place that knows both
    formats (see the module docstring). Raises ValueError saying what is wrong with the payload."""
    version = payload.get("format_version", 1)
    config = payload["config"]
    if version == 1:
        if payload.get("kind") == "run":
            runtime = config.get("runtime") or {}
            depth = _as_int(runtime.get("collector_depth"))
            passive = [d for d in (_as_int(x) for x in runtime.get("learner_depths") or ()) if d is not None]
            return (Learner(COLLECTOR, depth, depth, collects=True),
                    *(Learner(f"learner_d{d}", d, d, collects=False) for d in passive))
        agent = config.get("agent") or {}
        return (Learner(COLLECTOR, _as_int(agent.get("actor_depth")), _as_int(agent.get("critic_depth")),
                        collects=True),)
    if version != 2:
        raise ValueError(f"unknown format_version {version!r} (this analysis reads 1 and 2)")
    entries = payload.get("learners")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                for e in entries):
        raise ValueError("format 2 needs 'learners': a list of objects with a 'name'")
    learners = [Learner(e["name"], _as_int(e.get("actor_depth")), _as_int(e.get("critic_depth")),
                        collects=e.get("collects") is True) for e in entries]
    names = [learner.name for learner in learners]
    collecting = [learner.name for learner in learners if learner.collects]
    if len(set(names)) != len(names):
        raise ValueError(f"learner names repeat: {names}")
    if collecting != [COLLECTOR]:
        raise ValueError(f"exactly one learner must collect, named {COLLECTOR!r}; collecting: {collecting}")
    return tuple(sorted(learners, key=lambda learner: not learner.collects))


def parse_config(payload: Any, name: str, run_dir: Path) -> RunInfo:
    """The `RunInfo` of a config.json payload; raises ValueError saying what is wrong with it."""
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        raise ValueError("no 'config' object")
    config = payload["config"]
    run_kind = str(payload.get("kind", "unknown"))
    format1_train = payload.get("format_version", 1) == 1 and run_kind == "train"
    return RunInfo(
        name=name, path=run_dir, run_kind=run_kind, env=(config.get("env") or {}).get("env"),
        seed=_as_int((config.get("run") or {}).get("seed")), learners=learners_of(payload), config=payload,
        role_aliases=dict(FORMAT1_TRAIN_ROLES) if format1_train else {},
    )


def _run_info(run_dir: Path, name: str) -> RunInfo:
    """Read and parse config.json; raises ValueError with a message naming the file."""
    path = run_dir / CONFIG_FILE
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the run config ({e}); run skipped") from None
    try:
        return parse_config(payload, name, run_dir)
    except ValueError as e:
        raise ValueError(f"{path}: {e}; run skipped") from None


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
            kind, learner, learner_depth = info.role_info(role)
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
