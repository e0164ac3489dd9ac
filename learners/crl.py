"""The CRL agent: parameters, the pure update, K updates in one `lax.scan`, and acting (paper §1).

Everything here is a pure function of its inputs; `jax.jit` is applied by the caller (the trainer or the learner
process), visibly, at the shell boundary. "Deep" and "shallow" agents are the same code with a different
`CRLConfig`.

Per minibatch (paper §1.3): first the actor and the temperature α are updated against the pre-update critic, then the
critic. Three Adam optimisers (actor, critic = both encoders, log α), no clipping, no schedule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from learners import losses
from learners.networks import Actor, ConfigError, Critic, NetworkConfig, NetworkShape, check_depth
from learners.relabel import Batch
from replay.params import fingerprint

Params = Any


@dataclasses.dataclass(frozen=True)
class CRLConfig:
    """Hyperparameters shared by every learner of a run (defaults are the paper's). Depth-free: each learner's actor
    and critic depths are in its `LearnerSpec`."""

    network: NetworkShape = NetworkShape()
    """Width, activation and ablation switches of all three networks of every learner."""
    repr_dim: int = 64
    """Output size of φ(s, a) and ψ(g)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of both critic encoders."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log α."""
    logsumexp_penalty: float = 0.1
    """Coefficient c of c·mean(logsumexp²) in the critic loss."""
    entropy_per_action_dim: float = 0.5
    """Target entropy is -entropy_per_action_dim · |A| (paper: 0.5)."""

    def validate(self, field: str = "agent") -> None:
        self.network.validate(field)
        for name in ("repr_dim", "actor_lr", "critic_lr", "alpha_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{field}.{name} must be positive, got {getattr(self, name)}")
        if self.logsumexp_penalty < 0 or self.entropy_per_action_dim < 0:
            raise ConfigError(f"{field}.logsumexp_penalty and entropy_per_action_dim must be >= 0")


@dataclasses.dataclass(frozen=True)
class LearnerSpec:
    """One learner of a run: its name (also its role, metrics file and replay table) and its depths."""

    name: str
    """e.g. "collector" or "learner_d16"."""
    actor_depth: int
    """Dense layers in the actor's residual blocks (multiple of 4)."""
    critic_depth: int
    """Dense layers in each critic encoder's residual blocks (multiple of 4); φ and ψ share it."""
    collects: bool = False
    """True for the one learner whose policy the actors run (the collector); the others only train from replay."""

    def validate(self) -> None:
        check_depth(self.actor_depth, f"{self.name}.actor_depth")
        check_depth(self.critic_depth, f"{self.name}.critic_depth")


@dataclasses.dataclass(frozen=True)
class Dims:
    """Sizes the networks are built for."""

    state_dim: int
    """S."""
    goal_dim: int
    """G."""
    action_dim: int
    """A."""


@flax.struct.dataclass
class CRLState:
    """Everything an agent's learning owns: params, optimiser states and the gradient-step counter."""

    actor_params: Params
    critic_params: Params
    log_alpha: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    grad_steps: jax.Array
    """int32 []: SGD steps taken so far."""


@dataclasses.dataclass(frozen=True)
class CRLAgent:
    """Pure functions of one CRL agent, built by `make_agent`. Holds static structure only, no arrays."""

    config: CRLConfig
    learner: LearnerSpec
    dims: Dims

    @property
    def actor_network(self) -> NetworkConfig:
        return self.config.network.at_depth(self.learner.actor_depth)

    @property
    def critic_network(self) -> NetworkConfig:
        return self.config.network.at_depth(self.learner.critic_depth)

    @property
    def actor(self) -> Actor:
        return Actor(self.actor_network, self.dims.action_dim)

    @property
    def critic(self) -> Critic:
        return Critic(self.critic_network, self.config.repr_dim)

    @property
    def target_entropy(self) -> float:
        return -self.config.entropy_per_action_dim * self.dims.action_dim

    def _optimizers(self) -> tuple[optax.GradientTransformation, ...]:
        c = self.config
        return optax.adam(c.actor_lr), optax.adam(c.critic_lr), optax.adam(c.alpha_lr)

    def fingerprint(self) -> str:
        """Stable hash of everything that determines the parameter layout; params with another one are refused."""
        return fingerprint(
            {
                "actor": dataclasses.asdict(self.actor_network),
                "critic": dataclasses.asdict(self.critic_network),
                "repr_dim": self.config.repr_dim,
                "dims": dataclasses.asdict(self.dims),
            }
        )

    # --- parameters -----------------------------------------------------------------------------------------
    def init(self, key: jax.Array) -> CRLState:
        d = self.dims
        actor_key, critic_key = jax.random.split(key)
        actor_params = self.actor.init(actor_key, jnp.zeros((1, d.state_dim + d.goal_dim)))
        critic_params = self.critic.init(
            critic_key, jnp.zeros((1, d.state_dim)), jnp.zeros((1, d.action_dim)), jnp.zeros((1, d.goal_dim))
        )
        log_alpha = jnp.zeros((), jnp.float32)
        actor_tx, critic_tx, alpha_tx = self._optimizers()
        return CRLState(
            actor_params=actor_params,
            critic_params=critic_params,
            log_alpha=log_alpha,
            actor_opt=actor_tx.init(actor_params),
            critic_opt=critic_tx.init(critic_params),
            alpha_opt=alpha_tx.init(log_alpha),
            grad_steps=jnp.zeros((), jnp.int32),
        )

    # --- acting -----------------------------------------------------------------------------------------------
    def act(self, actor_params: Params, obs: jax.Array, key: jax.Array, deterministic: bool = False) -> jax.Array:
        """``obs [..., S+G] -> action [..., A]``: a tanh-Gaussian sample, or tanh(μ) when deterministic."""
        mean, log_std = self.actor.apply(actor_params, obs)
        if deterministic:
            return losses.deterministic_action(mean)
        action, _ = losses.tanh_gaussian_sample(mean, log_std, key)
        return action

    # --- probing --------------------------------------------------------------------------------------------------
    def energy(self, actor_params: Params, critic_params: Params, state: jax.Array, goal: jax.Array) -> jax.Array:
        """Critic energy f(s, π(s, g), g) = -||φ(s, a) - ψ(g)||₂ with the deterministic policy's action, pair by
        pair: ``state [B, S], goal [B, G] -> [B]`` (higher = the critic puts g closer to s)."""
        action = losses.deterministic_action(self.actor.apply(actor_params, jnp.concatenate([state, goal], -1))[0])
        phi, psi = self.critic.apply(critic_params, state, action, goal)
        return losses.energy(phi, psi)

    def critic_metrics(self, critic_params: Params, batch: Batch) -> dict[str, jax.Array]:
        """The critic's loss and contrastive metrics on a minibatch ``batch [B, ...]`` without updating anything
        (held-out data): ``critic_loss``, ``critic_accuracy`` (top-1 of the positive among the B goals), ..."""
        loss, metrics = self._critic_loss(critic_params, batch)
        return {"critic_loss": loss, **metrics}

    # --- learning ---------------------------------------------------------------------------------------------
    def _actor_loss(self, actor_params, critic_params, log_alpha, batch: Batch, key):
        obs = jnp.concatenate([batch.state, batch.goal], axis=-1)
        mean, log_std = self.actor.apply(actor_params, obs)
        action, log_prob = losses.tanh_gaussian_sample(mean, log_std, key)
        phi, psi = self.critic.apply(critic_params, batch.state, action, batch.goal)
        q = losses.energy(phi, psi)
        alpha = jnp.exp(jax.lax.stop_gradient(log_alpha))
        return losses.actor_loss(log_prob, q, alpha), (log_prob, q)

    def _critic_loss(self, critic_params, batch: Batch):
        phi, psi = self.critic.apply(critic_params, batch.state, batch.action, batch.goal)
        return losses.critic_loss(losses.pairwise_energy(phi, psi), self.config.logsumexp_penalty)

    def update(self, state: CRLState, batch: Batch, key: jax.Array) -> tuple[CRLState, dict[str, jax.Array]]:
        """One SGD step on a minibatch ``batch [B, ...]``: actor and α first, then the critic."""
        actor_tx, critic_tx, alpha_tx = self._optimizers()

        (actor_loss, (log_prob, q)), actor_grads = jax.value_and_grad(self._actor_loss, has_aux=True)(
            state.actor_params, state.critic_params, state.log_alpha, batch, key
        )
        actor_updates, actor_opt = actor_tx.update(actor_grads, state.actor_opt, state.actor_params)
        actor_params = optax.apply_updates(state.actor_params, actor_updates)

        alpha_loss, alpha_grad = jax.value_and_grad(losses.alpha_loss)(state.log_alpha, log_prob, self.target_entropy)
        alpha_updates, alpha_opt = alpha_tx.update(alpha_grad, state.alpha_opt, state.log_alpha)
        log_alpha = optax.apply_updates(state.log_alpha, alpha_updates)

        (critic_loss, critic_metrics), critic_grads = jax.value_and_grad(self._critic_loss, has_aux=True)(
            state.critic_params, batch
        )
        critic_updates, critic_opt = critic_tx.update(critic_grads, state.critic_opt, state.critic_params)
        critic_params = optax.apply_updates(state.critic_params, critic_updates)

        new_state = CRLState(
            actor_params=actor_params,
            critic_params=critic_params,
            log_alpha=log_alpha,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            alpha_opt=alpha_opt,
            grad_steps=state.grad_steps + 1,
        )
        metrics = {
            "critic_loss": critic_loss,
            "actor_loss": actor_loss,
            "alpha_loss": alpha_loss,
            "alpha": jnp.exp(log_alpha),
            "entropy": -jnp.mean(log_prob),
            "q_mean": jnp.mean(q),
            **critic_metrics,
        }
        return new_state, metrics

    def update_many(
        self, state: CRLState, batches: Batch, key: jax.Array
    ) -> tuple[CRLState, dict[str, jax.Array]]:
        """K SGD steps in one `lax.scan`: ``batches [K, B, ...]``; returns metrics averaged over the K steps."""
        num_steps = batches.state.shape[0]
        keys = jax.random.split(key, num_steps)

        def step(carry: CRLState, xs):
            batch, step_key = xs
            return self.update(carry, batch, step_key)

        state, metrics = jax.lax.scan(step, state, (batches, keys))
        return state, jax.tree_util.tree_map(jnp.mean, metrics)


def make_agent(config: CRLConfig, learner: LearnerSpec, dims: Dims) -> CRLAgent:
    """Validate `config` and `learner`, and build the agent."""
    config.validate()
    learner.validate()
    return CRLAgent(config=config, learner=learner, dims=dims)
