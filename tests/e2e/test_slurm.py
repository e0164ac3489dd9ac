"""`depthrl slurm` on a real SLURM: the test installs Debian's slurm-wlm and munge, starts a one-node cluster on
127.0.0.1 (slurmctld + slurmd, linuxproc process tracking, no accounting), submits the generated sbatch script for a
tiny decoupled run on Ray, and checks that the run finished. Skipped, with the reason, where the packages cannot be
installed (no root, no apt)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--env", "point_u_maze", "--num-envs", "16", "--batch-size", "64", "--prefill-steps-per-env", "100",
         "--width", "32", "--num-eval-envs", "8", "--quiet", "--rpc-timeout-seconds", "20"]


def _run(*argv: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kwargs)


def _install() -> str:
    """'' when slurmctld, slurmd, sbatch and munged are there (installing them if needed), else why not."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged")):
        return ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "installing SLURM needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        proc = _run(*argv, timeout=600, env=env)
        if proc.returncode != 0:
            return f"{' '.join(argv)} failed: {proc.stderr.strip()[-300:]}"
    return ""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = _install()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm")
    started: list[subprocess.Popen] = []
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    if _run("munge", "-n").returncode != 0:  # no munged answering yet: start one
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        started.append(subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "--foreground"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert wait_for(lambda: _run("munge", "-n").returncode == 0, 30, poll_seconds=1), "munged did not start"
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=depthrl-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    (root / "state").mkdir()
    (root / "spool").mkdir()
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))
    started.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))
    try:
        assert wait_for(lambda: "idle" in _run("sinfo", "-h", "-o", "%T", env=env).stdout, 60, poll_seconds=1), \
            (root / "slurmctld.log").read_text()[-2000:] if (root / "slurmctld.log").exists() else "no log"
        yield env
    finally:
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_generated_sbatch_script_runs_a_decoupled_run_on_ray(slurm, tmp_path):
    run_dir, script, out = tmp_path / "run", tmp_path / "job.sbatch", tmp_path / "job.out"
    env = {**slurm, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "RAY_HEAD_IP": "127.0.0.1"}
    made = _run(sys.executable, "-m", "experiments.cli", "slurm", "--script", str(script), "--output", str(out),
                "--time", "00:20:00", "--", "run", "--run-dir", str(run_dir), "--collector-depth", "4",
                "--learner-depths", "4", "--env-steps", "6000", "--eval-every-env-steps", "3000",
                "--role-resources", "*=CPU:0.25", *SMALL, env=env, cwd=REPO)
    assert made.returncode == 0, made.stderr
    submitted = _run("sbatch", "--parsable", str(script), env=env, cwd=REPO)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    try:
        assert wait_for(lambda: job not in _run("squeue", "-h", "-o", "%i", env=env).stdout, 900, poll_seconds=3), \
            "job still queued or running after 900 s"
    finally:
        _run("scancel", job, env=env)
    log = out.read_text() if out.exists() else "(no job output)"
    assert (run_dir / "status" / "run.json").exists(), log[-4000:]
    assert json.loads((run_dir / "status" / "run.json").read_text())["state"] == "finished", log[-4000:]
    state = _run("sacct", "-n", "-j", job, env=env)  # no accounting: only informative
    print(state.stdout, log[-2000:])
