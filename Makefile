# Two commands do all set-up on a fresh machine (Python >= 3.10 and make):
#   make demo   # installs into .venv, runs the main job
#   make test   # installs into .venv; lint, format check, the docs build and the test suite
#   (make voices: the voices main job, FSDD speakers; make lopt: the learned-optimiser study)
#   (make test-all also runs the tests of whole experiments that CI skips: tests/helpers.SLOW)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev,docs,data,audio,bench,experiments]"
	touch $@

$(VENV)/.stamp-demo: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[data,audio,experiments]"
	touch $@

.PHONY: test test-all lint docs-check pytest demo lopt voices
# What CI runs (.ci/run): lint first, then the docs build and the suite side by side (the docs
# build keeps about 1.3 of the 2 cores busy, the suite 1.9: together they finish sooner); the
# run fails when any step fails, each step's output printed whole when it ends (-O).
test: lint
	$(MAKE) --no-print-directory -j2 -Otarget docs-check pytest

test-all: lint
	METAGAN_SLOW_TESTS=1 $(MAKE) --no-print-directory -j2 -Otarget docs-check pytest

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The site from scratch (-E: every page re-read, so no warning hides in a cached page).
docs-check: $(VENV)/.stamp-test
	$(PY) -m sphinx -E -W --keep-going -b html docs docs/_build/html

pytest: $(VENV)/.stamp-test
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=20 tests

demo: $(VENV)/.stamp-demo
	$(PY) experiments/omniglot.py --config experiments/configs/omniglot_short.py --workdir runs/omniglot_short

# The voices main job: a GAN meta-learned across FSDD speakers, adapted to 3 unheard speakers
voices: $(VENV)/.stamp-demo
	$(PY) experiments/voices.py --config experiments/configs/voices_short.py --workdir runs/voices_short

lopt: $(VENV)/.stamp-demo   # learned optimiser vs tuned SGD / Adam on Omniglot (~10 min)
	$(PY) experiments/lopt_omniglot.py --config experiments/configs/lopt_short.py --workdir runs/lopt_short

$(VENV)/.stamp-docs: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[docs,data,audio,experiments]"
	touch $@

# The documentation site into docs/_build/html, warnings as errors; it executes the tutorials
# (METAGAN_DOCS_EXECUTE=off skips that, =cache re-runs only changed ones).
.PHONY: docs
docs: $(VENV)/.stamp-docs
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
