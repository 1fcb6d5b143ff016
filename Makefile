# safecascade — the two commands a new machine needs:
#   make demo   set up everything, run the default cascade (shipped models) on the benchmark's whole test split
#   make test   set up everything and run the whole test suite (what CI runs)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# CPU build of torch that lies on this machine's disk; anything else pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# The suite runs on every core (pytest-xdist), one test file per worker at a time; PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= auto
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast typecheck setup clean-cache experiments bench models fuzz

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q "$(TORCH_SPEC)"
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q -e ".[all]"
	touch $@

demo: setup
	$(VENV)/bin/safecascade -v demo

# The type check first (mypy on the public API, [tool.mypy] in pyproject.toml), then the whole suite.
# Artifacts built by the tests live in .cache/test-home (gitignored) and are reused across runs; the
# fifteen slowest tests are listed at the end (the suite aims at about 8 minutes on 2 cores).
test: setup
	$(PY) -m mypy
	SAFECASCADE_HOME=$(CURDIR)/.cache/test-home $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS) tests

# Only the type check (the files and options are in pyproject.toml, [tool.mypy]).
typecheck: setup
	$(PY) -m mypy

# Everything except tests marked slow (a quick loop for development; CI runs `make test`).
test-fast: setup
	SAFECASCADE_HOME=$(CURDIR)/.cache/test-home $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS) tests

# Rebuild exactly the shipped default models into models/ (slow: ~30 min on 2 cores; a deliberate commit).
models: setup
	$(VENV)/bin/safecascade -v models build

# The large fuzzing run (>= 100,000 hypothesis examples, fresh random ones); CI runs the derandomised suite.
fuzz: setup
	SAFECASCADE_FUZZ_RANDOM=1 SAFECASCADE_FUZZ_SCALE=10 SAFECASCADE_HOME=$(CURDIR)/.cache/test-home \
		$(PY) -m pytest -q -m slow $(PYTEST_ARGS) tests/router/test_fuzz.py

bench: setup
	$(PY) experiments/bench_heuristic.py
	$(PY) experiments/bench_fast.py

clean-cache:
	rm -rf .cache

# The evaluation programme (experiments/exp_*.py): Markdown + plots in experiments/results/, MLflow runs.
experiments: setup
	$(PY) -m experiments.run_all
