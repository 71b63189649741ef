# focusml: `make demo` sets up and runs the main job; `make test` sets up and runs the tests
# (`make test-fast`: the inner loop without servers, browser or whole-epoch trainings).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
EPOCHS ?= 20

.PHONY: setup setup-dev demo test test-fast benchmark clean mlproject

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch/torchvision first and pinned: this machine serves exactly these builds.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(STAMP)
setup-dev: $(DEV_STAMP)

demo: setup
	$(BIN)/focusml train --method baseline --dataset decoy-digits --epochs $(EPOCHS) --experiment demo
	$(BIN)/focusml train --method upper_bound --dataset decoy-digits --epochs $(EPOCHS) --experiment demo
	$(BIN)/focusml train --method pas --dataset decoy-digits --epochs $(EPOCHS) --experiment demo
	$(BIN)/python -m focusml.cli.demo_summary --experiment demo

test: setup-dev
	$(BIN)/python -m pytest -q

# The inner loop: no mlflow server, no browser, no whole-epoch trainings (markers: tests/conftest.py),
# on two worker processes (pytest-xdist).
test-fast: setup-dev
	$(BIN)/python -m pytest -q -n 2 -m "not server and not slow and not browser"

benchmark: setup
	$(BIN)/python benchmarks/matrix.py --jobs 2

mlproject: setup
	$(BIN)/python -m focusml.generate.mlproject > MLproject
	$(BIN)/python -m focusml.generate.catalog

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts
