"""`depthrl run --backend ray` on a real Ray cluster of simulated nodes on this host (`ray.cluster_utils.Cluster`).

Nodes declare what a GPU box or a cluster would: a replay node, a node with 2 (declared) GPUs, an actor node; every
role must run on the node its `--role-resources` demand, each learner with its own CUDA_VISIBLE_DEVICES. All nodes
listen on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--env", "point_u_maze", "--num-envs", "16", "--batch-size", "64", "--prefill-steps-per-env", "100",
         "--width", "32", "--num-eval-envs", "8", "--param-publish-every-grad-steps", "4", "--quiet",
         "--rpc-timeout-seconds", "20", "--checkpoint-every-seconds", "10"]
START = re.compile(r"^=== start \S+ \S+ pid (\d+) on node (\S+) \((\w+)\) CUDA_VISIBLE_DEVICES=(\S+):", re.M)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["JAX_PLATFORMS"] = "cpu"
    return e


def starts(log: Path) -> list[tuple[int, str, str]]:
    """(pid, node id, CUDA_VISIBLE_DEVICES) of every start of a role, from its log's start lines."""
    return [(int(pid), node_id, cuda) for pid, _, node_id, cuda in START.findall(log.read_text())]


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"replay_node": 1},
                                                       "node_ip_address": "127.0.0.1", "include_dashboard": False})
    gpu = c.add_node(num_cpus=3, num_gpus=2, resources={"gpu_node": 1}, node_ip_address="127.0.0.1")
    actor = c.add_node(num_cpus=2, resources={"actor_node": 1}, node_ip_address="127.0.0.1")
    c.wait_for_nodes()
    yield {"cluster": c, "address": c.address, "replay": c.head_node.node_id, "gpu": gpu.node_id,
           "actor": actor.node_id}
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def test_every_role_runs_where_its_resources_are(cluster, tmp_path):
    run_dir = tmp_path / "run"
    resources = ("replay=CPU:1,replay_node:1;learner=GPU:1,CPU:1;actor=CPU:1,actor_node:1;"
                 "evaluator=CPU:0.5,gpu_node:0.1")
    proc = run_cli("run", "--backend", "ray", "--ray-address", cluster["address"], "--role-resources", resources,
                   "--run-dir", str(run_dir), "--collector-depth", "4", "--learner-depths", "4", "--env-steps",
                   "8000", "--eval-every-env-steps", "4000", *SMALL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    logs = run_dir / "logs"
    placed = {log.stem: starts(log) for log in logs.glob("*.log")}
    assert set(placed) == {"replay", "learner_collector", "learner_learner_d4", "eval_collector",
                           "eval_learner_d4", "actor_0"}, sorted(placed)
    where = {role: {node for _, node, _ in s} for role, s in placed.items()}
    assert where["replay"] == {cluster["replay"]}
    assert where["learner_collector"] == where["learner_learner_d4"] == {cluster["gpu"]}
    assert where["eval_collector"] == where["eval_learner_d4"] == {cluster["gpu"]}
    assert where["actor_0"] == {cluster["actor"]}
    # Each learner saw its own GPU; roles without a GPU see none.
    gpus = sorted(placed[f"learner_{n}"][0][2] for n in ("collector", "learner_d4"))
    assert gpus == ["'0'", "'1'"], gpus
    assert {placed[r][0][2] for r in ("replay", "actor_0", "eval_collector")} == {"''"}
    # The run finished: learners at their targets, evaluators saw the final params, the run's status says done.
    status = json.loads((run_dir / "status" / "run.json").read_text())
    assert status["state"] == "finished"
    for name in ("collector", "learner_d4"):
        learner = json.loads((run_dir / "status" / f"{name}.json").read_text())
        assert learner["state"] == "finished", learner


@pytest.mark.parametrize("resources, expected", [
    ("learner=GPU:4", ["role learner:collector asks for GPU:4", "the largest node", "GPU:2"]),
    ("actor=TPU:1", ["role actor_0 asks for resource 'TPU'", "which no node of the cluster has"]),
    ("*=CPU:2", ["roles together ask for CPU:12", "the cluster has CPU:7", "'*=CPU:0.5'"]),
    ("learner=GPU", ["role_resources: 'GPU' in 'learner' must be NAME:AMOUNT"]),
    ("trainer=CPU:1", ["role_resources: 'trainer=CPU:1' must be ROLE=NAME:AMOUNT"]),
])
def test_requests_no_node_can_satisfy_are_refused_before_start(cluster, tmp_path, resources, expected):
    run_dir = tmp_path / "run"
    proc = run_cli("run", "--backend", "ray", "--ray-address", cluster["address"], "--role-resources", resources,
                   "--run-dir", str(run_dir), "--env-steps", "8000", *SMALL, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-3000:]
    assert not run_dir.exists()


def test_unreachable_ray_address_is_refused_before_start(tmp_path):
    import portpicker

    run_dir = tmp_path / "run"
    port = portpicker.pick_unused_port()  # nothing listens there
    proc = run_cli("run", "--backend", "ray", "--ray-address", f"127.0.0.1:{port}", "--run-dir", str(run_dir),
                   "--env-steps", "8000", *SMALL, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"ray_address 127.0.0.1:{port}: no Ray cluster answers there" in proc.stderr
    assert not run_dir.exists()


def _ray_node(args: list[str], log: Path, environ: dict[str, str], mask: Path | None = None) -> subprocess.Popen:
    """`ray start --block ...` in its own session (so the test ends exactly its processes, by group). With `mask`,
    the node runs in its own mount namespace where an empty tmpfs hides `mask`: a host that does not mount it."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [ray_bin, "start", "--block", *args]
    if mask is not None:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs depthrl-mask "$0" && exec "$@"', str(mask), *cmd]
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_run_dir_one_node_cannot_see_is_refused_before_start(tmp_path):
    """A worker node in its own mount namespace sees an empty directory where the run dir's parent is: the run is
    refused (exit 2, naming that node) before any role starts, and nothing is left in the shared directory."""
    import tempfile

    import portpicker

    if os.geteuid() != 0 or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare --mount` (root) to give one node a different view of the filesystem")
    base = Path(tempfile.mkdtemp(prefix="drvis"))  # short: Ray's unix socket paths live under --temp-dir
    shared = base / "shared"
    shared.mkdir()
    (shared / "keep.txt").write_text("user data")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the interface address (no packet is sent)
        s.connect(("192.0.2.254", 9))
        host = s.getsockname()[0]
    if host.startswith("127."):
        pytest.skip("no non-loopback interface: Ray runs multi-node clusters on an interface address")
    port = portpicker.pick_unused_port()
    environ = env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex(),
                       "RAY_USAGE_STATS_ENABLED": "0"}
    for multi_node_off in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # set by tests/conftest.py
        environ.pop(multi_node_off, None)
    nodes = [_ray_node(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                        f"--temp-dir={base / 'ray'}"], tmp_path / "head.log", environ)]
    try:
        probe = [sys.executable, "-c", f"import ray; ray.init(address='{host}:{port}', log_to_driver=False); "
                 "print('alive', sum(n['Alive'] for n in ray.nodes()))"]

        def alive() -> int:
            out = subprocess.run(probe, env=environ, capture_output=True, text=True, timeout=60).stdout
            found = re.search(r"alive (\d+)", out)
            return int(found.group(1)) if found else 0

        assert wait_for(lambda: alive() >= 1, timeout=90, poll_seconds=1), (tmp_path / "head.log").read_text()
        nodes.append(_ray_node([f"--address={host}:{port}", "--num-cpus=1"], tmp_path / "worker.log", environ,
                               mask=shared))
        assert wait_for(lambda: alive() >= 2, timeout=90, poll_seconds=1), (tmp_path / "worker.log").read_text()
        run_dir = shared / "run"
        proc = subprocess.run([sys.executable, "-m", "experiments.cli", "run", "--backend", "ray", "--ray-address",
                               f"{host}:{port}", "--role-resources", "*=CPU:0.25", "--run-dir", str(run_dir),
                               "--env-steps", "8000", *SMALL],
                              cwd=REPO, env=environ, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert f"run dir {shared} is not visible from every Ray node: node " in proc.stderr, proc.stderr[-3000:]
        assert "No such file or directory" in proc.stderr
        assert "shared filesystem" in proc.stderr
        assert sorted(p.name for p in shared.iterdir()) == ["keep.txt"]  # no run dir, no probe file left
        assert (shared / "keep.txt").read_text() == "user data"
    finally:
        for node in reversed(nodes):  # our two process groups, by their leaders' pids
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(node.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    node.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
        subprocess.run(["rm", "-rf", str(base)], check=False)


def named_hosts() -> list[str]:
    """The depthrl role hosts alive on the cluster (named actors in the depthrl namespace)."""
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "depthrl"]


def rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_sigint_leaves_no_host_behind_and_resume_finishes(cluster, tmp_path):
    import signal
    import time

    import ray

    ray.init(address=cluster["address"], namespace="depthrl-test", log_to_driver=False)
    run_dir = tmp_path / "run"
    args = ["run", "--backend", "ray", "--ray-address", cluster["address"], "--run-dir", str(run_dir),
            "--collector-depth", "4", "--learner-depths", "4", "--env-steps", "12000", "--eval-every-env-steps",
            "4000", "--role-resources", "*=CPU:0.5", *SMALL]
    driver = subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(rows(run_dir / "metrics" / "learner_d4.jsonl")) >= 2 or driver.poll() is not None,
                        timeout=300, poll_seconds=0.5), "no learner rows within 300 s"
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        hosts = {name.split("/", 1)[1] for name in named_hosts()}
        # The learners, evaluators and replay server are at work; the actor may already have written its whole share
        # (a host goes as soon as its process ends).
        assert {"replay", "learner:collector", "learner:learner_d4", "eval_collector"} <= hosts, hosts
        driver.send_signal(signal.SIGINT)
        sent = time.monotonic()
        gone = wait_for(lambda: named_hosts() == [], timeout=10, poll_seconds=0.2)
        print(f"every host gone {time.monotonic() - sent:.1f} s after SIGINT")
        assert gone, f"still alive 10 s after SIGINT: {named_hosts()}"
        assert driver.wait(timeout=30) == 130
    finally:
        if driver.poll() is None:
            driver.kill()
    proc = run_cli("resume", str(run_dir), timeout=600)  # the recorded backend and cluster address
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((run_dir / "status" / "run.json").read_text())["state"] == "finished"
    assert named_hosts() == []
    grad = [r["grad_steps"] for r in rows(run_dir / "metrics" / "collector.jsonl")]
    assert grad and grad[-1] > 0


@pytest.mark.slow  # ~2.5 min on 2 cores (two runs, then the grid resumed): `make test-all`
def test_ctrl_c_of_a_grid_on_a_cluster_leaves_no_host_behind_and_the_grid_resumes(cluster, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group: the grid and its runs) while two runs are at work on the
    cluster: every role host is gone within 10 s, grid.json says both runs were interrupted, and the same command
    finishes the grid."""
    import time

    import ray

    if not ray.is_initialized():
        ray.init(address=cluster["address"], namespace="depthrl-test", log_to_driver=False)
    grid = tmp_path / "grid"
    args = ["ablate", "--collector-depths", "4,8", "--learner-depths", "4", "--seeds", "1", "--parallel", "2",
            "--grid-dir", str(grid), "--no-report", "--backend", "ray", "--ray-address", cluster["address"],
            "--role-resources", "*=CPU:0.25", "--env-steps", "8000", "--eval-every-env-steps", "4000", *SMALL]
    ablate = subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        learning = lambda: all(rows(grid / "runs" / r / "metrics" / "learner_d4.jsonl")  # noqa: E731
                               for r in ("c4_s0", "c8_s0"))
        assert wait_for(lambda: learning() or ablate.poll() is not None, timeout=300, poll_seconds=0.5)
        assert ablate.poll() is None, ablate.communicate()[1][-3000:]
        runs_on_cluster = {name.split("/")[0].rsplit("-", 1)[0] for name in named_hosts()}
        assert runs_on_cluster == {"c4_s0", "c8_s0"}, named_hosts()
        os.killpg(ablate.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        sent = time.monotonic()
        gone = wait_for(lambda: named_hosts() == [], timeout=10, poll_seconds=0.2)
        print(f"every host of the grid gone {time.monotonic() - sent:.1f} s after Ctrl-C")
        assert gone, f"still alive 10 s after Ctrl-C: {named_hosts()}"
        _, err = ablate.communicate(timeout=60)
        assert ablate.returncode == 130, err[-3000:]
    finally:
        if ablate.poll() is None:
            os.killpg(ablate.pid, signal.SIGKILL)
    state = json.loads((grid / "grid.json").read_text())
    assert {name: run["status"] for name, run in state["runs"].items()} == {"c4_s0": "interrupted",
                                                                           "c8_s0": "interrupted"}
    proc = run_cli(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = json.loads((grid / "grid.json").read_text())
    assert {name: run["status"] for name, run in state["runs"].items()} == {"c4_s0": "done", "c8_s0": "done"}
    assert "resuming c4_s0" in proc.stderr and "resuming c8_s0" in proc.stderr
    assert named_hosts() == []


@pytest.mark.slow  # ~3 min on 2 cores: `make test-all`
def test_killed_learner_and_lost_nodes_come_back_and_the_run_finishes(tmp_path):
    """A learner's process killed with SIGKILL, then the node of the collector learner lost, then the node of the
    replay server (when it was not the same): the roles come back on the nodes that remain, learners from their
    checkpoints, the replay server from its checkpoint (its clients restarted against its new address); nobody
    hangs and the run finishes."""
    import signal

    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "node_ip_address": "127.0.0.1",
                                                       "include_dashboard": False})
    nodes = {}
    for _ in range(3):
        node = c.add_node(num_cpus=3, resources={"learner_slot": 2, "replay_slot": 1}, node_ip_address="127.0.0.1")
        nodes[node.node_id] = node
    c.wait_for_nodes()
    run_dir = tmp_path / "run"
    args = ["run", "--backend", "ray", "--ray-address", c.address, "--run-dir", str(run_dir), "--collector-depth",
            "4", "--learner-depths", "4", "--env-steps", "96000", "--eval-every-env-steps", "16000",
            "--checkpoint-every-seconds", "5", "--replay-checkpoint-every-seconds", "5", "--max-restarts", "4",
            "--role-resources",
            "learner=CPU:1,learner_slot:1;replay=CPU:1,replay_slot:1;*=CPU:0.5",
            *[a for a in SMALL if a != "--quiet"], "--progress-every-seconds", "5"]  # progress tables on stderr
    driver = subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def checkpointed(name: str) -> bool:  # a learner has a checkpoint past its first
            directory = run_dir / "checkpoints" / name
            return directory.is_dir() and any(p.name.isdigit() and p.name != "0" for p in directory.iterdir())

        assert wait_for(lambda: checkpointed("learner_d4"), timeout=300, poll_seconds=0.5)
        pid, _, _ = starts(run_dir / "logs" / "learner_learner_d4.log")[-1]
        os.kill(pid, signal.SIGKILL)
        restarted = lambda: len(starts(run_dir / "logs" / "learner_learner_d4.log")) == 2  # noqa: E731
        assert wait_for(restarted, timeout=120, poll_seconds=0.5)
        assert wait_for(lambda: checkpointed("collector"), timeout=300, poll_seconds=0.5)
        _, collector_node, _ = starts(run_dir / "logs" / "learner_collector.log")[-1]
        assert not (run_dir / "status" / "collector.json").exists() or json.loads(
            (run_dir / "status" / "collector.json").read_text())["state"] == "running"  # the loss hits a live learner
        def lose(node_id: str) -> None:
            lost_pids = [pid for log in (run_dir / "logs").glob("*.log") for pid, node, _ in starts(log)
                         if node == node_id]
            c.remove_node(nodes.pop(node_id), allow_graceful=False)
            for pid in lost_pids:  # a simulated node's role processes outlive it; a real lost host takes them along
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        lose(collector_node)
        collector_back = lambda: len(starts(run_dir / "logs" / "learner_collector.log")) == 2  # noqa: E731
        assert wait_for(collector_back, timeout=300, poll_seconds=0.5)
        _, replay_node, _ = starts(run_dir / "logs" / "replay.log")[-1]
        if replay_node in nodes:  # still up: lose it too
            assert wait_for(lambda: (run_dir / "replay_checkpoint").is_dir() and any(
                p.name != "tmp" for p in (run_dir / "replay_checkpoint").iterdir()), timeout=120, poll_seconds=0.5)
            lose(replay_node)
        out, err = driver.communicate(timeout=900)
        assert driver.returncode == 0, err[-5000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        c.shutdown()
    collector_starts = starts(run_dir / "logs" / "learner_collector.log")
    assert len(collector_starts) >= 2 and collector_starts[-1][1] != collector_node
    # Ray reports the host lost, or its process is seen dying first (this test kills it with the node).
    assert "role learner:collector was lost with its node" in err or "role learner:collector was killed by SIGKILL" in err
    # The progress tables show the node each role is on, and the collector learner DOWN on the lost node.
    tables = [line for line in err.splitlines() if line.startswith("collector ")]
    assert any(f"on node 127.0.0.1 ({collector_node[:8]})" in line for line in tables), tables[-5:]
    assert any(f"on node 127.0.0.1 ({collector_starts[-1][1][:8]})" in line for line in tables), tables[-5:]
    down = [line for line in tables if "DOWN (" in line]
    assert down and any(f"lost node(s) 127.0.0.1 ({collector_node[:8]})" in line or "killed by SIGKILL" in line
                        for line in down), down
    replay_starts = starts(run_dir / "logs" / "replay.log")
    assert len(replay_starts) >= 2 and replay_starts[-1][1] != replay_node, replay_starts
    assert "restored from checkpoint" in (run_dir / "logs" / "replay.log").read_text()
    assert "the replay server moved from" in err
    for name in ("collector", "learner_d4"):
        grad = [r["grad_steps"] for r in rows(run_dir / "metrics" / f"{name}.jsonl")]
        # A restart redoes the steps since the checkpoint it resumed from, never the run from its first update.
        redone_from = [after for before, after in zip(grad, grad[1:]) if after <= before]
        assert all(step > grad[0] for step in redone_from) and grad[-1] > grad[0], (name, redone_from, grad[:5])
        status = json.loads((run_dir / "status" / f"{name}.json").read_text())
        assert status["state"] == "finished", status


@pytest.mark.slow  # two runs one after the other, ~3 min on 2 cores: `make test-all`
def test_grid_on_a_cluster_queues_a_run_until_the_gpus_are_free(tmp_path):
    """Two runs that each need both (declared) GPUs of the cluster, started together: Ray queues the second run's
    learners until the first run's are gone; both runs end done."""
    import datetime

    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 6, "num_gpus": 2, "node_ip_address": "127.0.0.1",
                                                       "include_dashboard": False})
    grid = tmp_path / "grid"
    try:
        proc = run_cli("ablate", "--collector-depths", "4,8", "--learner-depths", "4", "--seeds", "1", "--parallel",
                       "2", "--grid-dir", str(grid), "--no-report", "--backend", "ray", "--ray-address", c.address,
                       "--role-resources", "learner=GPU:1;*=CPU:0.5", "--env-steps", "6000",
                       "--eval-every-env-steps", "3000", *SMALL, timeout=900)
        assert proc.returncode == 0, proc.stderr[-5000:]
    finally:
        c.shutdown()
    state = json.loads((grid / "grid.json").read_text())
    assert {name: run["status"] for name, run in state["runs"].items()} == {"c4_s0": "done", "c8_s0": "done"}

    def learner_span(run: str) -> tuple[datetime.datetime, datetime.datetime]:
        logs = [grid / "runs" / run / "logs" / f"learner_{n}.log" for n in ("collector", "learner_d4")]
        begin = min(datetime.datetime.fromisoformat(" ".join(log.read_text().split("=== start ")[1].split()[:2]))
                    for log in logs)
        statuses = [grid / "runs" / run / "status" / f"{n}.json" for n in ("collector", "learner_d4")]
        end = max(datetime.datetime.fromtimestamp(json.loads(p.read_text())["wall_time"]) for p in statuses)
        return begin, end

    (first_begin, first_end), (second_begin, second_end) = sorted(learner_span(r) for r in ("c4_s0", "c8_s0"))
    assert second_begin >= first_end.replace(microsecond=0), (first_end, second_begin)  # never both on the GPUs
