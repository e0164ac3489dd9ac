"""Where the Franka Panda task models of the arm envs live on disk, and how they are checked.

The models come from the ``jaxgcrl`` package (Apache-2.0), which ships the task files of the paper's arm envs
(adapted there from MuJoCo Menagerie's Franka Emika Panda). The package itself is never installed (it pins an old
JAX and puts top-level ``utils``/``tests`` modules into site-packages); set-up (`experiments.assets`, run by
``make test``) downloads its wheel by exact version and hash and extracts only the ``panda_*.xml`` task files and its
licence into `asset_dir`. The meshes are not extracted: the arm envs delete every mesh geom before compiling
(`actors.envs.arm`), which the physics does not see (every collision is an explicit pair of primitive shapes and
every moving link has an explicit inertial).

The cache is ``$DEPTHRL_ASSETS_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/depthrl/assets``; the files are in
``jaxgcrl-0.2.8/`` there, next to ``PROVENANCE.json`` (wheel, hash, files and their hashes) and ``LICENSE``.
Pure standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["ASSET_FILES", "MissingAssetsError", "WHEEL", "asset_dir", "asset_path", "cache_root", "check_assets"]

WHEEL = {
    "name": "jaxgcrl-0.2.8-py3-none-any.whl",
    "requirement": "jaxgcrl==0.2.8",
    "sha256": "6de10a6524f2d07aab59216b888d684d6bc0d0727ed3561d49a70240528ed259",
    "bytes": 5_170_627,
    "licence": "Apache-2.0",
    "member_dir": "jaxgcrl/envs/assets/",
    "licence_member": "jaxgcrl-0.2.8.dist-info/licenses/LICENSE",
}
"""The one wheel the arm models come from; set-up refuses any other bytes."""

ASSET_FILES = ("panda_push_easy.xml", "panda_push_hard.xml", "panda_binpick_easy.xml", "panda_binpick_hard.xml",
               "panda_reach.xml", "panda_grasp.xml")
"""Task files extracted from the wheel (unchanged bytes); `check_assets` verifies them against PROVENANCE.json."""

PROVENANCE_FILE = "PROVENANCE.json"
LICENSE_FILE = "LICENSE"
ASSETS_ENV = "DEPTHRL_ASSETS_DIR"


class MissingAssetsError(FileNotFoundError):
    """The arm models are not in the cache (or not the files set-up recorded); the message says how to get them."""


def cache_root() -> Path:
    """The asset cache: ``$DEPTHRL_ASSETS_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/depthrl/assets``."""
    if os.environ.get(ASSETS_ENV):
        return Path(os.environ[ASSETS_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "depthrl" / "assets"


def asset_dir() -> Path:
    """The folder that holds this wheel's extracted task files."""
    return cache_root() / WHEEL["name"].split("-py3")[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_assets(folder: Path | None = None) -> dict:
    """The provenance record of a complete, unaltered cache; raises `MissingAssetsError` naming what is missing or
    changed and how to fetch it."""
    folder = folder or asset_dir()
    how = ("run `make test` once (its set-up fetches them), or `.venv/bin/python -m experiments.assets`; offline, "
           f"point DEPTHRL_JAXGCRL_WHEEL at a copy of {WHEEL['name']}")
    record_path = folder / PROVENANCE_FILE
    if not record_path.is_file():
        raise MissingAssetsError(f"the arm task models are not in {folder} (no {PROVENANCE_FILE}); {how}")
    record = json.loads(record_path.read_text())
    for name in (*ASSET_FILES, LICENSE_FILE):
        path = folder / name
        if not path.is_file():
            raise MissingAssetsError(f"{path} is missing from the arm model cache; {how}")
        if sha256_of(path) != record["files"].get(name):
            raise MissingAssetsError(f"{path} differs from the file extracted from {WHEEL['name']}; {how}")
    return record


def asset_path(name: str) -> Path:
    """Path of one checked task file (e.g. ``panda_push_easy.xml``)."""
    if name not in ASSET_FILES:
        raise KeyError(f"no arm asset {name!r}; known: {', '.join(ASSET_FILES)}")
    check_assets()
    return asset_dir() / name
