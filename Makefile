# mrzap developer entry points. Every target creates the virtual environment when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BREAKING_AGAINST ?= main
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv system-deps run test lint gen bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	# The reference OPA engine for the policy tests (and `--policy-engine opa`): its metadata asks
	# for Python 3.14, though the ctypes bindings work on 3.11, so it cannot be a normal extra.
	$(VENV)/bin/pip install --quiet --ignore-requires-python opa-golib-python-bindings==0.4.4
	touch $@

system-deps:
	tools/system-deps.sh

run: venv
	mrzapd up

# pytest exits 5 when it collects nothing: that means the suite went missing, so say so and fail.
test: venv system-deps
	@pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the test suite is missing" >&2; fi; \
	exit $$rc

lint: venv
	ruff check .
	ruff format --check .
	mypy
	buf lint
	buf format -d --exit-code
	tools/check-breaking.sh $(BREAKING_AGAINST)
	tools/check-gen.sh

gen: venv
	tools/gen.sh gen

bench: venv
	python bench/protocol.py
	python bench/grpc_io.py
	python bench/relay_floor.py
	python bench/policy.py
	python bench/shell.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
