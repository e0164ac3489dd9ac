"""`depthrl slurm`: an sbatch script that brings Ray up across a SLURM allocation and runs a depthrl command on it.

The standard "Ray inside an sbatch allocation" pattern: one task per node; the first node runs the Ray head
(`srun ray start --head --block`), the others join it, then the driver runs the given command (`depthrl run ...` or
`depthrl ablate ...`) with ``--backend ray --ray-address HEAD:PORT``, and `ray stop` runs on every node at the end
(also when the command fails or the job is cancelled). Token authentication is on: the script makes a random token
for the job and every node gets it through the job's environment.

    depthrl slurm --nodes 2 --gpus-per-node 4 --cpus-per-node 32 --time 48:00:00 --script job.sbatch -- \\
        run --env ant_big_maze --collector-depth 64 --learner-depths 64,4 --role-resources 'learner=GPU:1'
    sbatch job.sbatch            # or --submit

For one SLURM job per run without Ray (each run on one node, `--backend local`), submitit is the usual tool:
``submitit.AutoExecutor(folder=...).update_parameters(nodes=1, gpus_per_node=4, timeout_min=...)`` then
``executor.submit(subprocess.run, [".venv/bin/depthrl", "run", ...])`` per run (README "Scale out").
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

RAY_PORT = 6379


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depthrl slurm", description=__doc__.split("\n\n")[0],
                                epilog="Everything after -- is the depthrl command to run on the allocation.")
    p.add_argument("--nodes", type=int, default=1, help="nodes of the allocation (one Ray node each)")
    p.add_argument("--cpus-per-node", type=int, default=None, help="CPUs per node (sbatch --cpus-per-task)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (sbatch --gpus-per-node)")
    p.add_argument("--mem", default=None, help="memory per node, as sbatch takes it (e.g. 64G)")
    p.add_argument("--time", default=None, help="time limit, e.g. 48:00:00")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--job-name", default="depthrl")
    p.add_argument("--output", type=Path, default=Path("slurm-%j.out"), help="the job's log (sbatch --output)")
    p.add_argument("--script", type=Path, default=Path("depthrl.sbatch"), help="where to write the sbatch script")
    p.add_argument("--submit", action="store_true", help="submit the script with sbatch after writing it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --script")
    return p


def render(args: argparse.Namespace, command: list[str]) -> str:
    """The sbatch script for `command` (a depthrl command line without the program name)."""
    venv_bin = Path(sys.executable).parent
    workdir = Path.cwd()
    directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}", "--ntasks-per-node=1",
                  f"--output={args.output}"]
    for flag, value in (("--cpus-per-task", args.cpus_per_node), ("--mem", args.mem), ("--time", args.time),
                        ("--partition", args.partition), ("--account", args.account)):
        if value is not None:
            directives.append(f"{flag}={value}")
    if args.gpus_per_node:
        directives.append(f"--gpus-per-node={args.gpus_per_node}")
    resources = f"--num-gpus={args.gpus_per_node}" + (' --num-cpus="$SLURM_CPUS_PER_TASK"' if args.cpus_per_node
                                                       else "")
    ray = shlex.quote(str(venv_bin / "ray"))
    depthrl = " ".join(shlex.quote(part) for part in [str(venv_bin / "depthrl"), *command])
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "",
             "# Written by `depthrl slurm`: Ray across the allocation, then the depthrl command, then `ray stop`.",
             "set -uo pipefail",
             f"cd {shlex.quote(str(workdir))}",
             "export RAY_AUTH_MODE=token",
             "export RAY_AUTH_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \\n')  # this job's only",
             "export RAY_USAGE_STATS_ENABLED=0",
             'mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
             'head_node=${nodes[0]}',
             '# RAY_HEAD_IP (exported before sbatch) overrides the head\'s address, e.g. on a one-node test cluster.',
             'head_ip=${RAY_HEAD_IP:-$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname -i | awk \'{print $1}\')}',
             f'address="$head_ip:{RAY_PORT}"',
             "stop_ray() {",
             f'  srun --overlap --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 {ray} stop --force >/dev/null 2>&1',
             '  kill "${ray_steps[@]}" 2>/dev/null; wait 2>/dev/null',
             "}",
             "trap stop_ray EXIT",
             "ray_steps=()",
             f'srun --overlap --nodes=1 --ntasks=1 -w "$head_node" {ray} start --head --block '
             f'--node-ip-address="$head_ip" --port={RAY_PORT} --include-dashboard=false {resources} &',
             "ray_steps+=($!)",
             "alive_nodes() {  # Ray nodes alive in the cluster at $address (empty while the head is not up)",
             f'  {shlex.quote(sys.executable)} -c "import ray; ray.init(address=\'$address\', log_to_driver=False); '
             f'print(sum(n[\'Alive\'] for n in ray.nodes()))" 2>/dev/null | tail -n 1',
             "}",
             'until [ -n "$(alive_nodes)" ]; do sleep 1; done',
             'for node in "${nodes[@]:1}"; do',
             f'  srun --overlap --nodes=1 --ntasks=1 -w "$node" {ray} start --block --address="$address" {resources} &',
             "  ray_steps+=($!)",
             "done",
             'until [ "$(alive_nodes)" = "$SLURM_JOB_NUM_NODES" ]; do sleep 2; done',
             f'{depthrl} --backend ray --ray-address "$address"',
             "code=$?",
             "exit $code", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    else:
        command = []
    args = _parser().parse_args(argv)
    problems = []
    if not command or command[0] not in ("run", "ablate", "resume"):
        problems.append("give the depthrl command to run after --, e.g. `depthrl slurm --nodes 2 -- run --env "
                        "ant_big_maze ...` (run, ablate or resume)")
    elif any(a.startswith(("--backend", "--ray-address")) for a in command):
        problems.append("leave --backend and --ray-address out of the command: the script sets them")
    if args.nodes < 1 or args.gpus_per_node < 0 or (args.cpus_per_node is not None and args.cpus_per_node < 1):
        problems.append("--nodes and --cpus-per-node must be >= 1, --gpus-per-node >= 0")
    if args.script.exists() and not args.overwrite:
        problems.append(f"--script {args.script} exists; pass --overwrite to replace it")
    if args.submit and shutil.which("sbatch") is None:
        problems.append("--submit needs sbatch on PATH (a SLURM login node)")
    if problems:
        print(f"depthrl slurm: error: {problems[0]}", file=sys.stderr)
        return 2
    args.script.write_text(render(args, command))
    os.chmod(args.script, 0o755)
    print(f"depthrl slurm: wrote {args.script}", file=sys.stderr)
    if args.submit:
        return subprocess.run(["sbatch", str(args.script)]).returncode
    return 0
