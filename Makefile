# One entry point for humans and CI.  `make demo` runs the service; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint setup bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first, so the project's torch range is already satisfied
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# obp (test reference for off-policy estimators) declares python<3.11: install it without
	# that check and without its deps (the test extra above brings the ones it imports)
	$(PY) -m pip install -q --no-deps --ignore-requires-python obp==0.5.7
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/profiles demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check stream encoder index tests

check: lint test

bench: $(STAMP)
	$(VENV)/bin/profiles bench pipeline

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis state
