# w2s: every target installs what it needs first, so a fresh clone needs no separate step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
W2S := $(VENV)/bin/w2s
STAMP := $(VENV)/.installed
CONFIG ?= configs/tiny.yaml
WORLD := runs/tiny/world/world.json
# The CPU build of torch that lies on this machine's disk; a plain `torch` requirement would pull CUDA.
TORCH_CPU ?= torch==2.13.0

.PHONY: install world demo test test-unit clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_CPU)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

world: $(WORLD)

$(WORLD): $(STAMP)
	$(W2S) world --config $(CONFIG)

demo: $(WORLD)
	$(W2S) world --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -m "not gpu" tests

test-unit: $(STAMP)
	$(PY) -m pytest -m "not gpu and not integration" tests

clean:
	rm -rf runs
