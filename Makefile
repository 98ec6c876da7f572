# Speedy: `make run` starts a local cluster, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
VAR ?= var
BIN := $(VENV)/bin
JOBS ?= 2

.PHONY: run test install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python setup.cfg
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python tools/speedy-cluster up --var $(VAR)

test: install
	$(BIN)/python .ci/trial-summary $(BIN)/trial -j$(JOBS) speedy bench._test_loadgen

bench: install
	$(BIN)/pip install -q -e '.[bench]' --config-settings editable_mode=compat
	$(BIN)/python bench/race.py

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info
