"""The CRL update: ordering, scan equivalence, determinism and seed sensitivity, and that it learns on a fixed batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from learners import losses
from learners.crl import CRLConfig, Dims, LearnerSpec, make_agent
from learners.networks import ConfigError, NetworkShape
from learners.relabel import Batch

DIMS = Dims(state_dim=3, goal_dim=2, action_dim=2)
CONFIG = CRLConfig(network=NetworkShape(width=32), repr_dim=8)
LEARNER = LearnerSpec("collector", actor_depth=4, critic_depth=4, collects=True)


def random_batch(key, lead=(16,)):
    k1, k2, k3 = jax.random.split(key, 3)
    return Batch(
        state=jax.random.normal(k1, lead + (DIMS.state_dim,)),
        action=jnp.tanh(jax.random.normal(k2, lead + (DIMS.action_dim,))),
        goal=jax.random.normal(k3, lead + (DIMS.goal_dim,)),
    )


def tree_allclose(a, b, **kw):
    return all(np.allclose(x, y, **kw) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.fixture(scope="module")
def agent():
    return make_agent(CONFIG, LEARNER, DIMS)


def test_update_is_actor_then_alpha_then_critic(agent):
    state = agent.init(jax.random.PRNGKey(0))
    batch, key = random_batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2)
    new_state, _ = agent.update(state, batch, key)

    # Reference written out step by step: the actor gradient uses the critic *before* its update.
    def actor_objective(actor_params):
        mean, log_std = agent.actor.apply(actor_params, jnp.concatenate([batch.state, batch.goal], -1))
        action, log_prob = losses.tanh_gaussian_sample(mean, log_std, key)
        phi, psi = agent.critic.apply(state.critic_params, batch.state, action, batch.goal)
        return jnp.mean(jnp.exp(state.log_alpha) * log_prob - losses.energy(phi, psi)), log_prob

    (_, log_prob), grads = jax.value_and_grad(actor_objective, has_aux=True)(state.actor_params)
    updates, _ = optax.adam(3e-4).update(grads, state.actor_opt, state.actor_params)
    assert tree_allclose(new_state.actor_params, optax.apply_updates(state.actor_params, updates), atol=1e-6)

    alpha_grad = jax.grad(losses.alpha_loss)(state.log_alpha, log_prob, -0.5 * DIMS.action_dim)
    alpha_update, _ = optax.adam(3e-4).update(alpha_grad, state.alpha_opt)
    np.testing.assert_allclose(new_state.log_alpha, state.log_alpha + alpha_update, atol=1e-7)

    def critic_objective(critic_params):
        phi, psi = agent.critic.apply(critic_params, batch.state, batch.action, batch.goal)
        return losses.critic_loss(losses.pairwise_energy(phi, psi), 0.1)[0]

    grads = jax.grad(critic_objective)(state.critic_params)
    updates, _ = optax.adam(3e-4).update(grads, state.critic_opt, state.critic_params)
    assert tree_allclose(new_state.critic_params, optax.apply_updates(state.critic_params, updates), atol=1e-6)
    assert int(new_state.grad_steps) == 1


def test_update_many_equals_sequential_updates(agent):
    state = agent.init(jax.random.PRNGKey(0))
    batches = random_batch(jax.random.PRNGKey(1), lead=(3, 16))
    key = jax.random.PRNGKey(5)
    scanned, metrics = jax.jit(agent.update_many)(state, batches, key)
    sequential = state
    losses_seen = []
    for i, step_key in enumerate(jax.random.split(key, 3)):
        sequential, m = agent.update(sequential, jax.tree_util.tree_map(lambda x: x[i], batches), step_key)
        losses_seen.append(float(m["critic_loss"]))
    assert tree_allclose(scanned, sequential, atol=1e-5)
    assert int(scanned.grad_steps) == 3
    np.testing.assert_allclose(metrics["critic_loss"], np.mean(losses_seen), rtol=1e-5)


def test_same_key_same_result_different_seed_different_params(agent):
    batches = random_batch(jax.random.PRNGKey(1), lead=(2, 16))
    run = jax.jit(lambda seed: agent.update_many(agent.init(jax.random.PRNGKey(seed)), batches, jax.random.PRNGKey(9)))
    a, _ = run(0)
    b, _ = run(0)
    c, _ = run(1)
    assert tree_equal(a, b)
    assert not tree_allclose(a.actor_params, c.actor_params)
    assert not tree_allclose(a.critic_params, c.critic_params)


def test_critic_learns_a_fixed_batch(agent):
    state = agent.init(jax.random.PRNGKey(0))
    batches = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 150), random_batch(jax.random.PRNGKey(1)))
    state, first = jax.jit(agent.update_many)(state, jax.tree_util.tree_map(lambda x: x[:1], batches), jax.random.PRNGKey(2))
    state, last = jax.jit(agent.update_many)(state, batches, jax.random.PRNGKey(3))
    _, final = agent.update(state, jax.tree_util.tree_map(lambda x: x[0], batches), jax.random.PRNGKey(4))
    assert float(final["critic_loss"]) < 0.5 * float(first["critic_loss"])
    assert float(final["critic_accuracy"]) > 0.9


def test_act_shapes_bounds_and_determinism(agent):
    state = agent.init(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, DIMS.state_dim + DIMS.goal_dim)) * 100
    a1 = agent.act(state.actor_params, obs, jax.random.PRNGKey(2))
    a2 = agent.act(state.actor_params, obs, jax.random.PRNGKey(3))
    d1 = agent.act(state.actor_params, obs, jax.random.PRNGKey(2), deterministic=True)
    d2 = agent.act(state.actor_params, obs, jax.random.PRNGKey(3), deterministic=True)
    assert a1.shape == (5, DIMS.action_dim)
    assert np.all(np.abs(np.asarray(a1)) <= 1)
    assert not np.allclose(a1, a2)
    np.testing.assert_array_equal(d1, d2)


def test_target_entropy_and_fingerprint(agent):
    assert agent.target_entropy == -1.0
    same = make_agent(CONFIG, LEARNER, DIMS)
    deeper = make_agent(CONFIG, LearnerSpec("learner_d8", actor_depth=4, critic_depth=8), DIMS)
    lr_only = make_agent(CRLConfig(network=NetworkShape(width=32), repr_dim=8, critic_lr=1e-3), LEARNER, DIMS)
    assert agent.fingerprint() == same.fingerprint() == lr_only.fingerprint()  # learning rates don't change layout
    assert agent.fingerprint() != deeper.fingerprint()


@pytest.mark.parametrize("field,value", [("actor_depth", 6), ("critic_depth", 0), ("critic_depth", 3), ("width", 0),
                                         ("repr_dim", 0), ("actor_lr", 0.0), ("activation", "tanh")])
def test_config_rejects_bad_values(field, value):
    import dataclasses

    if field in ("actor_depth", "critic_depth"):
        config, learner = CONFIG, dataclasses.replace(LEARNER, **{field: value})
    elif field in ("width", "activation"):
        config, learner = dataclasses.replace(CONFIG, network=dataclasses.replace(CONFIG.network, **{field: value})), LEARNER
    else:
        config, learner = dataclasses.replace(CONFIG, **{field: value}), LEARNER
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        make_agent(config, learner, DIMS)
