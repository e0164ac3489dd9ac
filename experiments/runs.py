"""Run directories: creation without clobbering, the recorded config, git revision and package versions."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
FORMAT_VERSION = 2
"""Bumped when the layout of a run directory changes. 1: the agent config held actor/critic depths and the network
fields flat (a decoupled run's depths were in `runtime` only) and a train run's learner was named "learner".
2: a depth-free agent config (`agent.network`) and a top-level "learners" list stating every learner's depths; the
collecting learner is "collector" in every mode. Format 1 is read by converting it (`upgrade_v1`)."""

NETWORK_SHAPE_FIELDS = ("width", "activation", "layer_norm", "residual", "block_impl", "scan_unroll", "remat")

PACKAGES = ("jax", "jaxlib", "flax", "optax", "brax", "mujoco", "dm-reverb", "tensorflow-cpu", "orbax-checkpoint",
            "numpy", "pandas", "matplotlib", "tyro")


EXIT_RUN_DIR_UNWRITABLE = 74
"""Exit code of a role that could not write to the run directory (sysexits' EX_IOERR). The launcher names the cause
from it even when the role's own log could not be written (a full disk takes the log file with it)."""

_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_DISK_MESSAGES = ("No space left on device", "File too large", "Disk quota exceeded", "Read-only file system",
                  "Permission denied")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, missing, incompatible)."""


def is_disk_error(error: BaseException) -> bool:
    """True when `error`, or an error it was raised from, says a file could not be written: disk full, file size
    limit, quota, read-only or permission. Checkpoint libraries (orbax/tensorstore) re-raise OS errors as other types
    with the OS message inside, hence the message check."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
            return True
        if any(text in str(error) for text in _DISK_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    return obj


def from_jsonable(cls: type, data: dict) -> Any:
    """Rebuild a (nested) frozen dataclass from `to_jsonable` output; unknown keys are an error."""
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise RunDirError(f"{cls.__name__}: unknown config keys {sorted(unknown)} (written by another version?)")
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise RunDirError(f"config.json: {f.name} must be a JSON object, got {value!r}")
            value = from_jsonable(hint, value)
        else:
            value = _from_json_value(f.name, hint, value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _from_json_value(name: str, hint: Any, value: Any) -> Any:
    """`value` as the field type `hint` wants (lists become tuples, strings paths), or RunDirError naming the field:
    a hand-edited config.json must fail here, not as a TypeError deep inside validate()."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value  # validate() names the allowed values
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise RunDirError(f"config.json: {name} must be a list of integers, got {value!r}")
        return tuple(value)
    if hint is Path:
        if not isinstance(value, str):
            raise RunDirError(f"config.json: {name} must be a path string, got {value!r}")
        return Path(value)
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(hint)
    if expected is not None and (not isinstance(value, expected) or (hint is not bool and isinstance(value, bool))):
        raise RunDirError(f"config.json: {name} must be of type {hint.__name__}, got {value!r}")
    return value


def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        )
        rev = out.stdout.strip() or "unknown"
        return rev + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def default_run_dir(env: str, actor_depth: int, critic_depth: int, seed: int) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{env}-a{actor_depth}-c{critic_depth}-s{seed}-{stamp}"


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Validate the directory choice before anything is written. Raises RunDirError."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run dir {run_dir} exists and is not a directory")
    exists = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG_FILE}), so there is nothing to resume")
        return
    if exists and not overwrite:
        raise RunDirError(f"run dir {run_dir} already exists and is not empty; pass --resume to continue it or "
                          "--overwrite to replace it")
    probe = run_dir.absolute().parent
    while not probe.exists() and not probe.is_symlink():
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"run dir {run_dir} cannot be created: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"run dir {run_dir} cannot be created: {probe} is not writable")


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def write_config(run_dir: Path, kind: str, config: Any) -> None:
    """Record config, git revision and package versions; written atomically."""
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": to_jsonable(config),
        "learners": [dataclasses.asdict(learner) for learner in config.learners],
        "git_revision": git_revision(),
        "packages": package_versions(),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(payload, indent=2) + "\n")


def read_config(run_dir: Path, kind: str, cls: type) -> Any:
    try:
        payload = json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"cannot read {run_dir / CONFIG_FILE}: {e}") from None
    if not isinstance(payload, dict):
        raise RunDirError(f"{run_dir / CONFIG_FILE} does not hold a run record (a JSON object)")
    version = payload.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise RunDirError(
            f"{run_dir} was written by an incompatible depthrl: format_version {version!r}, this depthrl reads "
            f"format_version 1 and {FORMAT_VERSION}; use the depthrl revision recorded in its config.json "
            f"(git_revision {payload.get('git_revision', '?')!r}) to continue it"
        )
    if payload.get("kind") != kind:
        raise RunDirError(f"{run_dir} is a {payload.get('kind')!r} run (config.json kind), not a {kind!r} run")
    if not isinstance(payload.get("config"), dict):
        raise RunDirError(f"{run_dir / CONFIG_FILE}: 'config' must be a JSON object")
    config = payload["config"] if version == FORMAT_VERSION else upgrade_v1(kind, payload["config"])
    return from_jsonable(cls, config)


def format_version(run_dir: Path) -> int | None:
    """The format_version recorded in `run_dir`'s config.json, None when it cannot be read."""
    try:
        return json.loads((run_dir / CONFIG_FILE).read_text()).get("format_version")
    except (OSError, ValueError, AttributeError):
        return None


def upgrade_v1(kind: str, config: dict) -> dict:
    """A format-1 recorded config as format 2: the network fields move into `agent.network`; a train run's depths
    move to `depth`; a decoupled run's agent depths (always the unused defaults) are dropped."""
    config = dict(config)
    agent = dict(config.get("agent") or {})
    depths = {name: agent.pop(name) for name in ("actor_depth", "critic_depth") if name in agent}
    agent["network"] = {name: agent.pop(name) for name in NETWORK_SHAPE_FIELDS if name in agent}
    config["agent"] = agent
    if kind == "train":
        config["depth"] = depths
    return config


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
