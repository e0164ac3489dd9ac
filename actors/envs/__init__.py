"""Goal-conditioned environments. Kept empty: `actors.coverage` imports `actors.envs.mazes` without JAX."""
