# The two commands of the README. Each sets up everything it needs first
# (tools/setup_env.py is idempotent: a second run checks and skips).
PY := .venv/bin/python

.PHONY: setup run test

setup:
	python3 tools/setup_env.py

run: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest tests
