"""`--role-resources`: parsing, which request a role gets, and the check against a cluster's nodes (pure functions;
the real cluster is in tests/e2e/test_ray_backend.py)."""

from __future__ import annotations

import pytest

from experiments.ray_backend import RoleRequest, parse_role_resources, request_for, unsatisfiable
from learners.networks import ConfigError

ROLES = ["replay", "collector", "learner_d4", "eval_collector", "eval_learner_d4", "actor_0"]


def test_parse_families_roles_units_and_labels():
    got = parse_role_resources("learner=GPU:1,CPU:2;actor=CPU:4;replay=CPU:2,memory:8G;evaluator=GPU:0.25;"
                               "learner_d4=CPU:1,big_disk:1,label.zone=b", ROLES)
    assert got["learner"] == RoleRequest({"GPU": 1.0, "CPU": 2.0})
    assert got["replay"].resources == {"CPU": 2.0, "memory": 8 * 2**30}
    assert got["evaluator"].gpus == 0.25
    assert got["learner_d4"] == RoleRequest({"CPU": 1.0, "big_disk": 1.0}, {"zone": "b"})
    assert got["learner_d4"].ray_options() == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"big_disk": 1.0},
                                               "label_selector": {"zone": "b"}}
    assert got["replay"].ray_options() == {"num_cpus": 2.0, "num_gpus": 0.0, "memory": 8 * 2**30}


@pytest.mark.parametrize("text, message", [
    ("trainer=CPU:1", "must be ROLE=NAME:AMOUNT"),
    ("learner=GPU", "must be NAME:AMOUNT"),
    ("learner=GPU:x", "must be NAME:AMOUNT"),
    ("learner=CPU:2G", "only memory takes a K/M/G/T suffix"),
    ("learner=GPU:1.5", "must be whole"),
    ("actor=label.zone", "must be label.KEY=VALUE"),
])
def test_bad_requests_name_the_problem(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_role_resources(text, ROLES)


def test_a_role_takes_its_own_then_its_learners_then_its_family_then_star_then_one_cpu():
    requests = parse_role_resources("collector=GPU:1;learner=CPU:3;*=CPU:0.5", ROLES)
    assert request_for("learner:collector", requests).resources == {"GPU": 1.0}
    assert request_for("learner:learner_d4", requests).resources == {"CPU": 3.0}
    assert request_for("learner:collector+learner_d4", requests).resources == {"GPU": 1.0}
    assert request_for("actor_0", requests).resources == {"CPU": 0.5}
    assert request_for("actor_0", {}).resources == {"CPU": 1.0}


NODES = [
    {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 8.0, "memory": 32 * 2**30}, "Labels": {}},
    {"Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 16.0, "GPU": 2.0, "node:10.0.0.2": 1.0},
     "Labels": {"zone": "a"}},
    {"Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 64.0, "GPU": 8.0}, "Labels": {}},
]


def test_requests_are_checked_against_the_alive_nodes():
    fits = {"learner:collector": RoleRequest({"GPU": 2.0, "CPU": 4.0}), "replay": RoleRequest({"memory": 16 * 2**30}),
            "actor_0": RoleRequest({"CPU": 1.0}, {"zone": "a"})}
    assert unsatisfiable(fits, NODES) == []
    (problem,) = unsatisfiable({"learner:collector": RoleRequest({"GPU": 4.0})}, NODES)
    assert "role learner:collector asks for GPU:4" in problem and "10.0.0.2" in problem and "GPU:2" in problem
    (problem,) = unsatisfiable({"actor_0": RoleRequest({"TPU": 1.0})}, NODES)
    assert "resource 'TPU', which no node of the cluster has" in problem
    (problem,) = unsatisfiable({"actor_0": RoleRequest({"CPU": 1.0}, {"zone": "c"})}, NODES)
    assert "label.zone=c" in problem
