"""Tracking sinks: choosing them, and the TensorBoard sink's files (read back with TensorBoard's own reader)."""

from __future__ import annotations

import json

import pytest

from experiments.metrics import make_logger
from experiments.tracking import check_sinks, parse_sinks, step_key
from learners.networks import ConfigError


def test_parse_sinks_keeps_jsonl_and_refuses_unknown_names():
    assert parse_sinks("jsonl") == ("jsonl",)
    assert parse_sinks("tensorboard") == ("jsonl", "tensorboard")
    assert parse_sinks(" wandb , tensorboard,jsonl") == ("jsonl", "tensorboard", "wandb")
    with pytest.raises(ConfigError, match="unknown sink 'tb'"):
        parse_sinks("jsonl,tb")


def test_wandb_sink_needs_the_package_or_a_login(monkeypatch):
    import importlib.util

    check_sinks(("jsonl", "tensorboard"))  # nothing to check
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="wandb is not installed"):
        check_sinks(("jsonl", "wandb"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc: not logged in
    monkeypatch.setenv("NETRC", "/nonexistent/.netrc")
    with pytest.raises(ConfigError, match="not logged in"):
        check_sinks(("jsonl", "wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_sinks(("jsonl", "wandb"))


def test_step_axis_per_role_kind():
    assert [step_key(r) for r in ("collector", "learner_d16", "eval_collector", "actor_3", "replay")] == \
        ["grad_steps", "grad_steps", "env_steps", "env_steps", "wall_time"]


def _scalars(directory, with_rss: bool = False):
    """TensorBoard scalars by tag; the every-row memory metric (``*/rss_mib``) left out unless `with_rss`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
            if with_rss or not tag.endswith("/rss_mib")}


def test_tensorboard_sink_writes_the_rows_and_a_resume_hides_redone_steps(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "run"}))
    log = make_logger(tmp_path, "learner_d4", ("jsonl", "tensorboard"))
    for grad in (4, 8, 12):
        log.log({"critic_loss": grad / 4, "alpha": 0.5}, env_steps=grad * 100, grad_steps=grad, param_version=grad)
    log.close()
    assert _scalars(tmp_path / "tb" / "learner_d4") == {
        "learner_d4/critic_loss": [(4, 1.0), (8, 2.0), (12, 3.0)], "learner_d4/alpha": [(4, 0.5), (8, 0.5), (12, 0.5)]}
    rss = _scalars(tmp_path / "tb" / "learner_d4", with_rss=True)["learner_d4/rss_mib"]
    assert [step for step, _ in rss] == [4, 8, 12] and all(10 < mib < 100_000 for _, mib in rss)
    # A process that resumed from the checkpoint at step 8 redoes step 12 with other values: TensorBoard keeps the new.
    log = make_logger(tmp_path, "learner_d4", ("jsonl", "tensorboard"))
    for grad in (12, 16):
        log.log({"critic_loss": 10.0, "alpha": 0.25}, env_steps=grad * 100, grad_steps=grad, param_version=grad)
    log.close()
    assert _scalars(tmp_path / "tb" / "learner_d4")["learner_d4/critic_loss"] == [(4, 1.0), (8, 2.0), (12, 10.0),
                                                                                  (16, 10.0)]
    assert not (tmp_path / "tb" / "collector").exists()  # one directory per role, made by the role that logs


def test_jsonl_only_writes_no_event_files(tmp_path):
    log = make_logger(tmp_path, "collector")
    log.log({"critic_loss": 1.0}, env_steps=1, grad_steps=1, param_version=1)
    log.close()
    assert (tmp_path / "metrics" / "collector.jsonl").is_file() and not (tmp_path / "tb").exists()
