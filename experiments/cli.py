"""`depthrl` command line. Each subcommand validates everything before it starts or writes anything; bad input exits
with code 2 and a message that names the field."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable

USAGE = """usage: depthrl <command> [options]

commands:
  train   single-process CRL trainer (the reference; `--inline` mode of the framework)
  envs    list registered environments

`depthrl <command> --help` shows a command's options."""


class UsageError(Exception):
    """Bad input found before anything started; exit code 2."""


def _fail(message: str) -> int:
    print(f"depthrl: error: {message}", file=sys.stderr)
    return 2


def cmd_train(argv: list[str]) -> int:
    import tyro

    from experiments.config import TrainConfig
    from experiments.runs import RunDirError, check_run_dir, default_run_dir, prepare_run_dir, read_config, write_config
    from learners.networks import ConfigError

    config = tyro.cli(TrainConfig, args=argv, prog="depthrl train", config=(tyro.conf.OmitArgPrefixes,))
    run = config.run
    try:
        if run.resume:
            if run.run_dir is None:
                raise RunDirError("--resume needs --run-dir")
            check_run_dir(run.run_dir, resume=True, overwrite=False)
            stored = read_config(run.run_dir, "train", TrainConfig)
            # The recorded config wins; only the run-control flags of this invocation apply.
            config = dataclasses.replace(stored, run=dataclasses.replace(stored.run, resume=True, quiet=run.quiet))
            config.validate()
            run_dir = run.run_dir
        else:
            config.validate()
            run_dir = run.run_dir or default_run_dir(
                config.env.env, config.agent.actor_depth, config.agent.critic_depth, run.seed
            )
            check_run_dir(run_dir, resume=False, overwrite=run.overwrite)
            prepare_run_dir(run_dir, overwrite=run.overwrite)
            write_config(run_dir, "train", dataclasses.replace(config, run=dataclasses.replace(run, run_dir=run_dir)))
    except (ConfigError, RunDirError) as e:
        return _fail(str(e))

    from experiments.inline import run_training

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

    from actors.envs.registry import env_names, get_entry, make_env

    parser = argparse.ArgumentParser(prog="depthrl envs", description="List registered environments.")
    parser.parse_args(argv)
    header = f"{'name':<26} {'family':<9} {'obs':>4} {'state':>5} {'goal dims':>10} {'episode':>8} {'actions':>7}  backend"
    print(header)
    print("-" * len(header))
    for name in env_names():
        env = make_env(name)
        spec = env.spec
        goal = f"[{spec.goal_start}:{spec.goal_end}]"
        print(f"{name:<26} {get_entry(name).family:<9} {spec.obs_dim:>4} {spec.state_dim:>5} {goal:>10} "
              f"{spec.episode_length:>8} {env.action_size:>7}  {env.backend}")
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {"train": cmd_train, "envs": cmd_envs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        return _fail(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
