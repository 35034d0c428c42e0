# One entry point for humans and CI.  `make demo` runs the service; `make check` is what CI runs:
# the linter, the type checker, then every test (`make test` runs only the tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint typecheck setup bench clean

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

# mypy's settings are in pyproject.toml: strict on stream/core and stream/worker.  Every
# `type: ignore` names its error code and says why (tests/unit/test_layers.py counts them).
typecheck: $(STAMP)
	$(PY) -m mypy
	@echo "type: ignore comments: $$(grep -rn 'type: ignore' stream encoder index | wc -l)"

check: lint typecheck test

bench: $(STAMP)
	$(VENV)/bin/profiles bench pipeline

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis state
