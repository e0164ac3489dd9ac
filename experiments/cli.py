"""`depthrl` command line. Each subcommand validates everything before it starts or writes anything; bad input exits
with code 2 and a message that names the field."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

USAGE = """usage: depthrl <command> [options]

commands:
  train      single-process CRL trainer (the reference for the decoupled runtime)
  run        decoupled run: replay server, collector + passive learners, evaluators, actors as processes
  resume     continue a stopped `run` from its checkpoints: depthrl resume RUN_DIR
  envs       list registered environments
  ablate     a collector-depth x learner-depth grid of runs (resumable): depthrl ablate --preset demo
  offline    fresh learners on a finished run's frozen replay: depthrl offline RUN_DIR --learner-depths 4,16 ...
  probe      the maze-topology probe of a decoupled run's learners, from their checkpoints: depthrl probe DIR
  report     tables and figures of a run or grid directory: depthrl report DIR
  render     an HTML viewer and (mazes) a top-down PNG of a rollout: depthrl render --env ant_u_maze
  slurm      an sbatch script running a run or grid on Ray across a SLURM allocation: depthrl slurm -- run ...

roles of a run (started by `run`; also by hand, e.g. on other hosts):
  replay     --run-dir D --port P
  learner    --run-dir D --replay HOST:PORT --learners collector[,learner_d4]
  actor      --run-dir D --replay HOST:PORT --actor-id I
  evaluator  --run-dir D --replay HOST:PORT --learner NAME

`depthrl <command> --help` shows a command's options."""


class UsageError(Exception):
    """Bad input found before anything started; exit code 2."""


def _fail(message: str) -> int:
    print(f"depthrl: error: {message}", file=sys.stderr)
    return 2


def cmd_train(argv: list[str]) -> int:
    import tyro

    from experiments.config import TrainConfig
    from experiments.runs import (RunDirError, check_run_dir, default_run_dir, format_version, prepare_run_dir,
                                  read_config, write_config)
    from learners.networks import ConfigError

    config = tyro.cli(TrainConfig, args=argv, prog="depthrl train", config=(tyro.conf.OmitArgPrefixes,))
    run = config.run
    try:
        # Checked before the resume branch, which replaces `run` by the recorded one and would drop --overwrite.
        if run.resume and run.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        _check_diagnostics_env()
        if run.resume:
            if run.run_dir is None:
                raise RunDirError("--resume needs --run-dir")
            check_run_dir(run.run_dir, resume=True, overwrite=False)
            if format_version(run.run_dir) == 1:
                raise RunDirError(
                    f"{run.run_dir} was written by an older depthrl (config.json format_version 1) whose single learner "
                    "logged as 'learner' and 'evaluator'; this depthrl names it 'collector' in every mode and cannot "
                    "continue those metrics. `depthrl report` and `depthrl render` still read the run; to train "
                    "further, start a new run (or continue this one with the depthrl revision in its config.json)")
            stored = read_config(run.run_dir, "train", TrainConfig)
            # The recorded config wins; only the run-control flags of this invocation apply.
            # overwrite=False: a run started with --overwrite recorded overwrite=True, which must not block resuming.
            config = dataclasses.replace(
                stored, run=dataclasses.replace(stored.run, resume=True, overwrite=False, quiet=run.quiet)
            )
            config.validate()
            run_dir = run.run_dir
        else:
            config.validate()
            run_dir = run.run_dir or default_run_dir(
                config.env.env, config.depth.actor_depth, config.depth.critic_depth, run.seed
            )
            check_run_dir(run_dir, resume=False, overwrite=run.overwrite)
            prepare_run_dir(run_dir, overwrite=run.overwrite)
            write_config(run_dir, "train", dataclasses.replace(config, run=dataclasses.replace(run, run_dir=run_dir)))
    except (ConfigError, RunDirError) as e:
        return _fail(str(e))

    from experiments.allocator import start_housekeeping_from_env
    from experiments.inline import run_training

    start_housekeeping_from_env()
    print(f"depthrl train: run dir {run_dir}", file=sys.stderr)
    try:
        final = run_training(config, Path(run_dir))
    except KeyboardInterrupt:
        return 130
    if final:
        print(f"final eval: time_at_goal {final['time_at_goal']:.1f} success_any {final['success_any']:.2f} "
              f"final_dist {final['final_dist']:.3f}")
    print(f"run dir: {run_dir}")
    return 0


def cmd_envs(argv: list[str]) -> int:
    import argparse

    from actors.envs.arm_assets import MissingAssetsError
    from actors.envs.registry import env_names, get_entry, make_env

    parser = argparse.ArgumentParser(prog="depthrl envs", description="List registered environments.")
    parser.parse_args(argv)
    header = f"{'name':<26} {'family':<9} {'obs':>4} {'state':>5} {'goal dims':>10} {'episode':>8} {'actions':>7}  backend"
    print(header)
    print("-" * len(header))
    for name in env_names():
        try:
            env = make_env(name)
        except MissingAssetsError as e:
            print(f"{name:<26} {get_entry(name).family:<9} (model not fetched: {e})")
            continue
        spec = env.spec
        goal = f"[{spec.goal_start}:{spec.goal_end}]"
        print(f"{name:<26} {get_entry(name).family:<9} {spec.obs_dim:>4} {spec.state_dim:>5} {goal:>10} "
              f"{spec.episode_length:>8} {env.action_size:>7}  {env.backend}")
    return 0


def _split_commas(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """Accept `--learner-depths 16,4` as well as tyro's `--learner-depths 16 4`."""
    out: list[str] = []
    expect = False
    for arg in argv:
        if expect and "," in arg and not arg.startswith("-"):
            out.extend(part for part in arg.split(",") if part)
        else:
            out.append(arg)
        expect = arg in flags
    return out


def cmd_run(argv: list[str]) -> int:
    import tyro

    from experiments.config import DecoupledConfig
    from experiments.runs import RunDirError, check_run_dir, default_run_dir, prepare_run_dir, write_config
    from learners.networks import ConfigError

    argv = _split_commas(argv, ("--learner-depths",))
    per_learner = [arg for arg in argv if arg.split("=")[0] in ("--actor-depth", "--critic-depth")]
    if per_learner:
        return _fail(f"{per_learner[0].split('=')[0]}: actor_depth/critic_depth are set per role in a run: use "
                     "--collector-depth and --learner-depths")
    config = tyro.cli(DecoupledConfig, args=argv, prog="depthrl run", config=(tyro.conf.OmitArgPrefixes,))
    run = config.run
    try:
        if run.resume:
            raise RunDirError("use `depthrl resume RUN_DIR` to continue a decoupled run")
        config.validate()
        run_dir = run.run_dir or default_run_dir(
            config.env.env, config.runtime.collector_depth, config.runtime.collector_depth, run.seed
        )
        check_run_dir(run_dir, resume=False, overwrite=run.overwrite)
        _check_port(config)
        _check_diagnostics_env()
        requests = _check_backend(config, run_dir)
    except (ConfigError, RunDirError) as e:
        return _fail(str(e))
    prepare_run_dir(run_dir, overwrite=run.overwrite)
    config = dataclasses.replace(config, run=dataclasses.replace(run, run_dir=run_dir))
    write_config(run_dir, "run", config)
    print(f"depthrl run: run dir {run_dir}", file=sys.stderr)
    return _launch(config, Path(run_dir), requests)


def _check_diagnostics_env() -> None:
    from experiments import allocator, memdiag
    from learners.networks import ConfigError

    if error := memdiag.env_error() or allocator.env_error():
        raise ConfigError(error)


def _check_port(config) -> None:
    from experiments.launcher import port_is_free
    from learners.networks import ConfigError

    port = config.runtime.replay_port
    if config.runtime.replay_address is None and not config.runtime.inline and port and not port_is_free(port):
        raise ConfigError(f"replay_port {port} is already in use; pick another or pass 0 for a free one")


def _check_backend(config, run_dir: Path):
    """With --backend ray: join the cluster and check, before anything is written, that every role's resources exist
    on some node and that every node sees the run directory. Returns the roles' requests (None for local)."""
    if config.runtime.backend != "ray":
        return None
    from experiments import ray_backend

    requests = ray_backend.role_requests(config)
    ray_backend.connect(config.runtime.ray_address, sum(r.resources.get("CPU", 0.0) for r in requests.values()))
    ray_backend.check_cluster(requests)
    probe = Path(run_dir).absolute()
    while not probe.is_dir():
        probe = probe.parent
    ray_backend.check_run_dir_visible(probe)
    return requests


def _launch(config, run_dir: Path, requests=None) -> int:
    if config.runtime.backend == "ray":
        from experiments.ray_backend import supervise_on_ray

        return supervise_on_ray(config, run_dir, requests)
    if config.runtime.inline:
        from experiments.inline import run_training

        try:
            run_training(config.as_train_config(), run_dir, config.learners,
                         resume_command=f"depthrl resume {run_dir}")
        except KeyboardInterrupt:
            return 130
        return 0
    from experiments.config import check_address
    from experiments.launcher import build_roles, exposure_warning, pick_free_port, supervise

    if config.runtime.replay_address is not None:
        address, port = config.runtime.replay_address, None
        print(f"depthrl run: using the replay server at {address}", file=sys.stderr)
        print(exposure_warning(*check_address(address, "replay_address")), file=sys.stderr, flush=True)
    else:
        port = config.runtime.replay_port or pick_free_port()
        address = f"127.0.0.1:{port}"
    return supervise(config, run_dir, build_roles(config, run_dir, address, port), quiet=config.run.quiet)


def cmd_resume(argv: list[str]) -> int:
    import argparse

    from experiments.compose import load_run_config
    from experiments.runs import RunDirError, check_run_dir
    from learners.networks import ConfigError

    parser = argparse.ArgumentParser(prog="depthrl resume", description="Continue a stopped decoupled run.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--backend", choices=("local", "ray"), default=None,
                        help="run the roles on another backend than the run started on")
    parser.add_argument("--ray-address", default=None, help="with --backend ray: local, auto or HOST:PORT")
    args = parser.parse_args(argv)
    try:
        check_run_dir(args.run_dir, resume=True, overwrite=False)
        config = load_run_config(args.run_dir)
        overrides = {k: v for k, v in (("backend", args.backend), ("ray_address", args.ray_address)) if v is not None}
        if overrides:
            config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, **overrides))
        config.validate()
        _check_port(config)
        _check_diagnostics_env()
        requests = _check_backend(config, args.run_dir)
        from experiments.resume import check_resume_state, upgrade_v1_status

        check_resume_state(args.run_dir, config)
        upgrade_v1_status(args.run_dir, config)
    except (ConfigError, RunDirError) as e:
        return _fail(str(e))
    return _launch(config, args.run_dir, requests)


def _run_role(role: str, run: Callable[[], int], run_dir: Path, name: str) -> int:
    """Run a role to its end and exit the process (see `_exit_role`). An exception ends the role with exit code 1
    and its traceback in the log; a failed write to the run directory (disk full, not writable) with a plain message
    and `EXIT_RUN_DIR_UNWRITABLE`, which the launcher names even if this message cannot be written either. `name`
    names this process's memory diagnostics file when they are on (`experiments.memdiag`). The heap trimmer
    (`experiments.allocator`) runs for the role's whole life; the interned-string table is settled after a minute."""
    import traceback

    from experiments.allocator import start_housekeeping_from_env
    from experiments.memdiag import start_from_env
    from experiments.runs import EXIT_RUN_DIR_UNWRITABLE, is_disk_error

    try:
        start_housekeeping_from_env()
        start_from_env(run_dir, name)
        code = run()
    except Exception as e:  # noqa: BLE001 (the role ends here either way; say why)
        if is_disk_error(e):
            code = EXIT_RUN_DIR_UNWRITABLE
            message = (f"depthrl {role}: error: cannot write to the run directory: {e}\n"
                       "The disk is full or the run directory is not writable. Checkpoints already written are intact "
                       "(each is written to a temporary name and renamed when complete); free space or fix "
                       "permissions, then continue with `depthrl resume RUN_DIR`.")
        else:
            code = 1
            message = traceback.format_exc()
        try:
            print(message, file=sys.stderr, flush=True)
        except OSError:
            pass  # stderr is a log file on the same full disk
    return _exit_role(code)


def _exit_role(code: int) -> int:
    """End a role process at once after its work is done and its files are closed.

    A Reverb call that timed out keeps a daemon thread blocked inside Reverb's C++ client; normal interpreter exit
    destroys that thread and aborts ("terminate called without an active exception", exit -6), which the launcher
    would count as a crash. Nothing is left to flush at this point, so skip interpreter teardown.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    os._exit(code)


def _role_parser(prog: str):
    import argparse

    parser = argparse.ArgumentParser(prog=f"depthrl {prog}")
    parser.add_argument("--run-dir", type=Path, required=True, help="run directory holding config.json")
    return parser


def _load_role_config(run_dir: Path):
    """The run's config for a role command, or a message for `_fail` (exit 2, nothing started)."""
    from experiments.compose import load_run_config
    from experiments.runs import RunDirError, check_run_dir

    try:
        check_run_dir(run_dir, resume=True, overwrite=False)
        return load_run_config(run_dir), ""
    except RunDirError as e:
        return None, str(e)


def _check_replay_arg(address: str) -> str:
    """'' when --replay is usable; warns (stderr) when it points off this host. Returns the error text otherwise."""
    from experiments.config import check_address
    from experiments.launcher import exposure_warning, is_loopback
    from learners.networks import ConfigError

    try:
        host, port = check_address(address, "--replay")
    except ConfigError as e:
        return str(e)
    if not is_loopback(host):
        print(exposure_warning(host, port), file=sys.stderr, flush=True)
    return ""


def cmd_replay(argv: list[str]) -> int:
    parser = _role_parser("replay")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    config, error = _load_role_config(args.run_dir)
    if config is None:
        return _fail(error)
    from experiments.compose import LAUNCHER_PID_ENV
    from experiments.launcher import port_is_free
    from experiments.compose import run_replay

    if not 0 < args.port <= 65535:
        return _fail(f"--port must be in 1..65535, got {args.port}")
    if not port_is_free(args.port):
        return _fail(f"--port {args.port} is already in use; pick a free port")
    if LAUNCHER_PID_ENV not in os.environ:  # started by hand, typically for other hosts
        print(f"WARNING: the replay server listens on all interfaces, port {args.port}, with no authentication and no "
              f"TLS: anyone who can reach port {args.port} can read and write replay data and params. Keep it inside a "
              "private network.", file=sys.stderr, flush=True)
    return _run_role("replay", lambda: run_replay(args.run_dir, args.port), args.run_dir, "replay")


def cmd_learner(argv: list[str]) -> int:
    parser = _role_parser("learner")
    parser.add_argument("--replay", required=True, help="HOST:PORT of the replay server")
    parser.add_argument("--learners", required=True, help="comma-separated learner names, e.g. collector")
    args = parser.parse_args(argv)
    config, error = _load_role_config(args.run_dir)
    if config is None:
        return _fail(error)
    names = tuple(n for n in args.learners.split(",") if n)
    known = config.runtime.learner_names()
    if not names or set(names) - set(known) or len(set(names)) != len(names):
        return _fail(f"--learners must list distinct learners of this run ({', '.join(known)}), got {args.learners!r}")
    if error := _check_replay_arg(args.replay):
        return _fail(error)
    from experiments.compose import run_learner_role

    return _run_role("learner", lambda: run_learner_role(args.run_dir, args.replay, names), args.run_dir,
                     "learner-" + "+".join(names))


def cmd_actor(argv: list[str]) -> int:
    parser = _role_parser("actor")
    parser.add_argument("--replay", required=True, help="HOST:PORT of the replay server")
    parser.add_argument("--actor-id", type=int, required=True)
    args = parser.parse_args(argv)
    config, error = _load_role_config(args.run_dir)
    if config is None:
        return _fail(error)
    if not 0 <= args.actor_id < config.runtime.actors:
        return _fail(f"--actor-id must be in 0..{config.runtime.actors - 1} (this run has {config.runtime.actors} "
                     f"actors), got {args.actor_id}")
    if error := _check_replay_arg(args.replay):
        return _fail(error)
    from experiments.compose import run_actor_role

    return _run_role("actor", lambda: run_actor_role(args.run_dir, args.replay, args.actor_id), args.run_dir,
                     f"actor-{args.actor_id}")


def cmd_evaluator(argv: list[str]) -> int:
    parser = _role_parser("evaluator")
    parser.add_argument("--replay", required=True, help="HOST:PORT of the replay server")
    parser.add_argument("--learner", required=True, help="learner name, e.g. collector or learner_d4")
    args = parser.parse_args(argv)
    config, error = _load_role_config(args.run_dir)
    if config is None:
        return _fail(error)
    if args.learner not in config.runtime.learner_names():
        return _fail(f"--learner must be one of this run's learners ({', '.join(config.runtime.learner_names())}), "
                     f"got {args.learner!r}")
    if error := _check_replay_arg(args.replay):
        return _fail(error)
    from experiments.compose import run_evaluator_role

    return _run_role("evaluator", lambda: run_evaluator_role(args.run_dir, args.replay, args.learner),
                     args.run_dir, f"evaluator-{args.learner}")


def _delegate(target: str) -> Callable[[list[str]], int]:
    """A command implemented as `main(argv) -> exit code` in another module, imported only when it runs."""

    def command(argv: list[str]) -> int:
        import importlib

        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)(argv)

    return command


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train,
    "run": cmd_run,
    "resume": cmd_resume,
    "envs": cmd_envs,
    "replay": cmd_replay,
    "learner": cmd_learner,
    "actor": cmd_actor,
    "evaluator": cmd_evaluator,
    "ablate": _delegate("experiments.ablate:main"),
    "offline": _delegate("experiments.offline:main"),
    "probe": _delegate("experiments.probes:main"),
    "report": _delegate("analysis.report:main"),
    "render": _delegate("experiments.render:main"),
    "slurm": _delegate("experiments.slurm:main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        return _fail(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    try:
        return command(argv[1:])
    except SystemExit as e:  # argparse/tyro report bad arguments (code 2) and --help (0) this way
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


if __name__ == "__main__":
    sys.exit(main())
