# svlab: `make lab` to open the workbench, `make test` to run every test (pytest + nbval).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: lab test test-fast lint corpus checkpoints bench assignments book app clean

$(INSTALLED): pyproject.toml
	@echo "svlab: installing into $(VENV) with the dev tools (a few minutes, once)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

corpus: $(INSTALLED)
	@echo "svlab: the offline ci corpus (generated once, 2-3 minutes on 2 cores)"
	$(BIN)/svlab data synth --profile ci

# JupyterLab refuses to start as root without --allow-root; containers and course servers
# often run as root, so it is passed then, and only then.
lab: $(INSTALLED) corpus
	@if [ "$$(id -u)" = 0 ]; then echo "svlab: running as root: starting JupyterLab with --allow-root"; fi
	$(BIN)/jupyter lab notebooks/ $$(if [ "$$(id -u)" = 0 ]; then echo --allow-root; fi)

lint: $(INSTALLED)
	$(BIN)/ruff check svlab tests benchmarks scripts

test: $(INSTALLED) corpus lint
	if [ "$$CI" = "true" ]; then bash scripts/install_browser.sh; fi
	$(BIN)/pytest --nbval-lax --nbval-current-env tests svlab notebooks

test-fast: $(INSTALLED) corpus
	$(BIN)/pytest -m "not slow" tests svlab

checkpoints: $(INSTALLED) corpus
	$(BIN)/python scripts/make_checkpoints.py

bench: $(INSTALLED) corpus
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b --quick || exit 1; done

assignments: $(INSTALLED) corpus
	$(BIN)/python -m svlab.course assignments

book: $(INSTALLED)
	$(BIN)/python -m svlab.course book

app: $(INSTALLED) corpus
	$(BIN)/python -m svlab.course app

clean:
	rm -rf $(VENV) data/corpus-ci build .pytest_cache .ruff_cache
