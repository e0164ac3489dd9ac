"""Name -> env factory. The only place that knows every env; `depthrl envs` lists it.

Entries import their module lazily so that listing names (and validating a config) stays cheap and so that a
point-maze run never imports MuJoCo model code.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from actors.envs.base import GoalEnv


@dataclasses.dataclass(frozen=True)
class EnvEntry:
    """One registered env."""

    name: str
    family: str
    """Family shown by `depthrl envs` (point, reacher, ant, humanoid)."""
    target: str
    """'module:callable' that builds the env; called with `kwargs`."""
    kwargs: tuple[tuple[str, Any], ...] = ()
    description: str = ""


class UnknownEnvError(ValueError):
    """Raised for an env name that is not registered."""


_ENTRIES: dict[str, EnvEntry] = {}


def register(entry: EnvEntry) -> None:
    if entry.name in _ENTRIES:
        raise ValueError(f"env {entry.name!r} registered twice")
    _ENTRIES[entry.name] = entry


def env_names() -> list[str]:
    """Every registered env name, sorted."""
    return sorted(_ENTRIES)


def get_entry(name: str) -> EnvEntry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise UnknownEnvError(f"unknown env {name!r}; known envs: {', '.join(env_names())}") from None


def make_env(name: str, **overrides: Any) -> GoalEnv:
    """Build env `name`; `overrides` replace the entry's keyword arguments (e.g. episode_length)."""
    entry = get_entry(name)
    module_name, attr = entry.target.split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(**{**dict(entry.kwargs), **overrides})


# --- the registry itself -------------------------------------------------------------------------------------
# Families add their rows here (one `register` call per env).
