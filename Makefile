# Every target creates .venv and installs the pinned stack when missing (python3.11, git and make only).
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/python -m pip install --disable-pip-version-check -q -c requirements.lock
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help demo test lint format lab ui bench lock clean

help:  ## list targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.base: $(BIN)/python pyproject.toml requirements.lock
	$(PIP) -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	@touch $@

$(VENV)/.bench: $(VENV)/.dev
	$(PIP) -e '.[dev,bench]'
	@touch $@

demo: $(VENV)/.base  ## set up and run the research pipeline on the embedded simulator
	$(BIN)/wb run research
	@echo ""
	@echo "Look at the results:"
	@echo "  make ui    # MLflow UI on http://127.0.0.1:5000 : the pipeline run, its five steps, the registered model"
	@echo "  make lab   # JupyterLab on notebooks/"
	@echo "  ls runs/research/   # executed notebooks (.ipynb + .html), fills, summary.json"

test: $(VENV)/.dev  ## set up and run every test
	$(BIN)/ruff check workbench tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder --durations=25

lint: $(VENV)/.dev  ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev  ## apply ruff formatting and fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lab: $(VENV)/.base  ## JupyterLab on notebooks/ (--allow-root when run as root: containers, CI)
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root)

ui: $(VENV)/.base  ## MLflow UI on 127.0.0.1:5000 over the project's tracking store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlartifacts --host 127.0.0.1 --port 5000

bench: $(VENV)/.bench  ## side-by-side benchmarks (not part of make test); writes benchmarks/RESULTS.md
	$(BIN)/python benchmarks/run_all.py

lock: $(BIN)/python  ## re-resolve and rewrite requirements.lock (then commit it)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev,bench]'
	( echo '# Exact versions of the whole stack (pip constraints). Regenerate with `make lock`.'; \
	  $(BIN)/python -m pip freeze --exclude-editable ) > requirements.lock

clean:  ## remove the venv and generated data (keeps nothing you committed)
	rm -rf $(VENV) data runs mlruns mlartifacts mlflow.db
