# The README's commands. Each sets up everything it needs first
# (tools/setup_env.py is idempotent: a second run checks and skips).
PY := .venv/bin/python

.PHONY: setup run test test-all

setup:
	python3 tools/setup_env.py

run: setup
	$(PY) tools/demo.py

# every model family trained, tested and exported once; under 12 minutes on
# a 2-core machine without native bf16 (docs/development.md)
test: setup
	$(PY) -m pytest -m "not long" --durations=15 tests

# also what is long by nature (the `long` marker): the demo, the kill matrix
# with real processes, 5,000 fuzz examples per generator, the offline install,
# the docs' tables regenerated
test-all: setup
	CONVNEXT_MM_FUZZ_EXAMPLES=5000 $(PY) -m pytest --durations=15 tests
