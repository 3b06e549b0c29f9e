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

# The demo package is built once and cached under storage/ (git-ignored).
DEMO_PACKAGE := storage/demo/synthetic_package.npz

$(DEMO_PACKAGE): | $(VENV)/.installed-base
	$(PY) -m builders.synthetic_problem $@

demo: $(VENV)/.installed-base $(DEMO_PACKAGE)
	$(VENV)/bin/jaxcal fit --package-path $(DEMO_PACKAGE) --output storage/demo/calibration_weights.npy \
		--lambda-l0 1e-6 --log-freq 20

test: $(VENV)/.installed-test
	$(PY) -m pytest -n 2 --durations=10

bench: $(VENV)/.installed-test
	$(PY) benchmarks/epoch_speed.py --sizes small mp-300k

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
