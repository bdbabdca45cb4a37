# worker-manager: developer entry points. `make run` for a local service, `make check` in the
# inner loop (seconds), `make test-fast` before pushing, `make test` for the whole suite. Everything runs from .venv; nothing is installed globally
# except the Debian packages redis-server and debootstrap (only when running as root).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstalled only when the project metadata changes; `make venv` is a no-op otherwise.
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
LINT_PATHS := worker_manager worker_base tests $(if $(wildcard benchmarks/*.py),benchmarks)

.PHONY: help venv run check test test-fast lint base-image ensure-base redis-server bench bench-full stop clean \
	distclean compose-up compose-down compose-test

help:
	@echo "make venv        create .venv and install the project with its dev extras"
	@echo "make run         start a local redis (scripts/local-redis.sh) and serve"
	@echo "make check       the inner loop, in seconds: ruff, ruff format, mypy --strict, unit tests"
	@echo "make test-fast   the suite but the tests that build images of their own (-m 'not build')"
	@echo "make test        run the whole test suite against a private redis-server and Docker"
	@echo "make lint        ruff check, ruff format --check, mypy --strict"
	@echo "make base-image  build the Debian base image (worker-manager bootstrap-base)"
	@echo "make bench       quick benchmarks; make bench-full for the long run"
	@echo "make compose-up  docker-compose up: Redis and the manager as containers"
	@echo "make compose-test  bring the compose path up, create a worker, take it all down"
	@echo "make stop        stop the egress service and the redis started by make run"
	@echo "make clean       remove caches and build output"
	@echo "make distclean   clean, stop the local redis, and remove .venv (keeps .run and .env)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# The redis-server binary for the test fixtures (they start their own server on a free port).
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" -eq 0 ]; then \
			echo "installing redis-server"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null \
			|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null; }; \
		else \
			echo "redis-server is missing: sudo apt-get install redis-server" >&2; exit 1; \
		fi; \
	fi

ensure-base: venv
	$(BIN)/worker-manager ensure-base

run: venv
	scripts/local-redis.sh
	$(BIN)/worker-manager ensure-base
	$(BIN)/worker-manager serve

# Exit code 5 is pytest's "no tests collected": a failure, never a quiet success.
PYTEST = rc=0; $(BIN)/pytest -q $(1) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating that as a failure" >&2; fi; \
	exit $$rc

test: venv redis-server ensure-base
	@$(call PYTEST,$(PYTEST_ARGS))

# Tests marked `build` build an image every run (pyproject.toml lists the markers).
test-fast: venv redis-server ensure-base
	@$(call PYTEST,-m "not build" $(PYTEST_ARGS))

# No Redis, no Docker: lint, then the unit tests (plain functions and fakes).
check: lint
	@$(call PYTEST,tests/unit $(PYTEST_ARGS))

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(LINT_PATHS)

base-image: venv
	$(BIN)/worker-manager bootstrap-base

bench: venv ensure-base
	$(BIN)/python -m benchmarks --quick

bench-full: venv ensure-base
	$(BIN)/python -m benchmarks

# Without a registry, build both images and the workers from the bootstrapped Debian base:
#   make compose-up MANAGER_BASE_IMAGE=worker-manager/base:bookworm \
#       REDIS_BASE_IMAGE=worker-manager/base:bookworm WM_BASE_IMAGE=worker-manager/base:bookworm
MANAGER_BASE_IMAGE ?= python:3.12-slim
compose-up: venv
	@test -n "$${REDIS_PASSWORD:-}" || { echo "set REDIS_PASSWORD (e.g. openssl rand -hex 24)" >&2; exit 2; }
	scripts/build-wheels.sh $(MANAGER_BASE_IMAGE)
	MANAGER_BASE_IMAGE=$(MANAGER_BASE_IMAGE) docker-compose up -d --build

compose-down:
	docker-compose down

compose-test: venv ensure-base
	scripts/compose-test.sh

stop:
	-$(BIN)/worker-manager egress --stop
	scripts/local-redis.sh stop

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -not -path './.git/*' -not -path './$(VENV)/*' -prune \
		-exec rm -rf {} +

# .run (the local redis's password and data) and .env are kept: deleting them loses state.
distclean: stop clean
	rm -rf $(VENV)
