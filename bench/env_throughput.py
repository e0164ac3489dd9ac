"""Env throughput: env steps per second of a jitted, vmapped `step`, scanned over time, compilation excluded.

    python bench/env_throughput.py                          # every family + one ant maze, N = 64, 256, 1024
                                                            # (the arm: N = 1, 4, 16 on a CPU, 5 steps per call)
    python bench/env_throughput.py --envs arm_push_easy,arm_binpick_hard --num-envs 256,1024,4096   # on a GPU
    python bench/env_throughput.py --envs ant_u_maze,humanoid_u_maze --max-geom-pairs none,8,16,32
    python bench/env_throughput.py --envs point_u_maze --num-envs 1024,4096 --seconds 1

What is timed: one compiled call = ``lax.scan`` of ``vmap(env.step)`` over ``--chunk-steps`` steps for ``N`` envs,
on actions drawn uniformly from [-1, 1] before timing (the random number generator is not the env's cost). No
auto-reset wrapper: this measures the env alone (an ant that falls keeps being simulated, which costs the same).
Each configuration is compiled (compile time reported), called once to warm up, then called again and again, each
call starting from the previous call's final states, until ``--seconds`` have passed (at least ``--min-calls``
calls). The figure is the median over calls of ``N * chunk_steps / seconds``, so a bench run is bounded by about
(compile + seconds + one call) per configuration whatever an env's speed.

`--max-geom-pairs` (comma list of 'default', 'none' or an int) sweeps the contact culling of ant/humanoid maze envs
(`mjcf_build.set_max_geom_pairs`); other envs ignore it and are measured once. The variants of one env and N are
compiled first and then timed in interleaved rounds (one call each per round), so that load changes on a shared
machine hit them alike; ``/first`` is each variant's median over the first variant's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from typing import Any

import jax

from actors.envs import registry

DEFAULT_ENVS = ("point_u_maze", "reacher", "ant", "ant_u_maze", "humanoid", "arm_push_easy")
"""One env per family (point, reacher, ant, humanoid, arm) plus one ant maze: walls multiply the contact work."""
SLOW_ON_CPU = {"arm": ("1,4,16", 5)}
"""Families whose batched physics is slow on a CPU (MJX, 25 substeps per step): their default batch sizes and steps per
call there, so that one call takes seconds, not minutes (docs/benchmarks.md, "The arm on a GPU and on a CPU")."""
CULLABLE_FAMILIES = ("ant", "humanoid")
"""Families whose maze envs take `max_geom_pairs`."""


@dataclasses.dataclass
class Config:
    """One compiled configuration and the states it carries from call to call."""

    label: str
    num_envs: int
    chunk_steps: int
    compiled: Any
    states: Any
    actions: jax.Array
    compile_seconds: float
    rates: list[float] = dataclasses.field(default_factory=list)
    """env steps / s of every timed call."""

    def call(self) -> float:
        start = time.perf_counter()
        self.states = jax.block_until_ready(self.compiled(self.states, self.actions))
        return self.num_envs * self.chunk_steps / (time.perf_counter() - start)


def compile_config(env_name: str, num_envs: int, chunk_steps: int, seed: int, env_kwargs: dict, label: str) -> Config:
    """Build `env_name` with `env_kwargs`, compile ``chunk_steps`` vmapped steps of `num_envs` copies, warm up."""
    env = registry.make_env(env_name, **env_kwargs)
    key_reset, key_actions = jax.random.split(jax.random.key(seed))
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(key_reset, num_envs))
    actions = jax.random.uniform(key_actions, (chunk_steps, num_envs, env.action_size), minval=-1.0, maxval=1.0)
    step = jax.vmap(env.step)

    def rollout(states, actions):  # actions [T, N, A]
        return jax.lax.scan(lambda s, a: (step(s, a), None), states, actions)[0]

    start = time.perf_counter()
    compiled = jax.jit(rollout).lower(states, actions).compile()
    config = Config(label, num_envs, chunk_steps, compiled, states, actions, time.perf_counter() - start)
    config.call()  # warm-up: first-call allocations are not the env's cost
    return config


def time_interleaved(configs: list[Config], seconds: float, min_calls: int) -> None:
    """Rounds of one call per config (so load changes on a shared machine hit every variant alike) until
    ``seconds`` per config have passed and every config has `min_calls` calls."""
    deadline = time.perf_counter() + seconds * len(configs)
    rounds = 0
    while rounds < min_calls or time.perf_counter() < deadline:
        for config in configs if rounds % 2 == 0 else configs[::-1]:
            config.rates.append(config.call())
        rounds += 1


def machine_line() -> str:
    device = jax.devices()[0]
    cores_usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " load_avg=%.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (
        f"machine: processor={platform.processor() or platform.machine()!r} cpu_count={os.cpu_count()} "
        f"usable_cores={cores_usable}{load} | jax {jax.__version__} backend={jax.default_backend()} "
        f"device={device.device_kind!r} x{jax.device_count()}"
    )


def _parse_pairs(text: str) -> list[int | None | str]:
    values: list[int | None | str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "default":
            values.append("default")
        elif part == "none":
            values.append(None)
        elif part.isdigit() and int(part) > 0:
            values.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"--max-geom-pairs entries are 'default', 'none' or a positive int, "
                                             f"got {part!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default=",".join(DEFAULT_ENVS), help="comma-separated registered env names")
    parser.add_argument("--num-envs", default=None,
                        help="comma-separated batch sizes N (default 64,256,1024; see SLOW_ON_CPU)")
    parser.add_argument("--chunk-steps", type=int, default=None,
                        help="env steps per env in one compiled call (default 20; see SLOW_ON_CPU)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    parser.add_argument("--min-calls", type=int, default=3, help="timed calls per configuration at least")
    parser.add_argument("--max-geom-pairs", type=_parse_pairs, default=["default"],
                        help="contact culling values to sweep for ant/humanoid mazes: default,none,8,16,...")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.chunk_steps is not None and args.chunk_steps <= 0) or args.seconds < 0 or args.min_calls <= 0:
        parser.error("--chunk-steps and --min-calls must be positive, --seconds non-negative")
    args.env_names = [n for n in args.envs.split(",") if n]
    for name in args.env_names:
        try:
            registry.get_entry(name)
        except registry.UnknownEnvError as e:
            parser.error(str(e))
    return args


def sizes_for(args: argparse.Namespace, family: str) -> tuple[list[int], int]:
    """Batch sizes and steps per call for an env of `family`: the flags when given, else the defaults."""
    num_envs, chunk_steps = "64,256,1024", 20
    if family in SLOW_ON_CPU and jax.default_backend() == "cpu":
        num_envs, chunk_steps = SLOW_ON_CPU[family]
    return ([int(n) for n in (args.num_envs or num_envs).split(",") if n], args.chunk_steps or chunk_steps)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(machine_line())
    print(f"T steps per env per call, >= {args.seconds:g} s and >= {args.min_calls} calls per "
          f"configuration; env steps/s = median over calls; maze culling variants timed in interleaved rounds\n")
    header = (f"{'env':<20} {'family':<9} {'max_pairs':>9} {'num_envs':>8} {'T':>3} {'compile_s':>9} {'calls':>5} "
              f"{'env_steps/s':>12} {'best':>12} {'/first':>6}")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for name in args.env_names:
        entry = registry.get_entry(name)
        cullable = entry.family in CULLABLE_FAMILIES and dict(entry.kwargs).get("maze") is not None
        variants = [{} if p == "default" else {"max_geom_pairs": p} for p in args.max_geom_pairs] if cullable else [{}]
        batch_sizes, chunk_steps = sizes_for(args, entry.family)
        for num_envs in batch_sizes:
            configs = []
            for kwargs in variants:
                label = str(registry.make_env(name, **kwargs).max_geom_pairs).lower() if cullable else "-"
                configs.append(compile_config(name, num_envs, chunk_steps, args.seed, kwargs, label))
            time_interleaved(configs, args.seconds, args.min_calls)
            first = statistics.median(configs[0].rates)
            for c in configs:
                median = statistics.median(c.rates)
                print(f"{name:<20} {entry.family:<9} {c.label:>9} {num_envs:>8} {c.chunk_steps:>3} {c.compile_seconds:>9.1f} "
                      f"{len(c.rates):>5} {median:>12,.0f} {max(c.rates):>12,.0f} {median / first:>6.2f}", flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
