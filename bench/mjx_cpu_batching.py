"""Why batched MJX is slow on a CPU: one arm env stepped alone vs N envs batched three ways, in one process.

    python bench/mjx_cpu_batching.py                                 # arm_push_easy, N = 1, 4, 16
    python bench/mjx_cpu_batching.py --env arm_reach --num-envs 1,8 --steps 4
    XLA_FLAGS=--xla_cpu_use_thunk_runtime=false python bench/mjx_cpu_batching.py   # another XLA CPU runtime, if any

Variants, each a jitted ``lax.scan`` over ``--steps`` env steps (25 physics substeps each), compile excluded:
- ``single``: one env, no vmap (the reference);
- ``vmap``: ``vmap(env.step)`` over N envs, what the training loop does;
- ``map``: ``lax.map(env.step)`` over N envs: the same N envs one after another inside one program, no batching rule;
- ``vmap_substeps``: as ``vmap``, with one substep per env step and 25 times the steps, to tell the cost of the
  batched solver loop from that of the rest.
For each: env steps/s (median of ``--calls`` calls), the per-env cost relative to ``single``, and the compiled
program's counts of the HLO ops that batching rewrites (while loops, scatters, gathers, sorts, custom calls).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp

from actors.envs import registry

OPS = ("while", "scatter", "gather", "sort", "custom-call", "dot", "fusion")


def op_counts(compiled) -> dict[str, int]:
    text = compiled.as_text()
    return {op: len(re.findall(rf"\s{re.escape(op)}\(", text)) for op in OPS}


def build(env, num_envs: int, steps: int, how: str):
    keys = jax.random.split(jax.random.key(0), max(num_envs, 1))
    actions = jax.random.uniform(jax.random.key(1), (steps, num_envs, env.action_size), minval=-1.0, maxval=1.0)
    if how == "single":
        state = jax.jit(env.reset)(keys[0])
        actions = actions[:, 0]
        step = env.step
    else:
        state = jax.jit(jax.vmap(env.reset))(keys)
        step = jax.vmap(env.step) if how.startswith("vmap") else (
            lambda s, a: jax.lax.map(lambda sa: env.step(*sa), (s, a)))

    def rollout(state, actions):
        return jax.lax.scan(lambda s, a: (step(s, a), None), state, actions)[0]

    start = time.perf_counter()
    compiled = jax.jit(rollout).lower(state, actions).compile()
    return compiled, state, actions, time.perf_counter() - start


def time_calls(compiled, state, actions, calls: int) -> float:
    jax.block_until_ready(compiled(state, actions))  # warm-up
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        state = jax.block_until_ready(compiled(state, actions))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="arm_push_easy")
    parser.add_argument("--num-envs", default="1,4,16")
    parser.add_argument("--steps", type=int, default=4, help="env steps per call")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--variants", default="single,vmap,map,vmap_substeps")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} backend={jax.default_backend()} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
          f"cores={len(os.sched_getaffinity(0))} load_avg={os.getloadavg()[0]:.1f}")
    env = registry.make_env(args.env)
    substep_env = registry.make_env(args.env)
    substep_env._n_frames = 1  # brax's PipelineEnv keeps n_frames here; one physics substep per env step
    print(f"{'variant':<14} {'N':>4} {'steps':>5} {'compile_s':>9} {'call_s':>8} {'env_steps/s':>11} "
          f"{'per_env_x':>9}  HLO op counts")
    single_rate = None
    for how in args.variants.split(","):
        for n in ([1] if how == "single" else [int(x) for x in args.num_envs.split(",")]):
            use = substep_env if how == "vmap_substeps" else env
            steps = args.steps * (env._n_frames if how == "vmap_substeps" else 1)
            compiled, state, actions, compile_s = build(use, n, steps, how)
            seconds = time_calls(compiled, state, actions, args.calls)
            # Count env steps in the 25-substep unit for every variant, so that rates compare.
            rate = n * args.steps / seconds
            if how == "single":
                single_rate = rate
            ratio = f"{single_rate / (rate / n):9.2f}" if single_rate else f"{'-':>9}"
            counts = " ".join(f"{k}={v}" for k, v in op_counts(compiled).items())
            print(f"{how:<14} {n:>4} {args.steps:>5} {compile_s:>9.1f} {seconds:>8.3f} {rate:>11.1f} {ratio}  {counts}",
                  flush=True)
            del compiled, state, actions
            jax.clear_caches()


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
