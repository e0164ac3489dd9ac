# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create ./.venv from requirements.lock on first use and are no-ops for set-up afterwards.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.depthrl-installed

.PHONY: demo test test-all soak bench clean-venv setup-cuda12

$(STAMP): requirements.lock pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/depthrl ablate --preset demo

test: $(STAMP)
	$(VENV)/bin/python -m experiments.assets
	$(VENV)/bin/python -m pytest -q -m "not slow and not soak"

# Everything but the soak, including the slow learning test and the slow Brax env tests.
test-all: $(STAMP)
	$(VENV)/bin/python -m experiments.assets
	$(VENV)/bin/python -m pytest -q -m "not soak"

# The memory soak (2 hours after a 30-minute warm-up by default; tests/e2e/test_soak.py says how to change it).
# Run it on an idle machine.
soak: $(STAMP)
	DEPTHRL_SOAK_OUT=$${DEPTHRL_SOAK_OUT:-soak-out} $(VENV)/bin/python -m pytest -q -m soak -s tests/e2e/test_soak.py

clean-venv:
	rm -rf $(VENV)

# Optional, for NVIDIA GPU hosts (CUDA 12): JAX's CUDA plugin next to the lock's jaxlib 0.7.1, and the CUDA libraries
# from the package registry. TensorFlow stays the CPU build (Reverb needs only its runtime).
setup-cuda12: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "jax-cuda12-plugin[with-cuda]==0.7.1" jax-cuda12-pjrt==0.7.1
