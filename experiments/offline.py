"""`depthrl offline SRC_RUN_DIR --learner-depths 4,16,64 --grad-steps N`: fresh learners on a finished run's frozen
replay (the "frozen" setting of tandem RL, Ostrovski et al. 2021; the offline half of the paper's §6.8).

The source is a single-process run (`depthrl train`, or `depthrl run --inline`): its newest checkpoint holds the
trainer's whole state, replay buffer included (and the held-out ring, with `--heldout-env-slots`). Every new learner
starts from fresh parameters and takes K SGD steps per update on the same relabelled minibatches drawn from that
buffer (the trainer's `learn`, without collecting); every `--eval-every-grad-steps` each one is evaluated as in the
source run (policy on fresh eval envs, held-out critic metrics, the maze-topology probe and its Q-map).

The result is an ordinary run directory (config.json kind "offline", ``metrics/offline_d{D}.jsonl`` and
``eval_offline_d{D}.jsonl``, ``probes/``) that `depthrl report` reads: its learners are named ``offline_d{D}``, so
the ablation table shows them as their own columns next to the online learners ``learner_d{D}``. Its config
(`OfflineRunConfig`) is the source's plus the source path and the budget; its "collector" entry is the source's
collector (it does not train here), so that the tables key the offline learners by the depth of the collector
whose data they learned from. An offline run is short and starts over when run again (``--overwrite``); it has no
checkpoints.

Bad input (no source config, a source without a buffer: a decoupled run, or no checkpoint; bad depths; an existing
destination) gets exit 2 before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from experiments.config import COLLECTOR, DecoupledConfig
from learners.crl import LearnerSpec

OFFLINE_KIND = "offline"


@dataclasses.dataclass(frozen=True)
class OfflineRunConfig(DecoupledConfig):
    """An offline run's config.json: the source run's settings (runtime.collector_depth = the source collector's,
    runtime.learner_depths = the fresh learners') and the offline budget."""

    source: str = ""
    """The source run directory (absolute)."""
    source_env_steps: int = 0
    """Env steps of the source checkpoint whose buffer the learners train on."""
    grad_steps: int = 0
    """SGD steps per fresh learner (rounded up to whole updates of K)."""
    eval_every_grad_steps: int = 0
    """Evaluations every this many SGD steps, and at the end."""

    @property
    def learners(self) -> tuple[LearnerSpec, ...]:
        """The source's collector (named, not trained), then the fresh learners ``offline_d{D}``."""
        r = self.runtime
        return (LearnerSpec(COLLECTOR, r.collector_depth, r.collector_depth, collects=True),
                *(LearnerSpec(f"offline_d{d}", d, d) for d in r.learner_depths))


class OfflineError(ValueError):
    """Bad input: exit code 2, nothing written."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depthrl offline", description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="finished single-process run dir (depthrl train, or depthrl run --inline)")
    p.add_argument("--learner-depths", required=True, help="comma-separated depths of the fresh learners, e.g. 4,16,64")
    p.add_argument("--grad-steps", type=int, required=True, help="SGD steps per learner (rounded up to whole updates)")
    p.add_argument("--eval-every-grad-steps", type=int, default=None,
                   help="evaluate every this many SGD steps (default: grad-steps / 8) and at the end")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where to write the offline run (default: SOURCE/offline_d<depths>)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fresh learners (default: the source's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


@dataclasses.dataclass(frozen=True)
class OfflinePlan:
    """A validated offline run: the source's config and learners, and the new run's."""

    source: Path
    source_config: object
    """The source's `TrainConfig` (a train run's, or an inline run's `as_train_config()`)."""
    source_learners: tuple
    """The source's `LearnerSpec`s, the collector first: the shapes its checkpoint was written with."""
    config: OfflineRunConfig
    """The offline run's config: the source's settings, collector depth = the source collector's, the new learner
    depths, this run's seed, the budget."""
    run_dir: Path


def plan_offline(args: argparse.Namespace) -> OfflinePlan:
    """Validate everything; raises OfflineError (or ConfigError / RunDirError) before anything is written."""
    from experiments.config import RuntimeConfig, TrainConfig
    from experiments.runs import check_run_dir, read_config
    from learners.checkpoint import read_meta
    from learners.networks import check_depth

    src = args.source
    if not (src / "config.json").is_file():
        raise OfflineError(f"{src} is not a run directory (no config.json)")
    try:
        kind = json.loads((src / "config.json").read_text()).get("kind")
    except (OSError, json.JSONDecodeError) as e:
        raise OfflineError(f"cannot read {src / 'config.json'}: {e}") from None
    if kind == "train":
        train = read_config(src, "train", TrainConfig)
        learners = train.learners
        seed, collector_depth = train.run.seed, train.depth.critic_depth
        base = DecoupledConfig(env=train.env, agent=train.agent, schedule=train.schedule, eval=train.eval,
                               run=train.run, runtime=RuntimeConfig(inline=True))
    elif kind == "run":
        base = read_config(src, "run", DecoupledConfig)
        if not base.runtime.inline:
            raise OfflineError(
                f"{src} is a decoupled run: its replay is a Reverb checkpoint, which `depthrl offline` does not read "
                "yet. It reads the single-process trainer's buffer: collect with `depthrl run --inline` or "
                "`depthrl train`")
        train, learners = base.as_train_config(), base.learners
        seed, collector_depth = base.run.seed, base.runtime.collector_depth
    else:
        raise OfflineError(f"{src} is a {kind!r} run; `depthrl offline` reads 'train' runs and 'run --inline' runs")
    try:
        newest = read_meta(src / "checkpoints")
    except ValueError as e:
        raise OfflineError(f"{src}: its newest checkpoint cannot be read ({e})") from None
    if newest is None:
        raise OfflineError(f"{src} holds no replay data: no checkpoint in {src / 'checkpoints'} (the trainer saves its "
                           "buffer with every checkpoint, at the latest when it ends)")
    try:
        depths = tuple(int(d) for d in args.learner_depths.split(",") if d.strip())
    except ValueError:
        raise OfflineError(f"--learner-depths must be comma-separated integers, got {args.learner_depths!r}") from None
    if not depths or len(set(depths)) != len(depths):
        raise OfflineError(f"--learner-depths must name distinct depths, got {args.learner_depths!r}")
    for depth in depths:
        check_depth(depth, "learner_depths")
    if args.grad_steps <= 0:
        raise OfflineError(f"--grad-steps must be positive, got {args.grad_steps}")
    every = args.eval_every_grad_steps if args.eval_every_grad_steps is not None else max(args.grad_steps // 8, 1)
    if every <= 0:
        raise OfflineError(f"--eval-every-grad-steps must be positive, got {every}")
    run_dir = args.run_dir or src / f"offline_d{'-'.join(map(str, depths))}"
    if run_dir.resolve() == src.resolve():
        raise OfflineError("--run-dir must not be the source run dir")
    check_run_dir(run_dir, resume=False, overwrite=args.overwrite)
    config = OfflineRunConfig(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(DecoupledConfig)},
        source=str(src.resolve()), source_env_steps=int(newest[1].get("env_steps", newest[0])),
        grad_steps=args.grad_steps, eval_every_grad_steps=every)
    config = dataclasses.replace(
        config,
        run=dataclasses.replace(base.run, run_dir=run_dir, seed=seed if args.seed is None else args.seed,
                                resume=False, overwrite=False, quiet=args.quiet),
        runtime=dataclasses.replace(base.runtime, collector_depth=collector_depth, learner_depths=depths,
                                    inline=True))
    config.validate()
    return OfflinePlan(source=src, source_config=train, source_learners=tuple(learners), config=config,
                       run_dir=run_dir)


def run_offline(plan: OfflinePlan) -> dict[str, dict[str, float]]:
    """Train the fresh learners on the source's frozen buffer; returns each learner's last evaluation."""
    import jax

    from experiments.inline import Instruments, _evaluate_and_log, make_trainer
    from experiments.metrics import make_logger
    from learners.checkpoint import Checkpointer
    from learners.step import learner_row

    source = make_trainer(plan.source_config, plan.source_learners)
    restored = Checkpointer(plan.source / "checkpoints", item="state").restore(
        jax.jit(source.init)(jax.random.PRNGKey(0)))
    assert restored is not None  # plan_offline checked that a checkpoint exists
    frozen = restored[0]
    env_steps = int(frozen.env_steps)

    config = plan.config
    train = config.as_train_config()
    fresh = tuple(spec for spec in config.learners if not spec.collects)
    trainer = make_trainer(train, fresh)
    root_key = jax.random.PRNGKey(config.run.seed)
    init = jax.jit(trainer.init)(jax.random.fold_in(root_key, 0))
    state = frozen.replace(agent=init.agent, passive=init.passive, key=init.key)
    learn = jax.jit(trainer.learn, donate_argnums=0)
    evaluate_fn = jax.jit(trainer.evaluate, static_argnums=2)
    instruments = Instruments.build(trainer, plan.run_dir, root_key)

    names = [spec.name for spec in fresh]
    start = time.time()
    learner_logs = [make_logger(plan.run_dir, n, config.run.sinks, start_time=start) for n in names]
    eval_logs = [make_logger(plan.run_dir, f"eval_{n}", config.run.sinks, start_time=start) for n in names]
    k = trainer.plan.sgd_steps_per_update
    target = -(-config.grad_steps // k) * k
    every = config.eval_every_grad_steps
    last: dict[str, dict[str, float]] = {}
    next_eval = every
    try:
        grad_steps, t0 = 0, time.time()
        while grad_steps < target:
            state, all_metrics = learn(state)
            grad_steps = int(state.agent.grad_steps)
            rate = k / max(time.time() - t0, 1e-9)
            t0 = time.time()
            # Offline: the data's env steps do not grow; the update-to-data ratio is against the frozen buffer.
            rows = [learner_row(m, grad_steps=grad_steps, env_steps=env_steps, plan=trainer.plan,
                                grad_steps_per_second=rate, policy_lag=0.0) for m in all_metrics]
            for log, row in zip(learner_logs, rows):
                log.log(row, env_steps=env_steps, grad_steps=grad_steps, param_version=grad_steps)
            if grad_steps >= next_eval or grad_steps >= target:
                for index, (log, agent_state) in enumerate(zip(eval_logs, (state.agent, *state.passive))):
                    last[names[index]] = _evaluate_and_log(  # eval episodes drawn anew at each evaluation
                        evaluate_fn, agent_state, index, env_steps, jax.random.fold_in(root_key, grad_steps), log,
                        config.run, rows[index] | {"env_steps_per_second": 0.0},
                        instruments.measure(state, agent_state, index, env_steps))
                next_eval = (grad_steps // every + 1) * every
    finally:
        for log in learner_logs + eval_logs:
            log.close()
    return last


def main(argv: list[str]) -> int:
    from experiments.runs import RunDirError, prepare_run_dir, write_config
    from learners.networks import ConfigError

    args = _parser().parse_args(argv)
    try:
        plan = plan_offline(args)
    except (OfflineError, ConfigError, RunDirError) as e:
        print(f"depthrl offline: error: {e}", file=sys.stderr)
        return 2
    prepare_run_dir(plan.run_dir, overwrite=args.overwrite)
    write_config(plan.run_dir, OFFLINE_KIND, plan.config)
    print(f"depthrl offline: run dir {plan.run_dir}", file=sys.stderr)
    budget = plan.config.schedule.total_env_steps
    if plan.config.source_env_steps < budget:
        print(f"depthrl offline: warning: the source's newest checkpoint is at {plan.config.source_env_steps:,} of "
              f"its {budget:,} env steps: the source run was stopped or is still running; the learners train on "
              "the buffer as it was then", file=sys.stderr)
    last = run_offline(plan)
    for name, metrics in last.items():
        print(f"{name}: time_at_goal {metrics['time_at_goal']:.1f} success_any {metrics['success_any']:.2f}"
              + "".join(f" {k} {metrics[k]:.3f}" for k in ("heldout_critic_accuracy", "topo_rank_corr_geodesic")
                        if k in metrics))
    return 0
