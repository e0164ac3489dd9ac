"""`depthrl ablate`: the collector-depth x learner-depth grid of the paper's exploration/expressivity ablation.

One *run* per (env, collector depth, seed); each run hosts every learner depth (`depthrl run --learner-depths ...`), so
the deep and the shallow learner of a cell train from the same collector's data. Runs are ordinary run directories
under ``GRID/runs/``; `GRID/grid.json` records the grid's spec and each run's status. The grid is resumable: a run
whose status is ``done`` is skipped, a run that was interrupted (its run dir holds a config) is continued with
`depthrl resume`, and the rest are started. Runs go one after another, or ``--parallel N`` at a time.

Every run's config is parsed and validated before the first run starts, so a typo in the last cell fails at once
(exit 2) instead of hours later. The grid spec is part of grid.json: re-running a grid dir with a different spec is
refused rather than mixing two experiments in one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRID_FORMAT_VERSION = 1
GRID_FILE = "grid.json"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named grid: what `--preset NAME` fills in (flags given on the command line still win)."""

    envs: tuple[str, ...]
    """Env of each sub-grid (one set of runs per env)."""
    collector_depths: tuple[int, ...]
    """Depth of the collector (the learner whose policy the actors run), one run per depth and seed."""
    learner_depths: tuple[int, ...]
    """Depths of the passive learners hosted by every run."""
    seeds: int
    """Seeds 0..seeds-1 per (env, collector depth)."""
    run_args: tuple[str, ...]
    """`depthrl run` options shared by every run of the grid."""
    description: str


PRESETS: dict[str, Preset] = {
    # The paper's Fig. 8: collector 4 and 32 x learners 4 and 32, 3 seeds, on Humanoid and Ant Big Maze at the
    # Table 1 budget (100M env steps) and the paper's schedule (512 envs, batch 512, unroll 62, UTD 1:40, 10k
    # replay steps per env, 1k prefill steps per env, 128 eval envs). GPU scale: days on this CPU.
    "paper-fig8": Preset(
        envs=("humanoid", "ant_big_maze"),
        collector_depths=(4, 32),
        learner_depths=(4, 32),
        seeds=3,
        run_args=("--env-steps", "100000000", "--num-envs", "512", "--batch-size", "512", "--unroll-length", "62",
                  "--prefill-steps-per-env", "1000", "--buffer-capacity-steps", "10000",
                  "--eval-every-env-steps", "1000000", "--num-eval-envs", "128", "--actors", "1"),
        description="paper Fig. 8: humanoid + ant_big_maze, collector {4,32} x learner {4,32}, 3 seeds, 100M steps",
    ),
    # The README's main job: a 2 x 2 grid that finishes on 2 CPU cores in about 15 minutes. The budget and maze were
    # chosen from the compute budget before looking at the table (docs/demo.md): width 128 and depth 16 as "deep"
    # (32 does not fit), and the collector and learners inline (one process per run), which is what fits 2 cores.
    "demo": Preset(
        envs=("point_u_maze",),
        collector_depths=(4, 16),
        learner_depths=(4, 16),
        seeds=1,
        run_args=("--env-steps", "160000", "--num-envs", "64", "--batch-size", "256", "--unroll-length", "50",
                  "--width", "128", "--eval-every-env-steps", "20000", "--num-eval-envs", "64", "--inline"),
        description="CPU demo: point_u_maze, collector {4,16} x learner {4,16}, 1 seed, 160k env steps, width 128, "
                    "inline",
    ),
}


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One run of the grid."""

    name: str
    """Path of the run dir relative to GRID/runs, e.g. 'c4_s0' or 'ant_big_maze/c4_s0' for multi-env grids."""
    env: str
    collector_depth: int
    seed: int
    argv: tuple[str, ...]
    """Full `depthrl run` argv of the run (without --run-dir)."""


class GridError(ValueError):
    """Bad grid input; exit code 2."""


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise GridError(f"{flag} must be a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise GridError(f"{flag} must name at least one depth, got {text!r}")
    if len(set(values)) != len(values):
        raise GridError(f"{flag} lists a depth twice: {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="depthrl ablate",
        allow_abbrev=False,  # `--seed` (a run option) must not be read as an abbreviation of `--seeds`
        description="Run a collector-depth x learner-depth grid (resumable). Unknown options are passed to every "
                    "`depthrl run` of the grid (see `depthrl run --help`), e.g. --env-steps, --batch-size, --inline.",
        epilog="presets: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()),
    )
    p.add_argument("--preset", help=f"named grid: {', '.join(PRESETS)}")
    p.add_argument("--env", help="env name, or a comma-separated list of envs (one sub-grid each)")
    p.add_argument("--collector-depths", help="comma-separated collector depths, e.g. 4,32")
    p.add_argument("--learner-depths", help="comma-separated passive-learner depths hosted by every run, e.g. 4,32")
    p.add_argument("--seeds", type=int, help="number of seeds per (env, collector depth); seeds 0..N-1")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds FIRST..FIRST+N-1 instead (pilot runs on seeds >= 100 keep 0..N-1 for the final grid)")
    p.add_argument("--grid-dir", type=Path, help="directory of the grid (default: runs/ablate_<preset or env>)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1: one after another)")
    p.add_argument("--no-report", action="store_true", help="skip the report after the last run")
    p.add_argument("--dry-run", action="store_true", help="validate every run and print the plan; start nothing")
    return p


def default_grid_dir(args: argparse.Namespace, envs) -> Path:
    return args.grid_dir or Path("runs") / f"ablate_{args.preset or envs[0]}"


def plan_grid(args: argparse.Namespace, run_args: list[str]) -> tuple[dict, list[GridRun]]:
    """Grid spec (what grid.json pins) and its runs, from parsed flags + pass-through run args. Validates all."""
    preset = None
    if args.preset is not None:
        if args.preset not in PRESETS:
            raise GridError(f"unknown preset {args.preset!r}; presets: {', '.join(PRESETS)}")
        preset = PRESETS[args.preset]
    envs = tuple(e for e in args.env.split(",") if e) if args.env else (preset.envs if preset else ())
    if not envs:
        raise GridError("--env (or --preset) is required")
    collector = (_ints(args.collector_depths, "--collector-depths") if args.collector_depths
                 else preset.collector_depths if preset else None)
    learners = (_ints(args.learner_depths, "--learner-depths") if args.learner_depths
                else preset.learner_depths if preset else None)
    if collector is None or learners is None:
        raise GridError("--collector-depths and --learner-depths are required without --preset")
    seeds = args.seeds if args.seeds is not None else (preset.seeds if preset else 1)
    if seeds < 1:
        raise GridError(f"--seeds must be >= 1, got {seeds}")
    if args.first_seed < 0:
        raise GridError(f"--first-seed must be >= 0, got {args.first_seed}")
    if args.parallel < 1:
        raise GridError(f"--parallel must be >= 1, got {args.parallel}")
    for flag in ("--run-dir", "--collector-depth", "--seed", "--resume", "--overwrite"):
        if any(a == flag or a.startswith(flag + "=") for a in run_args):
            raise GridError(f"{flag} is set by the grid for each run; remove it")
    shared = list(preset.run_args if preset else ()) + list(run_args)
    if args.parallel > 1 and any(a.startswith("--replay-port") for a in shared):
        raise GridError("--replay-port cannot be fixed when --parallel > 1 (each run needs its own port)")

    # W&B groups a grid's runs under the grid's name.
    logs_to_wandb = any("wandb" in a for i, a in enumerate(shared) if a.startswith("--log=")
                        or (i > 0 and shared[i - 1] == "--log"))
    group = ()
    if logs_to_wandb and not any(a.startswith("--wandb-group") for a in shared):
        group = ("--wandb-group", default_grid_dir(args, envs).name)
    runs = []
    for env in envs:
        for depth in collector:
            for seed in range(args.first_seed, args.first_seed + seeds):
                name = f"c{depth}_s{seed}" if len(envs) == 1 else f"{env}/c{depth}_s{seed}"
                argv = ("--env", env, *shared, "--collector-depth", str(depth),
                        "--learner-depths", ",".join(map(str, learners)), "--seed", str(seed), *group)
                runs.append(GridRun(name, env, depth, seed, argv))
    spec = {"preset": args.preset, "envs": list(envs), "collector_depths": list(collector),
            "learner_depths": list(learners), "seeds": seeds, "run_args": shared}
    if args.first_seed:
        spec["first_seed"] = args.first_seed
    return spec, runs


def run_config(run: GridRun):
    """A run's `DecoupledConfig`, parsed exactly as `depthrl run` parses it (GridError on bad options)."""
    import tyro

    from experiments.cli import _split_commas
    from experiments.config import DecoupledConfig

    argv = _split_commas(list(run.argv), ("--learner-depths",))
    try:
        return tyro.cli(DecoupledConfig, args=argv, prog="depthrl run", config=(tyro.conf.OmitArgPrefixes,))
    except SystemExit as e:  # tyro printed the message (unknown option, bad value)
        raise GridError(f"run {run.name}: bad `depthrl run` options (see the message above)") from e


def validate_run(run: GridRun) -> None:
    """Parse and validate a run's config exactly as `depthrl run` will, without starting or writing anything."""
    from learners.networks import ConfigError

    try:
        run_config(run).validate()
    except ConfigError as e:
        raise GridError(f"run {run.name}: {e}") from None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def open_grid(grid_dir: Path, spec: dict, runs: list[GridRun]) -> dict:
    """Load grid.json (checking that it holds the same spec) or make a new one; nothing is written here."""
    path = grid_dir / GRID_FILE
    if path.exists():
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise GridError(f"{path} is not readable grid state ({e}); pick another --grid-dir") from None
        if state.get("format_version") != GRID_FORMAT_VERSION:
            raise GridError(f"{path} has format_version {state.get('format_version')!r}, this depthrl writes "
                            f"{GRID_FORMAT_VERSION}; pick another --grid-dir")
        if state.get("spec") != spec:
            raise GridError(f"{grid_dir} holds a different grid (spec {state.get('spec')}); pick another --grid-dir "
                            "or repeat the original options")
    elif grid_dir.exists() and any(grid_dir.iterdir()):
        raise GridError(f"{grid_dir} exists, is not empty and holds no {GRID_FILE}; pick another --grid-dir")
    else:
        state = {"format_version": GRID_FORMAT_VERSION, "kind": "grid", "spec": spec, "runs": {}}
    for run in runs:
        state["runs"].setdefault(run.name, {"env": run.env, "collector_depth": run.collector_depth,
                                            "seed": run.seed, "status": "pending"})
    return state


def _command(run: GridRun, run_dir: Path, ray_address: str | None = None) -> list[str]:
    cli = [sys.executable, "-m", "experiments.cli"]
    on_ray = ["--backend", "ray", "--ray-address", ray_address] if ray_address else []
    if (run_dir / "config.json").exists():
        return [*cli, "resume", str(run_dir), *on_ray]
    return [*cli, "run", *run.argv, *on_ray, "--run-dir", str(run_dir),
            *(["--overwrite"] if run_dir.exists() else [])]


def _option(args: list[str], flag: str) -> str | None:
    """The last value given to `flag` in `args` (``--flag V`` or ``--flag=V``)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def grid_ray_address(run_args: list[str], runs: list[GridRun]) -> str | None:
    """With --backend ray, the address every run of the grid joins: one cluster for the whole grid, so that Ray
    packs the runs' roles onto its GPUs and CPUs and queues what does not fit. 'local' starts that cluster here,
    with CPUs for at least one run's roles."""
    if _option(run_args, "--backend") != "ray":
        return None
    from experiments import ray_backend

    address = _option(run_args, "--ray-address") or "local"
    cpus = max(sum(r.resources.get("CPU", 0.0) for r in ray_backend.role_requests(run_config(run)).values())
               for run in runs)
    ray_backend.connect(address, cpus)
    import ray

    return ray.get_runtime_context().gcs_address


def run_grid(grid_dir: Path, state: dict, runs: list[GridRun], parallel: int,
             ray_address: str | None = None) -> int:
    """Run every run that is not done, `parallel` at a time; grid.json tracks statuses. Returns an exit code."""
    grid_dir.mkdir(parents=True, exist_ok=True)
    (grid_dir / "runs").mkdir(exist_ok=True)
    _write_json(grid_dir / GRID_FILE, state)
    todo = [r for r in runs if state["runs"][r.name]["status"] != "done"]
    skipped = len(runs) - len(todo)
    if skipped:
        print(f"depthrl ablate: {skipped} of {len(runs)} runs already done, skipped", file=sys.stderr)
    live: dict[str, tuple[subprocess.Popen, float]] = {}
    failed: list[str] = []
    from experiments.allocator import ALLOCATOR_ENV

    env = {**ALLOCATOR_ENV, **os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    try:
        while todo or live:
            while todo and len(live) < parallel:
                run = todo.pop(0)
                run_dir = grid_dir / "runs" / run.name
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                command = _command(run, run_dir, ray_address)
                verb = "resuming" if command[3] == "resume" else "starting"
                print(f"depthrl ablate: {verb} {run.name} ({len(runs) - len(todo) - skipped}/{len(runs) - skipped})",
                      file=sys.stderr, flush=True)
                # Each run is its own process tree (exec'd, never forked from this JAX-free parent).
                live[run.name] = (subprocess.Popen(command, env=env), time.time())
                state["runs"][run.name].update(status="running")
                _write_json(grid_dir / GRID_FILE, state)
            time.sleep(0.5)
            for name, (proc, started) in list(live.items()):
                code = proc.poll()
                if code is None:
                    continue
                del live[name]
                entry = state["runs"][name]
                entry["wall_seconds"] = round(entry.get("wall_seconds", 0.0) + time.time() - started, 1)
                entry["status"] = "done" if code == 0 else "failed"
                entry["exit_code"] = code
                if code != 0:
                    failed.append(name)
                _write_json(grid_dir / GRID_FILE, state)
                if code == 130:  # the run stopped on a signal: stop the grid too, resumable
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        for proc, _ in live.values():
            proc.terminate()
        for name, (proc, started) in live.items():
            proc.wait()
            entry = state["runs"][name]
            entry["status"] = "interrupted"
            entry["wall_seconds"] = round(entry.get("wall_seconds", 0.0) + time.time() - started, 1)
        _write_json(grid_dir / GRID_FILE, state)
        print(f"depthrl ablate: interrupted; continue with the same command (grid dir {grid_dir})", file=sys.stderr)
        return 130
    if failed:
        print(f"depthrl ablate: {len(failed)} run(s) failed: {', '.join(failed)}; their logs are in their run dirs; "
              "re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args, run_args = _parser().parse_known_args(argv)
    try:
        spec, runs = plan_grid(args, run_args)
        for run in runs:
            validate_run(run)
        grid_dir = default_grid_dir(args, spec["envs"])
        state = open_grid(grid_dir, spec, runs)
    except GridError as e:
        print(f"depthrl: error: {e}", file=sys.stderr)
        return 2
    print(f"depthrl ablate: {len(runs)} runs in {grid_dir}", file=sys.stderr)
    if args.dry_run:
        for run in runs:
            status = state["runs"][run.name]["status"]
            print(f"{run.name:<28} {status:<12} depthrl run {' '.join(run.argv)}")
        return 0
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM stops the grid as cleanly as Ctrl-C
    try:
        ray_address = grid_ray_address(list(spec["run_args"]), runs)
    except ValueError as e:  # ConfigError: the cluster cannot be reached
        print(f"depthrl: error: {e}", file=sys.stderr)
        return 2
    code = run_grid(grid_dir, state, runs, args.parallel, ray_address)
    if code != 0 or args.no_report:
        return code
    from analysis.report import main as report

    return report([str(grid_dir)])
