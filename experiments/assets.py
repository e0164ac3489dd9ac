"""Set-up step: fetch the arm task models into the asset cache (`actors.envs.arm_assets`).

    python -m experiments.assets            # no-op when the cache is complete; run by `make test`
    DEPTHRL_JAXGCRL_WHEEL=/path/jaxgcrl-0.2.8-py3-none-any.whl python -m experiments.assets   # offline

Downloads ``jaxgcrl==0.2.8`` with ``pip download --no-deps`` (pip's own index settings apply, so a local mirror or
``PIP_FIND_LINKS`` works), refuses it unless its SHA-256 is the recorded one, and extracts only the task files and the
licence. The files are written to a temporary folder first and renamed into place, so an interrupted fetch leaves
no half-filled cache. Exit code 0 when the cache is complete, 2 when the wheel cannot be had or is not the right one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from actors.envs.arm_assets import (ASSET_FILES, LICENSE_FILE, PROVENANCE_FILE, WHEEL, MissingAssetsError, asset_dir,
                                    check_assets, sha256_of)

WHEEL_ENV = "DEPTHRL_JAXGCRL_WHEEL"


class FetchError(RuntimeError):
    pass


def _download(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--dest", str(into), WHEEL["requirement"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    wheel = into / WHEEL["name"]
    if result.returncode != 0 or not wheel.is_file():
        raise FetchError(f"`{' '.join(command[2:])}` failed: {(result.stderr or result.stdout).strip()[-1500:]}\n"
                         f"Offline: copy {WHEEL['name']} here and set {WHEEL_ENV} to its path.")
    return wheel


def extract(wheel: Path, folder: Path) -> dict:
    """Check `wheel`'s hash and extract the task files and the licence into `folder` (replaced as a whole)."""
    digest = sha256_of(wheel)
    if digest != WHEEL["sha256"]:
        raise FetchError(f"{wheel} has SHA-256 {digest}, not the recorded {WHEEL['sha256']} of {WHEEL['name']}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = {name: WHEEL["member_dir"] + name for name in ASSET_FILES}
            members[LICENSE_FILE] = WHEEL["licence_member"]
            for name, member in members.items():
                (staging / name).write_bytes(archive.read(member))
        record = {"source": WHEEL["name"], "requirement": WHEEL["requirement"], "sha256": WHEEL["sha256"],
                  "licence": WHEEL["licence"],
                  "origin": "task files of the JaxGCRL project (paper's code), adapted there from MuJoCo Menagerie's "
                            "franka_emika_panda; meshes not extracted",
                  "files": {name: sha256_of(staging / name) for name in members}}
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=1) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def fetch(folder: Path | None = None) -> dict:
    """Make the cache complete; returns its provenance record."""
    folder = folder or asset_dir()
    try:
        return check_assets(folder)
    except MissingAssetsError:
        pass
    if os.environ.get(WHEEL_ENV):
        return extract(Path(os.environ[WHEEL_ENV]), folder)
    with tempfile.TemporaryDirectory(prefix="depthrl-wheel-") as tmp:
        return extract(_download(Path(tmp)), folder)


def main() -> int:
    try:
        record = fetch()
    except (FetchError, OSError, zipfile.BadZipFile) as e:
        print(f"depthrl assets: error: {e}", file=sys.stderr)
        return 2
    print(f"depthrl assets: arm models from {record['source']} ({record['licence']}) in {asset_dir()}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
