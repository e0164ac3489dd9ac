"""The Ray actor that hosts one role's process (`--backend ray`). Kept free of JAX, TensorFlow and the run's config:
Ray imports this module in every host's worker process, and a host should cost little beside the role it runs."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def port_free(port: int) -> bool:
    """True when nothing listens on `port` on any interface of this node (as `launcher.port_is_free`)."""
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class RoleHost:
    """Runs one role's process on the node Ray placed this actor on (`experiments.ray_backend` wraps it with
    `ray.remote` and the role's resource request)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def start(self, argv: list[str], env: dict[str, str], log_path: str, gpus: float, port: int | None,
              parent_pid_env: str, port_node: str | None = None) -> dict[str, Any]:
        """Start the role. `port` (the replay server only): None for clients; else the port it had before (0: none),
        reused when this host runs on the same node as then (`port_node`) and the port is still free there; a server
        on another node is at another address anyway. Appended as ``--port``. `parent_pid_env` names the variable
        through which the role watches its parent (this host): the role stops when the host is gone."""
        import ray

        from experiments.allocator import ALLOCATOR_ENV

        child_env = {**ALLOCATOR_ENV, **os.environ, **env, parent_pid_env: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        if gpus <= 0:
            child_env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
        elif gpus < 1:  # a share of one GPU: Ray does not split its memory, XLA must
            child_env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{gpus:.3f}"
        node_ip = ray.util.get_node_ip_address()
        node_id = ray.get_runtime_context().get_node_id()
        address = None
        if port is not None:
            port = port if port and port_node == node_id and port_free(port) else free_port()
            argv = [*argv, "--port", str(port)]
            address = f"{node_ip}:{port}"
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                             start_new_session=True)
            # Written after the start (the child's first line comes later: its imports take seconds).
            log.write(f"\n=== start {time.strftime('%Y-%m-%d %H:%M:%S')} pid {self._process.pid} on node {node_ip} "
                      f"({node_id}) CUDA_VISIBLE_DEVICES={child_env.get('CUDA_VISIBLE_DEVICES')!r}: "
                      f"{' '.join(argv)}\n")
            log.flush()
        return {"node_ip": node_ip, "node_id": node_id, "pid": self._process.pid, "address": address,
                "cuda_visible_devices": child_env.get("CUDA_VISIBLE_DEVICES")}

    def wait(self) -> int:
        """The role's exit code, once it has ended."""
        return self._process.wait()

    def signal(self, signum: int) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
