# Alur: `make demo` and `make test` work from a fresh clone with nothing but Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-faults bench schemas docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/alur demo

# Most tests wait on real processes (nats-server, alur up, timers), so four workers fit two cores; a module's
# tests share one worker (`--dist loadfile`), as they share its module-scoped stack.
TEST_WORKERS ?= 4
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not faults"

# The long runs: fuzzing both doors with many more inputs (ALUR_FUZZ_EXAMPLES), the fault drill on a cluster,
# and the crash, restart and stuck-peer tests (`faults`-marked). CI runs it after `make test`.
FUZZ_EXAMPLES ?= 400
test-faults: setup
	ALUR_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider -m faults

bench: setup $(VENV)/.bench-installed
	$(BIN)/python -m bench

$(VENV)/.bench-installed: pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

schemas: setup
	$(BIN)/python -m contracts.schema_gen

# Everything generated from the code for integrators: the JSON Schemas, contracts/asyncapi.yaml (FastStream's
# AsyncAPI generation over the apps, completed) and the generated parts of docs/integrating.md.
docs: schemas
	$(BIN)/python -m alur.asyncapi
	$(BIN)/python -m alur.guide

clean:
	rm -rf $(VENV) .alur .pytest_cache
