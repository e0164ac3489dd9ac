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
For each: env steps/s (median of ``--calls`` calls), the time per env step relative to ``single`` (``per_step_x``;
1.0: batching buys nothing, 1/N: N envs cost as much as one), and the compiled
program's counts of the HLO ops that batching rewrites (while loops, scatters, gathers, sorts, custom calls).

``--profile N`` also traces two calls of ``vmap`` at N envs and of ``single`` with `jax.profiler` and prints where the
time goes by HLO op kind (fusion kinds, gather, scatter, custom calls such as LAPACK, while-loop bookkeeping): the
trace's XLA:CPU op events, summed by the kind of the op of that name in the compiled program. Reading the trace needs
the `xplane` protobuf module that TensorFlow ships (loaded from its file; TensorFlow itself is not imported).
"""

from __future__ import annotations

import argparse
import collections
import glob
import importlib.util
import os
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from actors.envs import registry

OPS = ("while", "scatter", "gather", "sort", "custom-call", "dot", "fusion")
CONTAINERS = ("while", "call", "conditional")
"""Ops whose profile events hold the events of the ops inside them (left out of the sums)."""


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


def load_xplane_pb2():
    """TensorFlow's generated ``xplane_pb2`` module, loaded from its file without importing TensorFlow."""
    for folder in map(os.path.dirname, __import__("site").getsitepackages()):
        for path in glob.glob(os.path.join(folder, "*", "tensorflow", "tsl", "profiler", "protobuf", "xplane_pb2.py")):
            spec = importlib.util.spec_from_file_location("xplane_pb2", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise SystemExit("--profile needs TensorFlow's xplane_pb2.py (tensorflow/tsl/profiler/protobuf) installed")


def op_kinds(compiled) -> dict[str, str]:
    """HLO instruction name -> its kind: the opcode, and for fusions ``fusion:<kind>:<root op>``."""
    kinds = {}
    text = compiled.as_text()
    computations = {}
    for block in re.split(r"\n(?=\S)", text):
        header = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", block)
        if header:
            root = re.search(r"ROOT %?[\w.\-]+ = \S+ ([\w\-]+)\(", block)
            computations[header.group(1)] = root.group(1) if root else "?"
    for name, opcode, rest in re.findall(r"%?([\w.\-]+) = \S+ ([\w\-]+)\((.*)", text):
        if opcode == "fusion":
            kind = re.search(r"kind=(\w+)", rest)
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            opcode = f"fusion:{kind.group(1) if kind else '?'}:{computations.get(called.group(1), '?') if called else '?'}"
        elif opcode == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rest)
            opcode = f"custom-call:{target.group(1) if target else '?'}"
        kinds[name] = opcode
    return kinds


def profile(compiled, state, actions, label: str, top: int = 12) -> None:
    """Trace two calls and print the op time by kind (see the module docstring)."""
    xplane_pb2 = load_xplane_pb2()
    kinds = op_kinds(compiled)
    options = jax.profiler.ProfileOptions()
    options.host_tracer_level = 3  # XLA:CPU's per-op events
    options.python_tracer_level = 0
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, profiler_options=options):
            for _ in range(2):
                state = jax.block_until_ready(compiled(state, actions))
        (path,) = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    by_kind: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    by_op: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name.startswith(("end: ", "ThreadpoolListener", "ThunkExecutor")):
                    continue
                kind = kinds.get(name, "unmatched")
                if kind in CONTAINERS:  # their bodies' ops have events of their own
                    continue
                by_kind[kind] += event.duration_ps / 1e12
                counts[kind] += 1
                by_op[name] += event.duration_ps / 1e12
    total = sum(by_kind.values())
    print(f"  profile of {label}: {total:.3f} s in {sum(counts.values())} op events over 2 calls")
    for kind, seconds in by_kind.most_common(top):
        print(f"    {kind:<48} {seconds:8.3f} s {100 * seconds / max(total, 1e-12):5.1f}%  {counts[kind]:>8} events")
    text = compiled.as_text()
    for name, seconds in by_op.most_common(5):
        line = re.search(rf"%?{re.escape(name)} = (\S+) ", text)
        print(f"    op {name:<40} {seconds:8.3f} s  shape {line.group(1)[:80] if line else '?'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="arm_push_easy")
    parser.add_argument("--num-envs", default="1,4,16")
    parser.add_argument("--steps", type=int, default=4, help="env steps per call")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--variants", default="single,vmap,map,vmap_substeps")
    parser.add_argument("--profile", type=int, default=0, help="also profile vmap at this N (and single)")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} backend={jax.default_backend()} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
          f"cores={len(os.sched_getaffinity(0))} load_avg={os.getloadavg()[0]:.1f}")
    env = registry.make_env(args.env)
    substep_env = registry.make_env(args.env)
    substep_env._n_frames = 1  # brax's PipelineEnv keeps n_frames here; one physics substep per env step
    print(f"{'variant':<14} {'N':>4} {'steps':>5} {'compile_s':>9} {'call_s':>8} {'env_steps/s':>11} "
          f"{'per_step_x':>10}  HLO op counts")
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
            ratio = f"{single_rate / rate:10.2f}" if single_rate else f"{'-':>10}"
            counts = " ".join(f"{k}={v}" for k, v in op_counts(compiled).items())
            print(f"{how:<14} {n:>4} {args.steps:>5} {compile_s:>9.1f} {seconds:>8.3f} {rate:>11.1f} {ratio}  {counts}",
                  flush=True)
            if args.profile and (how == "single" or (how == "vmap" and n == args.profile)):
                profile(compiled, state, actions, f"{how} N={n}")
            del compiled, state, actions
            jax.clear_caches()


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
