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
