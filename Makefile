# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install everything.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch/torchvision pinned to a pair that imports together (and that this machine keeps as local wheels)
TORCH  := torch==2.14.1 torchvision==0.29.1
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-fast demo lint bench bench-science clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(VENV)/bin/ruff check llamafactory_attok tests bench
	$(PY) -m pytest -ra

test-fast: setup
	$(PY) -m pytest -ra -m "not slow"

demo: setup
	$(PY) demo/run.py

lint: setup
	$(VENV)/bin/ruff check llamafactory_attok tests bench

bench: setup
	$(PY) -m bench.run_all

bench-science: setup  # BENCHMARKS.md §4: does AttTok help when the baseline learns? (not part of make test / CI)
	$(PY) -m bench.science run --out bench_results/science

clean:
	rm -rf $(VENV) outputs .pytest_cache

browser:  # Debian's Chromium for the WebUI test (root); Playwright itself never downloads a browser
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)
