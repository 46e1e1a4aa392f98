# Quick start: `make demo` (trains and plots the embedded default) and `make test` (the test suite).
# Both create .venv and install what they need when missing: the exact versions in constraints.txt
# (pyproject.toml declares ranges; the install reruns when either file changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-full test acceptance clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sbdiff demo --quick

demo-full: $(STAMP)
	$(BIN)/sbdiff demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

acceptance: $(STAMP)
	$(BIN)/python benchmarks/likelihoods.py sgm

clean:
	rm -rf $(VENV) runs .pytest_cache
