"""Depth scaling of the residual encoder: compile time and training-step time per block implementation.

    python bench/depth_scaling.py                              # depths 4,16,64,256,1024 (about 10 min on 2 cores)
    python bench/depth_scaling.py --depths 4,64 --repeats 9
    python bench/depth_scaling.py --variants scan-u1,unrolled --depths 64

What one step is: the gradient of the paper's critic loss (forward InfoNCE over -L2 logits plus 0.1 * mean LSE²,
`learners.losses`) through ONE `learners.networks.Encoder` φ(s, a) of the given depth, followed by a plain SGD
update ``params - lr * grad`` (no optimizer state, so only the network is measured). The goal representations ψ
are a fixed random ``[B, 64]`` array: the real critic runs a second encoder of the same shape, which doubles the
work without changing any ratio. Inputs ``[B, input_dim]`` are random normals.

Variants (a `--variants` subset may be chosen):

- ``scan-u{1,2,4,8}``: the library's scan (``block_impl='scan'``, ``scan_unroll`` 1/2/4/8, ``remat=False``);
- ``scan-remat``: the library's scan with ``remat=True`` (unroll 1);
- ``unrolled``: the library's unrolled blocks (same checkpoint policy as the scan);
- ``scan-naive`` / ``unrolled-naive``: the same maths with NO gradient checkpoint around the blocks, i.e. the
  network as first written (kept here to show why the library wraps every block in a checkpoint).

Unrolled variants are compiled at a depth only while their compile time, extrapolated from the previous depth as
``t * (depth / previous_depth) ** 1.5``, stays under ``--unrolled-compile-budget`` seconds; deeper ones are skipped
with a note. (XLA:CPU compile time of the unrolled step grows faster than linearly: 26 s at depth 64, 178 s at 256.)

Timing protocol (the machine is shared, so absolute times are noisy): every variant of one depth is compiled and run
once (warm-up), then timed in interleaved rounds (one call of each variant per round) for ``--repeats`` rounds or
until ``--seconds-per-depth`` is spent, at least 3 rounds. Reported: median and best step time, and the ratio of each
variant to ``unrolled`` and to ``unrolled-naive`` taken round by round (same round, same load) and then the median.
Compile time is ``jit(step).lower(params).compile()`` wall time; ``temp`` is XLA's temporary buffer size (the
activations kept for the backward pass dominate it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax

from learners import losses, networks

ALL_VARIANTS = (
    "scan-u1",
    "scan-u2",
    "scan-u4",
    "scan-u8",
    "scan-remat",
    "scan-naive",
    "unrolled",
    "unrolled-naive",
)
"""Every variant the bench knows, in table order."""

REPR_DIM = 64
"""Representation size of the encoder head (paper)."""
LOGSUMEXP_PENALTY = 0.1
"""Coefficient of the critic's mean LSE² regulariser (paper)."""
UNROLLED_COMPILE_EXPONENT = 1.5
"""Unrolled compile time ~ depth**1.5 on XLA:CPU (measured 1.4 from depth 64 to 256); used to skip hopeless compiles."""
SGD_LR = 1e-4
"""Learning rate of the plain SGD update; its value does not change the cost of a step."""


class _NaiveEncoder(nn.Module):
    """`networks.Encoder` without the gradient checkpoint around the blocks (the pre-benchmark implementation).

    Same modules, names and maths as the library, so parameter counts and outputs match; only what the backward pass
    keeps differs (everything the autodiff saves, stacked across the scan).
    """

    config: networks.NetworkConfig
    repr_dim: int = REPR_DIM

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        h = networks._DenseUnit(c.width, c.activation, c.layer_norm, name="input")(x)
        if c.block_impl == "scan":
            blocks = nn.scan(
                networks._Block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=c.num_blocks,
                unroll=c.scan_unroll,
            )(c, name="blocks")
            h, _ = blocks(h, None)
        else:
            for i in range(c.num_blocks):
                h, _ = networks._Block(c, name=f"block_{i}")(h, None)
        dense = nn.Dense(self.repr_dim, kernel_init=networks.KERNEL_INIT, bias_init=nn.initializers.zeros, name="head")
        return dense(h)


def build_encoder(variant: str, depth: int, width: int) -> nn.Module:
    """The encoder module measured as `variant` (one of `ALL_VARIANTS`)."""
    if variant == "unrolled":
        return networks.Encoder(networks.NetworkConfig(depth=depth, width=width, block_impl="unrolled"), REPR_DIM)
    if variant == "unrolled-naive":
        return _NaiveEncoder(networks.NetworkConfig(depth=depth, width=width, block_impl="unrolled"))
    if variant == "scan-naive":
        return _NaiveEncoder(networks.NetworkConfig(depth=depth, width=width, block_impl="scan", scan_unroll=1))
    if variant == "scan-remat":
        config = networks.NetworkConfig(depth=depth, width=width, block_impl="scan", scan_unroll=1, remat=True)
        return networks.Encoder(config, REPR_DIM)
    if variant.startswith("scan-u"):
        config = networks.NetworkConfig(depth=depth, width=width, block_impl="scan", scan_unroll=int(variant[6:]))
        return networks.Encoder(config, REPR_DIM)
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(ALL_VARIANTS)}")


@dataclasses.dataclass
class Compiled:
    """One variant at one depth, compiled and warmed up."""

    variant: str
    depth: int
    step: Callable[[Any], Any]
    params: Any
    compile_seconds: float
    temp_mib: float
    num_params: int
    step_seconds: list[float] = dataclasses.field(default_factory=list)

    def run_once(self) -> float:
        start = time.perf_counter()
        jax.block_until_ready(self.step(self.params))
        elapsed = time.perf_counter() - start
        self.step_seconds.append(elapsed)
        return elapsed


def compile_variant(variant: str, depth: int, width: int, batch_size: int, input_dim: int, seed: int) -> Compiled:
    """Build, compile (timed) and warm up one SGD step of `variant` at `depth`."""
    encoder = build_encoder(variant, depth, width)
    key_params, key_x, key_psi = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(key_x, (batch_size, input_dim))  # [B, D_in]: concat(state, action)
    psi = jax.random.normal(key_psi, (batch_size, REPR_DIM))  # [B, R]: fixed goal representations
    params = encoder.init(key_params, x)

    def loss_fn(params):
        phi = encoder.apply(params, x)  # [B, R]
        loss, _ = losses.critic_loss(losses.pairwise_energy(phi, psi), LOGSUMEXP_PENALTY)
        return loss

    def sgd_step(params):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree_util.tree_map(lambda p, g: p - SGD_LR * g, params, grads), loss

    start = time.perf_counter()
    compiled = jax.jit(sgd_step).lower(params).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_mib = memory.temp_size_in_bytes / 2**20 if memory is not None else float("nan")
    jax.block_until_ready(compiled(params))  # warm-up: first-call allocations are not the network's cost
    return Compiled(variant, depth, compiled, params, compile_seconds, temp_mib, networks.count_params(params))


def paired_ratio(numerator: Compiled, denominator: Compiled | None) -> float:
    """Median over rounds of numerator/denominator step time measured in the same round (nan without a baseline)."""
    if denominator is None:
        return float("nan")
    pairs = zip(numerator.step_seconds, denominator.step_seconds)
    return statistics.median(a / b for a, b in pairs)


def measure_depth(
    depth: int, variants: list[str], args: argparse.Namespace, log: Callable[[str], None]
) -> list[Compiled]:
    """Compile every variant at `depth`, then time them in interleaved rounds."""
    compiled = []
    for variant in variants:
        item = compile_variant(variant, depth, args.width, args.batch_size, args.input_dim, args.seed)
        log(f"  depth {depth:5d} {variant:15s} compiled in {item.compile_seconds:6.2f} s, temp {item.temp_mib:.1f} MiB")
        compiled.append(item)
    start = time.perf_counter()
    rounds = 0
    while rounds < args.repeats and (rounds < 3 or time.perf_counter() - start < args.seconds_per_depth):
        # Alternate the order so that no variant always runs right after the same neighbour.
        for item in compiled if rounds % 2 == 0 else reversed(compiled):
            item.run_once()
        rounds += 1
    log(f"  depth {depth:5d}: {rounds} timed rounds in {time.perf_counter() - start:.1f} s")
    return compiled


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"machine: cpu={model!r} usable_cores={cores} loadavg={load} | jax {jax.__version__} "
        f"backend={jax.default_backend()} device={jax.devices()[0].device_kind!r}"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'depth':>5} {'variant':15} {'params':>10} {'compile_s':>9} {'temp_MiB':>9} {'step_ms_med':>11} "
        f"{'step_ms_min':>11} {'ms/block':>8} {'/unrolled':>9} {'/unr-naive':>10} {'rounds':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['depth']:5d} {r['variant']:15} skipped: {r['skipped']}")
            continue
        lines.append(
            f"{r['depth']:5d} {r['variant']:15} {r['params']:10d} {r['compile_s']:9.2f} {r['temp_mib']:9.1f} "
            f"{r['step_ms_median']:11.1f} {r['step_ms_min']:11.1f} {r['step_ms_median'] / (r['depth'] // 4):8.2f} "
            f"{r['ratio_vs_unrolled']:9.2f} "
            f"{r['ratio_vs_unrolled_naive']:10.2f} {r['rounds']:6d}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="4,16,64,256,1024", help="comma-separated depths (multiples of 4)")
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS), help="comma-separated subset of variants")
    parser.add_argument("--batch-size", type=int, default=512, help="rows per step (paper: 512)")
    parser.add_argument("--width", type=int, default=256, help="hidden units per Dense (paper: 256)")
    parser.add_argument("--input-dim", type=int, default=37, help="encoder input size (Ant: 29 state + 8 action)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per depth (at most)")
    parser.add_argument(
        "--seconds-per-depth", type=float, default=60.0, help="stop adding rounds after this (at least 3 rounds)"
    )
    parser.add_argument(
        "--unrolled-compile-budget",
        type=float,
        default=120.0,
        help="skip an unrolled variant at a depth whose extrapolated compile time exceeds this many seconds",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default="", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    args.depths = [int(d) for d in args.depths.split(",") if d]
    args.variants = [v for v in args.variants.split(",") if v]
    for variant in args.variants:
        if variant not in ALL_VARIANTS:
            parser.error(f"unknown variant {variant!r}; known: {', '.join(ALL_VARIANTS)}")
    for depth in args.depths:
        try:
            networks.NetworkConfig(depth=depth, width=args.width).validate("--depths")
        except networks.ConfigError as err:
            parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    print(machine_line())
    print(f"batch {args.batch_size}, width {args.width}, input_dim {args.input_dim}, depths {args.depths}")
    wall_start = time.perf_counter()
    # The first compile in a process pays one-off JAX/XLA start-up costs; pay them outside the measurements.
    compile_variant("scan-u1", 4, 8, 4, args.input_dim, args.seed)

    print(format_table([]), flush=True)  # the header; rows follow depth by depth
    rows: list[dict[str, Any]] = []
    # Last measured (depth, compile seconds) per unrolled variant, to extrapolate the next depth's compile time.
    last_unrolled_compile: dict[str, tuple[int, float]] = {}
    for depth in args.depths:
        run_now, skipped = [], []
        for variant in args.variants:
            previous = last_unrolled_compile.get(variant)
            if variant.startswith("unrolled") and previous is not None:
                predicted = previous[1] * (depth / previous[0]) ** UNROLLED_COMPILE_EXPONENT
                if predicted > args.unrolled_compile_budget:
                    note = (
                        f"compile extrapolated to {predicted:.0f} s from {previous[1]:.1f} s at depth "
                        f"{previous[0]} (budget {args.unrolled_compile_budget:.0f} s)"
                    )
                    skipped.append({"depth": depth, "variant": variant, "skipped": note})
                    continue
            run_now.append(variant)
        measured = {item.variant: item for item in measure_depth(depth, run_now, args, log)}
        for variant in args.variants:
            if variant not in measured:
                rows.extend(s for s in skipped if s["variant"] == variant)
                continue
            item = measured[variant]
            if variant.startswith("unrolled"):
                last_unrolled_compile[variant] = (depth, item.compile_seconds)
            rows.append(
                {
                    "depth": depth,
                    "variant": variant,
                    "params": item.num_params,
                    "compile_s": item.compile_seconds,
                    "temp_mib": item.temp_mib,
                    "step_ms_median": 1e3 * statistics.median(item.step_seconds),
                    "step_ms_min": 1e3 * min(item.step_seconds),
                    "ratio_vs_unrolled": paired_ratio(item, measured.get("unrolled")),
                    "ratio_vs_unrolled_naive": paired_ratio(item, measured.get("unrolled-naive")),
                    "rounds": len(item.step_seconds),
                }
            )
        print(format_table([r for r in rows if r["depth"] == depth]).split("\n", 2)[-1], flush=True)

    print()
    print(format_table(rows))
    print(f"total bench wall time {time.perf_counter() - wall_start:.0f} s; {machine_line()}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"machine": machine_line(), "args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
