"""Run directories: creation without clobbering, the recorded config, git revision and package versions."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
"""Bumped when the layout of a run directory changes incompatibly; `resume` refuses other versions."""

PACKAGES = ("jax", "jaxlib", "flax", "optax", "brax", "mujoco", "dm-reverb", "tensorflow-cpu", "orbax-checkpoint",
            "numpy", "pandas", "matplotlib", "tyro")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, missing, incompatible)."""


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
            value = from_jsonable(hint, value)
        elif value is not None and "Path" in str(hint):
            value = Path(value)
        kwargs[f.name] = value
    return cls(**kwargs)


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
    exists = run_dir.exists() and any(run_dir.iterdir()) if run_dir.exists() else False
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunDirError(f"--resume: {run_dir} is not a run directory (no {CONFIG_FILE})")
        return
    if exists and not overwrite:
        raise RunDirError(f"run dir {run_dir} already exists and is not empty; pass --resume to continue it or "
                          "--overwrite to replace it")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run dir {run_dir} exists and is not a directory")
    parent = run_dir.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise RunDirError(f"run dir {run_dir}: {probe} is not writable")


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
    if payload.get("format_version") != FORMAT_VERSION:
        raise RunDirError(
            f"{run_dir} was written with run-dir format {payload.get('format_version')!r}; this depthrl reads "
            f"format {FORMAT_VERSION}"
        )
    if payload.get("kind") != kind:
        raise RunDirError(f"{run_dir} is a {payload.get('kind')!r} run, not a {kind!r} run")
    return from_jsonable(cls, payload["config"])


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
