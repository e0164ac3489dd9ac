"""The instruments of a single-process run and `depthrl offline`, through the real CLI on a real tiny run.

The source is the tiny trainer config of conftest with 4 of its 16 env slots held out: its eval rows carry the
held-out critic metrics and the topology probe, its probe files hold Q-maps; `depthrl offline` trains two fresh
learners on its frozen buffer and `depthrl report` renders the result. Bad sources are refused with exit 2."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.e2e.conftest import TINY_ARGS, read_rows

HELD_OUT = 4


@pytest.fixture(scope="module")
def source(run_cli, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("offline") / "src"
    args = ["train", *TINY_ARGS, "--total-env-steps", "2560", "--eval-every-env-steps", "960", "--seed", "0",
            "--heldout-env-slots", str(HELD_OUT), "--probe-starts", "8", "--probe-goals", "64",
            "--run-dir", str(run_dir)]
    code, _, stderr = run_cli(args, timeout=400)
    assert code == 0, f"exit code {code}\nstderr:\n{stderr[-5000:]}"
    return run_dir


def test_a_run_logs_heldout_and_topology_metrics_and_qmaps(source):
    from analysis.topology import read_qmap

    evals = read_rows(source / "metrics" / "eval_collector.jsonl")
    assert evals
    for row in evals:
        accuracy = row["eval_collector/heldout_critic_accuracy"]
        assert 0.0 <= accuracy <= 1.0 and math.isfinite(row["eval_collector/heldout_critic_loss"])
        for key in ("topo_rank_corr_geodesic", "topo_rank_corr_euclidean"):
            assert -1.0 <= row[f"eval_collector/{key}"] <= 1.0, row
        assert row["eval_collector/topo_through_wall_comparisons"] > 0  # the U-maze has a wall to cut through
    qmap = read_qmap(source / "probes" / "collector.npz")
    assert qmap.learner == "collector" and qmap.critic_depth == 4
    assert qmap.energy.shape == (qmap.node_xy.shape[0],) and np.all(np.isfinite(qmap.energy))
    assert qmap.env_steps == evals[-1]["env_steps"]


def test_heldout_slots_never_reach_training(source):
    """The held-out ring overwritten with other data (huge positions, random actions): SGD from the run's final state
    gives bit-identical params (no held-out datum is ever sampled for training), while the held-out metrics, which
    read that ring, change."""
    from experiments.config import TrainConfig
    from experiments.inline import make_trainer
    from experiments.runs import read_config
    from learners.checkpoint import Checkpointer

    config = read_config(source, "train", TrainConfig)
    trainer = make_trainer(config)
    assert trainer.buffer.num_envs == config.schedule.num_envs - HELD_OUT
    assert trainer.heldout_buffer.num_envs == HELD_OUT
    state, _ = Checkpointer(source / "checkpoints", item="state").restore(jax.jit(trainer.init)(
        jax.random.PRNGKey(0)))
    # Both rings filled as the run went (every collection writes all slots: the held-out ones to their own ring).
    assert int(state.buffer.inserted_steps) == int(state.heldout.inserted_steps) > 0
    assert state.heldout.obs.shape[1] == HELD_OUT
    other = state.heldout.replace(obs=state.heldout.obs * 1e3 + 7.0,
                                  action=jax.random.uniform(jax.random.PRNGKey(5), state.heldout.action.shape))
    learn = jax.jit(trainer.learn)
    a, b = state, state.replace(heldout=other)
    for _ in range(3):
        a, _ = learn(a)
        b, _ = learn(b)
    params = lambda s: jax.tree_util.tree_leaves((s.agent.actor_params, s.agent.critic_params))  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(params(a), params(b)))
    measure = jax.jit(trainer.heldout_metrics, static_argnums=3)
    before = measure(a.heldout, a.agent.critic_params, jax.random.PRNGKey(1), 0)
    after = measure(b.heldout, b.agent.critic_params, jax.random.PRNGKey(1), 0)
    assert float(before["heldout_critic_loss"]) != float(after["heldout_critic_loss"])


def test_offline_learners_train_on_the_frozen_buffer_and_report_reads_them(run_cli, source, tmp_path):
    dst = tmp_path / "offline"
    code, stdout, stderr = run_cli(["offline", str(source), "--learner-depths", "4,8", "--grad-steps", "32",
                                    "--eval-every-grad-steps", "16", "--run-dir", str(dst)], timeout=400)
    assert code == 0, stderr[-4000:]
    payload = json.loads((dst / "config.json").read_text())
    assert payload["kind"] == "offline"
    assert payload["config"]["source"] == str(source.resolve())
    assert [e["name"] for e in payload["learners"]] == ["collector", "offline_d4", "offline_d8"]
    source_env_steps = read_rows(source / "metrics" / "collector.jsonl")[-1]["env_steps"]
    for name in ("offline_d4", "offline_d8"):
        rows = read_rows(dst / "metrics" / f"{name}.jsonl")
        assert [r["grad_steps"] for r in rows] == [8, 16, 24, 32]  # K = 8 per update
        assert {r["env_steps"] for r in rows} == {source_env_steps}  # no new data
        evals = read_rows(dst / "metrics" / f"eval_{name}.jsonl")
        assert [r["grad_steps"] for r in evals] == [16, 32]
        assert all(0.0 <= r[f"eval_{name}/heldout_critic_accuracy"] <= 1.0 for r in evals)
        assert (dst / "probes" / f"{name}.npz").is_file()
        assert f"{name}: time_at_goal" in stdout
    assert not (dst / "metrics" / "collector.jsonl").exists()  # the source's collector does not train here
    assert "warning" not in stderr  # the source finished its budget
    out = tmp_path / "report"
    code, _, stderr = run_cli(["report", str(dst), "--out", str(out)], timeout=180)
    assert code == 0, stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| collector depth | collector (own eval) | offline d4 | offline d8 |" in report


@pytest.mark.parametrize("make_source, message", [
    (lambda src, tmp: tmp / "nothing", "is not a run directory (no config.json)"),
    (lambda src, tmp: _copy_without_checkpoints(src, tmp), "holds no replay data: no checkpoint"),
    (lambda src, tmp: _as_decoupled(src, tmp), "is a decoupled run: its replay is a Reverb checkpoint"),
])
def test_offline_refuses_a_source_without_replay_data(run_cli, source, tmp_path, make_source, message):
    src = make_source(source, tmp_path)
    dst = tmp_path / "dst"
    code, _, stderr = run_cli(["offline", str(src), "--learner-depths", "4", "--grad-steps", "8", "--run-dir",
                               str(dst)], timeout=120)
    assert code == 2, stderr[-3000:]
    assert message in stderr
    assert not dst.exists()


def test_offline_refuses_bad_depths_and_an_existing_destination(run_cli, source, tmp_path):
    code, _, stderr = run_cli(["offline", str(source), "--learner-depths", "6", "--grad-steps", "8", "--run-dir",
                               str(tmp_path / "a")], timeout=120)
    assert code == 2 and "learner_depths" in stderr and not (tmp_path / "a").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    code, _, stderr = run_cli(["offline", str(source), "--learner-depths", "4", "--grad-steps", "8", "--run-dir",
                               str(taken)], timeout=120)
    assert code == 2 and "already exists" in stderr
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]


def _copy_without_checkpoints(src, tmp):
    import shutil

    dst = tmp / "no_ckpt"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def _as_decoupled(src, tmp):
    """A run dir whose config.json says it is a decoupled (not inline) `depthrl run`."""
    from experiments.config import DecoupledConfig, TrainConfig
    from experiments.runs import read_config, write_config

    train = read_config(src, "train", TrainConfig)
    dst = tmp / "decoupled"
    dst.mkdir()
    config = DecoupledConfig(env=train.env, agent=train.agent, schedule=train.schedule,
                             eval=dataclasses.replace(train.eval, heldout_env_slots=0), run=train.run)
    write_config(dst, "run", config)
    return dst


def test_probe_command_refuses_a_directory_without_decoupled_runs(run_cli, source, tmp_path):
    """`depthrl probe` is for decoupled runs (single-process runs probe at every evaluation): a tree holding only a
    train run, and a path that is no directory, are refused with exit 2; nothing is written."""
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    code, _, stderr = run_cli(["probe", str(source)], timeout=120)
    assert code == 2 and "no decoupled run directory below" in stderr and "1 run dir(s) found" in stderr
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    code, _, stderr = run_cli(["probe", str(tmp_path / "missing")], timeout=120)
    assert code == 2 and "is not a directory" in stderr
