"""`depthrl render`: one rollout of a trained policy (or of random actions) as an HTML viewer and a top-down PNG.

    depthrl render --env ant_u_maze --out renders/random            # uniform random actions
    depthrl render --run-dir runs/ant_u_maze-a4-c4-s0-... --out renders/trained
    depthrl render --run-dir runs/decoupled --role learner_d16 --out renders/d16
    depthrl render --checkpoint runs/x/checkpoints/400000 --env ant_u_maze_eval --out renders/eval

Outputs in ``--out``:
- ``rollout.html``: brax's three.js viewer (`brax.io.html`) of the episode, for envs simulated by a brax pipeline
  (ant, humanoid, reacher); it loads the viewer script from brax's CDN when opened. The point mazes have no brax
  system, so they get no HTML (the command says so);
- ``topdown.png``: the achieved goal's trajectory seen from above (x, y), with the start and the commanded goal; for
  maze envs also the walls, the start cells ('R') and the goal cells ('G');
- ``rollout.json``: what was rendered (env, policy source, steps, alive steps, time at goal, final distance).

The policy is the deterministic one the evaluators score (tanh of the actor's mean). The episode stops at the first
termination (e.g. a fallen ant) or after ``--steps`` steps (default: the run's episode length, else the env's).
Everything is checked before anything is written: an unknown env, a missing run or checkpoint, a role the run does
not have, or an env that is neither the run's training env nor its eval env exits with code 2 and leaves ``--out``
untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["RenderError", "main", "resolve_policy_source", "load_actor_params"]

HTML_FILE = "rollout.html"
PNG_FILE = "topdown.png"
SUMMARY_FILE = "rollout.json"
TRAIN_ROLES = ("collector", "learner")
"""Names accepted by --role for a `depthrl train` run, whose only agent is the collector (its metrics role is
'learner')."""


class RenderError(ValueError):
    """Bad input found before anything was written; exit code 2."""


@dataclasses.dataclass(frozen=True)
class PolicySource:
    """Where the policy's params come from, resolved and checked (nothing loaded yet)."""

    run_dir: Path
    """The run directory (holds config.json)."""
    kind: str
    """'train' (`depthrl train`) or 'run' (`depthrl run`)."""
    config: Any
    """The run's TrainConfig or DecoupledConfig."""
    role: str
    """Whose policy: 'collector' or a passive learner name such as 'learner_d16'."""
    step_dir: Path
    """The orbax step directory to restore (``.../checkpoints[/<process>]/<step>``)."""
    tree_path: tuple[str, ...]
    """Keys from the checkpoint's ``state(s)`` item to the agent's `CRLState`."""
    item: str
    """Name of the orbax composite item that holds the agent states ('state' or 'states')."""

    @property
    def train_env(self) -> str:
        return self.config.env.env

    @property
    def eval_env(self) -> str | None:
        return self.config.env.eval_env

    @property
    def learner(self):
        """The `LearnerSpec` of `role` (its depths, as config.json states them)."""
        return {spec.name: spec for spec in self.config.learners}[self.role]


def _step_dirs(directory: Path) -> list[Path]:
    """Finished orbax step directories under `directory`, ascending by step (orbax names them by number)."""
    if not directory.is_dir():
        return []
    steps = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(steps, key=lambda p: int(p.name))


def _find_run_dir(path: Path) -> Path:
    from experiments.runs import CONFIG_FILE

    for candidate in (path, *path.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise RenderError(f"{path} is not inside a run directory (no config.json in it or above it)")


def resolve_policy_source(run_dir: Path | None, checkpoint: Path | None, role: str) -> PolicySource:
    """Check a `--run-dir` (latest checkpoint) or `--checkpoint` (one step directory, or a directory of them) and
    find what to restore. Raises RenderError with a message naming the problem."""
    from experiments.config import DecoupledConfig, TrainConfig
    from experiments.runs import CONFIG_FILE, RunDirError, read_config

    if checkpoint is not None:
        if not checkpoint.is_dir():
            raise RenderError(f"--checkpoint {checkpoint} does not exist or is not a directory")
        run_dir = _find_run_dir(checkpoint.resolve())
    assert run_dir is not None
    if not run_dir.is_dir():
        raise RenderError(f"--run-dir {run_dir} does not exist")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RenderError(f"--run-dir {run_dir} is not a run directory (no {CONFIG_FILE})")
    try:
        kind = json.loads((run_dir / CONFIG_FILE).read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as e:
        raise RenderError(f"cannot read {run_dir / CONFIG_FILE}: {e}") from None
    config_class = {"train": TrainConfig, "run": DecoupledConfig}.get(kind)
    if config_class is None:
        raise RenderError(f"{run_dir} holds a {kind!r} run; render reads 'train' and 'run' runs")
    try:
        config = read_config(run_dir, kind, config_class)
    except RunDirError as e:
        raise RenderError(str(e)) from None

    root = run_dir / "checkpoints"
    inline = kind == "train" or config.runtime.inline
    if inline:
        # One TrainerState per step: the collector is `agent` (inline `depthrl run` keeps passive learners in a
        # tuple, which this command does not restore).
        accepted = TRAIN_ROLES if kind == "train" else ("collector",)
        if role not in accepted:
            raise RenderError(f"--role {role!r}: this {kind!r} run's checkpoints hold only the collector's policy "
                              f"(--role {accepted[0]})")
        role, ckpt_dir, tree_path, item = "collector", root, ("agent",), "state"
    else:
        names = config.runtime.learner_names()
        if role not in names:
            raise RenderError(f"--role {role!r} is not a learner of this run; its learners: {', '.join(names)}")
        # Each learner process checkpoints under checkpoints/<names joined by '+'>/ (one dir per process).
        owners = [p for p in root.iterdir() if p.is_dir() and role in p.name.split("+")] if root.is_dir() else []
        if not owners:
            raise RenderError(f"{run_dir} has no checkpoint of learner {role!r} under {root}")
        ckpt_dir, tree_path, item = owners[0], (role,), "states"

    if checkpoint is not None:
        checkpoint = checkpoint.resolve()
        step_dir = checkpoint if checkpoint.name.isdigit() else None
        if step_dir is None:
            found = _step_dirs(checkpoint)
            step_dir = found[-1] if found else None
        if step_dir is None:
            raise RenderError(f"--checkpoint {checkpoint} is neither an orbax step directory nor holds one")
        if step_dir.parent.resolve() != ckpt_dir.resolve():
            raise RenderError(f"--checkpoint {checkpoint} is not a checkpoint of the {role!r} policy of this run "
                              f"(those are the step directories in {ckpt_dir})")
    else:
        found = _step_dirs(ckpt_dir)
        if not found:
            raise RenderError(f"{run_dir} has no checkpoint yet (nothing under {ckpt_dir})")
        step_dir = found[-1]
    if not (step_dir / item).is_dir():
        raise RenderError(f"{step_dir} is not a complete checkpoint (no {item!r} item)")
    return PolicySource(run_dir=run_dir, kind=kind, config=config, role=role, step_dir=step_dir,
                        tree_path=tree_path, item=item)


def load_actor_params(source: PolicySource, env) -> tuple[Any, Any]:
    """Restore only the actor's params of `source` (not the replay buffer or the optimiser states): returns
    ``(agent, actor_params)`` with `agent` the `learners.crl.CRLAgent` that acts with them."""
    import jax
    import orbax.checkpoint as ocp

    from learners.crl import Dims, make_agent

    spec = env.spec
    agent = make_agent(source.config.agent, source.learner, Dims(spec.state_dim, spec.goal_dim, env.action_size))
    abstract = jax.eval_shape(agent.init, jax.random.key(0)).actor_params
    item: dict = {"actor_params": abstract}
    for key in reversed(source.tree_path):
        item = {key: item}
    restored = ocp.PyTreeCheckpointer().restore(
        (source.step_dir / source.item).resolve(),
        args=ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                    partial_restore=True),
    )
    for key in source.tree_path:
        restored = restored[key]
    return agent, restored["actor_params"]


# --- rollout ---------------------------------------------------------------------------------------------------


def rollout(env, act, key, num_steps: int) -> dict[str, Any]:
    """One episode of `env` under ``act(obs [S+G], key) -> action [A]``, jitted as one scan.

    Returns numpy arrays indexed by frame (0 = the reset state, t = the state after step t): ``obs [T+1, S+G]``,
    ``alive [T+1]`` (1 up to and including the first terminating step's frame, 0 after), ``done [T+1]``,
    ``success [T+1]`` (0 after termination), ``dist [T+1]`` and the stacked ``pipeline_state`` ([T+1, ...] leaves;
    None for envs without a brax pipeline)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    def episode(key):
        reset_key, act_key = jax.random.split(key)
        state = env.reset(reset_key)

        def step(carry, step_key):
            state, alive = carry
            next_state = env.step(state, act(state.obs, step_key))
            record = (next_state.pipeline_state, next_state.obs, alive, next_state.done,
                      next_state.metrics["success"], next_state.metrics["dist"])
            return (next_state, alive * (1.0 - next_state.done)), record

        _, (pipeline, obs, alive, done, success, dist) = jax.lax.scan(
            step, (state, jnp.ones((), jnp.float32)), jax.random.split(act_key, num_steps)
        )
        first = jax.tree_util.tree_map(lambda x: x[None], (state.pipeline_state, state.obs))
        pipeline, obs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), first, (pipeline, obs))
        zero = jnp.zeros((1,), jnp.float32)
        spec = env.spec
        dist0 = jnp.linalg.norm(spec.achieved_goal(spec.state_of(state.obs)) - spec.goal_of(state.obs))
        return {
            "pipeline_state": pipeline,
            "obs": obs,
            "alive": jnp.concatenate([jnp.ones((1,), jnp.float32), alive]),
            "done": jnp.concatenate([zero, done.astype(jnp.float32)]),
            "success": jnp.concatenate([zero, success * alive]),
            "dist": jnp.concatenate([dist0[None], dist]),
        }

    return jax.tree_util.tree_map(np.asarray, jax.jit(episode)(key))


# --- outputs ---------------------------------------------------------------------------------------------------


def write_html(env, pipeline_states, num_frames: int, path: Path) -> None:
    """brax's HTML viewer of the first `num_frames` stacked pipeline states."""
    import jax
    from brax.io import html

    frames = [jax.tree_util.tree_map(lambda x: x[t], pipeline_states) for t in range(num_frames)]
    system = getattr(env, "render_sys", env.sys)  # the arms draw their links as capsules (their meshes are stripped)
    path.write_text(html.render(system.tree_replace({"opt.timestep": env.dt}), frames, height=600, colab=False))


def plot_topdown(layout, achieved_xy, goal_xy, title: str):
    """Top-down figure: ``achieved_xy [T, 2]`` trajectory, commanded ``goal_xy [2]``, and (when `layout` is a
    `MazeLayout`) walls, 'R' and 'G' cells. Axes follow `actors.envs.mazes`: world x grows down the layout text, so
    the plot puts world y to the right and world x downwards and the picture reads like the layout string."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(6, 6))
    if layout is not None:
        s = layout.scaling
        for cells, face, label in ((np.argwhere(layout.wall_mask), "0.35", "wall"),
                                   (layout.start_cells, "#cfe8cf", "start cell (R)"),
                                   (layout.goal_cells, "#f6dcc0", "goal cell (G)")):
            for n, (x, y) in enumerate(layout.cell_to_xy(cells)):
                ax.add_patch(Rectangle((y - s / 2, x - s / 2), s, s, facecolor=face, edgecolor="0.8", lw=0.5,
                                       label=label if n == 0 else None))
        n_rows, n_cols = layout.shape
        ax.set_xlim(-s / 2, (n_cols - 0.5) * s)
        ax.set_ylim((n_rows - 0.5) * s, -s / 2)
    else:
        points = np.concatenate([achieved_xy, goal_xy[None]])
        low, high = points.min(axis=0), points.max(axis=0)
        pad = 0.1 * max(float(np.max(high - low)), 1e-3)
        ax.set_xlim(low[1] - pad, high[1] + pad)
        ax.set_ylim(high[0] + pad, low[0] - pad)
    ax.plot(achieved_xy[:, 1], achieved_xy[:, 0], "-", color="tab:blue", lw=1.5, label="achieved goal")
    ax.plot(achieved_xy[0, 1], achieved_xy[0, 0], "o", color="tab:green", ms=8, label="start")
    ax.plot(achieved_xy[-1, 1], achieved_xy[-1, 0], "s", color="tab:blue", ms=7, label="end")
    ax.plot(goal_xy[1], goal_xy[0], "*", color="tab:red", ms=16, label="commanded goal")
    ax.set_aspect("equal")
    ax.set_xlabel("world y")
    ax.set_ylabel("world x")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


# --- command ---------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthrl render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", help="registered env name; default: the run's training env (required without a run)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run-dir", type=Path,
                        help="a `depthrl train` / `depthrl run` directory: its latest checkpoint")
    source.add_argument("--checkpoint", type=Path,
                        help="one orbax step directory of a run (e.g. RUN/checkpoints/400000), or a directory of them")
    parser.add_argument("--role", default="collector",
                        help="whose policy in a decoupled run: collector or a passive learner (learner_d16)")
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps to roll out; default: the run's episode length, else the env's")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reset (start, goal) and of random actions")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created; files are replaced)")
    return parser


def _check(args) -> tuple[str, PolicySource | None]:
    """Every check that needs no env model or compile; returns the env name and the policy source."""
    from actors.envs.registry import UnknownEnvError, get_entry

    if args.steps is not None and args.steps <= 0:
        raise RenderError(f"--steps must be a positive integer, got {args.steps}")
    if args.out.exists() and not args.out.is_dir():
        raise RenderError(f"--out {args.out} exists and is not a directory")
    source = None
    if args.run_dir is not None or args.checkpoint is not None:
        source = resolve_policy_source(args.run_dir, args.checkpoint, args.role)
    if args.env is None and source is None:
        raise RenderError("--env is required when no --run-dir or --checkpoint is given")
    env_name = args.env or source.train_env
    try:
        get_entry(env_name)
    except UnknownEnvError as e:
        raise RenderError(f"--env: {e}") from None
    if source is not None and env_name not in (source.train_env, source.eval_env):
        allowed = " or ".join(repr(n) for n in (source.train_env, source.eval_env) if n)
        raise RenderError(f"--env {env_name!r} does not match the run, which trained on {allowed}")
    return env_name, source


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed the problem (or --help)
        return int(e.code or 0)
    try:
        env_name, source = _check(args)
    except RenderError as e:
        print(f"depthrl render: error: {e}", file=sys.stderr)
        return 2

    import jax
    import numpy as np

    from actors.envs.registry import make_env

    env = make_env(env_name)
    spec = env.spec
    if source is None:
        policy_label = "uniform random actions"

        def act(obs, key):
            return jax.random.uniform(key, (env.action_size,), minval=-1.0, maxval=1.0)
    else:
        agent, params = load_actor_params(source, env)
        policy_label = f"{source.role} policy of {source.run_dir} @ checkpoint {source.step_dir.name}"

        def act(obs, key):
            return agent.act(params, obs[None], key, deterministic=True)[0]

    # A run's own episode length (e.g. `--episode-length 200`) wins over the env's default.
    run_episode_length = source.config.env.episode_length if source is not None else None
    num_steps = args.steps or run_episode_length or spec.episode_length
    result = rollout(env, act, jax.random.key(args.seed), num_steps)
    # Frames up to and including the first terminating step's (alive is 1 through it, 0 after).
    num_frames = int(result["alive"].sum())
    obs = result["obs"][:num_frames]
    achieved_xy = spec.achieved_goal(spec.state_of(obs))[:, :2]
    goal_xy = spec.goal_of(obs)[0, :2]

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    has_brax_system = getattr(env, "sys", None) is not None and result["pipeline_state"] is not None
    if has_brax_system:
        write_html(env, result["pipeline_state"], num_frames, args.out / HTML_FILE)
        written.append(args.out / HTML_FILE)
    else:
        print(f"depthrl render: {env_name} has no brax system (a kinematic point): no HTML viewer, PNG only",
              file=sys.stderr)
    fig = plot_topdown(getattr(env, "layout", None), achieved_xy, goal_xy,
                       f"{env_name}: {policy_label}\n{num_frames - 1} steps, seed {args.seed}")
    fig.savefig(args.out / PNG_FILE, dpi=120, bbox_inches="tight")
    written.append(args.out / PNG_FILE)
    summary = {
        "env": env_name,
        "policy": policy_label,
        "seed": args.seed,
        "steps_requested": num_steps,
        "steps_rendered": num_frames - 1,
        "terminated": bool(result["done"][:num_frames].any()),
        "time_at_goal": float(result["success"][:num_frames].sum()),
        "final_dist": float(result["dist"][num_frames - 1]),
        "start_xy": [float(v) for v in achieved_xy[0]],
        "goal_xy": [float(v) for v in np.asarray(goal_xy)],
        "files": [p.name for p in written],
    }
    (args.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    for path in written + [args.out / SUMMARY_FILE]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
