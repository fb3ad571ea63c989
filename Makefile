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
# DeepSpeed JIT-builds a CPU shared-memory op at every distributed start; one build per checkout, made at setup
export TORCH_EXTENSIONS_DIR := $(abspath .pytest_cache/torch_extensions)
SUITE_BUDGET_S := 480

.PHONY: setup test test-fast test-compat demo lint bench bench-science clean browser

$(STAMP): pyproject.toml constraints/default.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH) -c constraints/default.txt -e ".[dev]"
	$(PY) -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load()" >/dev/null 2>&1 \
		|| echo "note: DeepSpeed's CPU comm op was not prebuilt; the first distributed test builds it"
	touch $(STAMP)

setup: $(STAMP)

test: lint  # the whole suite but the second_stack tests (test-compat runs those); the last line: time vs budget
	@start=$$(date +%s); $(PY) -m pytest -ra -m "not second_stack" --durations=15; status=$$?; \
	echo "test suite: $$(( $$(date +%s) - start )) s of tests (budget $(SUITE_BUDGET_S) s on an idle 2-core machine)"; \
	exit $$status

test-fast: setup  # everything but the end-to-end runs (target: 2 minutes)
	$(PY) -m pytest -ra -m "not slow" --durations=5

# A second stack beside the default one (docs/compatibility.md): LF 0.9.5 + the oldest supported transformers from
# PyPI, or, with LF_SRC=<an LF source tree>, that LF (e.g. LF main) + transformers 5.8.0. The environment is built as
# a user's (LF first), then the plugin is installed into it without constraints and must leave LF and transformers
# as they were. Runs the patch table, the not-slow tests and the end-to-end training / generation / resume tests.
LF_SRC ?=
COMPAT_VENV := $(if $(LF_SRC),.venv-lf-src,.venv-compat)
COMPAT_STACK := $(if $(LF_SRC),constraints/lf-main.txt,constraints/compat.txt)
test-compat:
	PYTHON=$(PYTHON) TORCH="$(TORCH)" tools/compat_env.sh $(COMPAT_VENV) $(COMPAT_STACK) $(LF_SRC)
	@start=$$(date +%s); PATH=$(abspath $(COMPAT_VENV))/bin:$$PATH $(COMPAT_VENV)/bin/python -m pytest -ra \
		-m "not slow or compat or second_stack" --durations=10 -p no:cacheprovider; status=$$?; \
	$(COMPAT_VENV)/bin/python -c 'from importlib.metadata import version as v; print("compat stack: llamafactory", v("llamafactory"), "+ transformers", v("transformers"))'; \
	echo "compat suite: $$(( $$(date +%s) - start )) s of tests (goal 360 s on an idle 2-core machine)"; \
	exit $$status

demo: setup  # tiny model + real RetinaMNIST sample -> AttTok training on CPU -> evaluation
	$(PY) demo/run.py

lint: setup
	$(VENV)/bin/ruff check llamafactory_attok tests bench demo
	$(VENV)/bin/mypy llamafactory_attok

bench: setup
	$(PY) -m bench.run_all

bench-science: setup  # BENCHMARKS.md §4 (science v3, goal <= 60 min): AttTok vs vanilla vs two controls, 8 replicates (not in make test / CI)
	$(PY) -m bench.science run --out bench_results/science_v3

clean:
	rm -rf $(VENV) .venv-compat .venv-lf-src outputs .pytest_cache

browser:  # Debian's Chromium for the WebUI test (root); Playwright itself never downloads a browser
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)
