# Two commands on a fresh machine: `make train` (the default job) and `make test` (the test suite).
# Both set up .venv first, only when pyproject.toml or scripts/setup.sh changed.
VENV := .venv
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)

.PHONY: setup train test test-all lint bench

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: $(STAMP)

# Extra arguments: make train ARGS="actors.num_sim=4 learner.batch_size=128"
train: $(STAMP)
	$(VENV)/bin/fleetrl train $(ARGS)

# pytest exits 5 when it collects nothing; that is a failure here, as is any other non-zero code.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check fleetrl tests bench scripts

bench: $(STAMP)
	for f in bench/bench_*.py; do $(VENV)/bin/python $$f || exit 1; done
