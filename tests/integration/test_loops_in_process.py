"""The decoupled loops run on the in-process backend: the same `run_actor` and `run_learners` the processes of a run
use, built by the composition root, wired to `replay.memory.InProcessReplay` in two threads of one process.

This is what the transport protocols buy: the loops never see Reverb, so they can be wired to either backend."""

from __future__ import annotations

import threading

from experiments.compose import RunParts, actor_job, learner_job
from experiments.config import COLLECTOR, DecoupledConfig, EnvConfig, EvalConfig, RunConfig, RuntimeConfig, \
    ScheduleConfig
from experiments.metrics import JsonlLogger, read_jsonl
from learners.crl import CRLConfig
from learners.networks import NetworkShape
from replay.memory import InProcessReplay
from replay.status import RunStatus


class _RecordingStatus(RunStatus):
    """A real RunStatus that also records when each role wrote which state."""

    def __init__(self, run_dir) -> None:
        super().__init__(run_dir)
        self.writes: list[tuple[str, str, float]] = []

    def set(self, role, state, **kwargs):
        written = super().set(role, state, **kwargs)
        self.writes.append((role, state, written.wall_time))
        return written


def test_actor_and_learners_run_on_the_in_process_backend(tmp_path):
    from actors.process import run_actor
    from learners.process import STATUS_EVERY_SECONDS, run_learners

    config = DecoupledConfig(
        env=EnvConfig(env="point_u_maze"),
        agent=CRLConfig(network=NetworkShape(width=32)),
        schedule=ScheduleConfig(num_envs=16, unroll_length=20, batch_size=64, prefill_steps_per_env=100,
                                total_env_steps=8000),
        eval=EvalConfig(num_eval_envs=8),
        run=RunConfig(run_dir=tmp_path, checkpoint_every_seconds=3600.0),
        runtime=RuntimeConfig(collector_depth=4, learner_depths=(8,), sampling_mode="shared-batch",
                              param_publish_every_grad_steps=8),
    )
    config.validate()
    parts = RunParts.for_run(config)
    plan = parts.plan
    names = tuple(spec.name for spec in config.learners)
    replay = InProcessReplay(parts.window_spec, (COLLECTOR,), max_size_windows=10_000,
                             min_size_to_sample_windows=plan.prefill_windows, seed=0)
    status, stop = _RecordingStatus(tmp_path), threading.Event()
    actor = actor_job(parts, config, tmp_path, 0)
    collected: list[int] = []
    thread = threading.Thread(target=lambda: collected.append(run_actor(
        actor, replay.writer(), replay.params, JsonlLogger(tmp_path / "metrics" / "actor_0.jsonl", "actor_0"),
        status, stop)))
    thread.start()
    try:
        reached = run_learners(
            learner_job(parts, config, tmp_path, names), replay.sampler(COLLECTOR, plan.windows_per_update, 1.0),
            replay.params, {n: JsonlLogger(tmp_path / "metrics" / f"{n}.jsonl", n) for n in names}, status,
            threading.Event(), actors_finished=lambda: status.all_finished(("actor_0",)))
    finally:
        thread.join(timeout=120)
        stop.set()
    assert not thread.is_alive()
    # Both learners trained on the same minibatches to the plan's target; the actor collected its whole budget.
    assert reached == {name: plan.target_grad_steps for name in names}
    assert collected == [config.schedule.total_env_steps]
    assert status.get("actor_0").state == "finished" and status.get("actor_0").env_steps == 8000
    learner_status = status.get("+".join(names))
    assert learner_status.state == "finished" and learner_status.grad_steps == plan.target_grad_steps
    # Every window the actor wrote was logged; the learners' rows carry the measured ratio and the policy lag.
    actor_rows, _ = read_jsonl(tmp_path / "metrics" / "actor_0.jsonl")
    assert [r["env_steps"] for r in actor_rows] == list(range(1600, 8001, 1600))
    for name in names:
        learner_rows, _ = read_jsonl(tmp_path / "metrics" / f"{name}.jsonl")
        assert all(f"{name}/policy_lag" in r and f"{name}/update_to_data" in r for r in learner_rows)
    # A row per update, but the running learner's status file is replaced at most once per STATUS_EVERY_SECONDS.
    running = [t for role, state, t in status.writes if role == "+".join(names) and state == "running"]
    assert running and len(running) < len(learner_rows)
    assert all(b - a >= STATUS_EVERY_SECONDS for a, b in zip(running, running[1:]))
    # The final publish is marked final, at the target version, for evaluators.
    final = replay.params.latest_version("learner_d8", timeout_s=1.0)
    assert final.version == plan.target_grad_steps and final.meta["final"] is True
