"""Programmatic edits of brax's own MJCF assets with MuJoCo's `MjSpec` API, shared by the ant and humanoid envs.

The goal-conditioned locomotion envs (paper §4.1-§4.4) are brax's Ant / Humanoid plus
- a *target* body: two slide joints (x, y) and a visual, collision-free sphere. Its q holds the commanded goal, so a
  brax pipeline carries the goal inside its state and the renderer shows it (as in the paper's envs);
- for mazes, one box geom per wall cell and collision flags that let the robot touch those walls.

We start from the XML files that ship inside the installed ``brax`` package and edit them with `mujoco.MjSpec`
rather than keeping edited copies, so the robot stays exactly brax's. The edited spec goes back to XML and through
`brax.io.mjcf.loads`, because that loader fuses joint-less child bodies into their parents (brax's pipelines need it)
exactly as it does for brax's own envs; an un-edited spec round-trips to a `System` equal to `mjcf.load(asset)`.

Everything here runs once per model at env construction (numpy / MuJoCo on the host), never under jit.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import brax
import mujoco
import numpy as np
from brax.base import System
from brax.io import mjcf

from actors.envs.mazes import MazeLayout

__all__ = [
    "TARGET_BODY",
    "add_maze_walls",
    "add_target",
    "brax_asset_path",
    "get_numeric",
    "load_brax_asset",
    "robot_geom_names",
    "set_collision",
    "set_floor_half_size",
    "set_numeric",
    "set_max_geom_pairs",
    "to_brax_system",
]

TARGET_BODY = "target"
"""Name of the goal-marker body; its two slide joints are ``target_x`` and ``target_y``."""


def brax_asset_path(name: str) -> str:
    """Path of ``<name>.xml`` under the installed brax package's env assets (e.g. 'ant', 'humanoid')."""
    path = os.path.join(os.path.dirname(brax.__file__), "envs", "assets", f"{name}.xml")
    if not os.path.exists(path):
        raise FileNotFoundError(f"brax ships no env asset {name!r} (looked for {path})")
    return path


def load_brax_asset(name: str) -> mujoco.MjSpec:
    """A fresh, editable `MjSpec` of brax's ``<name>.xml``."""
    return mujoco.MjSpec.from_file(brax_asset_path(name))


def _numeric(spec: mujoco.MjSpec, name: str):
    for numeric in spec.numerics:
        if numeric.name == name:
            return numeric
    return None


def set_numeric(spec: mujoco.MjSpec, name: str, values: Sequence[float]) -> None:
    """Set (or add) the ``<custom><numeric name=...>`` entry; brax reads its solver settings and ``init_qpos`` here."""
    values = [float(v) for v in values]
    numeric = _numeric(spec, name)
    if numeric is None:
        numeric = spec.add_numeric(name=name)
    # MuJoCo checks data against the declared size, so both change together.
    numeric.size = len(values)
    numeric.data = values


def get_numeric(spec: mujoco.MjSpec, name: str) -> np.ndarray | None:
    """The values of custom numeric `name`, or None when the asset has none."""
    numeric = _numeric(spec, name)
    return None if numeric is None else np.array(list(numeric.data), dtype=np.float64)


def add_target(
    spec: mujoco.MjSpec,
    *,
    height_m: float,
    radius_m: float,
    slide_range_m: float,
    mass_kg: float = 1.0,
    rgba: Sequence[float] = (0.9, 0.1, 0.1, 0.6),
) -> None:
    """Append the goal marker as the LAST body of the world (so its two q dims are the last two of the model).

    The body sits at ``(0, 0, height_m)``; slide joints ``target_x`` / ``target_y`` move it in the plane within
    ``[-slide_range_m, slide_range_m]``. Its sphere has contype = conaffinity = 0 (visual only). The asset's joint
    defaults (armature 1, damping 1) are overridden with zeros so that the marker is a passive, force-free body: it
    has no collisions and no actuator, so nothing ever moves it. Its mass enters brax's com-based humanoid features,
    so it is fixed explicitly (1 kg, as in the paper's envs) instead of coming from the asset's default density.
    If the asset carries a brax ``init_qpos`` numeric, two zeros are appended to it to keep its size equal to nq.
    """
    body = spec.worldbody.add_body(name=TARGET_BODY, pos=[0.0, 0.0, height_m])
    for joint_name, axis in (("target_x", [1.0, 0.0, 0.0]), ("target_y", [0.0, 1.0, 0.0])):
        body.add_joint(
            name=joint_name,
            type=mujoco.mjtJoint.mjJNT_SLIDE,
            axis=axis,
            range=[-slide_range_m, slide_range_m],
            limited=mujoco.mjtLimited.mjLIMITED_TRUE,
            armature=0.0,
            damping=0.0,
            stiffness=0.0,
        )
    body.add_geom(
        name=TARGET_BODY,
        type=mujoco.mjtGeom.mjGEOM_SPHERE,
        size=[radius_m, 0.0, 0.0],
        contype=0,
        conaffinity=0,
        mass=mass_kg,
        rgba=list(rgba),
    )
    init_qpos = get_numeric(spec, "init_qpos")
    if init_qpos is not None:
        set_numeric(spec, "init_qpos", [*init_qpos, 0.0, 0.0])


def set_floor_half_size(spec: mujoco.MjSpec, half_size_m: float, floor_name: str = "floor") -> None:
    """Resize the floor plane to ``[-half_size_m, half_size_m]^2`` (only its rendered extent; a plane is infinite for
    collisions)."""
    floor = spec.geom(floor_name)
    if floor is None:
        raise KeyError(f"the model has no geom named {floor_name!r}")
    size = list(floor.size)
    floor.size = [half_size_m, half_size_m, size[2]]


def set_collision(spec: mujoco.MjSpec, geom_names: Iterable[str], *, contype: int | None = None,
                  conaffinity: int | None = None) -> None:
    """Set contype and/or conaffinity of the named geoms (MuJoCo collides a pair when
    ``(contype_a & conaffinity_b) | (contype_b & conaffinity_a)`` is non-zero)."""
    for name in geom_names:
        geom = spec.geom(name)
        if geom is None:
            raise KeyError(f"the model has no geom named {name!r}")
        if contype is not None:
            geom.contype = contype
        if conaffinity is not None:
            geom.conaffinity = conaffinity


def robot_geom_names(spec: mujoco.MjSpec, exclude: Iterable[str] = ("floor", TARGET_BODY)) -> list[str]:
    """Names of every named geom that is not world-static and not in `exclude` (the robot's own geoms)."""
    excluded = set(exclude)
    names = []
    for geom in spec.geoms:
        if geom.parent.name == "world" or geom.name in excluded:
            continue
        if not geom.name:
            # Callers address geoms by name; an unnamed robot geom would silently keep its old flags.
            raise ValueError(f"robot geom #{geom.id} in body {geom.parent.name!r} has no name")
        names.append(geom.name)
    return names


def add_maze_walls(
    spec: mujoco.MjSpec,
    layout: MazeLayout,
    *,
    height_m: float,
    rgba: Sequence[float] = (0.7, 0.5, 0.3, 1.0),
) -> int:
    """Add one static box per '#' cell of `layout`; returns the number of walls.

    A wall fills its whole cell footprint (half-extents ``scaling / 2`` in x and y, centred on the cell centre
    ``layout.cell_to_xy``) and stands on the floor, ``height_m`` tall. contype = conaffinity = 1: robot geoms with
    contype 1 or conaffinity 1 collide with it, and walls never collide with each other or the floor (MuJoCo skips
    pairs that belong to the same (world) body).
    """
    wall_cells = np.argwhere(layout.wall_mask)
    centres_xy = layout.cell_to_xy(wall_cells)
    half_cell = 0.5 * layout.scaling
    for (i, j), (x, y) in zip(wall_cells, centres_xy):
        spec.worldbody.add_geom(
            name=f"wall_{i}_{j}",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            pos=[float(x), float(y), 0.5 * height_m],
            size=[half_cell, half_cell, 0.5 * height_m],
            contype=1,
            conaffinity=1,
            rgba=list(rgba),
        )
    return len(wall_cells)


def set_max_geom_pairs(spec: mujoco.MjSpec, max_pairs: int | None) -> None:
    """Broad phase: MJX (which brax uses for contacts) then keeps, per collision-function group (e.g. every
    capsule-box pair), only the `max_pairs` pairs whose bounding spheres are closest, and drops the rest before the
    narrow phase. Planes are never culled. ``None`` keeps every pair (exact, what the paper's models do).

    Why: maze walls multiply the candidate contacts (264 contact slots per substep in the ant u_maze, 524 in the ant
    big maze, 551 in the humanoid u_maze, vs 4 and 2 in the open tasks). A robot touches only a few walls at a time,
    so a small budget of nearest pairs gives the same contacts at a fraction of the cost. The maze envs use 16 by
    default (`actors.envs.locomotion.DEFAULT_MAZE_MAX_GEOM_PAIRS`, where the measurements behind that choice are).
    It stops being exact only when more pairs of one group touch at once than the budget allows.
    """
    if max_pairs is None:
        return
    if max_pairs < 1:
        raise ValueError(f"max_geom_pairs must be a positive int or None, got {max_pairs}")
    # MJX (3.17 with mujoco 4.0) reads this numeric as ``numeric_data[numeric_id]``, i.e. it takes the numeric's id
    # for its data address. That only holds for numerics before any multi-value one (brax's ant has a 17-value
    # init_qpos), so the numeric must be the first one: re-add every numeric after it, in the original order.
    existing = [(numeric.name, list(numeric.data)) for numeric in spec.numerics if numeric.name != "max_geom_pairs"]
    for numeric in list(spec.numerics):
        spec.delete(numeric)
    set_numeric(spec, "max_geom_pairs", [int(max_pairs)])
    for name, values in existing:
        set_numeric(spec, name, values)


def to_brax_system(spec: mujoco.MjSpec) -> System:
    """Compile the edited spec into a brax `System` (via XML so that brax fuses joint-less bodies itself)."""
    with warnings.catch_warnings():
        # brax warns on every load that it is unmaintained in favour of MJX; we pin brax and mean to use it.
        warnings.filterwarnings("ignore", message="Brax System", category=UserWarning)
        return mjcf.loads(spec.to_xml())
