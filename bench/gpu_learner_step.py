"""Learner step on an accelerator: matmul FLOPs per SGD step and the fraction of a given peak achieved.

    python bench/gpu_learner_step.py --peak-tflops 67     # e.g. an H100 SXM's f32 peak without tensor cores
    python bench/gpu_learner_step.py --depths 4,64,256 --batch-size 512 --peak-tflops 495   # ... its dense TF32 peak
    python bench/gpu_learner_step.py --quick               # smoke run on any backend (CPU included)

Pass the peak of the precision the matmuls actually run at: on recent NVIDIA GPUs XLA may run f32 matmuls on TF32
tensor cores unless ``jax_default_matmul_precision`` is 'highest' (the first printed line shows the setting).

What is timed: `learners.crl.CRLAgent.update_many` (K SGD steps of actor, α and both critic encoders in one
`lax.scan`, the learner's real update), jitted with the state donated as in `learners.process`, on random
``[K, B, ...]`` batches of Ant's dims already on the device. FLOPs per SGD step are the matmul FLOPs of the jaxpr of
one `update` (forward, backward and the forward recomputed by the gradient checkpoints; 2 * M * N * K per
`dot_general`, scan bodies times their length): XLA's own ``cost_analysis()`` counts a loop body once, whatever its
trip count, so it undercounts the scanned residual blocks. Elementwise work (LayerNorm, swish, Adam) is left out, so
the fraction is a matmul utilisation. Steps are timed with `jax.block_until_ready` after a warm-up, median of
``--repeats``. Achieved = FLOPs per step / median seconds per step; fraction = achieved / peak. Host-side work
(sampling, relabelling, transfer) is outside this figure: bench/replay_overhead.py measures it.

``--compare-direct-loss`` also compiles the step with the critic's logits computed through a ``[B, B, R]`` difference
tensor (what `learners.losses.pairwise_energy` did before its matmul form), times both interleaved and prints the
paired median ratio of their step times: the before/after of that change.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from typing import Any

import jax

from learners import losses
from learners.crl import CRLConfig, Dims, LearnerSpec, make_agent
from learners.relabel import Batch

ANT_DIMS = Dims(state_dim=29, goal_dim=2, action_dim=8)
"""Ant's state, goal and action sizes (the paper's main locomotion task)."""


def matmul_flops(jaxpr) -> float:
    """2 * (output elements) * (contracted size) summed over every `dot_general` of `jaxpr` (a core Jaxpr), with
    scan bodies counted `length` times and the costliest branch of a `cond`."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contracted = 1
            for axis in lhs_contract:
                contracted *= lhs_shape[axis]
            out = 1
            for dim in eqn.outvars[0].aval.shape:
                out *= dim
            total += 2.0 * out * contracted
        elif name == "scan":
            total += eqn.params["length"] * matmul_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(matmul_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    total += matmul_flops(inner)
    return total


def pairwise_energy_direct(phi: jax.Array, psi: jax.Array) -> jax.Array:
    """The critic's logits as `learners.losses.pairwise_energy` computed them before its matmul form: through a
    ``[B, B, R]`` difference tensor. Only for ``--compare-direct-loss``."""
    return -jax.numpy.sqrt(jax.numpy.sum((phi[:, None, :] - psi[None, :, :]) ** 2, axis=-1))


@contextlib.contextmanager
def direct_loss():
    """Trace the agent with `pairwise_energy_direct` (the agent calls `losses.pairwise_energy` at trace time)."""
    original = losses.pairwise_energy
    losses.pairwise_energy = pairwise_energy_direct
    try:
        yield
    finally:
        losses.pairwise_energy = original


@dataclasses.dataclass
class Compiled:
    """One compiled `update_many` with its state and inputs, ready to be timed."""

    step: Any
    state: Any
    batches: Batch
    key: jax.Array
    compile_seconds: float
    flops_per_step: float
    seconds: list[float] = dataclasses.field(default_factory=list)

    def run(self) -> None:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, self.batches, self.key)
        jax.block_until_ready(metrics)
        self.seconds.append((time.perf_counter() - start) / self.batches.state.shape[0])


def compile_update(depth: int, batch_size: int, sgd_steps: int, seed: int) -> Compiled:
    agent = make_agent(CRLConfig(), LearnerSpec(f"learner_d{depth}", actor_depth=depth, critic_depth=depth), ANT_DIMS)
    key_state, key_s, key_a, key_g, key_update = jax.random.split(jax.random.key(seed), 5)
    state = agent.init(key_state)
    k, b, d = sgd_steps, batch_size, ANT_DIMS
    batches = Batch(state=jax.random.normal(key_s, (k, b, d.state_dim)),
                    action=jax.random.uniform(key_a, (k, b, d.action_dim), minval=-1.0, maxval=1.0),
                    goal=jax.random.normal(key_g, (k, b, d.goal_dim)))
    start = time.perf_counter()
    compiled = jax.jit(agent.update_many, donate_argnums=0).lower(state, batches, key_update).compile()
    compile_seconds = time.perf_counter() - start
    one_batch = jax.tree_util.tree_map(lambda x: x[0], batches)
    flops = matmul_flops(jax.make_jaxpr(agent.update)(state, one_batch, key_update).jaxpr)
    item = Compiled(compiled, state, batches, key_update, compile_seconds, flops)
    item.run()  # warm-up
    item.seconds.clear()
    return item


def measure(depth: int, batch_size: int, sgd_steps: int, repeats: int, seed: int,
            compare_direct_loss: bool = False) -> dict:
    item = compile_update(depth, batch_size, sgd_steps, seed)
    direct = None
    if compare_direct_loss:
        with direct_loss():
            direct = compile_update(depth, batch_size, sgd_steps, seed)
    for r in range(repeats):
        # Interleaved, order alternating, so that both forms see the same machine load.
        for x in ([item, direct] if r % 2 == 0 else [direct, item]):
            if x is not None:
                x.run()
    step = statistics.median(item.seconds)
    row = {"depth": depth, "batch_size": batch_size, "sgd_steps_per_call": sgd_steps,
           "compile_seconds": item.compile_seconds, "flops_per_step": item.flops_per_step, "step_ms": 1e3 * step,
           "achieved_tflops": item.flops_per_step / step / 1e12}
    if direct is not None:
        row["direct_loss_step_ms"] = 1e3 * statistics.median(direct.seconds)
        row["direct_over_matmul"] = statistics.median(a / b for a, b in zip(direct.seconds, item.seconds))
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="4,16,64,256", help="comma-separated depths (actor and critic)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--sgd-steps", type=int, default=16, help="K SGD steps per jitted call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=float("nan"),
                        help="the device's peak for the dtype in use (f32 here), in TFLOP/s; nan prints no fraction")
    parser.add_argument("--compare-direct-loss", action="store_true",
                        help="also time the step with the critic logits through a [B, B, R] tensor (the form before "
                             "learners.losses.pairwise_energy became a matmul), interleaved, and print the ratio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke mode: depth 4, batch 64, K=2, 2 repeats")
    parser.add_argument("--json-out", default="")
    args = parser.parse_args(argv)
    if args.quick:
        args.depths, args.batch_size, args.sgd_steps, args.repeats = "4", 64, 2, 2
    args.depths = [int(x) for x in args.depths.split(",") if x]
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = jax.devices()[0]
    print(f"device: {device.device_kind!r} ({jax.default_backend()}), jax {jax.__version__}; "
          f"default matmul precision {jax.config.jax_default_matmul_precision!r}")
    header = (f"{'depth':>5} {'B':>4} {'K':>3} {'compile_s':>9} {'mm_GFLOP/step':>13} {'step_ms':>8} {'TFLOP/s':>8} "
              f"{'of peak':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for depth in args.depths:
        row = measure(depth, args.batch_size, args.sgd_steps, args.repeats, args.seed, args.compare_direct_loss)
        row["fraction_of_peak"] = row["achieved_tflops"] / args.peak_tflops
        rows.append(row)
        print(f"{depth:5d} {row['batch_size']:4d} {row['sgd_steps_per_call']:3d} {row['compile_seconds']:9.1f} "
              f"{row['flops_per_step'] / 1e9:13.2f} {row['step_ms']:8.2f} {row['achieved_tflops']:8.3f} "
              f"{row['fraction_of_peak']:7.1%}"
              + (f"  direct [B,B,R] loss: {row['direct_loss_step_ms']:.2f} ms/step, {row['direct_over_matmul']:.2f}x"
                 if "direct_over_matmul" in row else ""), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"device": device.device_kind, "args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
