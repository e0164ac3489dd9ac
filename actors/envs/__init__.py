"""Goal-conditioned environments. `quiet` runs first: it silences the physics libraries' start-up noise."""

from actors.envs import quiet  # noqa: F401
