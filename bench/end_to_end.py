"""End to end: env steps/s and grad steps/s of a decoupled run / the single-process trainer at equal settings.

    python bench/end_to_end.py                        # point_u_maze, collector d4 + passive d4, 1 pair (~3 min)
    python bench/end_to_end.py --repeats 3 --env-steps 60000
    python bench/end_to_end.py --quick                # smoke run: tiny networks and budget

What runs: the real CLIs as subprocesses, alternately (decoupled, single, decoupled, single, ...):

- ``decoupled``: ``depthrl run`` with the collector and one passive learner (``--learner-depths``): replay server,
  one learner process per learner, one evaluator per learner, ``--actors`` actor processes;
- ``single``: ``depthrl run --inline`` with the same config: the single-process trainer (`experiments.inline`, what
  ``depthrl train`` runs) hosting the same passive learner on the collector's minibatches. A decoupled run always
  trains at least one passive learner, so this, not a collector-only ``depthrl train``, is the equal-work reference
  (``--with-train`` adds a collector-only ``depthrl train`` row for scale).

Both read the same schedule (env slots, unroll, batch, update-to-data ratio, prefill); evaluation runs only at the
start and the end (``--eval-every-env-steps`` = the budget). A persistent compilation cache shared by all runs of one
bench invocation keeps compilation out of the later repetitions (the first run of each mode compiles).

Measurement: the bench polls each run from outside every 0.5 s: progress from its metrics files (the collector
learner's grad steps; env steps from the actors' rows, summed, or from the trainer's rows) and the CPU seconds of
every process of the run's tree. Rates are taken between the polls at 30% and 90% of the collector's final grad
steps (past start-up, compilation and the decoupled actors' unthrottled prefill, before the end-of-run waits), all on
the bench's clock. Reported per mode: env steps/s, collector grad steps/s, cores used and CPU seconds per collector
grad step over that stretch; the ratios decoupled / single (median over repetitions, pairs run back to back) for the
two rates and for CPU per grad step (single / decoupled, so that above 1 means the decoupled run is cheaper).

Where the processes compete on a small machine: every role is its own process with its own XLA thread pool; the
learners, the actor and the evaluators all want both cores at once, the replay server takes its share, and the rate
limiter couples actors and learners, so the slowest process paces the run. The single-process trainer runs one thing at
a time with both cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.replay_overhead import REPO_ROOT, finish, log, machine_line

MODES = ("decoupled", "single")
STEADY_FROM, STEADY_TO = 0.3, 0.9
"""Rates are taken while the collector learner goes from 30% to 90% of its final grad steps: past start-up,
compilation and the decoupled actors' unthrottled prefill, before the end-of-run waits."""


def common_args(args: argparse.Namespace) -> list[str]:
    """CLI flags shared by every mode (the settings that must be equal)."""
    return [
        "--env", args.env, "--env-steps", str(args.env_steps), "--num-envs", str(args.num_envs),
        "--unroll-length", str(args.unroll_length), "--batch-size", str(args.batch_size),
        "--prefill-steps-per-env", str(args.prefill_steps_per_env), "--width", str(args.width),
        "--num-eval-envs", str(args.num_eval_envs), "--eval-every-env-steps", str(args.env_steps),
        "--seed", str(args.seed), "--quiet",
    ]


def command(mode: str, run_dir: Path, args: argparse.Namespace) -> list[str]:
    base = [sys.executable, "-m", "experiments.cli"]
    if mode == "train":
        return base + ["train", "--run-dir", str(run_dir), "--actor-depth", str(args.depth),
                       "--critic-depth", str(args.depth), *common_args(args)]
    run = base + ["run", "--run-dir", str(run_dir), "--collector-depth", str(args.depth),
                  "--learner-depths", str(args.learner_depth), *common_args(args)]
    if mode == "single":
        return run + ["--inline"]
    return run + ["--actors", str(args.actors)]


def read_rows(path: Path) -> list[dict]:
    from experiments.metrics import read_jsonl

    return read_jsonl(path)[0] if path.exists() else []


def role_of(cmdline: list[str]) -> str:
    """A readable role name from a `python -m experiments.cli ...` command line."""
    if "experiments.cli" not in cmdline:
        return "other"
    rest = cmdline[cmdline.index("experiments.cli") + 1:]
    command_name = rest[0] if rest else "?"
    for flag, prefix in (("--learners", "learner:"), ("--actor-id", "actor_"), ("--learner", "eval_")):
        if flag in rest and rest.index(flag) + 1 < len(rest):
            return prefix + rest[rest.index(flag) + 1]
    return command_name


class RunMonitor:
    """Polls a run every `period_s` from outside: the CPU seconds of every process of its tree (each process's last
    reading is kept, since processes exit before the run ends) and the progress in its metrics files, all on this
    process's clock, so that rates and CPU can be taken over the same stretch of the run."""

    def __init__(self, root_pid: int, mode: str, run_dir: Path, actors: int, period_s: float = 0.5) -> None:
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(root_pid)
        self._mode, self._run_dir, self._actors = mode, run_dir, actors
        self._period_s = period_s
        self._last: dict[int, tuple[str, float]] = {}
        self.samples: list[tuple[float, float, int, int]] = []
        """(seconds since start, CPU seconds of the whole tree so far, collector grad steps, env steps)."""
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="run-monitor", daemon=True)
        self._thread.start()

    def _progress(self) -> tuple[int, int]:
        metrics = self._run_dir / "metrics"
        collector = read_rows(metrics / "collector.jsonl")  # the collector learner in every mode, train included
        grad = max((int(r["grad_steps"]) for r in collector), default=0)
        if self._mode == "decoupled":
            env = sum(max((int(r["env_steps"]) for r in read_rows(metrics / f"actor_{a}.jsonl")), default=0)
                      for a in range(self._actors))
        else:
            env = max((int(r["env_steps"]) for r in collector), default=0)
        return grad, env

    def _poll(self) -> None:
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except self._psutil.Error:
            return
        for process in processes:
            try:
                times = process.cpu_times()
                # Read every time: between fork and exec a child still shows the launcher's command line.
                role = role_of(process.cmdline())
                self._last[process.pid] = (role, times.user + times.system)
            except self._psutil.Error:
                continue
        grad, env = self._progress()
        cpu = sum(seconds for _, seconds in self._last.values())
        self.samples.append((time.perf_counter() - self._start, cpu, grad, env))

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self._poll()

    def stop(self) -> dict[str, float]:
        """CPU seconds per role over the whole run (up to the last poll before each process exited)."""
        self._stop.set()
        self._thread.join(timeout=5)
        out: dict[str, float] = {}
        for role, seconds in self._last.values():
            out[role] = out.get(role, 0.0) + seconds
        return out

    def steady_rates(self, low: float, high: float) -> dict[str, float]:
        """Rates between the first poll at >= `low` and the last poll at <= `high` of the final grad steps."""
        final = max((g for _, _, g, _ in self.samples), default=0)
        inside = [s for s in self.samples if low * final <= s[2] <= high * final]
        if final == 0 or len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return {"env_steps_per_s": float("nan"), "grad_steps_per_s": float("nan"),
                    "cpu_seconds_per_grad_step": float("nan"), "cores_used": float("nan"), "measured_seconds": 0.0}
        (t0, c0, g0, e0), (t1, c1, g1, e1) = inside[0], inside[-1]
        return {"env_steps_per_s": (e1 - e0) / (t1 - t0), "grad_steps_per_s": (g1 - g0) / (t1 - t0),
                "cpu_seconds_per_grad_step": (c1 - c0) / max(g1 - g0, 1), "cores_used": (c1 - c0) / (t1 - t0),
                "measured_seconds": t1 - t0}


def run_once(mode: str, index: int, args: argparse.Namespace, work_dir: Path, env: dict[str, str]) -> dict:
    run_dir = work_dir / f"{mode}_{index}"
    cmd = command(mode, run_dir, args)
    start = time.perf_counter()
    with open(work_dir / f"{mode}_{index}.log", "wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        monitor = RunMonitor(process.pid, mode, run_dir, args.actors)
        try:
            code = process.wait(timeout=args.timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 15)  # the launcher forwards SIGTERM to its roles
            process.wait(timeout=60)
            raise RuntimeError(f"{mode} run exceeded {args.timeout_seconds} s; see {work_dir / f'{mode}_{index}.log'}")
        finally:
            cpu_by_role = monitor.stop()
    wall = time.perf_counter() - start
    if code != 0:
        tail = (work_dir / f"{mode}_{index}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{mode} run failed with exit code {code}:\n{tail}")
    result = {"mode": mode, "repeat": index, "wall_seconds": wall, "cpu_seconds_by_role": cpu_by_role,
              **monitor.steady_rates(STEADY_FROM, STEADY_TO)}
    log(f"  {mode:<9} #{index}: {result['env_steps_per_s']:8,.0f} env steps/s {result['grad_steps_per_s']:7.1f} "
        f"grad steps/s, {result['cores_used']:.2f} cores (over {result['measured_seconds']:.0f} s; "
        f"run wall {wall:.0f} s)")
    log("    CPU seconds by role (whole run, start-up included): "
        + ", ".join(f"{role} {seconds:.0f}" for role, seconds in sorted(cpu_by_role.items(), key=lambda kv: -kv[1])))
    return result


def summarize(results: list[dict]) -> dict:
    by_mode = {m: [r for r in results if r["mode"] == m] for m in (*MODES, "train")}
    keys = ("env_steps_per_s", "grad_steps_per_s", "cores_used", "cpu_seconds_per_grad_step")
    median = lambda rs, k: statistics.median(r[k] for r in rs) if rs else float("nan")  # noqa: E731
    pairs = list(zip(by_mode["decoupled"], by_mode["single"]))
    return {
        "env_ratio": statistics.median(d["env_steps_per_s"] / s["env_steps_per_s"] for d, s in pairs),
        "grad_ratio": statistics.median(d["grad_steps_per_s"] / s["grad_steps_per_s"] for d, s in pairs),
        "cpu_ratio": statistics.median(s["cpu_seconds_per_grad_step"] / d["cpu_seconds_per_grad_step"]
                                       for d, s in pairs),
        **{f"{m}_{k}": median(by_mode[m], k) for m in (*MODES, "train") for k in keys},
        "repeats": len(pairs),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="point_u_maze")
    parser.add_argument("--depth", type=int, default=4, help="collector depth (actor and critic)")
    parser.add_argument("--learner-depth", type=int, default=4, help="depth of the passive learner")
    parser.add_argument("--actors", type=int, default=1, help="actor processes of the decoupled run")
    parser.add_argument("--env-steps", type=int, default=32_000, help="budget of every run")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--unroll-length", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--prefill-steps-per-env", type=int, default=100)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--num-eval-envs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="(decoupled, single) pairs, interleaved")
    parser.add_argument("--with-train", action="store_true", help="also run a collector-only `depthrl train`")
    parser.add_argument("--timeout-seconds", type=float, default=900.0, help="per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke mode: width 32, 16000 env steps, 16 slots")
    parser.add_argument("--json-out", default="", help="also write the results as JSON to this path")
    parser.add_argument("--keep-dir", default="", help="write the runs here and keep them (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.env_steps, args.num_envs, args.width, args.batch_size, args.num_eval_envs = 16000, 16, 32, 64, 8
        args.unroll_length = 20
    if args.repeats <= 0 or args.actors <= 0 or args.num_envs % args.actors:
        parser.error("--repeats and --actors must be positive and --num-envs divisible by --actors")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    print(machine_line())
    print(f"{args.env}: collector d{args.depth} + passive d{args.learner_depth}, {args.num_envs} env slots x "
          f"{args.unroll_length} steps, batch {args.batch_size}, width {args.width}, {args.env_steps:,} env steps; "
          f"decoupled with {args.actors} actor(s)", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="end_to_end_") as tmp:
        work_dir = Path(args.keep_dir or tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env["JAX_COMPILATION_CACHE_DIR"] = str(work_dir / "jax_cache")
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        modes = [m for i in range(args.repeats) for m in (MODES if i % 2 == 0 else MODES[::-1])]
        if args.with_train:
            modes.append("train")
        for index, mode in enumerate(modes):
            results.append(run_once(mode, index, args, work_dir, env))
    summary = summarize(results)
    print(f"{'mode':<10} {'env_steps/s':>12} {'grad_steps/s':>12} {'cores_used':>10} {'cpu_s/grad_step':>15}")
    for mode in (*MODES, "train"):
        if summary[f"{mode}_env_steps_per_s"] == summary[f"{mode}_env_steps_per_s"]:  # not nan
            print(f"{mode:<10} {summary[f'{mode}_env_steps_per_s']:12,.0f} {summary[f'{mode}_grad_steps_per_s']:12.1f} "
                  f"{summary[f'{mode}_cores_used']:10.2f} {summary[f'{mode}_cpu_seconds_per_grad_step']:15.3f}")
    print(f"decoupled / single: env steps/s {summary['env_ratio']:.3f}, grad steps/s {summary['grad_ratio']:.3f}; "
          f"CPU per grad step single / decoupled {summary['cpu_ratio']:.3f} (median of {summary['repeats']} pair(s))")
    print("CPU seconds by role over each whole run (start-up and compilation included), and the run's wall time:")
    for r in results:
        roles = ", ".join(f"{role} {sec:.0f}" for role, sec in sorted(r["cpu_seconds_by_role"].items(),
                                                                        key=lambda kv: -kv[1]))
        print(f"  {r['mode']:<9} #{r['repeat']}: wall {r['wall_seconds']:.0f} s; {roles}")
    finish(args, wall_start, results=results, summary=summary)
    return summary


if __name__ == "__main__":
    main()
