"""Hand-computed values for every CRL loss on 2-4 rows, with and without jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learners import losses

PHI = jnp.array([[0.0, 0.0], [3.0, 4.0]])
PSI = jnp.array([[0.0, 0.0], [0.0, 4.0]])


def maybe_jit(fn, use_jit):
    return jax.jit(fn, static_argnums=()) if use_jit else fn


@pytest.mark.parametrize("use_jit", [False, True])
def test_energy_is_negative_l2(use_jit):
    # row 0: ||0-0|| = 0; row 1: ||(3,4)-(0,4)|| = 3
    np.testing.assert_allclose(maybe_jit(losses.energy, use_jit)(PHI, PSI), [0.0, -3.0], atol=1e-6)


@pytest.mark.parametrize("use_jit", [False, True])
def test_pairwise_energy_matrix(use_jit):
    # L[i, j] = -||phi_i - psi_j||: (0,0)-(0,4) -> 4; (3,4)-(0,0) -> 5; (3,4)-(0,4) -> 3
    expected = [[0.0, -4.0], [-5.0, -3.0]]
    np.testing.assert_allclose(maybe_jit(losses.pairwise_energy, use_jit)(PHI, PSI), expected, atol=1e-6)


@pytest.mark.parametrize("use_jit", [False, True])
def test_critic_loss_forward_infonce_plus_lse_penalty(use_jit):
    logits = jnp.array([[0.0, -4.0], [-5.0, -3.0]])
    lse0 = math.log(math.exp(0.0) + math.exp(-4.0))
    lse1 = math.log(math.exp(-5.0) + math.exp(-3.0))
    infonce = -((0.0 - lse0) + (-3.0 - lse1)) / 2
    penalty = 0.1 * (lse0**2 + lse1**2) / 2
    fn = maybe_jit(lambda l: losses.critic_loss(l, 0.1), use_jit)
    loss, metrics = fn(logits)
    np.testing.assert_allclose(loss, infonce + penalty, rtol=1e-6)
    np.testing.assert_allclose(metrics["critic_infonce"], infonce, rtol=1e-6)
    np.testing.assert_allclose(metrics["critic_lse_penalty"], penalty, rtol=1e-6)
    assert float(metrics["critic_accuracy"]) == 1.0
    np.testing.assert_allclose(metrics["logits_pos"], -1.5)
    np.testing.assert_allclose(metrics["logits_neg"], -4.5)


def test_critic_loss_is_row_wise_not_column_wise():
    # A non-symmetric 3x3 matrix: the forward (row) InfoNCE differs from the backward (column) one.
    logits = jnp.array([[1.0, 0.0, -2.0], [3.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    rows = [math.log(sum(math.exp(v) for v in r)) for r in np.asarray(logits)]
    expected = -np.mean([logits[i, i] - rows[i] for i in range(3)])
    loss, _ = losses.critic_loss(logits, 0.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    cols = [math.log(sum(math.exp(v) for v in c)) for c in np.asarray(logits).T]
    assert abs(float(loss) - (-np.mean([logits[i, i] - cols[i] for i in range(3)]))) > 0.1


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    mean = jnp.array([[0.3, -0.2], [1.0, 0.0]])
    log_std = jnp.array([[-1.0, 0.0], [0.5, -2.0]])
    action, log_prob = losses.tanh_gaussian_sample(mean, log_std, jax.random.PRNGKey(3))
    a = np.asarray(action, np.float64)
    x = np.arctanh(a)
    std = np.exp(np.asarray(log_std, np.float64))
    gauss = -0.5 * ((x - np.asarray(mean)) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)
    expected = np.sum(gauss - np.log(1 - a**2 + 1e-6), axis=-1)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(a) < 1)


def test_tanh_gaussian_tiny_std_is_tanh_mean():
    mean = jnp.array([[0.5, -1.5]])
    action, _ = losses.tanh_gaussian_sample(mean, jnp.full_like(mean, -5.0), jax.random.PRNGKey(0))
    np.testing.assert_allclose(action, np.tanh(mean), atol=0.02)
    np.testing.assert_allclose(losses.deterministic_action(mean), np.tanh(mean), atol=1e-7)


@pytest.mark.parametrize("use_jit", [False, True])
def test_actor_loss(use_jit):
    # mean(0.5*1 - (-1), 0.5*2 - (-3)) = mean(1.5, 4.0)
    fn = maybe_jit(losses.actor_loss, use_jit)
    np.testing.assert_allclose(fn(jnp.array([1.0, 2.0]), jnp.array([-1.0, -3.0]), jnp.array(0.5)), 2.75)


def test_alpha_loss_value_and_direction():
    log_prob = jnp.array([-1.0, -3.0])  # entropy estimate 2.0
    # exp(log 2) * mean(1 + 2, 3 + 2) = 2 * 4
    value, grad = jax.value_and_grad(losses.alpha_loss)(jnp.log(2.0), log_prob, -2.0)
    np.testing.assert_allclose(value, 8.0, rtol=1e-6)
    assert grad > 0  # entropy above target: gradient descent lowers alpha
    _, grad_low = jax.value_and_grad(losses.alpha_loss)(jnp.log(2.0), jnp.array([5.0, 5.0]), -2.0)
    assert grad_low < 0  # entropy -5 below target -2: alpha grows


def _pairwise_energy_by_definition(phi, psi):
    """The direct form through a [B, B, R] difference tensor (what `pairwise_energy` computed before the matmul form)."""
    return -jnp.sqrt(jnp.sum((phi[:, None, :] - psi[None, :, :]) ** 2, axis=-1))


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize(
    "batch,repr_dim,offset,scale",
    [(7, 3, 0.0, 1.0), (64, 16, 0.0, 0.01), (64, 64, 100.0, 1.0), (256, 64, -3.0, 10.0)],
)
def test_pairwise_energy_matches_direct_form_on_random_inputs(use_jit, batch, repr_dim, offset, scale):
    # offset 100: squared norms ~1e5 against distances ~10; without the shift to a common centre the expansion
    # ||a||² - 2ab + ||b||² would lose ~1e-2 in every squared distance to f32 cancellation.
    rng = np.random.default_rng(batch + repr_dim)
    phi = offset + scale * rng.standard_normal((batch, repr_dim))
    psi = offset + scale * rng.standard_normal((batch, repr_dim))
    expected = -np.sqrt(np.sum((phi[:, None, :] - psi[None, :, :]) ** 2, axis=-1))  # float64
    got = maybe_jit(losses.pairwise_energy, use_jit)(jnp.asarray(phi, jnp.float32), jnp.asarray(psi, jnp.float32))
    assert got.shape == (batch, batch)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("use_jit", [False, True])
def test_pairwise_energy_gradient_matches_direct_form(use_jit):
    k_phi, k_psi, k_w = jax.random.split(jax.random.PRNGKey(4), 3)
    phi = jax.random.normal(k_phi, (32, 8)) + 2.0
    psi = jax.random.normal(k_psi, (32, 8))
    weights = jax.random.normal(k_w, (32, 32))  # a generic cotangent, so every entry's gradient counts

    def grads(fn):
        return jax.grad(lambda p, q: jnp.sum(weights * fn(p, q)), argnums=(0, 1))(phi, psi)

    got = maybe_jit(lambda: grads(losses.pairwise_energy), use_jit)()
    want = grads(_pairwise_energy_by_definition)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_pairwise_energy_is_zero_with_zero_gradient_at_coincident_points():
    # PHI[0] == PSI[0]. d/dφ of Σ_ij L_ij, by hand (the zero-distance pair contributes 0, the subgradient chosen):
    #   φ_0: -(φ_0 - ψ_1)/||φ_0 - ψ_1|| = -(0, -4)/4 = (0, 1)
    #   φ_1: -(φ_1 - ψ_0)/5 - (φ_1 - ψ_1)/3 = -(3, 4)/5 - (3, 0)/3 = (-1.6, -0.8)
    value = losses.pairwise_energy(PHI, PSI)
    assert float(value[0, 0]) == 0.0
    grad_phi, grad_psi = jax.grad(lambda p, q: jnp.sum(losses.pairwise_energy(p, q)), argnums=(0, 1))(PHI, PSI)
    np.testing.assert_allclose(grad_phi, [[0.0, 1.0], [-1.6, -0.8]], atol=1e-6)
    assert np.all(np.isfinite(grad_psi))
    # The direct form has no usable gradient there, which is why the matmul form special-cases distance 0.
    direct = jax.grad(lambda p: jnp.sum(_pairwise_energy_by_definition(p, PSI)))(PHI)
    assert np.isnan(np.asarray(direct)).any()
