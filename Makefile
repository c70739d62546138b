# TORI Memory. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP) ## Create .venv and install the project with its dev tools

demo: up ## Bring the fleet up and run a first real job: vault-cli put-get-loop 50
	$(VENV)/bin/vault-cli put-get-loop 50

up: $(STAMP) ## Start the local fleet (Redis + the four services) as processes
	$(PY) -m mcp_services.fleet up

down: ## Stop exactly what `make up` started
	@if [ -x $(PY) ]; then $(PY) -m mcp_services.fleet down; else echo "no $(VENV): nothing was started"; fi

status: $(STAMP) ## Show each fleet process, its health and endpoints
	$(PY) -m mcp_services.fleet status

proto: $(STAMP) ## Regenerate mcp_services/gen from proto/ (pinned grpcio-tools)
	$(PY) scripts/gen_protos.py

lint: $(STAMP) ## ruff lint and format check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) ## The whole suite: lint, types, then every test against real servers
	scripts/test.sh

bench: $(STAMP) ## Benchmarks (not part of the test suite); figures land in bench/results/
	$(PY) bench/bench_vault.py

.PHONY: help venv demo up down status proto lint test bench
