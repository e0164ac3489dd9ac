"""Weights & Biases in offline mode, with the real `wandb` package (the pinned optional extra).

wandb is not part of the default install: the tests install `requirements-wandb.lock` into a directory of their own
(kept under `.venv/` between runs) and run their subprocesses with it on PYTHONPATH; the project venv stays as it is.
They skip, saying why, when that install is impossible (no package registry)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / ".venv" / "wandb-site"

# Reads an offline W&B run directory back with wandb's own record reader: prints one JSON line per record of interest.
READ_OFFLINE = r"""
import glob, json, sys
from wandb.proto import wandb_internal_pb2
from wandb.sdk.internal import datastore
for path in sorted(glob.glob(sys.argv[1] + "/wandb/offline-run-*/run-*.wandb")):
    store = datastore.DataStore()
    store.open_for_scan(path)
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            print(json.dumps({"history": items}))
        elif kind == "run":
            print(json.dumps({"run": record.run.run_id, "group": record.run.run_group, "tags": list(record.run.tags),
                              "config": {item.key: json.loads(item.value_json) for item in record.run.config.update}}))
"""


@pytest.fixture(scope="module")
def wandb_env() -> dict[str, str]:
    if not (SITE / "wandb").is_dir():
        tmp = SITE.with_name("wandb-site.partial")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp),
                               "-r", str(REPO / "requirements-wandb.lock")], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"cannot install the optional wandb extra here (pip exit {proc.returncode}): "
                        f"{proc.stderr.strip()[-300:]}")
        tmp.rename(SITE)
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(SITE)]), JAX_PLATFORMS="cpu", WANDB_MODE="offline",
               WANDB_SILENT="true", WANDB_DISABLE_GIT="true")
    return env


def offline_records(run_dir: Path, env: dict[str, str]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", READ_OFFLINE, str(run_dir)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def steps_by_role(records: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.get("history", {}).items():
            if key.endswith("/step"):
                out.setdefault(key.removesuffix("/step"), []).append(value)
    return out


def test_train_run_logs_one_offline_wandb_run_with_config_tags_and_figures(wandb_env, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--env", "point_u_maze", "--num-envs", "16", "--unroll-length", "20", "--batch-size", "64",
            "--prefill-steps-per-env", "100", "--num-eval-envs", "8", "--width", "32", "--total-env-steps", "2240",
            "--eval-every-env-steps", "960", "--log", "jsonl,wandb", "--wandb-group", "grid_a", "--run-dir",
            str(run_dir)]
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=REPO, env=wandb_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = offline_records(run_dir, wandb_env)
    (run,) = [r for r in records if "run" in r]
    assert run["group"] == "grid_a"
    assert {"env:point_u_maze", "kind:train", "collector:d4"} <= set(run["tags"])
    assert run["config"]["schedule.num_envs"] == 16 and run["config"]["agent.network.width"] == 32
    keys = set().union(*(r["history"] for r in records if "history" in r))
    assert {"collector/critic_loss", "collector/update_to_data", "eval_collector/time_at_goal"} <= keys
    assert any(key.startswith("figures/") for key in keys), sorted(keys)  # the report's figures, at the end
    jsonl_rows = [json.loads(line) for line in (run_dir / "metrics" / "collector.jsonl").read_text().splitlines()]
    assert steps_by_role(records)["collector"] == [row["grad_steps"] for row in jsonl_rows]


FEED = r"""
import json, sys
from pathlib import Path
from experiments.tracking import WandbFeed, WandbRun
run_dir = Path(sys.argv[1])
metrics = run_dir / "metrics"
metrics.mkdir(exist_ok=True)
def append(role, rows, tail=""):
    with open(metrics / f"{role}.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write(tail)
def learner(g): return {"role": "collector", "grad_steps": g, "env_steps": 100 * g, "collector/critic_loss": 1.0 / g}
def evaluation(e): return {"role": "eval_collector", "grad_steps": 0, "env_steps": e, "eval_collector/time_at_goal": 1.0}
if sys.argv[2] == "first":
    append("collector", [learner(g) for g in (4, 8, 12)], tail='{"role": "collector", "grad')  # a line being written
    append("eval_collector", [evaluation(400)])
else:
    # The learner resumed from its checkpoint at step 8: step 12 comes again, then 16.
    with open(metrics / "collector.jsonl", "a") as f:
        f.write('_steps": 13}\n')  # the interrupted line, completed (not a row worth sending: unknown step 13)
    append("collector", [learner(g) for g in (12, 16)])
    append("eval_collector", [evaluation(800)])
feed = WandbFeed(WandbRun(run_dir, group="g"), metrics)
print(feed.poll())
feed.run.finish()
"""


def test_launcher_feed_resumes_the_same_run_without_sending_a_step_twice(wandb_env, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"kind": "run", "config": {"env": {"env": "point_u_maze"}},
                                                     "learners": [{"name": "collector", "critic_depth": 4,
                                                                   "collects": True}]}))
    sent = []
    for phase in ("first", "resumed"):
        proc = subprocess.run([sys.executable, "-c", FEED, str(run_dir), phase], cwd=REPO, env=wandb_env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        sent.append(int(proc.stdout.split()[-1]))
    records = offline_records(run_dir, wandb_env)
    assert len({r["run"] for r in records if "run" in r}) == 1  # the resumed launcher continued the same W&B run
    steps = steps_by_role(records)
    assert steps["collector"] == [4, 8, 12, 13, 16]  # 12 once; the completed line counts as its own row
    assert steps["eval_collector"] == [400, 800]
    assert sent == [4, 3]
