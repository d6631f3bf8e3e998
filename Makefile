# make run: the notebook study (both models) into MLflow; make test: the test suite;
# make quick: a first look in about a minute (experiment=quick).
# Both bootstrap .venv on first use; ARGS passes Hydra overrides: make run ARGS="model=cnn".
# make ui [PORT=5000]: the MLflow UI on this store (mnist-lab ui); make serve MODEL=models:/mnist-cnn/1 [PORT=5001].
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
PORT ?=
MODEL ?=

.PHONY: run quick test test-fast ui serve dashboard bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) run.py experiment=notebook $(ARGS)

quick: $(STAMP)
	$(PY) run.py experiment=quick $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

ui: $(STAMP)
	$(VENV)/bin/mnist-lab ui --uri sqlite:///$(CURDIR)/mlruns/mlflow.db --port $(or $(PORT),5000)

dashboard: $(STAMP)
	$(PY) -m mnist_lab.cli dashboard $(ARGS)

serve: $(STAMP)
	@test -n "$(MODEL)" || { echo "name the model: make serve MODEL=models:/NAME/VERSION (mnist-lab register makes one)"; exit 2; }
	$(PY) -m mnist_lab.cli serve --model $(MODEL) --port $(or $(PORT),5001)

bench: $(STAMP)
	$(PY) benchmarks/bench.py $(ARGS)

clean:
	@echo "removing outputs/ and multirun/ (run folders) and checkpoints/ (resumable epochs); mlruns/ (MLflow) stays"
	rm -rf outputs multirun checkpoints
