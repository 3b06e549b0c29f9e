# `make demo` and `make test` each create .venv when missing, install what they need, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# One stamp per install flavour, redone when pyproject.toml changes.
$(VENV)/.installed-base: pyproject.toml | $(PY)
	$(PIP) -e ".[policyengine]"
	touch $@

# policyengine-us-data is the reference of the PolicyEngine parity tests: its wheel declares
# Python >=3.12 and pins an older policyengine-us, but its calibration code runs here as it is.
PE_DATA := policyengine-us-data==1.115.4

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) -e ".[test,parity]"
	$(PIP) --no-deps --ignore-requires-python $(PE_DATA)
	touch $@ $(VENV)/.installed-base

# The default package (synthetic households, real US targets, the real PolicyEngine-US model)
# is built once by `jaxcal build --demo` and cached under storage/demo (git-ignored). It holds
# only the demo's targets, so the fit takes them all rather than PolicyEngine's target config.
DEMO_DIR := storage/demo

demo: $(VENV)/.installed-base
	package=$$($(VENV)/bin/jaxcal build --demo --demo-dir $(DEMO_DIR)) && \
	$(VENV)/bin/jaxcal fit --package-path "$$package" --output $(DEMO_DIR)/calibration/calibration_weights.npy \
		--all-active-targets --epochs 1000 --log-freq 100

test: $(VENV)/.installed-test
	$(PY) -m pytest -n 2 --dist loadfile --durations=15

# What .ci/run checks besides the tests: ruff (lint and format) and pyright on jaxcal and builders.
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright jaxcal builders

bench: $(VENV)/.installed-test
	$(PY) benchmarks/epoch_speed.py --sizes small mp-300k

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
