# The two commands of the README:
#   make quickstart   set up (idempotent) and run the offline quickstart campaign
#   make test         set up (idempotent), lint (ruff), type-check (mypy) and run the test suite
.PHONY: setup setup-test quickstart lint test

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --with-mongoeco

quickstart: setup
	.venv/bin/matfunnel quickstart

lint: setup-test
	.venv/bin/ruff check src tests benchmarks analysis
	.venv/bin/mypy

test: lint
	.venv/bin/python -m pytest -q --durations=20
