# Everything a fresh machine needs, from Python 3.11, Node/npm and make alone.
#   make test   venv + pip installs + Azurite (npm) + ruff + mypy + pytest
#   make demo   the end-to-end demo on the embedded sandbox and Azurite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup lint fmt browser test demo bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

setup: $(STAMP) $(NODE_STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Headless Debian chromium for the status page's browser test (skipped, with a reason, without it).
browser:
	@command -v chromium >/dev/null || { \
	  if ! command -v apt-get >/dev/null; then echo "chromium not found and no apt-get: the browser test will be skipped"; exit 0; fi; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }

test: lint browser
	$(BIN)/pytest

demo: setup
	$(BIN)/python -m demo

bench: setup
	$(BIN)/python bench/bench_tables.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
