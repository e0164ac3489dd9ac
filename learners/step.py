"""One training step's pieces, shared by the single-process trainer and the learner process. Pure.

- `LearnerPlan` / `make_plan`: every derived size of the data/update schedule, from one formula each: K SGD steps per
  update, N windows per update, the prefill, the SGD-step target and the replay limiter's samples per insert.
- `prepare`: sampled windows -> relabelled -> flattened -> ``[K, B]`` minibatches.
- `learner_row`: the metric row a learner logs after an update (update-to-data and policy lag computed here only).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax

from learners.relabel import Batch, flatten, minibatches, relabel
from replay.schema import GoalSpec


@dataclasses.dataclass(frozen=True)
class LearnerPlan:
    """Derived sizes of a run's schedule (see `make_plan`)."""

    window_steps: int
    """T: steps per sampled window (per replay item)."""
    sgd_steps_per_update: int
    """K: SGD steps per update = max(1, round(u · E · U)) for u SGD steps per env step, E env slots, U env steps per
    slot per collection."""
    batch_size: int
    """B: transitions per SGD step."""
    windows_per_update: int
    """N = ceil(K·B / T): windows drawn per update, so that K·B transitions are used without replacement."""
    prefill_env_steps: int
    """Env steps (all slots) collected with the untrained policy before learning starts: the prefill per slot rounded
    up to whole collections of `collection_steps`."""
    target_grad_steps: int
    """SGD steps after the whole budget: u · (total env steps − prefill env steps), rounded up to a multiple of K."""
    samples_per_insert: float
    """Windows sampled per window inserted so that the learner does u·T SGD steps per inserted window of T env steps:
    (u·T) · (N / K). The replay limiter's ratio."""

    @property
    def prefill_windows(self) -> int:
        """Windows in replay before sampling starts (the replay table's min size)."""
        return self.prefill_env_steps // self.window_steps

    def window_sets_per_update(self, num_envs: int) -> int:
        """Sets of one window per env slot (the in-process ring's draw) that hold N windows: ceil(N / E)."""
        return math.ceil(self.windows_per_update / num_envs)


def make_plan(*, window_steps: int, num_envs: int, unroll_length: int, batch_size: int,
              sgd_steps_per_env_step: float, prefill_steps_per_env: int, total_env_steps: int,
              collection_steps: int) -> LearnerPlan:
    """The plan of a schedule. `collection_steps` is the env steps per slot of one collection: the unroll length in
    the single-process trainer, the window length T where actors write whole windows."""
    k = max(1, round(sgd_steps_per_env_step * num_envs * unroll_length))
    n = math.ceil(k * batch_size / window_steps)
    prefill = max(1, math.ceil(prefill_steps_per_env / collection_steps)) * collection_steps * num_envs
    learn_env_steps = max(total_env_steps - prefill, 0)
    return LearnerPlan(
        window_steps=window_steps,
        sgd_steps_per_update=k,
        batch_size=batch_size,
        windows_per_update=n,
        prefill_env_steps=prefill,
        target_grad_steps=max(k, math.ceil(sgd_steps_per_env_step * learn_env_steps / k) * k),
        samples_per_insert=sgd_steps_per_env_step * window_steps * n / k,
    )


def prepare(relabel_keys: jax.Array, shuffle_key: jax.Array, obs: jax.Array, action: jax.Array, traj_id: jax.Array,
            spec: GoalSpec, discount: float, plan: LearnerPlan) -> Batch:
    """``D`` window sets -> ``[K, B]`` minibatches: relabel each set (its own key), pool, shuffle, cut.

    ``relabel_keys [D, 2]``, ``obs [D, T, N, S+G]``, ``action [D, T, N, A]``, ``traj_id [D, T, N]``: the learner
    process passes D = 1 set of N windows, the single-process trainer D = ceil(N / E) sets of one window per slot."""
    pool = jax.vmap(lambda key, o, a, t: flatten(relabel(key, o, a, t, spec, discount)))(
        relabel_keys, obs, action, traj_id)
    pool = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), pool)
    return minibatches(shuffle_key, pool, plan.sgd_steps_per_update, plan.batch_size)


def update_to_data(grad_steps: int, env_steps: int, plan: LearnerPlan) -> float:
    """SGD steps per env step collected since learning started."""
    return grad_steps / max(env_steps - plan.prefill_env_steps, 1)


def learner_row(metrics: Mapping[str, jax.Array], *, grad_steps: int, env_steps: int, plan: LearnerPlan,
                grad_steps_per_second: float, policy_lag: float, **extra: float) -> dict[str, float]:
    """A learner's metric row after an update: the update's metrics (means over its K steps), its rate, the
    measured update-to-data ratio, the policy lag (newest params version minus the mean version the data was
    collected with) and any transport-specific `extra` values."""
    row = {key: float(value) for key, value in metrics.items()}
    row.update(grad_steps_per_second=grad_steps_per_second,
               update_to_data=update_to_data(grad_steps, env_steps, plan),
               policy_lag=policy_lag,
               **{key: float(value) for key, value in extra.items()})
    return row

