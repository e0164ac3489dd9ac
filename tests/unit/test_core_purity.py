"""The pure core never loads Reverb or TensorFlow (STYLE habit 1): checked in one fresh interpreter, module by module."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = [
    "learners.networks", "learners.losses", "learners.relabel", "learners.crl",
    "actors.envs.base", "actors.envs.wrappers", "actors.envs.point_maze", "actors.envs.reacher", "actors.rollout",
    "replay.schema", "replay.memory", "replay.params", "experiments.inline",
]

CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    bad = [m for m in ("reverb", "tensorflow") if m in sys.modules]
    if bad:
        print(f"{name} loaded {bad}")
        sys.exit(1)
"""


def test_core_modules_do_not_load_reverb_or_tensorflow():
    result = subprocess.run([sys.executable, "-c", CHECK, *CORE], cwd=REPO, capture_output=True, text=True,
                            timeout=180, env={"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_the_check_detects_a_tensorflow_import():
    result = subprocess.run([sys.executable, "-c", CHECK, "replay.reverb_backend"], cwd=REPO, capture_output=True,
                            text=True, timeout=180, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "loaded" in result.stdout
