"""Bad input to `depthrl run`, `depthrl resume` and the role commands: one table, one test per case.

Every case must exit with code 2 and a message that names the field (and, where there is a short list, the allowed
values), start nothing and change nothing on disk. The CLI is called in-process (`experiments.cli.main(argv)`) with
the launcher, the inline trainer and the role runner replaced by stubs that record a call: a case that got past
validation would reach one of them and fail the test instead of starting processes. The run directory is compared
before and after (every path, its size, mtime and bytes), and the working directory must stay empty (no stray
`runs/...`).

`depthrl train`'s bad input is covered in test_train_cli.py (its 14 cases are not repeated here: this table takes
the fields and commands that one does not).

Resume cases start from a real stopped run directory built in-process: config.json from `write_config`, a learner
checkpoint per learner written by the learner's own orbax helper (with its params fingerprint), and a Reverb
checkpoint written by a real server. `test_untouched_stopped_run_passes_every_check` is the positive control: the
same directory, unchanged, gets through validation to the (stubbed) launcher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Callable

import psutil
import pytest

import experiments.cli as cli
from experiments.config import DecoupledConfig, EnvConfig, EvalConfig, RunConfig, RuntimeConfig, ScheduleConfig
from learners.crl import CRLConfig
from learners.networks import NetworkShape

# A small valid `depthrl run` command line; every case adds or overrides one thing.
BASE = ["--env", "point_u_maze", "--num-envs", "16", "--batch-size", "64", "--prefill-steps-per-env", "100",
        "--width", "32", "--num-eval-envs", "8", "--env-steps", "48000", "--quiet"]


# --- a stopped run to resume ---------------------------------------------------------------------------------------


def _stopped_run_config(run_dir: Path) -> DecoupledConfig:
    return DecoupledConfig(
        env=EnvConfig(env="point_u_maze"),
        agent=CRLConfig(network=NetworkShape(width=32)),
        schedule=ScheduleConfig(num_envs=16, batch_size=64, prefill_steps_per_env=100, total_env_steps=48_000),
        eval=EvalConfig(num_eval_envs=8),
        run=RunConfig(run_dir=run_dir, quiet=True),
        runtime=RuntimeConfig(collector_depth=4, learner_depths=(4,)),
    )


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """config.json, a learner checkpoint per learner at update 3 and a replay checkpoint: what a stopped run leaves."""
    import jax

    from experiments.compose import RunParts, learner_processes, tables_for
    from experiments.runs import prepare_run_dir, write_config
    from learners.checkpoint import Checkpointer
    from replay import reverb_backend as rb

    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    config = _stopped_run_config(run_dir)
    config.validate()
    prepare_run_dir(run_dir, overwrite=False)
    write_config(run_dir, "run", config)
    parts = RunParts.for_run(config)
    for group in learner_processes(config):
        agents = {name: parts.agent(name) for name in group}
        states = {name: agent.init(jax.random.PRNGKey(i)) for i, (name, agent) in enumerate(agents.items())}
        manager = Checkpointer(run_dir / "checkpoints" / "+".join(group), item="states")
        manager.save(3, states, {"updates": 3, "env_steps_by_actor": {"0": 6400},
                                 "fingerprints": {name: agent.fingerprint() for name, agent in agents.items()}})
        manager.close()
    server = rb.start_server(tables_for(config, parts.plan), parts.window_spec, None,
                             str(run_dir / "replay_checkpoint"))
    try:
        rb.wait_for_server(f"127.0.0.1:{server.port}", 30.0).checkpoint()
    finally:
        server.stop()
    return run_dir


# --- what a case may change ----------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its kind, size, mtime and content hash."""
    if not root.exists():
        return {}
    out = {}
    for path in sorted([root, *root.rglob("*")]):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(root))] = (stat.st_size if path.is_file() else 0, stat.st_mtime_ns, digest)
    return out


@pytest.fixture
def listening_port():
    """A port with a live listener on all interfaces, as a running Reverb server would hold it."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.bind(("", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


# --- the table -----------------------------------------------------------------------------------------------------

Setup = Callable[[Path, Path, int], Path]
"""(case dir, stopped run, busy port) -> the run dir of the case (already prepared)."""


def fresh(case: Path, stopped: Path, port: int) -> Path:
    return case / "run"  # does not exist


def copy_of_stopped(case: Path, stopped: Path, port: int) -> Path:
    run_dir = case / "run"
    shutil.copytree(stopped, run_dir)
    return run_dir


def with_env(name: str, value: str, setup: Setup) -> Setup:
    """`setup`, with an environment variable set (restored after the test: `_diagnostics_env_restored`)."""

    def build(case: Path, stopped: Path, port: int) -> Path:
        os.environ[name] = value
        return setup(case, stopped, port)

    return build


def edited(edit: Callable[[dict, int], None]) -> Setup:
    """A copy of the stopped run whose config.json record was changed by `edit(payload, busy_port)`."""

    def setup(case: Path, stopped: Path, port: int) -> Path:
        run_dir = copy_of_stopped(case, stopped, port)
        payload = json.loads((run_dir / "config.json").read_text())
        edit(payload, port)
        (run_dir / "config.json").write_text(json.dumps(payload))
        return run_dir

    return setup


def damaged(relative_glob: str, how: Callable[[bytes], bytes]) -> Setup:
    """A copy of the stopped run with one file (the first match of `relative_glob`) rewritten as `how(bytes)`."""

    def setup(case: Path, stopped: Path, port: int) -> Path:
        run_dir = copy_of_stopped(case, stopped, port)
        path = sorted(run_dir.glob(relative_glob))[0]
        path.write_bytes(how(path.read_bytes()))
        return run_dir

    return setup


def without(relative_path: str) -> Setup:
    """A copy of the stopped run with one file removed."""

    def setup(case: Path, stopped: Path, port: int) -> Path:
        run_dir = copy_of_stopped(case, stopped, port)
        (run_dir / relative_path).unlink()
        return run_dir

    return setup


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_middle_bytes(data: bytes) -> bytes:
    """Same length, 8 bytes in the middle inverted: damage that only a checksum notices."""
    middle = len(data) // 2
    return data[:middle] + bytes(x ^ 0xFF for x in data[middle:middle + 8]) + data[middle + 8:]


def set_config(section: str, key: str, value) -> Callable[[dict, int], None]:
    def edit(payload: dict, port: int) -> None:
        payload["config"][section][key] = value

    return edit


def set_port(payload: dict, port: int) -> None:
    payload["config"]["runtime"]["replay_port"] = port


def under_a_file(case: Path, stopped: Path, port: int) -> Path:
    (case / "afile").write_text("not a directory\n")
    return case / "afile" / "run"


def a_file(case: Path, stopped: Path, port: int) -> Path:
    (case / "run").write_text("an earlier experiment's notes\n")
    return case / "run"


R = "{run_dir}"
P = "{port}"

# (id, argv, setup, substrings the error message must contain)
CASES: list[tuple[str, list[str], Setup, list[str]]] = [
    # depthrl run: runtime fields
    ("collector_depth_6", ["run", *BASE, "--collector-depth", "6"], fresh,
     ["collector_depth must be a positive multiple of 4", "(4, 8, ..., 1024)", "got 6"]),
    ("collector_depth_0", ["run", *BASE, "--collector-depth", "0"], fresh,
     ["collector_depth must be a positive multiple of 4", "got 0"]),
    ("learner_depth_not_multiple_of_4", ["run", *BASE, "--learner-depths", "16,10"], fresh,
     ["learner_depths must hold positive multiples of 4", "got 10 in [16, 10]"]),
    ("learner_depths_empty", ["run", *BASE, "--learner-depths"], fresh,
     ["learner_depths must name at least one passive learner depth", "multiples of 4"]),
    ("learner_depths_duplicated", ["run", *BASE, "--learner-depths", "4,4"], fresh,
     ["learner_depths must not repeat a depth", "[4, 4]"]),
    ("actor_depth_in_a_run", ["run", *BASE, "--actor-depth", "8"], fresh,
     ["actor_depth/critic_depth are set per role", "--collector-depth", "--learner-depths"]),
    ("actors_0", ["run", *BASE, "--actors", "0"], fresh, ["actors must be a positive integer, got 0"]),
    ("num_envs_not_divisible_by_actors", ["run", *BASE, "--actors", "3"], fresh,
     ["num_envs (16) must be divisible by actors (3)"]),
    ("sampling_mode_unknown", ["run", *BASE, "--sampling-mode", "lockstep"], fresh,
     ["--sampling-mode", "lockstep", "('independent', 'shared-batch')"]),
    ("slow_learner_policy_unknown", ["run", *BASE, "--slow-learner-policy", "drop"], fresh,
     ["--slow-learner-policy", "('throttle_actors', 'fall_behind')"]),
    ("replay_port_out_of_range", ["run", *BASE, "--replay-port", "70000"], fresh,
     ["replay_port must be in 0..65535", "got 70000"]),
    ("replay_port_in_use", ["run", *BASE, "--replay-port", P], fresh,
     [f"replay_port {P} is already in use", "pass 0 for a free one"]),
    ("replay_address_without_port", ["run", *BASE, "--replay-address", "replayhost"], fresh,
     ["replay_address must be HOST:PORT", "1..65535", "'replayhost'"]),
    ("rpc_timeout_0", ["run", *BASE, "--rpc-timeout-seconds", "0"], fresh,
     ["rpc_timeout_seconds must be a positive number, got 0"]),
    ("replay_connect_timeout_negative", ["run", *BASE, "--replay-connect-timeout-seconds", "-1"], fresh,
     ["replay_connect_timeout_seconds must be a positive number, got -1"]),
    ("replay_checkpoint_period_negative", ["run", *BASE, "--replay-checkpoint-every-seconds", "-5"], fresh,
     ["replay_checkpoint_every_seconds must be a positive number, got -5"]),
    ("param_publish_every_0", ["run", *BASE, "--param-publish-every-grad-steps", "0"], fresh,
     ["param_publish_every_grad_steps must be a positive number, got 0"]),
    ("progress_every_nan", ["run", *BASE, "--progress-every-seconds", "nan"], fresh,
     ["progress_every_seconds must be a positive number, got nan"]),
    ("max_restarts_negative", ["run", *BASE, "--max-restarts", "-1"], fresh, ["max_restarts must be >= 0, got -1"]),
    ("gpu_memory_fraction_above_1", ["run", *BASE, "--gpu-memory-fraction", "1.5"], fresh,
     ["gpu_memory_fraction must be in (0, 1], got 1.5"]),
    ("devices_without_device", ["run", *BASE, "--devices", "collector"], fresh,
     ["devices entries must be ROLE=DEVICE", "'cpu' or a GPU index", "got 'collector'"]),
    ("devices_unknown_role", ["run", *BASE, "--devices", "learner_d16=0"], fresh,
     ["devices entries must be ROLE=DEVICE", "'learner_d4'", "got 'learner_d16=0'"]),
    # depthrl run: schedule, eval, agent and run fields that the train table does not cover
    ("goal_discount_1", ["run", *BASE, "--goal-discount", "1.0"], fresh, ["goal_discount must be in (0, 1), got 1.0"]),
    ("update_to_data_nan", ["run", *BASE, "--sgd-steps-per-env-step", "nan"], fresh,
     ["sgd_steps_per_env_step must be a positive number, got nan"]),
    ("unroll_longer_than_buffer", ["run", *BASE, "--unroll-length", "200", "--buffer-capacity-steps", "150"], fresh,
     ["unroll_length (200) must be <= buffer_capacity_steps (150)"]),
    ("prefill_larger_than_buffer", ["run", *BASE, "--prefill-steps-per-env", "300", "--buffer-capacity-steps", "250"],
     fresh, ["prefill_steps_per_env (300) must be <= buffer_capacity_steps (250)"]),
    ("episode_length_0", ["run", *BASE, "--episode-length", "0"], fresh, ["episode_length must be positive, got 0"]),
    ("window_steps_0", ["run", *BASE, "--window-steps", "0"], fresh, ["window_steps must be positive, got 0"]),
    ("eval_every_0", ["run", *BASE, "--eval-every-env-steps", "0"], fresh,
     ["eval_every_env_steps must be a positive integer, got 0"]),
    ("heldout_slots_in_a_decoupled_run", ["run", *BASE, "--heldout-env-slots", "2"], fresh,
     ["heldout_env_slots works in single-process runs only", "--inline"]),
    ("heldout_slots_all_envs", ["run", *BASE, "--inline", "--heldout-env-slots", "16"], fresh,
     ["heldout_env_slots must be in [0, num_envs = 16), got 16"]),
    ("heldout_slots_leave_too_little", ["run", *BASE, "--inline", "--heldout-env-slots", "15", "--window-steps",
                                        "50"], fresh,
     ["batch_size (64) is larger than the training data available per sample once 15 env slots are held out"]),
    ("probe_starts_negative", ["run", *BASE, "--probe-starts", "-1"], fresh, ["probe_starts must be >= 0, got -1"]),
    ("probe_goals_0", ["run", *BASE, "--probe-goals", "0"], fresh, ["probe_goals must be a positive integer, got 0"]),
    ("checkpoint_every_0", ["run", *BASE, "--checkpoint-every-seconds", "0"], fresh,
     ["checkpoint_every_seconds must be positive, got 0"]),
    ("width_0", ["run", *BASE, "--width", "0"], fresh, ["width must be positive, got 0"]),
    ("activation_unknown", ["run", *BASE, "--activation", "tanh"], fresh,
     ["--activation", "'tanh'", "('swish', 'relu')"]),
    ("reset_mode_unknown", ["run", *BASE, "--reset-mode", "never"], fresh,
     ["--reset-mode", "('fixed_per_slot', 'resample')"]),
    ("run_with_resume_flag", ["run", *BASE, "--resume"], fresh, ["use `depthrl resume RUN_DIR`"]),
    # depthrl run: the run directory
    ("run_dir_under_a_file", ["run", *BASE], under_a_file, ["cannot be created", "is a file, not a directory"]),
    ("run_dir_is_a_file", ["run", *BASE], a_file, ["exists and is not a directory"]),
    ("run_into_a_stopped_run", ["run", *BASE], copy_of_stopped, ["already exists", "--resume", "--overwrite"]),
    ("unknown_command", ["frobnicate"], fresh, ["unknown command 'frobnicate'", "run", "resume"]),
    # depthrl resume: the recorded run
    ("resume_missing_dir", ["resume", R], fresh, ["is not a run directory", "config.json"]),
    ("memdiag_seconds_not_a_number", ["run", *BASE], with_env("DEPTHRL_MEMDIAG_SECONDS", "abc", fresh),
     ["DEPTHRL_MEMDIAG_SECONDS='abc' must be a number of seconds, above 0"]),
    ("resume_memdiag_warmup_negative", ["resume", R], with_env("DEPTHRL_MEMDIAG_WARMUP_SECONDS", "-5", copy_of_stopped),
     ["DEPTHRL_MEMDIAG_WARMUP_SECONDS='-5' must be a number of seconds, 0 or more"]),
    ("train_malloc_trim_seconds_not_a_number", ["train", "--run-dir", R], with_env("DEPTHRL_MALLOC_TRIM_SECONDS", "x",
     fresh), ["DEPTHRL_MALLOC_TRIM_SECONDS='x' must be a number of seconds"]),
    ("malloc_trim_seconds_negative", ["run", *BASE], with_env("DEPTHRL_MALLOC_TRIM_SECONDS", "-1", fresh),
     ["DEPTHRL_MALLOC_TRIM_SECONDS='-1' must be a number of seconds, 0 or more"]),
    ("resume_incompatible_version", ["resume", R], edited(lambda p, _: p.update(format_version=0)),
     ["incompatible depthrl", "format_version 0", "format_version 1"]),
    ("resume_a_train_run", ["resume", R], edited(lambda p, _: p.update(kind="train")),
     ["is a 'train' run", "not a 'run' run"]),
    ("resume_config_not_json", ["resume", R], damaged("config.json", half), ["cannot read", "config.json"]),
    ("resume_config_unknown_key", ["resume", R], edited(set_config("runtime", "replay_tls", True)),
     ["unknown config keys ['replay_tls']"]),
    ("resume_config_wrong_type", ["resume", R], edited(set_config("schedule", "num_envs", "sixteen")),
     ["num_envs must be of type int", "'sixteen'"]),
    ("resume_config_unknown_env", ["resume", R], edited(set_config("env", "env", "nope")),
     ["env: unknown env 'nope'", "point_u_maze"]),
    ("resume_config_port_in_use", ["resume", R], edited(set_port), [f"replay_port {P} is already in use"]),
    ("resume_params_fingerprint_mismatch", ["resume", R],
     edited(lambda p, _: p["config"]["agent"]["network"].update(width=64)),
     ["checkpoints/collector/3", "fingerprint", "describes a network", "width"]),
    ("resume_orbax_metadata_damaged", ["resume", R], damaged("checkpoints/collector/3/states/_METADATA", half),
     ["checkpoint", "collector/3 is damaged", "states/_METADATA", "delete that step directory"]),
    ("resume_orbax_counters_damaged", ["resume", R], damaged("checkpoints/learner_d4/3/meta/metadata",
                                                             lambda b: b"{\"upd"),
     ["cannot read the counters of checkpoint", "learner_d4/3"]),
    ("resume_replay_checkpoint_cut_short", ["resume", R], damaged("replay_checkpoint/*/chunks.tfrecord", half),
     ["replay checkpoint", "is damaged", "chunks.tfrecord is cut short"]),
    ("resume_replay_checkpoint_corrupted", ["resume", R],
     damaged("replay_checkpoint/*/tables.tfrecord", flip_middle_bytes),
     ["replay checkpoint", "tables.tfrecord is damaged"]),
    ("resume_replay_checkpoint_of_layout_1", ["resume", R], without("replay_checkpoint.layout"),
     ["replay checkpoint", "holds windows in replay layout 1", "reads layout 3 only", "Move", "aside",
      "learner checkpoints stay valid"]),
    ("resume_replay_checkpoint_of_layout_2", ["resume", R], damaged("replay_checkpoint.layout", lambda b: b"2\n"),
     ["replay checkpoint", "holds windows in replay layout 2", "reads layout 3 only", "Move", "aside"]),
    ("resume_replay_layout_file_garbled", ["resume", R], damaged("replay_checkpoint.layout", lambda b: b"two\n"),
     ["replay checkpoint layout unknown", "replay_checkpoint.layout holds 'two", "not a replay layout number"]),
    # role commands started by hand
    ("role_actor_id_out_of_range", ["actor", "--run-dir", R, "--replay", "127.0.0.1:8000", "--actor-id", "1"],
     copy_of_stopped, ["--actor-id must be in 0..0", "1 actors", "got 1"]),
    ("role_unknown_learner", ["learner", "--run-dir", R, "--replay", "127.0.0.1:8000", "--learners", "learner_d16"],
     copy_of_stopped, ["--learners must list distinct learners of this run (collector, learner_d4)", "'learner_d16'"]),
    ("role_duplicated_learner", ["learner", "--run-dir", R, "--replay", "127.0.0.1:8000", "--learners",
                                 "collector,collector"], copy_of_stopped, ["--learners must list distinct learners"]),
    ("role_unknown_evaluated_learner", ["evaluator", "--run-dir", R, "--replay", "127.0.0.1:8000", "--learner", "x"],
     copy_of_stopped, ["--learner must be one of this run's learners (collector, learner_d4)", "got 'x'"]),
    ("role_replay_address_without_port", ["actor", "--run-dir", R, "--replay", "localhost", "--actor-id", "0"],
     copy_of_stopped, ["--replay must be HOST:PORT", "'localhost'"]),
    ("role_replay_port_in_use", ["replay", "--run-dir", R, "--port", P], copy_of_stopped,
     [f"--port {P} is already in use"]),
    ("role_replay_port_0", ["replay", "--run-dir", R, "--port", "0"], copy_of_stopped,
     ["--port must be in 1..65535, got 0"]),
    ("role_not_a_run_dir", ["evaluator", "--run-dir", R, "--replay", "127.0.0.1:8000", "--learner", "collector"],
     fresh, ["is not a run directory", "config.json"]),
]


def normalized(text: str) -> str:
    """stderr without tyro's box drawing and line wrapping, so a message can be matched as one line."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


@pytest.fixture
def nothing_starts(monkeypatch):
    """Replace everything that would start work by stubs that record the call and return 99."""
    import experiments.inline
    import experiments.launcher

    calls: list[str] = []

    def stub(name):
        def record(*args, **kwargs):
            calls.append(name)
            return 99

        return record

    monkeypatch.setattr(experiments.launcher, "supervise", stub("launcher.supervise"))
    monkeypatch.setattr(experiments.inline, "run_training", stub("inline.run_training"))
    monkeypatch.setattr(cli, "_run_role", stub("cli._run_role"))
    return calls


@pytest.fixture(autouse=True)
def _diagnostics_env_restored(monkeypatch):
    """The memory-diagnostics variables are unset in every case (and restored afterwards), whatever `with_env` did."""
    for name in ("DEPTHRL_MEMDIAG_SECONDS", "DEPTHRL_MEMDIAG_WARMUP_SECONDS", "DEPTHRL_MALLOC_TRIM_SECONDS"):
        monkeypatch.setenv(name, "")


@pytest.mark.parametrize("argv, setup, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_names_the_field_starts_and_changes_nothing(
    argv, setup, expected, stopped_run, listening_port, nothing_starts, tmp_path, monkeypatch, capsys
):
    case = tmp_path / "case"
    case.mkdir()
    run_dir = setup(case, stopped_run, listening_port)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    fill = lambda s: s.replace(R, str(run_dir)).replace(P, str(listening_port))
    argv = [fill(a) for a in argv]
    if argv[0] == "run":
        argv += ["--run-dir", str(run_dir)]
    before = snapshot(case)
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}

    code = cli.main(argv)

    err = normalized(capsys.readouterr().err)
    print(err.strip())
    assert nothing_starts == [], f"validation let it through to {nothing_starts}"
    assert code == 2, f"exit code {code}; stderr: {err[-2000:]}"
    for text in expected:
        assert normalized(fill(text)) in err, f"{fill(text)!r} not in stderr: {err[-2000:]}"
    assert "Traceback" not in err
    assert snapshot(case) == before, "the run directory (or its parent) changed"
    assert list(cwd.iterdir()) == [], "something was written to the working directory"
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children_before, "a process was started"


def test_the_table_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_untouched_stopped_run_passes_every_check(stopped_run, nothing_starts, tmp_path, capsys):
    """Positive control for the resume and role cases: the unchanged run directory gets through validation."""
    run_dir = copy_of_stopped(tmp_path, stopped_run, 0)
    assert cli.main(["resume", str(run_dir)]) == 99
    assert cli.main(["actor", "--run-dir", str(run_dir), "--replay", "127.0.0.1:8000", "--actor-id", "0"]) == 99
    assert nothing_starts == ["launcher.supervise", "cli._run_role"]


def test_format_1_run_dir_still_resumes(stopped_run, nothing_starts, tmp_path):
    """A run directory written before config.json format 2 (network fields flat in `agent`, depths only in `runtime`,
    actors' env steps only in their metrics) loads, resumes, and gets its actors' status from their metrics once."""
    from experiments.compose import load_run_config
    from replay.status import RunStatus

    run_dir = copy_of_stopped(tmp_path, stopped_run, 0)
    payload = json.loads((run_dir / "config.json").read_text())
    agent = payload["config"]["agent"]
    agent.update(agent.pop("network"), actor_depth=4, critic_depth=4)
    payload.pop("learners")
    payload["format_version"] = 1
    (run_dir / "config.json").write_text(json.dumps(payload))
    (run_dir / "metrics").mkdir(exist_ok=True)
    (run_dir / "metrics" / "actor_0.jsonl").write_text('{"role": "actor_0", "env_steps": 6400}\n')
    assert load_run_config(run_dir) == load_run_config(stopped_run)
    assert cli.main(["resume", str(run_dir)]) == 99
    assert nothing_starts == ["launcher.supervise"]
    status = RunStatus(run_dir).get("actor_0")
    assert status is not None and status.env_steps == 6400 and status.state == "stopped"


def test_roles_started_by_hand_warn_about_the_exposed_port(stopped_run, nothing_starts, tmp_path, monkeypatch,
                                                           capsys):
    """Multi-host mode by hand: a role pointed at a non-loopback replay address, and a replay server started outside
    the launcher (it listens on all interfaces), print a warning naming the port. Loopback addresses do not."""
    import portpicker

    from experiments.launcher import LAUNCHER_PID_ENV

    run_dir = copy_of_stopped(tmp_path, stopped_run, 0)
    monkeypatch.delenv(LAUNCHER_PID_ENV, raising=False)
    assert cli.main(["actor", "--run-dir", str(run_dir), "--replay", "10.1.2.3:8123", "--actor-id", "0"]) == 99
    err = capsys.readouterr().err
    assert "WARNING: multi-host mode: the replay server 10.1.2.3:8123" in err and "port 8123" in err
    learner = ["learner", "--run-dir", str(run_dir), "--replay", "127.0.0.1:8123", "--learners", "collector"]
    assert cli.main(learner) == 99
    assert "WARNING" not in capsys.readouterr().err
    port = portpicker.pick_unused_port()
    assert cli.main(["replay", "--run-dir", str(run_dir), "--port", str(port)]) == 99
    err = capsys.readouterr().err
    assert f"WARNING: the replay server listens on all interfaces, port {port}" in err
    assert nothing_starts == ["cli._run_role"] * 3
