"""`--backend ray`: every role of a decoupled run as a real process on the Ray node its resources demand.

Ray is the distributed engine; depthrl adds only a thin host per role. `RoleHost` is a Ray actor that asks for the
role's resources (`--role-resources`), and once Ray has placed it, starts the role as a subprocess there (the same
`depthrl replay|learner|actor|evaluator` command the local launcher runs), with its log in the run directory, which
every node must see. GPUs: Ray sets `CUDA_VISIBLE_DEVICES` for the host; the role inherits it, and a fractional GPU
sets `XLA_PYTHON_CLIENT_MEM_FRACTION` to that fraction (Ray does not split memory). A role without a GPU runs JAX on
the CPU; TensorFlow (the CPU build) never sees a GPU either way.

Supervision is the local launcher's (`experiments.launcher.supervise`): the same restart budget and backoff. A role
whose process dies is restarted; a role whose host is lost with its node (`ActorDiedError` /
`ActorUnavailableError`) is restarted too, and Ray places the new host on a node that has the resources. Learners
resume from their orbax checkpoints, the replay server from its Reverb checkpoint, actors from their status files.
The replay server picks its port on its node and publishes `HOST:PORT`; when it comes back at another address (its
node was lost), the supervisor stops every other role and starts it again pointed at the new address.

Every host is a named actor (``depthrl/<run id>/<role>`` in the ``depthrl`` namespace), so a user or a test can list
them; the driver kills all of them when it exits, whatever the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable

from experiments.compose import LAUNCHER_PID_ENV
from experiments.config import DecoupledConfig
from learners.networks import ConfigError

NAMESPACE = "depthrl"
FAMILIES = ("replay", "learner", "actor", "evaluator")
DEFAULT_RESOURCES: Mapping[str, float] = {"CPU": 1.0}
WAITING_NOTE_EVERY_SECONDS = 60.0
"""While a role waits for a node with its resources (a grid's queued run), the driver says so this often."""
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass(frozen=True)
class RoleRequest:
    """What one role asks Ray for."""

    resources: Mapping[str, float]
    """``CPU``, ``GPU``, ``memory`` (bytes) and any custom resource a node declares."""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Node labels the host's node must carry (Ray's label selector)."""

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0.0))

    def ray_options(self) -> dict[str, Any]:
        r = dict(self.resources)
        options: dict[str, Any] = {"num_cpus": r.pop("CPU", 0.0), "num_gpus": r.pop("GPU", 0.0)}
        if "memory" in r:
            options["memory"] = r.pop("memory")
        if r:
            options["resources"] = r
        if self.labels:
            options["label_selector"] = dict(self.labels)
        return options

    def describe(self) -> str:
        parts = [f"{k}:{_amount(k, v)}" for k, v in self.resources.items()]
        return ",".join(parts + [f"label.{k}={v}" for k, v in self.labels.items()]) or "nothing"


def _amount(name: str, value: float) -> str:
    if name == "memory" or name == "object_store_memory":
        return f"{value / 2**30:.1f}G"
    return f"{value:g}"


def family_of(role: str) -> str:
    """The family of a launcher role name: replay, learner (``learner:collector+...``), evaluator, actor."""
    if role.startswith("learner:"):
        return "learner"
    if role.startswith("eval_"):
        return "evaluator"
    if role.startswith("actor_"):
        return "actor"
    return role


def parse_role_resources(text: str | None, known_roles: Iterable[str] = ()) -> dict[str, RoleRequest]:
    """``'learner=GPU:1,CPU:2;actor=CPU:4;replay=CPU:2,memory:8G;evaluator=GPU:0.25'`` -> {key: request}.

    Keys: a family (replay, learner, actor, evaluator), a role (collector, learner_d4, eval_collector, actor_0, ...)
    or ``*``. Values: comma-separated ``NAME:AMOUNT`` (CPU, GPU, memory with a K/M/G/T suffix, or a custom resource)
    and ``label.KEY=VALUE`` (a node label). A key that is not given gets its family's, then ``*``'s, then CPU:1."""
    out: dict[str, RoleRequest] = {}
    if not text:
        return out
    allowed = set(FAMILIES) | {"*"} | set(known_roles)
    for item in text.split(";"):
        if not item.strip():
            continue
        key, sep, spec = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ConfigError(f"role_resources: {item.strip()!r} must be ROLE=NAME:AMOUNT,...; ROLE one of "
                              f"{sorted(allowed)}, e.g. 'learner=GPU:1,CPU:2;actor=CPU:4'")
        resources: dict[str, float] = {}
        labels: dict[str, str] = {}
        for part in spec.split(","):
            part = part.strip()
            if part.startswith("label."):
                name, eq, value = part[len("label."):].partition("=")
                if not eq or not name or not value:
                    raise ConfigError(f"role_resources: node label {part!r} must be label.KEY=VALUE")
                labels[name] = value
                continue
            name, colon, amount = part.partition(":")
            match = re.fullmatch(r"([0-9]*\.?[0-9]+)([KMGT]?)", amount.strip())
            if not colon or not re.fullmatch(r"[A-Za-z_][\w.\-]*", name) or match is None:
                raise ConfigError(f"role_resources: {part!r} in {key!r} must be NAME:AMOUNT (e.g. GPU:0.5, "
                                  "memory:8G, CPU:2) or label.KEY=VALUE")
            value = float(match.group(1)) * _UNITS[match.group(2)]
            if match.group(2) and name != "memory":
                raise ConfigError(f"role_resources: only memory takes a K/M/G/T suffix, got {part!r}")
            if name == "GPU" and value > 1 and value != int(value):
                raise ConfigError(f"role_resources: a GPU request above 1 must be whole, got {part!r}")
            resources[name] = value
        out[key] = RoleRequest(resources, labels)
    return out


def request_for(role: str, requests: Mapping[str, RoleRequest]) -> RoleRequest:
    """The request of launcher role `role` (exact name, then a hosted learner's name, family, ``*``, CPU:1)."""
    names = [role, *role.removeprefix("learner:").split("+")] if role.startswith("learner:") else [role]
    for key in (*names, family_of(role), "*"):
        if key in requests:
            return requests[key]
    return RoleRequest(dict(DEFAULT_RESOURCES))


def unsatisfiable(requests: Mapping[str, RoleRequest], nodes: list[Mapping[str, Any]]) -> list[str]:
    """Why each role that no alive node can host cannot run (empty when every role fits somewhere)."""
    alive = [n for n in nodes if n.get("Alive")]
    problems = []
    known = sorted({name for n in alive for name in n.get("Resources", {}) if not name.startswith("node:")})
    for role, request in requests.items():
        unknown = [name for name in request.resources if name not in known]
        if unknown:
            problems.append(f"role {role} asks for resource {unknown[0]!r}, which no node of the cluster has "
                            f"(resources: {', '.join(known)})")
            continue
        fits = [n for n in alive if all(n["Resources"].get(k, 0.0) >= v for k, v in request.resources.items())
                and all(n.get("Labels", {}).get(k) == v for k, v in request.labels.items())]
        if not fits:
            largest = max(alive, key=lambda n: (n["Resources"].get("GPU", 0), n["Resources"].get("CPU", 0)))
            has = ", ".join(f"{k}:{_amount(k, largest['Resources'].get(k, 0.0))}" for k in request.resources)
            problems.append(f"role {role} asks for {request.describe()}, more than any node has (the largest node, "
                            f"{largest.get('NodeManagerAddress')}, has {has})")
    return problems


# --- connecting -----------------------------------------------------------------------------------------------------


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """ConfigError unless something listens at `address` (HOST:PORT of a Ray head's GCS)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray_address must be 'local', 'auto' or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(f"ray_address {address}: no Ray cluster answers there ({e}); start one with `ray start "
                          "--head` or use --ray-address local") from None


def connect(address: str, num_cpus: float = 0.0) -> None:
    """Join (or, for 'local', start) the Ray cluster. Bad input: ConfigError before anything is written.

    'local' starts Ray with this machine's cores as its CPUs, or `num_cpus` when that is more (the roles of one run
    then always fit, as the local launcher runs them all on the same cores)."""
    from experiments.launcher import is_loopback

    if address == "local" or (address != "auto" and is_loopback(address.rpartition(":")[0].strip("[]"))):
        # Ray on this machine only: Ray's single-machine mode keeps every address on 127.0.0.1 (otherwise it rewrites
        # a loopback address into the machine's interface address, where a loopback node does not listen); the runs
        # of a grid inherit the variable. Ray reads it when it is first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        # address="local": always a new instance, never a cluster that happens to run on this machine.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(num_cpus)), include_dashboard=False,
                 namespace=NAMESPACE, log_to_driver=False)
        return
    if address != "auto":
        check_reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    except (ConnectionError, RuntimeError) as e:
        raise ConfigError(f"ray_address {address}: cannot join the Ray cluster: {e}") from None


def role_requests(config: DecoupledConfig) -> dict[str, RoleRequest]:
    """Every launcher role's request (no cluster needed)."""
    requests = parse_role_resources(config.runtime.role_resources, _known_roles(config))
    return {role: request_for(role, requests) for role in role_names(config)}


def check_cluster(by_role: Mapping[str, RoleRequest]) -> None:
    """ConfigError naming the role when a request fits no node, or when the roles together ask for more of a resource
    than the whole cluster has (the run would never fully start)."""
    import ray

    nodes = ray.nodes()
    problems = unsatisfiable(by_role, nodes)
    totals: dict[str, float] = {}
    for request in by_role.values():
        for name, amount in request.resources.items():
            totals[name] = totals.get(name, 0.0) + amount
    alive = [n for n in nodes if n.get("Alive")]
    for name, amount in totals.items():
        have = sum(n["Resources"].get(name, 0.0) for n in alive)
        if amount > have + 1e-9 and not problems:
            problems.append(f"the run's {len(by_role)} roles together ask for {name}:{_amount(name, amount)}, the "
                            f"cluster has {name}:{_amount(name, have)}; ask for less per role (e.g. --role-resources "
                            f"'*=CPU:0.5') or add nodes")
    if problems:
        raise ConfigError("; ".join(problems))


def _known_roles(config: DecoupledConfig) -> list[str]:
    names = [spec.name for spec in config.learners]
    return ["replay", *names, *(f"eval_{n}" for n in names), *(f"actor_{i}" for i in range(config.runtime.actors))]


def check_run_dir_visible(run_dir: Path) -> None:
    """ConfigError unless every alive node sees `run_dir` (the roles write their logs, metrics and checkpoints there):
    a probe file written here must be readable, with the same content, from a task pinned to each node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = Path(run_dir).resolve() / f".node_probe_{token}"
    probe.write_text(token)

    @ray.remote(num_cpus=0)
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError as e:
            return f"error: {e}"

    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            str(probe)) for n in nodes]
        seen = ray.get(refs, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
    blind = [f"node {n['NodeID'][:8]} at {n.get('NodeManagerAddress')} ({got or 'a different file'})"
             for n, got in zip(nodes, seen) if got != token]
    if blind:
        raise ConfigError(f"run dir {run_dir} is not visible from every Ray node: {', '.join(blind)}. Put it on "
                          "storage every node mounts at the same path (a shared filesystem)")


# --- the role host --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _role_host_class():
    import ray

    from experiments.ray_host import RoleHost

    return ray.remote(max_restarts=0)(RoleHost)


class RayRole:
    """A role of the run hosted by a `RoleHost`; the interface `experiments.launcher.supervise` drives."""

    def __init__(self, name: str, argv: Callable[[], list[str]], env: dict[str, str], log_path: Path,
                 request: RoleRequest, run_id: str, replay: bool = False) -> None:
        self.name, self._argv, self.env, self.log_path, self.request = name, argv, env, log_path, request
        self.actor_name = f"{run_id}/{name}"
        self.is_replay = replay
        self.restarts, self.done, self.last_error, self.last_exit = 0, False, "", ""
        self.restart_at: float | None = None
        self.relaunch_requested = False
        self.info: dict[str, Any] = {}
        self.address: str | None = None
        self.lost_nodes: list[str] = []
        self._host = None
        self._start_ref = None
        self._wait_ref = None

    @property
    def argv(self) -> list[str]:
        return self._argv()

    def start(self) -> None:
        import ray

        self.release()
        port = (int(self.address.rpartition(":")[2]) if self.address else 0) if self.is_replay else None
        self._host = _role_host_class().options(
            name=self.actor_name, namespace=NAMESPACE, max_concurrency=4, **self.request.ray_options()).remote()
        self._start_ref = self._host.start.remote(self._argv(), self.env, str(self.log_path), self.request.gpus, port,
                                                  LAUNCHER_PID_ENV, self.info.get("node_id"))
        self._wait_ref = None
        self.info = {}

    def _started(self, timeout_s: float = 0.0) -> bool:
        """True once the host started the process (node and pid known). Raises Ray's errors when the host is lost."""
        import ray

        if self._wait_ref is not None:
            return True
        ready, _ = ray.wait([self._start_ref], timeout=timeout_s)
        if not ready:
            return False
        self.info = ray.get(self._start_ref)
        if self.info.get("address"):
            self.address = self.info["address"]
        self._wait_ref = self._host.wait.remote()
        return True

    def wait_started(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait until the host runs the process; Ray queues it until a node has the resources (a grid's runs wait
        for each other's GPUs this way), so this waits as long as that takes, saying so, or until `stop()`."""
        note = time.monotonic() + WAITING_NOTE_EVERY_SECONDS
        while not stop():
            if self._started(timeout_s=0.5):
                return True
            if time.monotonic() > note:
                print(f"depthrl run: {self.name} is {self.where}", file=sys.stderr, flush=True)
                note = time.monotonic() + WAITING_NOTE_EVERY_SECONDS
        return False

    def poll(self) -> int | None:
        import ray

        from experiments.launcher import ROLE_HOST_LOST

        try:
            if not self._started():
                return None
            ready, _ = ray.wait([self._wait_ref], timeout=0)
            if not ready:
                return None
            code = ray.get(ready[0])
            self.release()  # the process has ended: give its resources (a GPU) back to the cluster now
            return code
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            if self.info.get("node_ip"):
                self.lost_nodes.append(f"{self.info['node_ip']} ({self.info['node_id'][:8]})")
            self.release()
            return ROLE_HOST_LOST

    def signal(self, signum: int) -> None:
        if self._host is not None:
            self._host.signal.remote(signum)

    def wait(self, timeout_s: float) -> bool:
        import ray

        if self._host is None or self._wait_ref is None:
            return True
        try:
            ready, _ = ray.wait([self._wait_ref], timeout=timeout_s)
        except Exception:  # noqa: BLE001 (a lost host has no process left to wait for)
            ready = [True]
        if ready:
            self.release()  # the process has ended: its host goes at once, not after the slowest role
        return bool(ready)

    def kill(self) -> None:
        self.release()

    def release(self) -> None:
        """Kill the host actor (its process first, when the host still answers)."""
        import ray

        if self._host is None:
            return
        try:
            ray.get(self._host.kill.remote(), timeout=5)
        except Exception:  # noqa: BLE001 (lost or unresponsive: ray.kill below is what counts)
            pass
        ray.kill(self._host, no_restart=True)
        self._host, self._start_ref, self._wait_ref = None, None, None

    @property
    def where(self) -> str:
        if self._host is not None and not self.info:
            return "waiting for a node with " + self.request.describe()
        node = f"node {self.info['node_ip']} ({self.info['node_id'][:8]})" if self.info else ""
        lost = f"; lost node(s) {', '.join(self.lost_nodes)}" if self.lost_nodes else ""
        return node + lost

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def build_ray_roles(config: DecoupledConfig, run_dir: Path, requests: Mapping[str, RoleRequest],
                    run_id: str) -> list[RayRole]:
    """The run's roles as `RayRole`s: the replay server first; the others take its current address at each start."""
    from experiments.compose import learner_processes

    base = [sys.executable, "-m", "experiments.cli"]
    common = ["--run-dir", str(Path(run_dir).resolve())]
    logs = Path(run_dir).resolve() / "logs"
    replay = RayRole("replay", lambda: [*base, "replay", *common], {}, logs / "replay.log", requests["replay"],
                     run_id, replay=True)

    def client(name: str, *args: str) -> Callable[[], list[str]]:
        return lambda: [*base, name, *common, "--replay", replay.address or "", *args]

    roles = [replay]
    for group in learner_processes(config):
        label = "+".join(group)
        roles.append(RayRole(f"learner:{label}", client("learner", "--learners", ",".join(group)), {},
                             logs / f"learner_{label}.log", requests[f"learner:{label}"], run_id))
    for spec in config.learners:
        role = f"eval_{spec.name}"
        roles.append(RayRole(role, client("evaluator", "--learner", spec.name), {}, logs / f"{role}.log",
                             requests[role], run_id))
    for i in range(config.runtime.actors):
        role = f"actor_{i}"
        roles.append(RayRole(role, client("actor", "--actor-id", str(i)), {}, logs / f"{role}.log", requests[role],
                             run_id))
    return roles


def role_names(config: DecoupledConfig) -> list[str]:
    from experiments.compose import learner_processes

    return ["replay", *(f"learner:{'+'.join(g)}" for g in learner_processes(config)),
            *(f"eval_{s.name}" for s in config.learners), *(f"actor_{i}" for i in range(config.runtime.actors))]


def _signalled() -> Callable[[], bool]:
    """A `stop` for a blocking wait inside the supervisor: true once SIGINT/SIGTERM arrived. The supervisor's own
    handlers still run (they are chained), so it stops as well."""
    seen = {"signal": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            seen["signal"] = True
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)
    return lambda: seen["signal"]


def supervise_on_ray(config: DecoupledConfig, run_dir: Path, requests: Mapping[str, RoleRequest]) -> int:
    """Start every role on the cluster and supervise it until the run ends; every host is gone afterwards."""
    from experiments.launcher import supervise

    run_id = f"{Path(run_dir).resolve().name}-{uuid.uuid4().hex[:6]}"
    roles = build_ray_roles(config, run_dir, requests, run_id)
    replay = roles[0]

    def moved(role: RayRole, all_roles: list[RayRole]) -> None:
        """After a restart of the replay server: wait for its address; if it moved, restart every other role."""
        if not role.is_replay:
            return
        before = role.address
        if not role.wait_started(stop=_signalled()):
            return
        if role.address != before:
            print(f"depthrl run: the replay server moved from {before} to {role.address}; restarting its clients",
                  file=sys.stderr, flush=True)
            for other in all_roles:
                if other is not role and not other.done and other.restart_at is None:
                    other.relaunch_requested = True
                    other.signal(signal.SIGTERM)

    interrupted = {"signal": 0}
    previous = {sig: signal.signal(sig, lambda s, f: interrupted.update(signal=s))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        replay.start()
        if not replay.wait_started(stop=lambda: bool(interrupted["signal"])):
            replay.release()
            return 130
        print(f"depthrl run: replay server at {replay.address} on {replay.where}", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for role in roles[1:]:
        role.start()
    try:
        return supervise(config, run_dir, roles, quiet=config.run.quiet, on_started=moved, started=True)
    finally:
        for role in roles:
            role.release()
