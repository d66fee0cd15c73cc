# The two entry points (see README): `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup demo test lint unit bench clean

setup:
	@scripts/setup.sh

demo: setup
	@PLUGIN_OPERATOR_BIN="$$(scripts/build-k8s.sh)" $(VENV)/python -m localdev.demo $(ARGS)

lint: setup
	$(VENV)/ruff check operator tests
	$(VENV)/ruff format --check operator tests
	$(VENV)/mypy
	$(VENV)/lint-imports

test: setup lint
	PLUGIN_OPERATOR_BIN="$$(scripts/build-k8s.sh)" $(VENV)/pytest -p no:cacheprovider -ra

unit: setup
	$(VENV)/pytest -p no:cacheprovider tests/unit

bench: setup
	$(VENV)/python tests/bench/bench_resolve.py
	$(VENV)/python tests/bench/bench_stage.py

clean:
	rm -rf .venv
