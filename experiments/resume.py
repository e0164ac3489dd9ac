"""Checks made before `depthrl resume` starts anything: can this run directory's checkpoints be resumed?"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.compose import RunParts, actor_roles, learner_processes
from experiments.config import DecoupledConfig
from experiments.metrics import read_jsonl
from experiments.runs import RunDirError, format_version
from learners.checkpoint import read_meta
from replay.schema import REPLAY_LAYOUT, checkpoint_layout, complete_checkpoints
from replay.status import RunStatus


def check_resume_state(run_dir: Path, config: DecoupledConfig) -> None:
    """Refuse (RunDirError naming the file) a run directory whose newest checkpoints cannot be resumed, before any
    process starts: a learner checkpoint whose counters or metadata cannot be read, params whose fingerprint does not
    match the network config.json describes, a replay checkpoint file that is cut short or damaged."""
    parts = RunParts.for_run(config)
    for group in learner_processes(config):
        directory = run_dir / "checkpoints" / "+".join(group)
        try:
            latest = read_meta(directory)
        except ValueError as e:
            raise RunDirError(f"{e}; delete that step directory to resume from the checkpoint before it") from None
        if latest is None:
            continue
        step_dir = directory / str(latest[0])
        if not isinstance(latest[1].get("updates"), int):
            raise RunDirError(f"checkpoint {step_dir} has no update counter; delete that step directory to resume "
                              "from the checkpoint before it")
        for name in ("_CHECKPOINT_METADATA", "states/_METADATA"):
            try:
                json.loads((step_dir / name).read_text())
            except (OSError, ValueError) as e:
                raise RunDirError(f"checkpoint {step_dir} is damaged: cannot read {name} ({e}); delete that step "
                                  "directory to resume from the checkpoint before it") from None
        stored = latest[1].get("fingerprints")
        if stored is None:
            continue  # written before fingerprints were recorded; the learner's restore checks the shapes
        for name in group:
            expected = parts.agent(name).fingerprint()
            if stored.get(name) != expected:
                raise RunDirError(
                    f"checkpoint {step_dir}: the params of {name} have fingerprint {stored.get(name)!r}, but "
                    f"config.json describes a network with fingerprint {expected!r} (width, depth, activation, ... "
                    "or the env changed since the run started); resume with the config the run was started with")
    _check_replay_checkpoint(run_dir / "replay_checkpoint")


def _check_replay_checkpoint(root: Path) -> None:
    """The newest complete Reverb checkpoint must hold this depthrl's replay layout and consist of whole TFRecords."""
    try:
        layout = checkpoint_layout(root)
    except (OSError, ValueError) as e:
        raise RunDirError(f"replay checkpoint layout unknown: {e}") from None
    if layout is None:
        return
    done = complete_checkpoints(root)
    if layout != REPLAY_LAYOUT:
        raise RunDirError(
            f"replay checkpoint {done[-1]} holds windows in replay layout {layout}, this depthrl reads layout "
            f"{REPLAY_LAYOUT} only. Move {root} aside to resume with an empty buffer: the learner checkpoints stay "
            "valid and actors prefill again")
    for path in sorted(done[-1].glob("*.tfrecord")):
        problem = tfrecord_problem(path)
        if problem:
            raise RunDirError(f"replay checkpoint {done[-1]} is damaged: {path.name} {problem}. Delete that directory "
                              "to resume with the previous replay checkpoint (or an empty buffer: actors prefill "
                              "again)")


def tfrecord_problem(path: Path) -> str:
    """'' when the Reverb checkpoint file `path` is whole, else what is wrong with it.

    Reverb 0.14 writes ZLIB-compressed TFRecord files; the zlib stream ends with an Adler-32 checksum of the data, so
    decompressing it (output discarded, 1 MiB at a time) detects a file cut short or damaged anywhere."""
    import zlib

    decompressor = zlib.decompressobj()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                decompressor.decompress(chunk, 1 << 16)
                while decompressor.unconsumed_tail:
                    decompressor.decompress(decompressor.unconsumed_tail, 1 << 16)
    except zlib.error as e:
        return f"is damaged ({e})"
    except OSError as e:
        return f"cannot be read ({e})"
    if not decompressor.eof:
        return "is cut short (its compressed stream does not end)"
    return ""


def upgrade_v1_status(run_dir: Path, config: DecoupledConfig) -> None:
    """A format-1 run has no status files: its actors kept their env-step count in their metrics. Write each actor's
    status once from its last metrics row, so that the resumed actors continue their count from the control plane."""
    if format_version(run_dir) != 1:
        return
    status = RunStatus(run_dir)
    budget = config.schedule.total_env_steps // config.runtime.actors
    for role in actor_roles(config):
        path = run_dir / "metrics" / f"{role}.jsonl"
        if status.get(role) is not None or not path.exists():
            continue
        env_steps = max((int(row["env_steps"]) for row in read_jsonl(path)[0]), default=0)
        status.set(role, "finished" if env_steps >= budget else "stopped", env_steps=env_steps)
