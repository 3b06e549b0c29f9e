# `make demo` and `make test` each create .venv when missing, install what they need, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# One stamp per install flavour, redone when pyproject.toml changes.
$(VENV)/.installed-base: pyproject.toml | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) -e ".[test,parity]"
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(PY) examples/quick_fit.py

test: $(VENV)/.installed-test
	$(PY) -m pytest -n 2 --durations=10

bench: $(VENV)/.installed-test
	$(PY) benchmarks/epoch_speed.py --sizes small mp-300k

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
