"""Env throughput: env steps per second of a jitted, vmapped `step`, scanned over time, after compilation.

    python bench/env_throughput.py                                  # the point family, 64/256/1024 envs
    python bench/env_throughput.py --families point,ant --steps 200
    python bench/env_throughput.py --envs point_u_maze,point_hardest_maze --num-envs 1024,4096

What is timed: ``lax.scan`` of ``vmap(env.step)`` over ``--steps`` steps for ``N`` envs, on actions drawn uniformly
from [-1, 1] before timing (so the random number generator is not part of the env's cost). No auto-reset wrapper:
this measures the env alone. Compilation is done (and reported) before timing; the figure is the median over
``--repeats`` timed runs of ``N * steps / seconds``.

Any env registered in `actors.envs.registry` can be measured by name; a family name picks that family's
representative env (`REPRESENTATIVES`, else its first registered env).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from actors.envs import registry

REPRESENTATIVES = {"point": "point_u_maze", "reacher": "reacher", "ant": "ant", "humanoid": "humanoid"}
"""Family -> the env that stands for it when only the family is named."""


def family_env(family: str) -> str:
    """The env name measured for `family`."""
    members = [n for n in registry.env_names() if registry.get_entry(n).family == family]
    if not members:
        families = sorted({registry.get_entry(n).family for n in registry.env_names()})
        raise SystemExit(f"no registered env in family {family!r}; families: {', '.join(families)}")
    preferred = REPRESENTATIVES.get(family)
    return preferred if preferred in members else members[0]


def measure(env_name: str, num_envs: int, num_steps: int, repeats: int, seed: int) -> dict[str, float]:
    """Compile and time ``num_steps`` vmapped steps of ``num_envs`` copies of `env_name`; env steps/s."""
    env = registry.make_env(env_name)
    key_reset, key_actions = jax.random.split(jax.random.key(seed))
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(key_reset, num_envs))
    actions = jax.random.uniform(key_actions, (num_steps, num_envs, env.action_size), minval=-1.0, maxval=1.0)
    step = jax.vmap(env.step)

    def rollout(states, actions):  # actions [T, N, A]
        return jax.lax.scan(lambda s, a: (step(s, a), None), states, actions)[0]

    start = time.perf_counter()
    compiled = jax.jit(rollout).lower(states, actions).compile()
    compile_seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(states, actions))  # warm-up: first-call allocations are not the env's cost

    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(states, actions))
        rates.append(num_envs * num_steps / (time.perf_counter() - start))
    return {"compile_seconds": compile_seconds, "median": statistics.median(rates), "best": max(rates)}


def machine_line() -> str:
    device = jax.devices()[0]
    cores_usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: processor={platform.processor() or platform.machine()!r} cpu_count={os.cpu_count()} "
        f"usable_cores={cores_usable} | jax {jax.__version__} backend={jax.default_backend()} "
        f"device={device.device_kind!r} x{jax.device_count()}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="point", help="comma-separated families, one representative each")
    parser.add_argument("--envs", default="", help="comma-separated env names; replaces --families when given")
    parser.add_argument("--num-envs", default="64,256,1024", help="comma-separated batch sizes N")
    parser.add_argument("--steps", type=int, default=1000, help="env steps per env in one timed scan")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps <= 0 or args.repeats <= 0:
        parser.error("--steps and --repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.envs:
        env_names = [n for n in args.envs.split(",") if n]
        for name in env_names:
            registry.get_entry(name)  # fail early with the list of known names
    else:
        env_names = [family_env(f) for f in args.families.split(",") if f]
    batch_sizes = [int(n) for n in args.num_envs.split(",") if n]

    print(machine_line())
    print(f"{args.steps} steps per env per timed run, median of {args.repeats} runs\n")
    header = f"{'env':<22} {'family':<9} {'num_envs':>8} {'compile_s':>9} {'env_steps/s':>13} {'best':>13}"
    print(header)
    print("-" * len(header))
    for name in env_names:
        family = registry.get_entry(name).family
        for num_envs in batch_sizes:
            result = measure(name, num_envs, args.steps, args.repeats, args.seed)
            print(
                f"{name:<22} {family:<9} {num_envs:>8} {result['compile_seconds']:>9.2f} "
                f"{result['median']:>13,.0f} {result['best']:>13,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
