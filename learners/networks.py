"""Deep residual MLPs for CRL (paper §2): actor, state-action encoder φ(s, a) and goal encoder ψ(g).

Template shared by all three networks:

    x -> Dense(width) -> LayerNorm -> Swish                                   (input projection, not counted)
      -> depth/4 blocks of  h + [Dense(width) -> LayerNorm -> Swish] x 4      (the residual is added after the
                                                                                4th Swish; nothing follows the add)
      -> head(s)                                                              (linear, not counted)

`depth` counts the Dense layers inside the blocks only: depth 4 is one block, depth 1024 is 256 blocks.

Compile time must not grow with depth, so the blocks are, by default, a `flax.linen.scan` over one block whose
parameters are stacked along a leading `[n_blocks, ...]` axis: XLA compiles the block once. `block_impl="unrolled"`
builds the same network as a Python loop (one HLO copy per block) for comparison; `bench/depth_scaling.py` measures
both. Parameters of the two implementations have different tree layouts but identical maths.

Every block is wrapped in a gradient checkpoint that keeps only its four Dense (matmul) outputs for the backward
pass and recomputes LayerNorm and the activation from them. Without it a scanned block stacks ~7 [B, width]
residuals per Dense layer across the loop boundary (dynamic-update-slice in the forward loop, dynamic-slice in the
backward loop); that memory traffic made the scan 1.2-1.5x slower per step than the unrolled network on XLA:CPU
(worse with depth), where the unrolled graph gets the same recomputation for free by fusing the forward elementwise
ops into the backward. With the checkpoint the scan is as fast as the unrolled network and keeps ~4x less activation
memory than the unchecked scan (docs/benchmarks.md, "Depth scaling").
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0

# U(-1/sqrt(fan_in), +1/sqrt(fan_in)): variance scaling with scale 1/3, since Var[U(-a, a)] = a^2/3.
KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field and the allowed values."""


@dataclasses.dataclass(frozen=True)
class NetworkShape:
    """Everything about a residual MLP but its depth: shared by the deep and the shallow learners of a run."""

    width: int = 256
    """Hidden units of every Dense layer."""
    activation: Literal["swish", "relu"] = "swish"
    """Swish (x * sigmoid(x)) as in the paper; relu is the ablation."""
    layer_norm: bool = True
    """LayerNorm after every Dense (paper); False is the ablation."""
    residual: bool = True
    """Skip connection around each block of 4 (paper); False is the ablation."""
    block_impl: Literal["scan", "unrolled"] = "scan"
    """'scan': one compiled block scanned over stacked parameters (compile time flat in depth); 'unrolled':
    a Python loop of blocks (compile time linear in depth)."""
    scan_unroll: int = 1
    """Blocks per scan iteration when block_impl='scan' (lax.scan's `unroll`); larger trades compile time for
    fewer loop iterations. 1 is as fast as 2..8 on CPU (bench/depth_scaling.py) and compiles fastest."""
    remat: bool = False
    """False: the backward pass keeps each block's 4 Dense outputs and recomputes LayerNorm and activation (fastest
    measured). True: it keeps only each block's input and recomputes the whole block (~1/5 of the activation memory,
    5-30% more step time on CPU); for very deep nets that do not fit in accelerator memory."""

    def at_depth(self, depth: int) -> NetworkConfig:
        """This shape with `depth` Dense layers in its residual blocks."""
        return NetworkConfig(**dataclasses.asdict(self), depth=depth)

    def validate(self, field: str = "network") -> None:
        if self.width <= 0:
            raise ConfigError(f"{field}.width must be positive, got {self.width}")
        if self.activation not in ("swish", "relu"):
            raise ConfigError(f"{field}.activation must be 'swish' or 'relu', got {self.activation!r}")
        if self.block_impl not in ("scan", "unrolled"):
            raise ConfigError(f"{field}.block_impl must be 'scan' or 'unrolled', got {self.block_impl!r}")
        if self.scan_unroll < 1:
            raise ConfigError(f"{field}.scan_unroll must be >= 1, got {self.scan_unroll}")


def check_depth(depth: int, field: str) -> None:
    """ConfigError unless `depth` is a positive multiple of 4 (one residual block is 4 Dense layers)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 4 or depth % 4:
        raise ConfigError(f"{field} must be a positive multiple of 4 (4, 8, ..., 1024), got {depth}")


@dataclasses.dataclass(frozen=True)
class NetworkConfig(NetworkShape):
    """Shape, ablation switches and depth of one residual MLP."""

    depth: int = 4
    """Dense layers inside the residual blocks (a multiple of 4, 4..1024 in the paper); depth/4 blocks."""

    def validate(self, field: str = "network") -> None:
        check_depth(self.depth, f"{field}.depth")
        super().validate(field)

    @property
    def num_blocks(self) -> int:
        return self.depth // 4


def _activation(name: str):
    return nn.swish if name == "swish" else nn.relu


class _DenseUnit(nn.Module):
    """Dense -> (LayerNorm) -> activation."""

    width: int
    activation: str
    layer_norm: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.width, kernel_init=KERNEL_INIT, bias_init=nn.initializers.zeros)(x)
        if self.layer_norm:
            x = nn.LayerNorm(epsilon=1e-6)(x)
        return _activation(self.activation)(x)


class _Block(nn.Module):
    """Four dense units with the residual added after the last activation. Scan-compatible: (carry, _) -> (carry, None)."""

    config: NetworkConfig

    @nn.compact
    def __call__(self, h: jax.Array, _: None = None) -> tuple[jax.Array, None]:
        c = self.config
        x = h
        for _unit in range(4):
            x = _DenseUnit(c.width, c.activation, c.layer_norm)(x)
        return (h + x if c.residual else x), None


class ResidualTrunk(nn.Module):
    """Input projection and depth/4 residual blocks: ``x [..., D_in] -> h [..., width]``."""

    config: NetworkConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        h = _DenseUnit(c.width, c.activation, c.layer_norm, name="input")(x)
        # Why a checkpoint even without `remat`: see the module docstring. dots_saveable keeps the matmul outputs
        # (the expensive part) and recomputes the cheap elementwise LayerNorm/activation inside the backward loop.
        policy = jax.checkpoint_policies.nothing_saveable if c.remat else jax.checkpoint_policies.dots_saveable
        # Inside a scan the loop boundary already stops XLA from merging recomputation with the forward pass, so
        # the CSE barriers are not needed there (and cost fusion); an unrolled graph needs them.
        block_cls = nn.remat(_Block, policy=policy, prevent_cse=c.block_impl != "scan")
        if c.block_impl == "scan":
            blocks = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=c.num_blocks,
                unroll=c.scan_unroll,
            )(c, name="blocks")
            h, _ = blocks(h, None)
        else:
            for i in range(c.num_blocks):
                h, _ = block_cls(c, name=f"block_{i}")(h, None)
        return h


class Encoder(nn.Module):
    """Trunk and a linear head to the representation: ``x [..., D_in] -> z [..., repr_dim]``."""

    config: NetworkConfig
    repr_dim: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = ResidualTrunk(self.config, name="trunk")(x)
        return nn.Dense(self.repr_dim, kernel_init=KERNEL_INIT, bias_init=nn.initializers.zeros, name="head")(h)


class Critic(nn.Module):
    """The two CRL encoders: φ(state, action) and ψ(goal), each ``-> [..., repr_dim]``."""

    config: NetworkConfig
    repr_dim: int = 64

    def setup(self) -> None:
        self.sa_encoder = Encoder(self.config, self.repr_dim)
        self.g_encoder = Encoder(self.config, self.repr_dim)

    def __call__(self, state: jax.Array, action: jax.Array, goal: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``state [B, S], action [B, A], goal [B, G] -> (phi [B, R], psi [B, R])``."""
        return self.encode_sa(state, action), self.encode_goal(goal)

    def encode_sa(self, state: jax.Array, action: jax.Array) -> jax.Array:
        return self.sa_encoder(jnp.concatenate([state, action], axis=-1))

    def encode_goal(self, goal: jax.Array) -> jax.Array:
        return self.g_encoder(goal)


def squash_log_std(raw: jax.Array) -> jax.Array:
    """Map an unbounded head output into [LOG_STD_MIN, LOG_STD_MAX] smoothly (tanh), as in the paper's code."""
    return LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1.0)


class Actor(nn.Module):
    """Tanh-Gaussian policy head: ``concat(state, goal) [B, S+G] -> (mean [B, A], log_std [B, A])``.

    log_std is squashed into [-5, 2]; actions are ``tanh(mean + exp(log_std) * eps)`` (see `learners.losses`).
    """

    config: NetworkConfig
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = ResidualTrunk(self.config, name="trunk")(obs)
        mean = nn.Dense(self.action_dim, kernel_init=KERNEL_INIT, bias_init=nn.initializers.zeros, name="mean")(h)
        raw = nn.Dense(self.action_dim, kernel_init=KERNEL_INIT, bias_init=nn.initializers.zeros, name="log_std")(h)
        return mean, squash_log_std(raw)


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
