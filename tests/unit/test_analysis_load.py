"""analysis/load.py on synthetic run directories written with the real metric writer (`JsonlLogger`).

Also home of the synthetic-run builder the other test_analysis_* files import (`write_run`, `eval_series`).
The eval series are built so that the mean of the last 5 evaluations is a chosen number while any other window
(last 4, last 6, all) gives a different one: ``time_at_goal = [1000, 1000, v-2, v-1, v, v+1, v+2]`` (last 5 -> v)
and ``success_any = [0.99, 0.99, s, s, s, s, s]`` (last 5 -> s).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from actors.coverage import CoverageGrid, coverage_path
from actors.envs.mazes import get_layout
from analysis.load import Learner, find_run_dirs, learners_of, load, parse_config, read_jsonl_tolerant
from experiments.metrics import JsonlLogger

EVAL_ENV_STEPS = (0, 1000, 2000, 3000, 4000, 5000, 6000)


def eval_series(v: float, s: float) -> list[tuple[int, float, float]]:
    """(env_steps, time_at_goal, success_any) of 7 evaluations whose last-5 means are exactly v and s."""
    tags = [1000.0, 1000.0, v - 2, v - 1, v, v + 1, v + 2]
    succ = [0.99, 0.99] + [s] * 5
    return list(zip(EVAL_ENV_STEPS, tags, succ))


def _config(run_dir: Path, kind: str, env: str, seed: int, collector_depth: int, learner_depths,
            format_version: int = 1, learners: list[dict] | None = None) -> dict:
    """A config.json payload. Format 2 states the learners (`learners`, or the ones format 1 implies by default)."""
    config = {
        "env": {"env": env, "episode_length": None},
        "agent": {"actor_depth": 4, "critic_depth": collector_depth if kind == "train" else 4, "width": 32},
        "schedule": {"num_envs": 16, "total_env_steps": 6000},
        "eval": {"num_eval_envs": 8, "eval_every_env_steps": 1000},
        "run": {"run_dir": str(run_dir), "seed": seed},
    }
    if kind == "run":
        config["runtime"] = {"collector_depth": collector_depth, "learner_depths": list(learner_depths), "actors": 2}
    payload = {"format_version": format_version, "kind": kind, "config": config}
    if format_version == 2:
        if learners is None:
            actor_depth = collector_depth if kind == "run" else config["agent"]["actor_depth"]
            learners = [{"name": "collector", "actor_depth": actor_depth, "critic_depth": collector_depth,
                         "collects": True}]
            if kind == "run":
                learners += [{"name": f"learner_d{d}", "actor_depth": d, "critic_depth": d, "collects": False}
                             for d in learner_depths]
        payload["learners"] = learners
    return payload | {"git_revision": "abc123", "packages": {"jax": "0.7.1"}, "created": "2026-01-01"}


def write_run(run_dir: Path, *, collector_depth: int, seed: int, learner_depths=(4, 16),
              finals: dict[str, tuple[float, float]] | None = None, env: str = "point_u_maze", kind: str = "run",
              coverage_xy: list | None = None, format_version: int = 1, learners: list[dict] | None = None) -> Path:
    """A synthetic run directory. `finals` maps a learner ("collector", "learner_d4", ...) to the (time_at_goal,
    success_any) its eval role should end on (see `eval_series`); default (10, 0.5) for each. Decoupled runs
    (kind "run") get collector, learner_d{D}, eval_*, two actors and a replay role; format-1 train runs get learner
    and evaluator, format-2 ones collector and eval_collector. `learners` (format 2 only) replaces the learner list
    of config.json, and the roles logged follow its names. `coverage_xy`, when given, is split over the two actors'
    coverage files (u_maze, s = 2, k = 2)."""
    run_dir.mkdir(parents=True)
    payload = _config(run_dir, kind, env, seed, collector_depth, learner_depths, format_version, learners)
    (run_dir / "config.json").write_text(json.dumps(payload, indent=2))
    if format_version == 2:
        learners = [entry["name"] for entry in payload["learners"]]
    else:
        learners = ["collector"] + [f"learner_d{d}" for d in learner_depths] if kind == "run" else ["collector"]
    format1_train = kind == "train" and format_version == 1
    finals = finals or {}
    metrics = run_dir / "metrics"
    for learner in learners:
        role = "learner" if format1_train else learner
        log = JsonlLogger(metrics / f"{role}.jsonl", role, start_time=0.0)
        for i in range(1, 4):
            log.log({"critic_loss": 5.0 - i, "policy_lag": 10.0 * i, "update_to_data": 0.01 * i},
                    env_steps=2000 * i, grad_steps=100 * i, param_version=100 * i, wall_time=10.0 * i)
        log.close()
        eval_role = "evaluator" if format1_train else f"eval_{learner}"
        log = JsonlLogger(metrics / f"{eval_role}.jsonl", eval_role, start_time=0.0)
        v, s = finals.get(learner, (10.0, 0.5))
        for n, (steps, tag, succ) in enumerate(eval_series(v, s)):
            log.log({"time_at_goal": tag, "success_any": succ, "final_dist": 1.0, "episode_length": 100.0},
                    env_steps=steps, grad_steps=steps // 20, param_version=steps // 20, wall_time=5.0 + n)
        log.close()
    if kind == "run":
        for a in range(2):
            log = JsonlLogger(metrics / f"actor_{a}.jsonl", f"actor_{a}", start_time=0.0)
            log.log({"success_rate": 0.1 * a}, env_steps=800, grad_steps=0, param_version=0, wall_time=3.0)
            log.close()
        log = JsonlLogger(metrics / "replay.jsonl", "replay", start_time=0.0)
        log.log({"collector/size": 7.0}, env_steps=0, grad_steps=0, param_version=0, wall_time=1.0)
        log.close()
    if coverage_xy is not None:
        layout = get_layout("u_maze", 2.0)
        half = len(coverage_xy) // 2
        for a, part in enumerate((coverage_xy[:half], coverage_xy[half:])):
            grid = CoverageGrid(layout, bins_per_cell=2)
            grid.add(np.asarray(part, dtype=np.float64).reshape(-1, 2))
            grid.save(coverage_path(run_dir, f"actor_{a}"), env_steps=3000)
    return run_dir


def _quiet_load(root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean run dir must not warn
        return load(root)


# --- one decoupled run ----------------------------------------------------------------------------------------------

def test_a_decoupled_run_becomes_one_row_per_role_and_step(tmp_path):
    write_run(tmp_path / "r", collector_depth=16, seed=3, learner_depths=(4, 16))
    result = _quiet_load(tmp_path / "r")
    frame = result.frame
    assert result.problems == []
    assert [r.name for r in result.runs] == ["r"]
    # 3 learners x (3 training rows + 7 evals) + 2 actors + 1 replay row.
    assert len(frame) == 3 * (3 + 7) + 2 + 1
    for column in ("run", "seed", "collector_depth", "learner_depth", "role", "kind", "env_steps", "grad_steps",
                   "wall_time", "time_at_goal", "success_any", "critic_loss", "policy_lag", "update_to_data"):
        assert column in frame.columns, column
    assert not any("/" in c for c in frame.columns if c not in ("collector/size",)), "role prefix left in a column"
    assert set(frame["run"]) == {"r"} and set(frame["seed"]) == {3} and set(frame["env"]) == {"point_u_maze"}
    assert set(frame["collector_depth"]) == {16}
    roles = frame.drop_duplicates("role").set_index("role")
    expected = {  # role: (kind, learner, learner_depth)
        "collector": ("collector", "collector", 16),
        "learner_d4": ("learner", "learner_d4", 4),
        "learner_d16": ("learner", "learner_d16", 16),
        "eval_collector": ("eval", "collector", 16),
        "eval_learner_d4": ("eval", "learner_d4", 4),
        "eval_learner_d16": ("eval", "learner_d16", 16),
        "actor_0": ("actor", None, None),
        "actor_1": ("actor", None, None),
        "replay": ("replay", None, None),
    }
    assert set(roles.index) == set(expected)
    for role, (kind, learner, depth) in expected.items():
        got_depth = roles.loc[role, "learner_depth"]
        assert roles.loc[role, "kind"] == kind, role
        assert roles.loc[role, "learner"] == learner, role
        assert (pd.isna(got_depth) if depth is None else got_depth == depth), role
    # Unprefixed metric values land in the right rows; a nested replay key keeps its inner slashes.
    ev = frame[frame["role"] == "eval_learner_d4"]
    assert list(ev["env_steps"]) == list(EVAL_ENV_STEPS)
    assert list(ev["time_at_goal"]) == [t for _, t, _ in eval_series(10.0, 0.5)]
    assert frame.loc[frame["role"] == "replay", "collector/size"].tolist() == [7.0]
    assert frame.loc[frame["role"] == "collector", "policy_lag"].tolist() == [10.0, 20.0, 30.0]
    assert frame.loc[frame["role"] != "collector", "policy_lag"].notna().sum() == 2 * 3  # two passive learners
    assert frame["env_steps"].dtype == np.float64 and frame["seed"].dtype == "Int64"


def test_a_train_run_maps_learner_to_collector_at_critic_depth(tmp_path):
    write_run(tmp_path / "t", collector_depth=8, seed=1, kind="train")
    frame = _quiet_load(tmp_path / "t").frame
    assert set(frame["role"]) == {"learner", "evaluator"}
    assert set(frame["collector_depth"]) == {8} and set(frame["learner_depth"]) == {8}
    assert set(frame.loc[frame["role"] == "learner", "kind"]) == {"collector"}
    assert set(frame.loc[frame["role"] == "evaluator", "kind"]) == {"eval"}
    assert set(frame["learner"]) == {"collector"}
    assert set(frame["run_kind"]) == {"train"}


@pytest.mark.parametrize("role, run_kind, expected", [
    ("collector", "run", ("collector", "collector", 8)),
    ("learner_d64", "run", ("learner", "learner_d64", 64)),
    ("eval_learner_d64", "run", ("eval", "learner_d64", 64)),
    ("eval_collector", "run", ("eval", "collector", 8)),
    ("actor_12", "run", ("actor", None, None)),
    ("replay", "run", ("replay", None, None)),
    ("something_new", "run", ("other", None, None)),
    ("learner", "run", ("other", None, None)),  # only a train run's "learner" is its collector
    ("learner", "train", ("collector", "collector", 8)),
    ("evaluator", "train", ("eval", "collector", 8)),
])
def test_role_info(role, run_kind, expected):
    # A format-1 payload: the collector at depth 8 (a train run's agent.critic_depth), one passive learner at 64.
    info = parse_config(_config(Path("r"), run_kind, "point_u_maze", 0, 8, (64,)), "r", Path("r"))
    assert info.role_info(role) == expected


# --- config.json format 2: the learners stated ---------------------------------------------------------------------

def test_learners_of_converts_format_1_and_reads_format_2():
    run1 = _config(Path("r"), "run", "point_u_maze", 0, 16, (4, 64))
    assert learners_of(run1) == (Learner("collector", 16, 16, True), Learner("learner_d4", 4, 4, False),
                                 Learner("learner_d64", 64, 64, False))
    train1 = _config(Path("t"), "train", "point_u_maze", 0, 8, ())
    assert learners_of(train1) == (Learner("collector", 4, 8, True),)  # agent.actor_depth 4, critic_depth 8
    # Format 2 says the same in its list; the collecting learner comes first wherever the list puts it.
    run2 = _config(Path("r"), "run", "point_u_maze", 0, 16, (4, 64), format_version=2)
    run2["learners"] = run2["learners"][1:] + run2["learners"][:1]
    assert learners_of(run2) == learners_of(run1)
    assert learners_of(_config(Path("t"), "train", "point_u_maze", 0, 8, (), format_version=2)) == learners_of(train1)


def test_a_format_2_decoupled_run_loads_like_its_format_1_twin(tmp_path):
    write_run(tmp_path / "v1", collector_depth=16, seed=3, learner_depths=(4, 16), format_version=1)
    write_run(tmp_path / "v2", collector_depth=16, seed=3, learner_depths=(4, 16), format_version=2)
    v1, v2 = _quiet_load(tmp_path / "v1"), _quiet_load(tmp_path / "v2")
    assert v2.problems == [] and v2.runs[0].collector_depth == 16 and v2.runs[0].learner_depths == (4, 16)
    pd.testing.assert_frame_equal(v1.frame.drop(columns="run"), v2.frame.drop(columns="run"))
    roles = v2.frame.drop_duplicates("role").set_index("role")
    assert roles.loc["learner_d4", ["kind", "learner", "learner_depth"]].tolist() == ["learner", "learner_d4", 4]
    assert roles.loc["eval_collector", ["kind", "learner", "learner_depth"]].tolist() == ["eval", "collector", 16]


def test_a_format_2_train_run_logs_collector_and_eval_collector(tmp_path):
    write_run(tmp_path / "v1", collector_depth=8, seed=1, kind="train", format_version=1)
    write_run(tmp_path / "v2", collector_depth=8, seed=1, kind="train", format_version=2)
    v1, v2 = _quiet_load(tmp_path / "v1").frame, _quiet_load(tmp_path / "v2").frame
    assert set(v2["role"]) == {"collector", "eval_collector"}
    assert set(v2.loc[v2["role"] == "collector", "kind"]) == {"collector"}
    assert set(v2.loc[v2["role"] == "eval_collector", "kind"]) == {"eval"}
    assert set(v2["learner"]) == {"collector"} and set(v2["run_kind"]) == {"train"}
    assert set(v2["collector_depth"]) == {8} and set(v2["learner_depth"]) == {8}  # critic depth; the actor's is 4
    # The same rows as the format-1 run, whose roles were named "learner" and "evaluator" (so sorted differently).
    def rows(frame):
        return frame.drop(columns=["run", "role"]).sort_values(["kind", "env_steps"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(v1), rows(v2))


def test_format_2_depths_come_from_the_learner_list_never_from_a_role_name(tmp_path):
    learners = [
        {"name": "shallow", "actor_depth": 2, "critic_depth": 4, "collects": False},
        {"name": "collector", "actor_depth": 16, "critic_depth": 12, "collects": True},
        {"name": "learner_d64", "actor_depth": 8, "critic_depth": 8, "collects": False},  # the name says 64: ignored
    ]
    write_run(tmp_path / "r", collector_depth=12, seed=0, format_version=2, learners=learners)
    result = _quiet_load(tmp_path / "r")
    (info,) = result.runs
    assert info.collector_depth == 12 and info.learner_depths == (4, 8)
    roles = result.frame.drop_duplicates("role").set_index("role")
    expected = {  # role: (kind, learner, learner_depth)
        "collector": ("collector", "collector", 12), "eval_collector": ("eval", "collector", 12),
        "shallow": ("learner", "shallow", 4), "eval_shallow": ("eval", "shallow", 4),
        "learner_d64": ("learner", "learner_d64", 8), "eval_learner_d64": ("eval", "learner_d64", 8),
    }
    for role, values in expected.items():
        assert tuple(roles.loc[role, ["kind", "learner", "learner_depth"]]) == values, role
    assert set(result.frame["collector_depth"]) == {12}


@pytest.mark.parametrize("change, message", [
    ({"format_version": 3}, "unknown format_version 3"),
    ({"learners": None}, "'learners'"),
    ({"learners": [{"name": "collector", "critic_depth": 4, "collects": True}, {"critic_depth": 4}]}, "'learners'"),
    ({"learners": [{"name": "collector", "critic_depth": 4, "collects": True},
                   {"name": "collector", "critic_depth": 8, "collects": False}]}, "names repeat"),
    ({"learners": [{"name": "collector", "critic_depth": 4, "collects": False}]}, "exactly one learner must collect"),
    ({"learners": [{"name": "a", "critic_depth": 4, "collects": True},
                   {"name": "collector", "critic_depth": 4, "collects": True}]}, "exactly one learner must collect"),
])
def test_a_format_2_config_without_a_usable_learner_list_skips_that_run(tmp_path, change, message):
    write_run(tmp_path / "runs" / "good", collector_depth=4, seed=0, format_version=2)
    bad = write_run(tmp_path / "runs" / "bad", collector_depth=4, seed=1, format_version=2)
    payload = json.loads((bad / "config.json").read_text()) | change
    (bad / "config.json").write_text(json.dumps(payload))
    with pytest.warns(UserWarning, match="bad/config.json") as caught:
        result = load(tmp_path)
    assert message in str(caught[0].message) and "run skipped" in str(caught[0].message)
    assert [r.name for r in result.runs] == ["runs/good"]


# --- grids ------------------------------------------------------------------------------------------------------------

def test_a_grid_is_every_run_dir_below_it_and_nothing_inside_a_run(tmp_path):
    grid = tmp_path / "grid"
    write_run(grid / "runs" / "c4_s0", collector_depth=4, seed=0)
    write_run(grid / "runs" / "c4_s1", collector_depth=4, seed=1)
    write_run(grid / "runs" / "c16_s0", collector_depth=16, seed=0)
    (grid / "grid.json").write_text("{}")
    (grid / "runs" / "not_a_run").mkdir()  # no config.json
    (grid / "runs" / "half_a_run").mkdir()
    (grid / "runs" / "half_a_run" / "config.json").write_text("{}")  # no metrics/
    # Something run-dir shaped inside a run (a checkpoint folder) is part of that run, not another run.
    inner = grid / "runs" / "c4_s0" / "checkpoints" / "x"
    (inner / "metrics").mkdir(parents=True)
    (inner / "config.json").write_text("{}")
    assert [p.relative_to(grid).as_posix() for p in find_run_dirs(grid)] == ["runs/c16_s0", "runs/c4_s0",
                                                                             "runs/c4_s1"]
    frame = _quiet_load(grid).frame
    assert sorted(frame["run"].unique()) == ["runs/c16_s0", "runs/c4_s0", "runs/c4_s1"]
    per_run = frame.drop_duplicates("run").set_index("run")
    assert per_run.loc["runs/c4_s1", "seed"] == 1 and per_run.loc["runs/c16_s0", "collector_depth"] == 16


# --- damaged input ----------------------------------------------------------------------------------------------------

def test_a_truncated_last_line_is_skipped_with_a_warning_naming_the_file(tmp_path):
    run = write_run(tmp_path / "r", collector_depth=4, seed=0)
    path = run / "metrics" / "eval_collector.jsonl"
    with open(path, "a") as f:
        f.write('{"role": "eval_collector", "wall_time": 12.0, "env_st')  # a crash mid-write
    with pytest.warns(UserWarning) as caught:
        result = load(run)
    messages = [str(w.message) for w in caught]
    assert len(result.problems) == 1 and messages == result.problems
    assert str(path) in messages[0] and "read 7 row(s)" in messages[0] and "skipped 1" in messages[0]
    assert "line 8" in messages[0]
    assert (result.frame["role"] == "eval_collector").sum() == 7


def test_a_metric_named_like_an_id_column_keeps_its_prefix(tmp_path):
    run = write_run(tmp_path / "r", collector_depth=4, seed=0)
    log = JsonlLogger(run / "metrics" / "actor_0.jsonl", "actor_0", start_time=0.0)
    log.log({"seed": 99.0, "learner": 5.0}, env_steps=900, grad_steps=0, param_version=0, wall_time=4.0)
    log.close()
    frame = _quiet_load(run).frame
    assert set(frame["seed"]) == {0} and frame["learner"].isin(["collector", "learner_d4", "learner_d16", None]).all()
    assert frame["actor_0/seed"].dropna().tolist() == [99.0]
    assert frame["actor_0/learner"].dropna().tolist() == [5.0]


def test_bad_lines_in_the_middle_and_non_objects_are_skipped_and_counted(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n\n[1, 2]\n{"a": 2}\n\x00\x00\n{"a": 3}\n{"a": ')
    rows, skipped = read_jsonl_tolerant(path)
    assert rows == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert skipped == [2, 4, 6, 8]


def test_an_unreadable_config_skips_that_run_only(tmp_path):
    write_run(tmp_path / "runs" / "good", collector_depth=4, seed=0)
    bad = write_run(tmp_path / "runs" / "bad", collector_depth=4, seed=1)
    (bad / "config.json").write_text('{"format_version": 1, "kind": "ru')
    with pytest.warns(UserWarning, match="bad/config.json"):
        result = load(tmp_path)
    assert [r.name for r in result.runs] == ["runs/good"]
    assert set(result.frame["run"]) == {"runs/good"}


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope")
    result = _quiet_load(tmp_path)
    assert result.runs == [] and len(result.frame) == 0
    assert {"run", "role", "kind", "env_steps"} <= set(result.frame.columns)
