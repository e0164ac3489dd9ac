"""Faults a decoupled run survives, each injected for real into `depthrl run`: the real launcher, Reverb server,
learner, evaluator and actor processes. Assertions are on what the run wrote (metrics, logs, checkpoints) and on the
processes left behind.

Shape of every run (shared with the compilation cache of the session): point_u_maze, 16 env slots, windows of T = 100
steps (the episode length), unroll 20, batch 64, width 32, one actor, collector and one passive learner of depth 4,
and 0.1 SGD steps per env step (4x the paper's ratio: the learners, not the actor, set the pace, so the run lasts long
enough to hit it mid-way). Hand-computed schedule: K = 0.1 x 16 x 20 = 32 SGD steps per update; the prefill is
ceil(100 / 100) x 16 = 16 windows = 1,600 env steps; an actor writes 16 x 100 = 1,600 env steps per write, so a budget
of 32,000 env steps is 20 writes and the learners' target is 0.1 x 30,400 = 3,040 SGD steps (95 updates).
N = ceil(32 x 64 / 100) = 21 windows per sample; the limiter's error buffer, 21 + 6.5625 x 16 = 126 windows, covers
the 4 x 21 = 84 a stopped learner may have prefetched, so a resumed run can reach the target exactly.
Faults are injected early (the tests check that less than half of the work is done), so the run cannot end without
the role that was hit.

Kill -9 is SIGKILL on one role's pid (found with psutil among the launcher's children). The disk-full case lowers
RLIMIT_FSIZE of the running learner (we run as root in CI containers, where chmod does not stop writes): every write
that would grow a file past the limit then fails with EFBIG, exactly where a full disk fails with ENOSPC.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import REPO_ROOT, cli_env, wait_for

pytestmark = pytest.mark.faults

BUDGET_ENV_STEPS = 32_000
ENV_STEPS_PER_WRITE = 16 * 100
K = 32
TARGET_GRAD_STEPS = 3_040
RUN_ARGS = [
    "--env", "point_u_maze", "--num-envs", "16", "--unroll-length", "20", "--sgd-steps-per-env-step", "0.1",
    "--batch-size", "64", "--prefill-steps-per-env", "100",
    "--width", "32", "--num-eval-envs", "8", "--collector-depth", "4", "--learner-depths", "4", "--actors", "1",
    "--param-publish-every-grad-steps", "40", "--eval-every-env-steps", "16000",
    "--rpc-timeout-seconds", "10", "--checkpoint-every-seconds", "2", "--replay-checkpoint-every-seconds", "2",
    "--max-restarts", "2", "--progress-every-seconds", "1", "--env-steps", str(BUDGET_ENV_STEPS),
]
RUN_TIMEOUT_SECONDS = 420.0
"""Bound on one run, start to exit. The tests fail (and kill the process group) past it: a hang is a failure."""


class Run:
    """`depthrl run` started by a test, its stdout/stderr in files; killed with its process group at teardown."""

    def __init__(self, args: list[str], run_dir: Path, env: dict[str, str], out_dir: Path, name: str = "run"):
        self.run_dir = run_dir
        self.stderr_path = out_dir / f"{name}.err"
        self._out = open(out_dir / f"{name}.out", "w")
        self._err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], cwd=REPO_ROOT, env=env,
                                     stdout=self._out, stderr=self._err, start_new_session=True)
        self.pids_seen: set[int] = set()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def roles(self) -> dict[str, psutil.Process]:
        """Live role processes by role name (`replay`, `learner:collector`, `eval_collector`, `actor_0`)."""
        out = {}
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return out
        for child in children:
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if len(cmd) < 4 or cmd[2] != "experiments.cli":
                continue
            arg = lambda flag: cmd[cmd.index(flag) + 1]
            name = {"replay": lambda: "replay", "learner": lambda: f"learner:{arg('--learners')}",
                    "evaluator": lambda: f"eval_{arg('--learner')}", "actor": lambda: f"actor_{arg('--actor-id')}"}
            if cmd[3] in name:
                out[name[cmd[3]]()] = child
                self.pids_seen.add(child.pid)
        return out

    def role(self, name: str, timeout: float = 60.0) -> psutil.Process:
        assert wait_for(lambda: name in self.roles(), timeout, 0.1), f"no live {name} process\n{self.stderr[-3000:]}"
        return self.roles()[name]

    def wait(self, timeout: float = RUN_TIMEOUT_SECONDS) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"run did not finish within {timeout} s\n{self.stderr[-5000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for pid in self.pids_seen:  # roles run in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.kill()
        self._out.close()
        self._err.close()


@pytest.fixture
def start_run(compilation_cache_dir, tmp_path):
    runs: list[Run] = []

    def start(extra: list[str] = (), command: str = "run", name: str = "run") -> Run:
        run_dir = tmp_path / "run"
        args = [command, str(run_dir)] if command == "resume" else \
            [command, "--run-dir", str(run_dir), *RUN_ARGS, *extra]
        run = Run(args, run_dir, cli_env(compilation_cache_dir), tmp_path, name)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def rows(path: Path) -> list[dict]:
    """Complete JSON lines of a metrics file (a line being written right now is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def metric(run: Run, role: str) -> list[dict]:
    return rows(run.run_dir / "metrics" / f"{role}.jsonl")


def starts(run: Run, log: str) -> int:
    """How many times the launcher started a role (one `=== start` line per start in its log)."""
    return (run.run_dir / "logs" / f"{log}.log").read_text(errors="replace").count("=== start")


def log_text(run: Run, log: str) -> str:
    return (run.run_dir / "logs" / f"{log}.log").read_text(errors="replace")


def checkpoint_steps(run: Run, process: str) -> list[int]:
    """Complete orbax checkpoints of a learner process (orbax renames a step directory to its number when done)."""
    root = run.run_dir / "checkpoints" / process
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def no_role_left(run: Run) -> list[str]:
    """Processes of this run still alive: children seen during the run, or anything naming its run dir."""
    alive = []
    for pid in run.pids_seen:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(run.run_dir) in cmd and proc.info["pid"] not in run.pids_seen and proc.info["pid"] != run.proc.pid:
            alive.append(f"{proc.info['pid']} {cmd}")
    return alive


def assert_finished_budget(run: Run, actor_may_stop_early: bool = False) -> None:
    """The actor wrote the whole env-step budget; every learner reached its target or logged exactly how far short
    it stopped (a restart can use up samples the rate limiter never gives back); every evaluator scored the learner's
    last params. `actor_may_stop_early`: after a replay restore the learners may reach their targets first (samples
    drawn after the checkpoint are forgotten by the limiter); the launcher then stops the actor."""
    actor = metric(run, "actor_0")
    finals = [metric(run, name)[-1]["grad_steps"] for name in ("collector", "learner_d4")]
    if not (actor_may_stop_early and finals == [TARGET_GRAD_STEPS] * 2):
        assert actor[-1]["env_steps"] == BUDGET_ENV_STEPS, actor[-1]
    for name in ("collector", "learner_d4"):
        learner = metric(run, name)
        final = learner[-1]
        short = final.get(f"{name}/grad_steps_short_of_target")
        if short is None:
            assert final["grad_steps"] == TARGET_GRAD_STEPS, final
        else:
            assert final["grad_steps"] + short == TARGET_GRAD_STEPS and short > 0, final
        evals = metric(run, f"eval_{name}")
        assert evals[-1]["grad_steps"] == final["grad_steps"], (evals[-1], final)


def assert_no_crash(run: Run, *logs: str) -> None:
    for log in logs:
        assert starts(run, log) == 1, f"{log} was restarted:\n{log_text(run, log)[-3000:]}"


# --- kill -9 of an actor -------------------------------------------------------------------------------------------


def test_kill_actor_is_restarted_and_learners_keep_training(start_run):
    run = start_run()
    learner_rows = lambda: metric(run, "collector")
    assert wait_for(lambda: len(learner_rows()) >= 2 and len(metric(run, "actor_0")) >= 3, 300, 0.1), run.stderr[-4000:]
    learners_before = {n: p.pid for n, p in run.roles().items() if n.startswith("learner:")}
    actor = run.role("actor_0")
    written_before = metric(run, "actor_0")[-1]["env_steps"]
    assert written_before < BUDGET_ENV_STEPS // 2, "the run is too far along to test a restart"
    actor.kill()
    actor.wait(10)  # gone: nothing it had buffered can land in its files after the reads below
    killed_at = time.monotonic()
    grad_at_kill = learner_rows()[-1]["grad_steps"]

    # Until the restarted actor writes again, the learners train on what replay holds (and its limiter slack).
    assert wait_for(lambda: len(metric(run, "actor_0")) > 0 and metric(run, "actor_0")[-1]["env_steps"] > written_before
                    and starts(run, "actor_0") == 2, 120, 0.05), run.stderr[-4000:]
    outage_seconds = time.monotonic() - killed_at
    grad_while_actor_was_down = learner_rows()[-1]["grad_steps"]
    learners_after = {n: p.pid for n, p in run.roles().items() if n.startswith("learner:")}

    code = run.wait()
    stderr = run.stderr
    print(f"actor outage {outage_seconds:.1f} s; collector grad steps {grad_at_kill} -> {grad_while_actor_was_down}")
    assert code == 0, stderr[-5000:]
    assert "role actor_0 was killed by SIGKILL; restart 1/2 in 1 s" in stderr
    assert starts(run, "actor_0") == 2
    assert_no_crash(run, "learner_collector", "learner_learner_d4", "eval_collector", "eval_learner_d4", "replay")
    assert learners_after == learners_before  # the same learner processes throughout
    assert grad_while_actor_was_down > grad_at_kill  # learners kept training while the actor was down
    # The outage shows: in the progress table (DOWN, then the restart count) and in the learner's metrics (time it
    # waited for data once the data the limiter allowed was used up).
    assert re.search(r"actor_0 .*DOWN \(was killed by SIGKILL", stderr), stderr[-3000:]
    assert re.search(r"actor_0 .*restarts 1", stderr)
    waits = [r["collector/sample_wait_seconds"] for r in learner_rows() if r["grad_steps"] > grad_at_kill
             and "collector/sample_wait_seconds" in r]
    assert max(waits) > 1.0, waits
    # The restarted actor continues its env-step count (from its metrics) instead of starting over.
    steps = [r["env_steps"] for r in metric(run, "actor_0")]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert steps == list(range(ENV_STEPS_PER_WRITE, BUDGET_ENV_STEPS + 1, ENV_STEPS_PER_WRITE))
    assert_finished_budget(run)
    assert no_role_left(run) == []


# --- kill -9 of a learner ------------------------------------------------------------------------------------------


def test_kill_learner_resumes_from_its_checkpoint_and_evaluator_notices(start_run):
    run = start_run()
    assert wait_for(lambda: len(checkpoint_steps(run, "collector")) >= 1 and len(metric(run, "collector")) >= 3
                    and metric(run, "collector")[-1]["grad_steps"] >= 4 * K, 300, 0.1), run.stderr[-4000:]
    learner = run.role("learner:collector")
    learner.kill()
    learner.wait(10)
    grad_at_kill = metric(run, "collector")[-1]["grad_steps"]
    checkpoint_update = checkpoint_steps(run, "collector")[-1]  # complete before the kill; orbax saves are atomic
    assert grad_at_kill < TARGET_GRAD_STEPS // 2, "the run is too far along to test a restart"

    code = run.wait()
    stderr = run.stderr
    assert code == 0, stderr[-5000:]
    assert "role learner:collector was killed by SIGKILL; restart 1/2" in stderr
    assert starts(run, "learner_collector") == 2
    assert_no_crash(run, "learner_learner_d4", "eval_collector", "eval_learner_d4", "replay", "actor_0")
    log = log_text(run, "learner_collector")
    resumed = re.search(r"resumed at update (\d+) \(grad steps \{'collector': (\d+)\}\)", log)
    assert resumed, log[-3000:]
    update, grad = int(resumed.group(1)), int(resumed.group(2))
    print(f"killed at grad step {grad_at_kill}; newest checkpoint then: update {checkpoint_update}; "
          f"resumed at update {update} = grad step {grad}")
    assert update == checkpoint_update and grad == update * K > 0  # from its last checkpoint, not from zero
    grads = [r["grad_steps"] for r in metric(run, "collector")]
    after = grads[grads.index(grad_at_kill) + 1:]
    assert after[0] == grad + K  # the first update after the restart continues the checkpoint
    assert min(after) > 0
    # The evaluator saw the version go back to the checkpoint's and says so; its last row counts it.
    eval_log = log_text(run, "eval_collector")
    went_back = re.search(r"params of collector went back from version (\d+) to (\d+)", eval_log)
    assert went_back, eval_log[-3000:]
    assert int(went_back.group(2)) == grad
    assert metric(run, "eval_collector")[-1]["eval_collector/param_version_resets"] >= 1
    assert_finished_budget(run)
    assert no_role_left(run) == []


# --- kill -9 of the replay server ----------------------------------------------------------------------------------


def test_kill_replay_server_restores_its_checkpoint_and_nobody_hangs(start_run):
    run = start_run()
    replay_rows = lambda: metric(run, "replay")
    checkpoints = lambda: [p for p in (run.run_dir / "replay_checkpoint").glob("*") if (p / "DONE").exists()]
    assert wait_for(lambda: len(metric(run, "collector")) >= 2 and checkpoints() and replay_rows()
                    and replay_rows()[-1]["replay/collector/inserts"] > 16, 300, 0.1), run.stderr[-4000:]
    replay = run.role("replay")
    replay.kill()
    replay.wait(10)
    killed_at = time.monotonic()
    # Windows in the tables at the kill: at most what the actor had confirmed, plus one write in flight.
    windows_written = metric(run, "actor_0")[-1]["env_steps"] // 100 + 16
    grad_at_kill = {name: metric(run, name)[-1]["grad_steps"] for name in ("collector", "learner_d4")}
    assert max(grad_at_kill.values()) < TARGET_GRAD_STEPS // 2, "the run is too far along to test a restart"

    code = run.wait()
    seconds = time.monotonic() - killed_at
    stderr = run.stderr
    print(f"run finished {seconds:.0f} s after the replay server was killed")
    assert code == 0, stderr[-5000:]
    assert "role replay was killed by SIGKILL; restart 1/2" in stderr
    assert starts(run, "replay") == 2
    # Nobody else crashed or hung: learners, evaluators and the actor reconnected on their own.
    assert_no_crash(run, "learner_collector", "learner_learner_d4", "eval_collector", "eval_learner_d4", "actor_0")
    restored = [r for r in replay_rows() if r.get("replay/restored_from_checkpoint")]
    assert len(restored) == 1
    # The restored tables hold the checkpoint's windows (the prefill at least), never more than had been written;
    # the limiter counters come back with them.
    for table in ("collector", "learner_d4"):
        assert 16 <= restored[0][f"replay/{table}/size"] <= windows_written, (restored[0], windows_written)
        assert restored[0][f"replay/{table}/inserts"] == restored[0][f"replay/{table}/size"]  # no FIFO eviction yet
    assert "restored from checkpoint" in log_text(run, "replay")
    for name in ("collector", "learner_d4"):
        learner = metric(run, name)
        grads = [r["grad_steps"] for r in learner]
        assert grads == sorted(grads), name  # grad steps never go back
        # The outage shows in the learner's rows from the kill on as a gap in wall time (waiting on samples and on
        # publishes that time out), and in the progress table as the replay role being DOWN.
        after = [r for r in learner if r["grad_steps"] >= grad_at_kill[name]]
        assert max(b["wall_time"] - a["wall_time"] for a, b in zip(after, after[1:])) > 3.0, name
    assert re.search(r"replay .*restarts 1  DOWN \(was killed by SIGKILL", stderr), stderr[-3000:]
    assert_finished_budget(run, actor_may_stop_early=True)
    assert no_role_left(run) == []


# --- SIGINT to the launcher, then resume ---------------------------------------------------------------------------


def test_sigint_stops_every_child_within_10_s_and_resume_finishes_the_budget(start_run):
    run = start_run()
    assert wait_for(lambda: len(metric(run, "learner_d4")) >= 2, 300, 0.1), run.stderr[-4000:]
    children = list(run.roles().values())
    assert len(children) == 6  # replay, 2 learners, 2 evaluators, 1 actor
    rows_before = {name: metric(run, name) for name in ("collector", "learner_d4", "actor_0")}
    assert rows_before["actor_0"][-1]["env_steps"] < BUDGET_ENV_STEPS
    signalled = time.monotonic()
    os.kill(run.proc.pid, signal.SIGINT)
    _, alive = psutil.wait_procs(children, timeout=10.0)
    children_gone = time.monotonic() - signalled
    code = run.wait(30)
    print(f"every child gone {children_gone:.1f} s after SIGINT")
    assert alive == [], f"still alive 10 s after SIGINT: {alive}"
    assert code == 130, run.stderr[-3000:]
    assert "continue with: depthrl resume" in run.stderr
    assert no_role_left(run) == []

    resumed = start_run(command="resume", name="resume")
    code = resumed.wait()
    assert code == 0, resumed.stderr[-5000:]
    for name, before in rows_before.items():
        after = metric(resumed, name)
        assert after[: len(before)] == before  # appended, never rewritten
        steps = [r["env_steps" if name == "actor_0" else "grad_steps"] for r in after]
        assert steps == sorted(steps)
    # Same final budget as an uninterrupted run: all env steps written once, every learner at its target.
    actor_steps = [r["env_steps"] for r in metric(resumed, "actor_0")]
    assert actor_steps == list(range(ENV_STEPS_PER_WRITE, BUDGET_ENV_STEPS + 1, ENV_STEPS_PER_WRITE))
    for name in ("collector", "learner_d4"):
        assert metric(resumed, name)[-1]["grad_steps"] == TARGET_GRAD_STEPS
        assert metric(resumed, f"eval_{name}")[-1]["grad_steps"] == TARGET_GRAD_STEPS
    assert_finished_budget(resumed)
    assert no_role_left(resumed) == []


# --- a role that keeps crashing ------------------------------------------------------------------------------------


def test_crash_looping_roles_stop_the_run_with_the_last_error(start_run):
    """Multi-host mode with a replay address nobody answers on: every role raises ReplayTimeout at start. After the
    restart budget the run stops with that error, after a bounded number of starts; the launcher warned that the
    replay port is exposed."""
    port = 5999
    run = start_run(["--replay-address", f"192.0.2.1:{port}", "--replay-connect-timeout-seconds", "2",
                     "--max-restarts", "1", "--sampling-mode", "shared-batch"])  # one learner process: fewer to start
    code = run.wait(180)
    stderr = run.stderr
    assert code == 1, stderr[-5000:]
    assert re.search(rf"WARNING: multi-host mode: the replay server 192\.0\.2\.1:{port} .*port {port}", stderr)
    failed = re.search(r"depthrl run: role (\S+) failed 2 times, the last time it exited with code 1; giving up "
                       r"\(--max-restarts 1\)\.\nlast error: (.*)", stderr)
    assert failed, stderr[-5000:]
    assert "ReplayTimeout: replay server 192.0.2.1:5999 not reachable within 2.0 s" in failed.group(2)
    assert "restart 1/1 in 1 s" in stderr and "restart 2/" not in stderr  # one restart per role, after a backoff
    for log in ("learner_collector+learner_d4", "eval_collector", "eval_learner_d4", "actor_0"):
        assert 1 <= starts(run, log) <= 2, log  # no endless loop
    assert no_role_left(run) == []


# --- disk full -----------------------------------------------------------------------------------------------------


def test_disk_full_learner_fails_clearly_and_resumes_from_its_last_complete_checkpoint(start_run):
    run = start_run()
    assert wait_for(lambda: len(checkpoint_steps(run, "collector")) >= 1 and len(metric(run, "collector")) >= 3,
                    300, 0.1), run.stderr[-4000:]
    learner = run.role("learner:collector")
    # Room in its log for the error (and orbax's noise), none for a checkpoint: the largest array file of a
    # checkpoint here is ~180 KB. Whatever it writes next past the limit fails: a metrics row or the checkpoint.
    limit_bytes = (run.run_dir / "logs" / "learner_collector.log").stat().st_size + 32 * 1024
    learner.rlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    complete_before = checkpoint_steps(run, "collector")
    assert metric(run, "collector")[-1]["grad_steps"] < TARGET_GRAD_STEPS // 2, "too far along to test a restart"

    code = run.wait()
    stderr = run.stderr
    assert code == 0, stderr[-5000:]
    assert ("role learner:collector could not write to the run directory (exit 74: disk full or not writable); "
            "restart 1/2") in stderr
    log = log_text(run, "learner_collector")
    # The role's own message may not fit into its log (neither would it on a full disk): the exit code carries the
    # cause to the launcher, above. The log shows the failed write itself.
    assert "File too large" in log, log[-3000:]
    resumed = re.search(r"resumed at update (\d+)", log)
    assert resumed, log[-3000:]
    # The restarted learner loaded the newest checkpoint that was complete when the disk filled up (or a save that
    # had written all its files just before): the failed save damaged nothing already written.
    assert int(resumed.group(1)) >= complete_before[-1], (resumed.group(0), complete_before)
    assert_no_crash(run, "learner_learner_d4", "eval_collector", "eval_learner_d4", "replay", "actor_0")
    assert_finished_budget(run)
    assert no_role_left(run) == []


# --- how a stall looks in the progress table -----------------------------------------------------------------------


def test_progress_table_flags_down_stalled_and_blocking_roles(tmp_path):
    """The launcher's progress table, from metrics files written here: a role waiting for its restart is DOWN, a
    learner or actor whose metrics stopped growing is STALLED, a learner whose table holds back inserts is BLOCKING
    ACTORS, and the rate-limiter wait counters are shown in seconds. Evaluators are idle between evaluations by design
    and are never flagged."""
    from experiments.config import DecoupledConfig
    from experiments.launcher import STALE_AFTER_SECONDS, Role, progress_table

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    row = {"wall_time": 1.0, "env_steps": 3200, "grad_steps": 64, "param_version": 64}
    (metrics / "collector.jsonl").write_text(json.dumps({**row, "role": "collector",
                                                         "collector/sample_wait_seconds": 12.5,
                                                         "collector/samples_blocked_ms": 7000.0,
                                                         "collector/inserts_blocked_ms": 2000.0,
                                                         "collector/limiter_blocks_inserts": 1.0}) + "\n")
    (metrics / "learner_d4.jsonl").write_text(json.dumps({**row, "role": "learner_d4"}) + "\n")
    (metrics / "actor_0.jsonl").write_text(json.dumps({**row, "role": "actor_0"}) + "\n")
    (metrics / "eval_collector.jsonl").write_text(json.dumps({**row, "role": "eval_collector"}) + "\n")
    (metrics / "replay.jsonl").write_text(json.dumps({
        "wall_time": 1.0, "env_steps": 0, "grad_steps": 0, "param_version": 0, "role": "replay",
        "replay/collector/size": 40.0, "replay/collector/inserts": 1234.0,
        "replay/collector/worker_waiting_for_inserts_ms": 3000.0}) + "\n")
    old = time.time() - STALE_AFTER_SECONDS - 15
    for name in ("learner_d4", "eval_collector"):
        os.utime(metrics / f"{name}.jsonl", (old, old))
    actor = Role("actor_0", [], {}, tmp_path / "a.log", restarts=1, last_exit="was killed by SIGKILL",
                 restart_at=time.monotonic() + 4)
    learners = [Role(f"learner:{n}", [], {}, tmp_path / f"{n}.log") for n in ("collector", "learner_d4")]

    lines = {line.split()[0]: line for line in progress_table(tmp_path, DecoupledConfig(),
                                                                [actor, *learners]).splitlines()}
    assert "restarts 1  DOWN (was killed by SIGKILL; restart in 4 s)" in lines["actor_0"]
    assert re.search(r"STALLED: no row for 4\d s", lines["learner_d4"]), lines["learner_d4"]
    assert "STALLED" not in lines["collector"] and "STALLED" not in lines["eval_collector"]
    assert "BLOCKING ACTORS" in lines["collector"]
    assert "wait_data_s 12.5  limiter_blocked_samples_s 7  limiter_blocked_inserts_s 2" in lines["collector"]
    assert "collector: size 40 inserted 1,234 samples_wait_s 3 inserts_wait_s 0" in lines["replay"]
    assert "env " not in lines["replay"] and "grad " not in lines["replay"]  # counters the server does not keep


def test_progress_table_flags_a_role_whose_memory_grows():
    """`rss_mib` in every row: a learner growing 3 MiB/min after warm-up is flagged with its slope, a flat one (with
    noise) and one that grew only during the warm-up are not; too few rows give no slope."""
    from experiments.launcher import RSS_GROWTH_FLAG_MIB_PER_MIN, rss_growth_mib_per_min

    def rows(role, mib_at):
        return [{"role": role, "wall_time": float(t), f"{role}/rss_mib": mib_at(t)} for t in range(0, 3600, 60)]

    growing = rows("collector", lambda t: 1000.0 + 3.0 * t / 60)
    flat = rows("learner_d4", lambda t: 1000.0 + (5.0 if (t // 60) % 2 else -5.0))
    warm_up_only = rows("learner_d16", lambda t: 1000.0 + min(t, 240) * 2.0)
    assert rss_growth_mib_per_min(growing, "collector") == pytest.approx(3.0)
    assert abs(rss_growth_mib_per_min(flat, "learner_d4")) < 0.1
    assert rss_growth_mib_per_min(warm_up_only, "learner_d16") == pytest.approx(0.0)
    assert rss_growth_mib_per_min(growing[:5], "collector") is None
    assert 0.1 < RSS_GROWTH_FLAG_MIB_PER_MIN < 3.0


def test_progress_table_shows_memory_and_flags_growth(tmp_path):
    from experiments.config import DecoupledConfig
    from experiments.launcher import progress_table

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for role, slope in (("collector", 3.0), ("learner_d4", 0.0)):
        (metrics / f"{role}.jsonl").write_text("".join(json.dumps(
            {"role": role, "wall_time": float(t), "env_steps": t, "grad_steps": t, "param_version": t,
             f"{role}/rss_mib": 800.0 + slope * t / 60}) + "\n" for t in range(0, 3600, 60)))
    lines = {line.split()[0]: line for line in progress_table(tmp_path, DecoupledConfig()).splitlines()}
    assert "rss_MiB 977" in lines["collector"] and "MEMORY GROWING +3.0 MiB/min" in lines["collector"]
    assert "rss_MiB 800" in lines["learner_d4"] and "MEMORY" not in lines["learner_d4"]
