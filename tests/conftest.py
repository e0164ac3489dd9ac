import os

# Tests run on the CPU even where a GPU is visible, and never preallocate device memory.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Every Ray node and driver a test starts stays on 127.0.0.1: Ray's single-machine mode resolves this host to the
# loopback address (otherwise it advertises the machine's interface address, even for clusters started on loopback).
# Subprocesses inherit it. It must be set before `ray` is first imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
