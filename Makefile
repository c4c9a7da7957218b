# Two commands do all set-up on a fresh machine (Python >= 3.10 and make):
#   make demo   # installs into .venv, runs the main job
#   make test   # installs into .venv, runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev,data,bench,experiments]"
	touch $@

$(VENV)/.stamp-demo: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[data,experiments]"
	touch $@

.PHONY: test demo lopt
test: $(VENV)/.stamp-test
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

demo: $(VENV)/.stamp-demo
	$(PY) experiments/omniglot.py --config experiments/configs/omniglot_short.py --workdir runs/omniglot_short

lopt: $(VENV)/.stamp-demo   # learned optimiser vs tuned SGD / Adam on Omniglot (~10 min)
	$(PY) experiments/lopt_omniglot.py --config experiments/configs/lopt_short.py --workdir runs/lopt_short
