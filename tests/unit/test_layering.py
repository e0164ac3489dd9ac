"""Imports run one way: the import-linter contracts in pyproject.toml ([tool.importlinter]) hold on this tree, and a
planted violation is caught and named.

`lint-imports` reads the source statically (grimp parses every module; nothing is imported), so this is fast and needs
no JAX. It finds the packages through the current directory first, which is what lets the second test check a copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("actors", "learners", "replay", "experiments", "analysis")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PLANTED = "import experiments.config  # planted\n"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    # --no-cache: write nothing into the tree; COLUMNS: rich would wrap long contract names at 80 columns otherwise.
    env = dict(os.environ, COLUMNS="250")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env)


def contracts() -> list[dict]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def test_the_tree_keeps_every_import_contract():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in contracts():
        assert f"{contract['name']} KEPT" in result.stdout, contract["name"]


def test_a_planted_import_breaks_the_contracts_and_is_named(tmp_path):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    rollout = tmp_path / "actors" / "rollout.py"
    lines = rollout.read_text().splitlines(keepends=True)
    # At the top, after the `from __future__` line (which must stay first); line 1 if there is none.
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("from __future__")), 0)
    rollout.write_text("".join(lines[:at] + [PLANTED] + lines[at:]))

    result = lint_imports(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"actors.rollout -> experiments.config (l.{at + 1})" in output, output
    # actors may not import the layer above it, and the pure core (actors.rollout in it) may not import experiments.
    (layers,) = [c["name"] for c in contracts() if c["type"] == "layers"]
    (core,) = [c["name"] for c in contracts() if "actors.rollout" in c.get("source_modules", ())]
    assert f"{layers} BROKEN" in output and f"{core} BROKEN" in output, output
    assert "actors is not allowed to import experiments" in output, output
