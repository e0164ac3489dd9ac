"""Residual MLPs of `learners.networks`: parameter layout and counts, init, scan == unrolled, ablations against a
plain-jnp reference, the actor's log-std range, config validation, and a depth-independent scan program."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learners.networks import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    Actor,
    ConfigError,
    Critic,
    Encoder,
    NetworkConfig,
    ResidualTrunk,
    count_params,
    squash_log_std,
)

LN_EPS = 1e-6  # flax LayerNorm epsilon used by the paper's code


def _kernels(tree) -> list[tuple[str, jax.Array]]:
    """(path, kernel) for every Dense kernel in a parameter tree."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves if "kernel" in jax.tree_util.keystr(path)]


def _encoder_param_count(input_dim: int, width: int, depth: int, repr_dim: int) -> int:
    """Exact count: every Dense has W_in*W_out + W_out, every LayerNorm a scale and a bias of `width`."""
    dense_ln = lambda fan_in: fan_in * width + width + 2 * width  # noqa: E731 (Dense + LayerNorm)
    return dense_ln(input_dim) + depth * dense_ln(width) + (width * repr_dim + repr_dim)


def _out_and_grads(module, params, x: jax.Array):
    """Output of `module` and the gradient of a scalar function of it, in one compiled call."""

    def run(params):
        return module.apply(params, x), jax.grad(lambda p: jnp.sum(jnp.sin(module.apply(p, x))))(params)

    return jax.jit(run)(params)


def _restack_to_unrolled(scan_params: dict, num_blocks: int) -> dict:
    """Turn `trunk.blocks` (leading [n_blocks] axis) into `trunk.block_{i}` entries of the unrolled layout."""
    trunk = dict(scan_params["params"]["trunk"])
    stacked = trunk.pop("blocks")
    for i in range(num_blocks):
        trunk[f"block_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
    params = dict(scan_params["params"])
    params["trunk"] = trunk
    return {"params": params}


# ----------------------------------------------------------------------------------------------------------------
# Parameter structure and counts


@pytest.mark.parametrize("depth", [4, 8, 16])
def test_scan_params_are_stacked_and_count_depth_dense_layers(depth):
    config = NetworkConfig(depth=depth, width=16)
    params = jax.eval_shape(Encoder(config).init, jax.random.key(0), jnp.zeros((2, 5)))
    blocks = params["params"]["trunk"]["blocks"]
    for leaf in jax.tree_util.tree_leaves(blocks):
        assert leaf.shape[0] == depth // 4
    block_kernels = _kernels(blocks)
    assert len(block_kernels) == 4  # one per dense unit of the (single, scanned) block
    assert sum(k.shape[0] for _, k in block_kernels) == depth
    assert all(k.shape == (depth // 4, 16, 16) for _, k in block_kernels)


@pytest.mark.parametrize("depth", [4, 12])
def test_unrolled_params_have_one_entry_per_block(depth):
    config = NetworkConfig(depth=depth, width=16, block_impl="unrolled")
    params = jax.eval_shape(Encoder(config).init, jax.random.key(0), jnp.zeros((2, 5)))
    trunk = params["params"]["trunk"]
    assert sorted(k for k in trunk if k.startswith("block_")) == sorted(f"block_{i}" for i in range(depth // 4))
    block_kernels = [k for name, sub in trunk.items() if name.startswith("block_") for k in _kernels(sub)]
    assert len(block_kernels) == depth


@pytest.mark.parametrize("depth, paper_count", [(4, 0.28e6), (8, 0.55e6)])
@pytest.mark.parametrize("block_impl", ["scan", "unrolled"])
def test_encoder_param_count_matches_formula_and_paper(depth, paper_count, block_impl):
    input_dim = 37  # Ant: 29 state dims + 8 action dims
    config = NetworkConfig(depth=depth, width=256, block_impl=block_impl)
    shapes = jax.eval_shape(Encoder(config).init, jax.random.key(0), jnp.zeros((1, input_dim)))
    expected = _encoder_param_count(input_dim, 256, depth, 64)
    # depth 4: 37*256+768 + 4*(65536+768) + 256*64+64 = 10240 + 265216 + 16448
    assert expected == {4: 291_904, 8: 557_120}[depth]
    assert count_params(shapes) == expected
    assert abs(expected / paper_count - 1) < 0.05  # the paper rounds and its input size differs per env


def test_actor_and_critic_param_counts():
    config = NetworkConfig(depth=8, width=32)
    obs_dim, action_dim, goal_dim = 10, 3, 2
    actor = jax.eval_shape(Actor(config, action_dim).init, jax.random.key(0), jnp.zeros((1, obs_dim + goal_dim)))
    trunk = _encoder_param_count(obs_dim + goal_dim, 32, 8, repr_dim=0)
    assert count_params(actor) == trunk + 2 * (32 * action_dim + action_dim)
    critic = jax.eval_shape(
        Critic(config).init,
        jax.random.key(0),
        jnp.zeros((1, obs_dim)),
        jnp.zeros((1, action_dim)),
        jnp.zeros((1, goal_dim)),
    )
    assert count_params(critic) == _encoder_param_count(obs_dim + action_dim, 32, 8, 64) + _encoder_param_count(
        goal_dim, 32, 8, 64
    )


# ----------------------------------------------------------------------------------------------------------------
# Initialisation


def test_init_kernels_uniform_in_fan_in_bound_biases_zero_ln_identity():
    width, input_dim, depth = 256, 37, 8
    init = jax.jit(Encoder(NetworkConfig(depth=depth, width=width)).init)
    params = init(jax.random.key(1), jnp.zeros((1, input_dim)))
    kernels = _kernels(params)
    assert len(kernels) == 4 + 2  # 4 stacked block kernels + input projection + head
    for path, kernel in kernels:
        fan_in = kernel.shape[-2]
        bound = 1.0 / math.sqrt(fan_in)
        k = np.asarray(kernel)
        assert np.all(np.abs(k) <= bound), path
        # U(-b, b): std b/sqrt(3), max |x| close to b, and half of the mass inside b/2 (a normal with the same std
        # would put 61% there and a truncated normal differs in the max).
        assert k.std() == pytest.approx(bound / math.sqrt(3), rel=0.05), path
        assert np.abs(k).max() > 0.98 * bound, path
        assert np.mean(np.abs(k) < bound / 2) == pytest.approx(0.5, abs=0.03), path
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        if name.endswith("['bias']"):
            assert np.all(np.asarray(leaf) == 0.0), name
        if name.endswith("['scale']"):
            assert np.all(np.asarray(leaf) == 1.0), name


def test_init_gives_every_block_and_unit_its_own_kernel():
    depth, width = 16, 8
    params = jax.jit(Encoder(NetworkConfig(depth=depth, width=width)).init)(jax.random.key(2), jnp.zeros((1, 3)))
    stacked = [k for _, k in _kernels(params["params"]["trunk"]["blocks"])]
    all_kernels = np.stack([np.asarray(k[i]) for k in stacked for i in range(depth // 4)]).reshape(depth, -1)
    for i in range(depth):
        for j in range(i + 1, depth):
            assert not np.allclose(all_kernels[i], all_kernels[j]), (i, j)


def test_init_depends_on_the_key():
    config = NetworkConfig(depth=4, width=8)
    init = jax.jit(Encoder(config).init)
    a = init(jax.random.key(0), jnp.zeros((1, 3)))
    b = init(jax.random.key(1), jnp.zeros((1, 3)))
    ka, kb = _kernels(a)[0][1], _kernels(b)[0][1]
    assert not np.allclose(ka, kb)


# ----------------------------------------------------------------------------------------------------------------
# Maths: scan == unrolled, remat changes nothing, ablations against a plain-jnp reference


EQUIVALENCE_DEPTH = 8


@pytest.fixture(scope="module")
def scan_reference():
    """Input, scan parameters, and the scan's output and gradients at depth 8 (default config)."""
    x = jax.random.normal(jax.random.key(3), (6, 5))
    scan = Encoder(NetworkConfig(depth=EQUIVALENCE_DEPTH, width=32))
    params = jax.jit(scan.init)(jax.random.key(4), x)
    out, grads = _out_and_grads(scan, params, x)
    assert out.shape == (6, 64)
    return x, params, out, grads


@pytest.mark.parametrize(
    "variant",
    [
        dict(block_impl="unrolled"),
        dict(block_impl="unrolled", remat=True),
        dict(block_impl="scan", remat=True),
        dict(block_impl="scan", scan_unroll=2),
    ],
    ids=["unrolled", "unrolled-remat", "scan-remat", "scan-unroll2"],
)
def test_implementations_agree_on_outputs_and_gradients(scan_reference, variant):
    """Unrolled blocks on restacked scan parameters, remat and unroll all compute the same function and gradient."""
    x, params, out_scan, grads_scan = scan_reference
    module = Encoder(NetworkConfig(depth=EQUIVALENCE_DEPTH, width=32, **variant))
    if variant["block_impl"] == "unrolled":
        params = _restack_to_unrolled(params, EQUIVALENCE_DEPTH // 4)
        grads_scan = _restack_to_unrolled(grads_scan, EQUIVALENCE_DEPTH // 4)
        assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
            jax.eval_shape(module.init, jax.random.key(4), x)
        )
    out, grads = _out_and_grads(module, params, x)
    np.testing.assert_allclose(out, out_scan, atol=1e-5, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), grads, grads_scan)


def _reference_trunk(trunk: dict, x: np.ndarray, *, residual: bool, layer_norm: bool, activation: str) -> jax.Array:
    """The paper's trunk written out with plain jnp on the unrolled parameter layout (one block per entry)."""

    def unit(p, h):
        y = h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        if layer_norm:
            mean = jnp.mean(y, axis=-1, keepdims=True)
            var = jnp.mean((y - mean) ** 2, axis=-1, keepdims=True)
            y = (y - mean) / jnp.sqrt(var + LN_EPS) * p["LayerNorm_0"]["scale"] + p["LayerNorm_0"]["bias"]
        return y / (1.0 + jnp.exp(-y)) if activation == "swish" else jnp.maximum(y, 0.0)

    h = unit(trunk["input"], x)
    i = 0
    while f"block_{i}" in trunk:
        block_in = h
        for u in range(4):
            h = unit(trunk[f"block_{i}"][f"_DenseUnit_{u}"], h)
        if residual:
            h = block_in + h
        i += 1
    return h


def _with_identity_layer_norm(trunk: dict, width: int) -> dict:
    """Add LayerNorm parameters (scale 1, bias 0) so that a no-LN parameter tree can run the default maths."""
    out = {}
    for name, sub in trunk.items():
        if "Dense_0" in sub:
            out[name] = {**sub, "LayerNorm_0": {"scale": jnp.ones(width), "bias": jnp.zeros(width)}}
        else:
            out[name] = _with_identity_layer_norm(sub, width)
    return out


ABLATIONS = {
    "default": dict(residual=True, layer_norm=True, activation="swish"),
    "no_residual": dict(residual=False, layer_norm=True, activation="swish"),
    "no_layer_norm": dict(residual=True, layer_norm=False, activation="swish"),
    "relu": dict(residual=True, layer_norm=True, activation="relu"),
}


# The switches live in the block that both implementations share, and scan == unrolled is tested above, so the
# ablations run on the scan (the default) only.
@pytest.mark.parametrize(
    "name, block_impl", [(name, "scan") for name in ABLATIONS] + [("default", "unrolled")]
)
def test_trunk_matches_plain_jnp_reference_and_ablations_change_the_function(name, block_impl):
    width, depth = 3, 8
    switches = ABLATIONS[name]
    x = np.asarray(jax.random.normal(jax.random.key(7), (5, 2)) * 2.0)
    trunk = ResidualTrunk(NetworkConfig(depth=depth, width=width, block_impl=block_impl, **switches))

    def init_and_apply(key, x):
        params = trunk.init(key, x)
        # Non-trivial LayerNorm affine parameters, so that the reference must apply them in the right place.
        params = jax.tree_util.tree_map_with_path(
            lambda p, a: a + 0.1 * (1 + jnp.arange(a.size).reshape(a.shape) % 3)
            if "LayerNorm" in jax.tree_util.keystr(p)
            else a,
            params,
        )
        return params, trunk.apply(params, x)

    params, got = jax.jit(init_and_apply)(jax.random.key(8), x)
    layout = params["params"]
    if block_impl == "scan":
        layout = _restack_to_unrolled({"params": {"trunk": layout}}, depth // 4)["params"]["trunk"]
    want = _reference_trunk(layout, x, **switches)
    assert got.shape == (5, width)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    if name != "default":
        full = layout if switches["layer_norm"] else _with_identity_layer_norm(layout, width)
        default_out = _reference_trunk(full, x, **ABLATIONS["default"])
        assert np.max(np.abs(np.asarray(got) - np.asarray(default_out))) > 1e-2


# ----------------------------------------------------------------------------------------------------------------
# Heads, shapes, config validation


def test_squash_log_std_hand_values():
    np.testing.assert_allclose(squash_log_std(jnp.array([0.0, 1e9, -1e9])), [-1.5, LOG_STD_MAX, LOG_STD_MIN])
    np.testing.assert_allclose(squash_log_std(jnp.array(1.0)), -5.0 + 3.5 * (math.tanh(1.0) + 1.0), rtol=1e-6)


def test_actor_shapes_and_log_std_range_for_huge_inputs():
    action_dim = 4
    actor = Actor(NetworkConfig(depth=4, width=16, layer_norm=False), action_dim)  # no LN: huge inputs stay huge
    obs = jnp.concatenate(
        [jax.random.normal(jax.random.key(9), (3, 7)), jnp.array([[1e30] * 7, [-1e30] * 7, [1e4, -1e4] * 3 + [0.0]])]
    )
    mean, log_std = jax.jit(lambda key, obs: actor.apply(actor.init(key, obs), obs))(jax.random.key(10), obs)
    assert mean.shape == log_std.shape == (6, action_dim)
    assert np.all(np.isfinite(np.asarray(log_std)))
    assert np.all((log_std >= LOG_STD_MIN) & (log_std <= LOG_STD_MAX))
    # The huge rows saturate the squash at an end point.
    assert np.all(np.isclose(log_std[3:5], LOG_STD_MIN) | np.isclose(log_std[3:5], LOG_STD_MAX))


def test_critic_shapes_and_separate_encoders():
    critic = Critic(NetworkConfig(depth=4, width=16))
    state, action, goal = jnp.ones((5, 6)), jnp.ones((5, 2)), jnp.ones((5, 3))

    def run(key):
        params = critic.init(key, state, action, goal)
        phi_psi = critic.apply(params, state, action, goal)
        phi = critic.apply(params, state, action, method=Critic.encode_sa)
        psi = critic.apply(params, goal, method=Critic.encode_goal)
        return params, phi_psi, phi, psi

    params, (phi, psi), phi_alone, psi_alone = jax.jit(run)(jax.random.key(11))
    assert set(params["params"]) == {"sa_encoder", "g_encoder"}
    assert phi.shape == psi.shape == (5, 64)
    np.testing.assert_allclose(phi_alone, phi, rtol=1e-6)
    np.testing.assert_allclose(psi_alone, psi, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(depth=6), "depth"),
        (dict(depth=0), "depth"),
        (dict(depth=2), "depth"),
        (dict(depth=-4), "depth"),
        (dict(width=0), "width"),
        (dict(activation="tanh"), "activation"),
        (dict(block_impl="loop"), "block_impl"),
        (dict(scan_unroll=0), "scan_unroll"),
    ],
)
def test_validate_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=rf"critic\.{field}"):
        NetworkConfig(**kwargs).validate("critic")


@pytest.mark.parametrize("depth", [4, 8, 1024])
def test_validate_accepts_multiples_of_four(depth):
    NetworkConfig(depth=depth).validate()


# ----------------------------------------------------------------------------------------------------------------
# Compile cost independent of depth (program size, not timing)


def _grad_program_text(config: NetworkConfig, compile_it: bool) -> str:
    """HLO text of the gradient of a scalar loss through an Encoder (abstract params: nothing is initialised)."""
    encoder = Encoder(config)
    x = jax.ShapeDtypeStruct((8, 5), jnp.float32)
    params = jax.eval_shape(encoder.init, jax.random.key(0), x)
    lowered = jax.jit(jax.grad(lambda p, x: jnp.sum(encoder.apply(p, x) ** 2))).lower(params, x)
    return lowered.compile().as_text() if compile_it else lowered.as_text()


def _strip_numbers(text: str) -> str:
    """Drop digits so that '[1,16,16]' and '[256,16,16]' weigh the same."""
    return "".join(ch for ch in text if not ch.isdigit())


def test_scan_program_size_is_independent_of_depth():
    small = _grad_program_text(NetworkConfig(depth=4, width=16), compile_it=False)
    deep = _grad_program_text(NetworkConfig(depth=256, width=16), compile_it=False)
    assert len(_strip_numbers(deep)) == pytest.approx(len(_strip_numbers(small)), rel=0.01)
    # The unrolled program grows with depth, so the comparison above can fail.
    unrolled_4 = _grad_program_text(NetworkConfig(depth=4, width=16, block_impl="unrolled"), compile_it=False)
    unrolled_16 = _grad_program_text(NetworkConfig(depth=16, width=16, block_impl="unrolled"), compile_it=False)
    assert len(unrolled_16) > 2.5 * len(unrolled_4)


def test_scan_compiled_program_size_is_independent_of_depth():
    # Depth 8, not 4: with one block XLA may drop the trip-count-1 loop, a smaller (not bigger) program.
    shallow = _grad_program_text(NetworkConfig(depth=8, width=16), compile_it=True)
    deep = _grad_program_text(NetworkConfig(depth=256, width=16), compile_it=True)
    assert len(_strip_numbers(deep)) == pytest.approx(len(_strip_numbers(shallow)), rel=0.05)
