"""Name -> env factory. The only place that knows every env; `depthrl envs` lists it.

Entries import their module lazily so that listing names (and validating a config) stays cheap and so that a
point-maze run never imports MuJoCo model code.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from actors.envs import quiet  # noqa: F401  (first: silences the physics libraries' start-up noise)
from actors.envs.base import GoalEnv


@dataclasses.dataclass(frozen=True)
class EnvEntry:
    """One registered env."""

    name: str
    family: str
    """Family shown by `depthrl envs` (point, reacher, ant, humanoid, arm)."""
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


def compatibility_problems(train_env: str, other_env: str) -> list[str]:
    """Why a policy trained on `train_env` cannot act in `other_env` (empty when it can): another family, another
    observation layout (state size, goal slice) or another action size. Builds both envs when their families
    agree."""
    if get_entry(train_env).family != get_entry(other_env).family:
        # Decided without building either env (a Brax env's construction compiles).
        return [f"family {get_entry(other_env).family!r} instead of {get_entry(train_env).family!r}"]
    problems = []
    a, b = make_env(train_env), make_env(other_env)
    layout = lambda env: (env.spec.state_dim, env.spec.goal_start, env.spec.goal_end)  # noqa: E731
    if layout(a) != layout(b):
        problems.append(f"observation layout (state_dim, goal slice) {layout(b)} instead of {layout(a)}")
    if a.action_size != b.action_size:
        problems.append(f"{b.action_size} actions instead of {a.action_size}")
    return problems


# --- the registry itself -------------------------------------------------------------------------------------
# Families add their rows here (one `register` call per env).

# Point mass in a maze (actors/envs/point_maze.py): 2-D kinematic point, obs [x, y, gx, gy], CPU-cheap.
_POINT_TARGET = "actors.envs.point_maze:PointMaze"
for _name, _layout, _description in (
    ("point_arena", "arena", "point mass in an open 5x5 room, start in the middle, goal anywhere else"),
    ("point_u_maze", "u_maze", "point mass, U-maze (3x3 inner), goals along the U"),
    ("point_u_maze_eval", "u_maze_eval", "point mass, U-maze eval: goals only on the far arm of the U"),
    ("point_u4_maze", "u4_maze", "point mass, U4-maze, goals along the corridor"),
    ("point_u4_maze_eval", "u4_maze_eval", "point mass, U4-maze eval: goals on the far side, must loop around"),
    ("point_big_maze", "big_maze", "point mass, big maze (6x6 inner), goals in most free cells"),
    ("point_big_maze_eval", "big_maze_eval", "point mass, big maze eval: 9 goal cells, none next to the start"),
    ("point_hardest_maze", "hardest_maze", "point mass, hardest maze (7x10 inner), goals in most free cells"),
):
    register(EnvEntry(_name, "point", _POINT_TARGET, (("layout", _layout),), _description))
del _name, _layout, _description

register(
    EnvEntry(
        name="reacher",
        family="reacher",
        target="actors.envs.reacher:Reacher",
        description="Brax 2-link planar arm; fingertip to a target within 0.2 m; success < 0.05 m; 1001 steps.",
    )
)

# Ant (actors/envs/ant.py): brax Ant on `spring`, obs 31 = [29-dim state, goal xy]; mazes use 4 m cells, 2 m walls.
for _name, _maze, _description in (
    ("ant", None, "brax Ant, goal 10 m away at a uniform angle; success < 0.5 m (xy)"),
    ("ant_u_maze", "u_maze", "Ant, U-maze, goals along the U"),
    ("ant_u_maze_eval", "u_maze_eval", "Ant, U-maze eval: goals only on the far arm of the U"),
    ("ant_u4_maze", "u4_maze", "Ant, U4-maze (paper task), goals along the corridor"),
    ("ant_u4_maze_eval", "u4_maze_eval", "Ant, U4-maze eval: goals on the far side, must loop around"),
    ("ant_u5_maze", "u5_maze", "Ant, U5-maze (paper task), goals along the corridor"),
    ("ant_u5_maze_eval", "u5_maze_eval", "Ant, U5-maze eval: goals on the far side"),
    ("ant_big_maze", "big_maze", "Ant, big maze (paper task), goals in most free cells"),
    ("ant_big_maze_eval", "big_maze_eval", "Ant, big maze eval (the paper's eval pairing for ant_big_maze)"),
    ("ant_hardest_maze", "hardest_maze", "Ant, hardest maze (paper task), goals in most free cells"),
):
    register(EnvEntry(_name, "ant", "actors.envs.ant:make_ant", (("maze", _maze),), _description))

# Humanoid (actors/envs/humanoid.py): brax Humanoid on `spring`, obs 271 = [268-dim state, goal xyz with z = 1.25];
# mazes use 2 m cells and 1 m walls.
for _name, _maze, _description in (
    ("humanoid", None, "brax Humanoid, goal 1-5 m away; success < 0.5 m (3-D, goal z 1.25)"),
    ("humanoid_u_maze", "u_maze", "Humanoid, U-maze (paper task), goals along the U"),
    ("humanoid_u_maze_eval", "u_maze_eval", "Humanoid, U-maze eval: goals only on the far arm of the U"),
    ("humanoid_big_maze", "big_maze", "Humanoid, big maze (paper task), goals in most free cells"),
    ("humanoid_big_maze_eval", "humanoid_big_maze_eval", "Humanoid, big maze eval (humanoid's own eval goals)"),
):
    register(EnvEntry(_name, "humanoid", "actors.envs.humanoid:make_humanoid", (("maze", _maze),), _description))
del _name, _maze, _description

# Franka Panda arm (actors/envs/arm.py): MJX, 0.05 s per step; models fetched at set-up (actors/envs/arm_assets.py).
for _name, _description in (
    ("arm_push_easy", "Panda pushes a cube from the blue pad to a goal on the red pad (paper task); success < 0.1 m"),
    ("arm_push_hard", "Panda pushes a cube across larger pads, start and goal +-0.25 m (paper task)"),
    ("arm_binpick_easy", "Panda picks a cube from one bin into the other (0.27 m bins)"),
    ("arm_binpick_hard", "Panda picks a cube from one bin into the other (0.37 m bins; paper task)"),
    ("arm_reach", "Panda moves its end effector to a point in a 0.4 m box; 4 actions, no gripper"),
):
    register(EnvEntry(_name, "arm", "actors.envs.arm:make_arm", (("task", _name),), _description))
del _name, _description
