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

demo: $(STAMP) ## Bring the fleet up (unless it runs), then show the memory: scenes in, sleep, prune, recall, modes
	@$(PY) -m mcp_services.fleet status >/dev/null 2>&1 || $(MAKE) --no-print-directory up
	$(PY) -m mcp_services.demo

up: $(STAMP) ## Start the local fleet (Redis, the four services, the MCP gateway) as processes
	$(PY) -m mcp_services.fleet up

down: ## Stop exactly what `make up` started
	@if [ -x $(PY) ]; then $(PY) -m mcp_services.fleet down; else echo "no $(VENV): nothing was started"; fi

status: $(STAMP) ## Show each fleet process, its health and endpoints
	$(PY) -m mcp_services.fleet status

proto: $(STAMP) ## Regenerate mcp_services/gen from proto/ (pinned grpcio-tools)
	$(PY) scripts/gen_protos.py

lint: $(STAMP) ## ruff lint and format check, mypy, import contracts (pyproject [tool.importlinter])
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: $(STAMP) ## The whole suite: lint, types, then every test against real servers
	scripts/test.sh

generate-secret-key: ## Add a new gateway API key (TENANT=name optional) to its key file, mode 0600
	@test -x $(PY) || { echo "no $(VENV): run 'make venv' first" >&2; exit 2; }
	@$(PY) -m mcp_services.gateway keygen $(if $(TENANT),--tenant $(TENANT))

bench: $(STAMP) ## Benchmarks (not part of the test suite); figures land in bench/results/
	$(PY) bench/bench_vault.py

.PHONY: help venv demo up down status proto lint test bench generate-secret-key

# --- Containers and operations (docker-compose.yml, prometheus/, grafana/, loadgen) -------------
# Targets that need a Docker engine say so and stop where none answers; the same fleet then runs
# as processes (make up). REGISTRY names the registry prod-build and prod-push use.
IMAGE ?= tori-memory:dev
REGISTRY ?=
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
RATE ?= 200
DURATION ?= 10m

define need_docker
	@docker info >/dev/null 2>&1 || { echo "make $@: no Docker engine answers here (docker info failed); start one, or run the same fleet as processes: make up / make status / make down" >&2; exit 2; }
endef

# secrets/ is 0700 (only its owner on this host may enter it) and its files 0644: compose mounts
# each file into the containers as it is, where the services run as the image's user (uid 10001,
# not the host user who owns the file), so a 0600 file would be unreadable there.
# secrets/api_keys gets a fresh admin service key when it holds none: the services listen beyond
# loopback in containers and refuse to start without a key (README, Security).
NEW_KEY = $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))'
init-directories: ## Create var/ (data, logs, graphs) and secrets/ (0700); an admin service key in secrets/api_keys
	@mkdir -p var/data var/log var/graphs var/loadgen secrets
	@chmod 700 secrets
	@for f in secrets/api_keys secrets/gateway_api_keys; do \
	  test -e $$f || { : > $$f; echo "created $$f"; }; \
	done
	@if ! grep -qvE '^[[:space:]]*(#|$$)' secrets/api_keys; then \
	  echo "$$($(NEW_KEY)) admin" > secrets/api_keys; echo "wrote a new admin service key to secrets/api_keys"; \
	fi
	@chmod 644 secrets/api_keys secrets/gateway_api_keys
	@echo "directories ready: var/ secrets/"

secrets-up: init-directories ## Also put a fresh gateway key in secrets/gateway_api_keys when it holds none
	@f=secrets/gateway_api_keys; \
	if ! grep -qvE '^[[:space:]]*(#|$$)' $$f; then \
	  echo "$$($(NEW_KEY)) default" > $$f; echo "wrote a new key to $$f"; \
	else echo "$$f already holds a key"; fi
	@chmod 700 secrets && chmod 644 secrets/api_keys secrets/gateway_api_keys
	@echo "docker-compose.yml mounts secrets/ at /run/secrets; clients send the key as TORI_API_KEY"

containers-dev: ## Build the one image of every Python service (IMAGE=tori-memory:dev)
	$(need_docker)
	docker build --target runtime -t $(IMAGE) .

dev-up-containers: init-directories ## Build and start the compose fleet (Redis, services, gateway, Prometheus, Grafana)
	$(need_docker)
	TORI_IMAGE=$(IMAGE) $(COMPOSE) up -d --build
	$(COMPOSE) ps

logs: ## Follow the logs: the compose fleet's if it runs, else the native fleet's (SERVICE=name)
	@if docker info >/dev/null 2>&1 && [ -n "$$($(COMPOSE) ps -q 2>/dev/null)" ]; then \
	  $(COMPOSE) logs -f --tail=100 $(SERVICE); \
	elif ls var/log/*.log >/dev/null 2>&1; then \
	  tail -n 50 -F $(if $(SERVICE),var/log/$(SERVICE).log,var/log/*.log); \
	else echo "make logs: no compose fleet and no native logs in var/log (make up first)" >&2; exit 2; fi

open-grafana: ## Open Grafana (http://localhost:3000, admin / tori-memory)
	@echo "Grafana: http://localhost:3000  (admin / tori-memory; dashboards in the TORI Memory folder)"
	@if command -v xdg-open >/dev/null; then xdg-open http://localhost:3000 >/dev/null 2>&1 || true; fi

soak: $(STAMP) ## Load the running fleet: RATE ops/s for DURATION (DURATION=24h: the soak), then verify
	$(VENV)/bin/tori-loadgen --rate $(RATE) --duration $(DURATION) --sleep-every 60s --prune-every 120s --learn-every 10s

soak-stop: ## Stop a running loadgen cleanly (it verifies what it wrote, then exits)
	@if [ -x $(VENV)/bin/tori-loadgen ]; then $(VENV)/bin/tori-loadgen --stop; fi
	@if docker info >/dev/null 2>&1 && [ -n "$$($(COMPOSE) ps -q 2>/dev/null)" ]; then \
	  $(COMPOSE) run --rm loadgen --stop; fi

soak-bench: $(STAMP) ## The 10-minute soak at 200 ops/s on a private native fleet; figures in bench/results/soak.json
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) bench/soak.py

prod-build: ## Build the image for a registry: REGISTRY=registry.example.com/team [VERSION=tag]
	@test -n "$(REGISTRY)" || { echo "make $@: set REGISTRY, e.g. make $@ REGISTRY=registry.example.com/tori" >&2; exit 2; }
	$(need_docker)
	docker build --target runtime -t $(REGISTRY)/tori-memory:$(VERSION) .

prod-push: prod-build ## Push the image built by prod-build to REGISTRY
	docker push $(REGISTRY)/tori-memory:$(VERSION)

.PHONY: init-directories secrets-up containers-dev dev-up-containers logs open-grafana soak soak-stop soak-bench prod-build prod-push
