# The two commands of the README:
#   make quickstart   set up (idempotent) and run the offline quickstart campaign
#   make test         set up (idempotent) and run the test suite
.PHONY: setup setup-test quickstart test

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --with-mongoeco

quickstart: setup
	.venv/bin/matfunnel quickstart

test: setup-test
	.venv/bin/python -m pytest -q --durations=20
