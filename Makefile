# Entry points: `make setup` (idempotent environment set-up), `make demo`, `make test`.
# Everything runs in the currently active Python environment; override with PYTHON=...
PYTHON ?= python
export PYTHON

.PHONY: setup demo test

setup:
	bash tools/setup_env.sh

demo: setup
	$(PYTHON) tools/quickstart.py

test: setup
	$(PYTHON) -m pytest -q tests
