"""Live tracking sinks behind the one logging seam (`experiments.metrics.JsonlLogger`): TensorBoard and Weights &
Biases, fed the same rows the JSONL files get. JSONL is always on and stays the source of truth for `analysis/`.

`--log jsonl,tensorboard,wandb` chooses them (`parse_sinks` / `check_sinks` run before anything starts).

TensorBoard (tensorboardX, not `tf.summary`: it writes event files without importing TensorFlow, so the single-process
trainer, which never loads TF, stays TF-free, and every role pays the same small import): each role writes
``RUN_DIR/tb/<role>/``, scalars under the rows' own ``"{role}/{name}"`` keys. The step axis of a role is named by the
role kind (`step_key`): learners log against **grad steps**, evaluators and actors against **env steps**, the replay
server against wall-clock seconds. The run's config.json goes in as text. A resumed role opens its directory again with
``purge_step`` at its first new row: events a crashed process wrote past the checkpoint it resumed from are hidden, so
TensorBoard shows every step once.

Weights & Biases (optional: ``pip install -r requirements-wandb.lock --no-deps``): one W&B run per depthrl run, id
and name from the run directory, grouped by grid (`--wandb-group`, set by `depthrl ablate` to the grid's name), the
config flattened, tagged with the env and the learners' depths. Only one process of a run talks to W&B: the
single-process trainer itself, or, in a decoupled run, the launcher, which feeds it every role's new JSONL rows
(`WandbFeed`) as it supervises; each role's keys get their own step metric (``"{role}/step"``), because W&B's run-level
step must only grow. Every role keeps the highest step it sent, so a resumed run (W&B resumes the same id) never
sends a step twice. At the end the report's figures are uploaded. ``WANDB_MODE=offline`` works without a network.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from learners.networks import ConfigError

SINKS = ("jsonl", "tensorboard", "wandb")
TB_DIR = "tb"
WANDB_STATE_FILE = "wandb.json"
"""In the run dir: the W&B run id and, per role, the highest step already sent (so a resume sends none twice)."""


def parse_sinks(text: str) -> tuple[str, ...]:
    """``"jsonl,tensorboard"`` -> the sinks, JSONL always first; ConfigError naming an unknown one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SINKS]
    if unknown:
        raise ConfigError(f"log: unknown sink {unknown[0]!r}; choose from {', '.join(SINKS)} (comma-separated; jsonl "
                          "is always on)")
    return ("jsonl", *(name for name in SINKS[1:] if name in names))


def check_sinks(sinks: tuple[str, ...]) -> None:
    """ConfigError, before anything starts, when a sink cannot work here: wandb not installed, or not logged in
    while W&B is meant to go online."""
    if "wandb" not in sinks:
        return
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("log: wandb is not installed; it is optional: `.venv/bin/pip install --no-deps -r "
                          "requirements-wandb.lock` installs the tested version (or drop wandb from --log)")
    if os.environ.get("WANDB_MODE", "online") in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    if not logged_in:
        raise ConfigError("log: wandb is not logged in: run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline "
                          "to write the W&B run locally (`wandb sync` uploads it later)")


def step_key(role: str) -> str:
    """The row field a role's scalars are plotted against (see the module docstring)."""
    if role == "replay":
        return "wall_time"
    if role.startswith(("eval_", "actor_")):
        return "env_steps"
    return "grad_steps"


class TensorBoardSink:
    """One role's TensorBoard event files in ``RUN_DIR/tb/<role>/``."""

    def __init__(self, run_dir: Path, role: str) -> None:
        self.directory = Path(run_dir) / TB_DIR / role
        self._role, self._step_key = role, step_key(role)
        self._writer = None
        self._config_path = Path(run_dir) / "config.json"

    def write(self, row: Mapping[str, Any]) -> None:
        step = int(row[self._step_key])
        if self._writer is None:
            from tensorboardX import SummaryWriter

            resumed = self.directory.is_dir() and any(self.directory.iterdir())
            # purge_step: hide what an earlier process of this role logged at this step or later (it crashed after
            # its last checkpoint and this one redoes those steps).
            # Event file names hold the time in whole seconds; TensorBoard reads a directory's files in name order
            # (the purge marker must come after the events it hides). Two writers of one role within a second (a
            # fast restart) would share a name, so the suffix is the start time in nanoseconds, fixed width: unique,
            # and in start order.
            self._writer = SummaryWriter(str(self.directory), purge_step=step if resumed else None, flush_secs=10,
                                         filename_suffix=f".{time.time_ns():020d}.{os.getpid()}")
            if not resumed and self._config_path.is_file():
                self._writer.add_text("config", "```\n" + self._config_path.read_text() + "\n```", 0)
        prefix = f"{self._role}/"
        for key, value in row.items():
            if key.startswith(prefix) and value is not None:
                self._writer.add_scalar(key, value, step, walltime=None)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class WandbRun:
    """The one W&B run of a depthrl run (see the module docstring). `log(role, row)` sends a row once."""

    def __init__(self, run_dir: Path, group: str | None = None) -> None:
        import wandb

        self._wandb = wandb
        self.run_dir = Path(run_dir)
        payload = json.loads((self.run_dir / "config.json").read_text())
        state_path = self.run_dir / WANDB_STATE_FILE
        self._state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        run_id = self._state.setdefault("id", wandb.util.generate_id())
        self._state.setdefault("steps", {})
        learners = payload.get("learners") or []
        config = payload.get("config") or {}
        tags = [f"env:{config.get('env', {}).get('env', '?')}", f"kind:{payload.get('kind')}"]
        tags += [f"{'collector' if x.get('collects') else 'learner'}:d{x.get('critic_depth')}" for x in learners]
        self.run = wandb.init(
            id=run_id, resume="allow", name=self.run_dir.name, group=group, dir=str(self.run_dir), tags=tags,
            config={**_flatten(config), "learners": learners, "git_revision": payload.get("git_revision")},
            project=os.environ.get("WANDB_PROJECT", "depthrl"), reinit=True)
        self._defined: set[str] = set()
        self._save_state()

    def _save_state(self) -> None:
        from experiments.runs import atomic_write_text

        atomic_write_text(self.run_dir / WANDB_STATE_FILE, json.dumps(self._state))

    def log(self, role: str, row: Mapping[str, Any]) -> bool:
        """Send `role`'s row unless a row at its step (or later) was sent already. Returns whether it was sent."""
        key = step_key(role)
        step = float(row[key])
        if step <= self._state["steps"].get(role, float("-inf")):
            return False
        if role not in self._defined:
            self.run.define_metric(f"{role}/step")
            self.run.define_metric(f"{role}/*", step_metric=f"{role}/step")
            self._defined.add(role)
        prefix = f"{role}/"
        data = {k: v for k, v in row.items() if k.startswith(prefix) and v is not None}
        self.run.log({**data, f"{role}/step": step})
        self._state["steps"][role] = step
        return True

    def checkpoint(self) -> None:
        """Record the steps sent so far (a resume starts after them)."""
        self._save_state()

    def upload_figures(self, figures_dir: Path) -> int:
        """Upload the report's PNG figures; returns how many."""
        images = {f"figures/{p.stem}": self._wandb.Image(str(p)) for p in sorted(Path(figures_dir).glob("*.png"))}
        if images:
            self.run.log(images)
        return len(images)

    def finish(self) -> None:
        self._save_state()
        self.run.finish()


class WandbSink:
    """One role's rows into the run's `WandbRun` (the single-process trainer's loggers)."""

    def __init__(self, run: WandbRun, role: str) -> None:
        self._run, self._role = run, role

    def write(self, row: Mapping[str, Any]) -> None:
        self._run.log(self._role, row)

    def close(self) -> None:
        self._run.checkpoint()


class WandbFeed:
    """The launcher's side of a decoupled run: sends every role's new JSONL rows to the `WandbRun` (roles run in
    their own processes; only the launcher talks to W&B). Rows whose line is not complete yet wait for the next call."""

    def __init__(self, run: WandbRun, metrics_dir: Path) -> None:
        self.run, self._metrics_dir = run, Path(metrics_dir)
        self._offsets: dict[Path, int] = {}

    def poll(self) -> int:
        """Send what was appended since the last call; returns the rows sent."""
        sent = 0
        for path in sorted(self._metrics_dir.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = offset + len(complete)
            for line in complete.splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                sent += self.run.log(path.stem, row)
        self.run.checkpoint()
        return sent


def finish_wandb(run: WandbRun, run_dir: Path, report: bool) -> None:
    """End the W&B run; when the depthrl run finished (`report`), write its report and upload the figures first."""
    if report:
        import contextlib
        import io

        from analysis.report import main as write_report

        out = Path(run_dir) / "report"
        with contextlib.redirect_stdout(io.StringIO()):
            if write_report([str(run_dir), "--out", str(out)]) == 0:
                run.upload_figures(out / "figures")
    run.finish()
