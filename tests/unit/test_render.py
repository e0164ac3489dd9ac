"""`depthrl render` (experiments/render.py): random-action renders of a point maze and an ant maze, renders from the
checkpoints of a `depthrl train` run and of a decoupled run, and bad input (exit 2, nothing written).

Runs `render.main(argv)` in-process (what `depthrl render` calls). The ant_u_maze render compiles one brax rollout
(~20 CPU-s); the checkpoint tests build tiny point-maze agents (width 32) and save them with the trainers' own orbax
code, so no training is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import render
from experiments.config import DecoupledConfig, EnvConfig, RuntimeConfig, ScheduleConfig, TrainConfig
from experiments.runs import write_config
from learners.crl import CRLConfig, Dims, LearnerSpec, make_agent
from learners.networks import NetworkShape

TINY_AGENT = CRLConfig(network=NetworkShape(width=32))
COLLECTOR_D4 = LearnerSpec("collector", 4, 4, collects=True)
RUN_EPISODE_STEPS = 40
"""The fake train run's `--episode-length` (point mazes default to 100): render's default number of steps."""
TINY_SCHEDULE = ScheduleConfig(num_envs=4, unroll_length=10, batch_size=16, buffer_capacity_steps=100,
                               prefill_steps_per_env=100)


def _png_ok(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_point_maze_random_render_writes_png_and_summary_but_no_html(tmp_path, capsys):
    out = tmp_path / "out"
    assert render.main(["--env", "point_u_maze", "--steps", "30", "--seed", "3", "--out", str(out)]) == 0
    assert _png_ok(out / render.PNG_FILE)
    assert not (out / render.HTML_FILE).exists()
    assert "no HTML viewer" in capsys.readouterr().err
    summary = json.loads((out / render.SUMMARY_FILE).read_text())
    assert summary["env"] == "point_u_maze" and summary["steps_rendered"] == 30
    assert summary["policy"] == "uniform random actions" and summary["terminated"] is False
    # u_maze has one 'R' cell, (1, 1) -> (1.0, 1.0) at scaling 1, with start noise U(-0.1, 0.1) per axis.
    assert np.allclose(summary["start_xy"], [1.0, 1.0], atol=0.1 + 1e-6)
    # Goals are 'G' cell centres (goal_noise 0): one of (1,2), (1,3), (2,3), (3,1), (3,2), (3,3).
    assert tuple(summary["goal_xy"]) in {(1.0, 2.0), (1.0, 3.0), (2.0, 3.0), (3.0, 1.0), (3.0, 2.0), (3.0, 3.0)}


@pytest.mark.timeout(300)
def test_ant_maze_random_render_writes_the_brax_viewer_and_png(tmp_path):
    out = tmp_path / "ant"
    assert render.main(["--env", "ant_u_maze", "--steps", "8", "--out", str(out)]) == 0
    html = (out / render.HTML_FILE).read_text()
    # brax's viewer page: the three.js viewer script and the embedded (zlib + base64) system and trajectory.
    assert "viewer.js" in html and "system" in html
    assert len(html) > 10_000
    assert _png_ok(out / render.PNG_FILE)
    summary = json.loads((out / render.SUMMARY_FILE).read_text())
    assert summary["files"] == [render.HTML_FILE, render.PNG_FILE]
    assert summary["start_xy"] == [4.0, 4.0]  # u_maze 'R' cell (1, 1) at 4 m cells; the torso xy is placed exactly
    assert 1 <= summary["steps_rendered"] <= 8


# --- renders from checkpoints ------------------------------------------------------------------------------------


def _agent_and_env():
    from actors.envs.registry import make_env

    env = make_env("point_u_maze")
    spec = env.spec
    return make_agent(TINY_AGENT, COLLECTOR_D4, Dims(spec.state_dim, spec.goal_dim, env.action_size)), env


def _train_run(run_dir: Path, steps: tuple[int, ...]) -> dict[int, object]:
    """A `depthrl train` run dir with real TrainerState checkpoints at `steps`; returns the actor params saved."""
    from experiments.inline import make_trainer
    from learners.checkpoint import Checkpointer

    config = TrainConfig(env=EnvConfig(env="point_u_maze", episode_length=RUN_EPISODE_STEPS), agent=TINY_AGENT,
                         schedule=TINY_SCHEDULE)
    run_dir.mkdir(parents=True)
    write_config(run_dir, "train", config)
    trainer = make_trainer(config)
    manager = Checkpointer(run_dir / "checkpoints", item="state")
    saved = {}
    for i, step in enumerate(steps):
        state = trainer.init(jax.random.key(10 + i)).replace(env_steps=jax.numpy.asarray(step, jax.numpy.int32))
        manager.save(step, state, {"wall_time": 1.0, "env_steps": step})
        saved[step] = state.agent.actor_params
    manager.close()
    return saved


def _assert_same_params(a, b) -> None:
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_run_checkpoints_restore_the_saved_actor(tmp_path):
    run_dir = tmp_path / "run"
    saved = _train_run(run_dir, (100, 200))
    agent, env = _agent_and_env()
    latest = render.resolve_policy_source(run_dir, None, "collector")
    assert latest.step_dir.name == "200"
    _assert_same_params(render.load_actor_params(latest, env)[1], saved[200])
    older = render.resolve_policy_source(None, run_dir / "checkpoints" / "100", "learner")
    assert older.run_dir == run_dir.resolve() and older.step_dir.name == "100"
    params_100 = render.load_actor_params(older, env)[1]
    _assert_same_params(params_100, saved[100])
    # The two checkpoints hold different params (different init keys), so the equalities above mean something.
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(saved[100]),
                                                        jax.tree_util.tree_leaves(saved[200])))

    out = tmp_path / "out"
    assert render.main(["--run-dir", str(run_dir), "--out", str(out)]) == 0
    summary = json.loads((out / render.SUMMARY_FILE).read_text())
    assert summary["env"] == "point_u_maze" and "collector policy" in summary["policy"] and "200" in summary["policy"]
    assert summary["steps_requested"] == RUN_EPISODE_STEPS  # the run's episode length, not the env's 100
    assert _png_ok(out / render.PNG_FILE)


def test_decoupled_run_checkpoints_restore_each_learner(tmp_path):
    from learners.checkpoint import Checkpointer

    run_dir = tmp_path / "decoupled"
    run_dir.mkdir()
    config = DecoupledConfig(env=EnvConfig(env="point_u_maze"), agent=TINY_AGENT, schedule=TINY_SCHEDULE,
                             runtime=RuntimeConfig(collector_depth=4, learner_depths=(8,)))
    write_config(run_dir, "run", config)
    _, env = _agent_and_env()
    saved = {}
    depths = {}
    for i, learner in enumerate(config.learners):  # independent mode: one process (dir) per learner
        name = learner.name
        agent = make_agent(config.agent, learner, Dims(env.spec.state_dim, env.spec.goal_dim, env.action_size))
        depths[name] = learner.actor_depth
        state = agent.init(jax.random.key(i))
        manager = Checkpointer(run_dir / "checkpoints" / name, item="states")
        manager.save(7, {name: state}, {"updates": 7, "env_steps_by_actor": {}})
        manager.close()
        saved[name] = state.actor_params
    for name in ("collector", "learner_d8"):
        source = render.resolve_policy_source(run_dir, None, name)
        agent, params = render.load_actor_params(source, env)
        assert agent.learner.actor_depth == depths[name]
        _assert_same_params(params, saved[name])
    with pytest.raises(render.RenderError, match="learner_d16"):
        render.resolve_policy_source(run_dir, None, "learner_d16")
    # A step directory of the collector's process is not learner_d8's policy.
    collector_step = run_dir / "checkpoints" / "collector" / "7"
    assert render.resolve_policy_source(None, collector_step, "collector").step_dir == collector_step.resolve()
    with pytest.raises(render.RenderError, match="not a checkpoint of the 'learner_d8' policy"):
        render.resolve_policy_source(None, collector_step, "learner_d8")


# --- bad input: exit 2, nothing written --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "no_such_env"], "unknown env 'no_such_env'"),
        ([], "--env is required"),
        (["--env", "point_u_maze", "--steps", "0"], "--steps must be a positive"),
        (["--run-dir", "{tmp}/missing"], "does not exist"),
        (["--run-dir", "{tmp}"], "not a run directory"),
        (["--checkpoint", "{tmp}/missing"], "does not exist"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert render.main(args + ["--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_run_mismatches_exit_2_and_write_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _train_run(run_dir, (100,))
    out = tmp_path / "out"
    cases = [
        (["--run-dir", str(run_dir), "--env", "point_big_maze"], "does not match the run"),
        (["--run-dir", str(run_dir), "--role", "learner_d16"], "hold only the collector"),
        (["--run-dir", str(run_dir), "--checkpoint", str(run_dir / "checkpoints" / "100")], "not allowed with"),
        (["--env", "point_u_maze", "--out", str(run_dir / "config.json")], "not a directory"),
    ]
    for args, message in cases:
        argv = args if "--out" in args else args + ["--out", str(out)]
        assert render.main(argv) == 2, args
        assert message in capsys.readouterr().err, args
        assert not out.exists()
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    write_config(empty_run, "train", TrainConfig(env=EnvConfig(env="point_u_maze")))
    assert render.main(["--run-dir", str(empty_run), "--out", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not out.exists()


def test_cli_dispatches_render(tmp_path):
    from experiments.cli import main as cli_main

    assert cli_main(["render", "--env", "no_such_env", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
