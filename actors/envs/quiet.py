"""Silence two start-up messages of the physics libraries at their source, for every process that builds an env.

- MuJoCo's MJX probes for its optional GPU backend, Warp, when `mujoco.mjx.warp` is imported and `print`s "Failed to
  import warp: ..." / "Failed to import mujoco_warp: ..." when it is absent (always, on CPU hosts). A print has no
  logger level, so that one import runs here with its stdout captured; any line other than those two probe messages
  (an unexpected error) is printed as usual.
- Brax warns at every system load that it is "not actively being maintained": a warnings filter for that message.

Imported first by `actors/envs/base.py` and `actors/envs/registry.py` (every env module goes through them), so it runs
before brax or mujoco is imported. It changes nothing for other messages, and never touches the process's stdout or
stderr streams.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings

PROBE_MESSAGES = ("Failed to import warp:", "Failed to import mujoco_warp:")
"""The starts of MJX's Warp probe messages."""

warnings.filterwarnings("ignore", message="Brax System, piplines and environments are not actively being maintained",
                        category=UserWarning)


def import_mjx_warp_quietly() -> None:
    """Import `mujoco.mjx.warp` (MJX imports it anyway) without its Warp-probe prints."""
    if "mujoco.mjx.warp" in sys.modules:
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            import mujoco.mjx.warp  # noqa: F401
    finally:
        for line in captured.getvalue().splitlines():
            if not line.startswith(PROBE_MESSAGES):
                print(line)


import_mjx_warp_quietly()
