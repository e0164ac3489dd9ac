# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create ./.venv from requirements.lock on first use and are no-ops for set-up afterwards.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.depthrl-installed

.PHONY: demo test test-all bench clean-venv

$(STAMP): requirements.lock pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/depthrl ablate --preset demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow and not soak"

# Everything, including the slow learning test and the slow Brax env tests.
test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
