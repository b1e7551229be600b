# `make demo` and `make test` work on a fresh machine: they build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= .demo
PYTEST_ARGS ?=

# The demo commits; on a machine with no git identity it uses a demo one (env only).
NO_IDENTITY := $(shell git config user.email >/dev/null 2>&1 || echo yes)
ifeq ($(NO_IDENTITY),yes)
DEMO_ENV := GIT_AUTHOR_NAME="mlfork demo" GIT_AUTHOR_EMAIL=demo@mlfork.invalid
endif

.PHONY: setup demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	rm -rf $(DEMO_DIR)
	$(DEMO_ENV) $(BIN)/mlfork init $(DEMO_DIR)
	cd $(DEMO_DIR) && $(DEMO_ENV) PATH=$(CURDIR)/$(BIN):$$PATH mlfork run --name base --iterations 4
	cd $(DEMO_DIR) && PATH=$(CURDIR)/$(BIN):$$PATH mlfork runs
	cd $(DEMO_DIR) && PATH=$(CURDIR)/$(BIN):$$PATH mlfork log base
	@echo
	@echo "The demo project is in $(DEMO_DIR). Try next:"
	@echo "  cd $(DEMO_DIR) && source ../$(BIN)/activate"
	@echo "  git log --oneline mlfork/base    # one commit per stage per iteration"
	@echo "  mlfork runs --json               # the runs, as JSON"

test: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check mlfork tests bench
	$(BIN)/mypy

bench: setup
	for b in bench/iteration_overhead.py bench/fork.py bench/stitch.py bench/manifest.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info
